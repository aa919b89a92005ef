"""``labeler import``: the images of a manifest or of folder trees (`labeler.manifest`) into a
Label Studio project, in bulk requests, with work in proportion to what is new, resumable after a
kill at any point.

Each image becomes a PNG under ``document_root/labeler-<project>/`` named by its content hash and
one task whose data holds ``image`` (a local-files URL), ``content_hash``, ``source`` (the file as
the manifest or the folder names it), ``patient`` when known (a keyed hash, `labeler.patients`: of
the manifest's patient id, else of a DICOM's PatientID; raw ids never leave this machine) and the
manifest's study / date / split / extra columns.

What is new is decided by our database, not by listing the project in Label Studio: a file whose
``source`` is a live task of the project is skipped before it is read, an image whose content hash
is one is skipped after (indexed queries, a batch at a time). So every task the import creates is
recorded in our database as well (`db.repository.live_task`), from the ids Label Studio's import
returns (``return_task_ids``), right after each bulk request. Only when Label Studio counts more
tasks than our database holds (tasks made another way, or imported by an earlier version) are
the project's tasks listed once, with cheap fields, and the unknown ones recorded (`_Run.adopt`).

A kill between a bulk request and its database write would leave tasks our database does not
know, and the rerun would import their files again. So before each request the import writes a
journal file (``.import-pending-<run>.json`` in the import folder) holding the project's largest
Label Studio task id at that moment, and removes it once our database has the batch. A run that
finds a journal (left by a kill or by a failed request) first asks Label Studio for the project's
tasks with a larger id (one Data Manager filter: in proportion to the tasks created since, at most
a batch or so) and records them. Not simply "tasks above our largest known id" on every start:
our database also learns tasks from webhooks and /predict, and one of those recorded above an
unrecorded batch would hide it; the journal keeps the mark from before the request. Concurrent
imports into one project are not supported (one may clear the other's journal).

Label Studio's Data Manager also answers whether the project still holds old, unkeyed ``patient``
values (a regex filter), so that check does not list the project either.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import cv2
import requests
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from db import repository
from db.schema import Project
from explain.images import ImageError, load_image, to_uint8
from labeler.manifest import Item, folder_items, read_manifest
from labeler.patients import PREFIX, is_unkeyed, patient_key, patient_secret
from labeler.workspace import Workspace

DEFAULT_BATCH = 250  # tasks per bulk request
PAGE_SIZE = 500  # tasks per page when recovering an interrupted run
JOURNAL_GLOB = ".import-pending-*.json"


@dataclass(frozen=True)
class Imported:
    added: int  # tasks created now
    skipped: int  # files already in the project (same source, or same image)
    errors: list[str]  # one line per file or manifest row / column that could not be imported
    recovered: int = 0  # tasks of an interrupted run that our database learnt now
    adopted: int = 0  # tasks made another way (or by an earlier version) that our database learnt now


def import_images(
    ws: Workspace,
    paths: list[Path],
    document_root: Path,
    *,
    manifest: Path | None = None,
    batch: int = DEFAULT_BATCH,
) -> Imported:
    """Import the image files / folders ``paths`` and the rows of ``manifest`` (either may be
    empty) into the workspace's project, ``batch`` tasks per request (see the module docstring).
    A project still holding old unkeyed ``patient`` values is refused before anything is copied:
    keys of two kinds would split one patient in two (``labeler rekey-patients`` converts them)."""
    if batch < 1:
        raise ValueError(f"the batch size must be at least 1, got {batch}")
    project_id = ws.require_project()
    count, items, errors = _items(paths, manifest)
    unkeyed = _unkeyed_count(ws, project_id)
    if unkeyed:
        raise ValueError(
            f"project {project_id} has {unkeyed} task(s) with an old, unkeyed patient value; "
            "run `labeler rekey-patients` first (same --database-url), then import again"
        )
    folder = (document_root / f"labeler-{project_id}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    _ensure_storage(ws, project_id, folder)
    with ws.sessions.begin() as session:
        project_pk = repository.upsert_project(session, project_id, label_studio=ws.label_studio).id
    run = _Run(ws, project_id, project_pk, folder, document_root.resolve(), batch)
    recovered = run.recover()
    adopted = run.adopt()
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[skipped]} skipped, {task.fields[failed]} failed"), TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        bar = progress.add_task("importing", total=count, skipped=0, failed=0)

        def done(error: str | None):
            if error:
                errors.append(error)
            progress.update(bar, advance=1, skipped=run.skipped, failed=len(errors))

        for chunk in _chunks(items, batch):
            run.take(chunk, done)
        run.flush(everything=True)
    return Imported(run.added, run.skipped, errors, recovered, adopted)


def _items(paths: list[Path], manifest: Path | None) -> tuple[int, Iterator[Item], list[str]]:
    """How many files there are, the files, and the manifest's header errors."""
    if not paths and manifest is None:
        raise ValueError("nothing to import: give image files or folders, or --manifest FILE.csv")
    count, items = folder_items(paths)
    errors: list[str] = []
    if manifest is not None:
        parsed = read_manifest(manifest)
        errors += parsed.errors
        count += parsed.count()
        items = _chain(items, parsed.items())
    return count, items, errors


def _chain(*iterators: Iterable[Item]) -> Iterator[Item]:
    for iterator in iterators:
        yield from iterator


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    while chunk := list(islice(items, size)):
        yield chunk


class _Run:
    """One import's state: the tasks waiting for a bulk request and the counts so far."""

    def __init__(self, ws: Workspace, project_id: int, project_pk: int, folder: Path, root: Path, batch: int):
        self.ws, self.project_id, self.project_pk = ws, project_id, project_pk
        self.folder, self.root, self.batch = folder, root, batch
        self.pending: dict[str, dict] = {}  # content hash -> task data, not yet sent
        self.added = self.skipped = 0
        self.last_id: int | None = None  # the largest task id Label Studio gave this run
        self.journal = folder / f".import-pending-{uuid.uuid4().hex[:12]}.json"
        self.secret = functools.cache(lambda: patient_secret(ws))

    def take(self, chunk: list[Item], done: Callable[[str | None], None]):
        """Handle a chunk of items, calling ``done`` once per item (with its error line, or None);
        a bulk request goes out whenever ``batch`` tasks are waiting."""
        with self.ws.sessions() as session:
            known = repository.known_sources(session, self._project(session), (i.source for i in chunk if not i.error))
        converted: list[tuple[str, dict]] = []
        for item in chunk:
            error = None
            if item.error:
                error = _line(item, item.error)
            elif item.source in known:
                self.skipped += 1
            else:
                try:
                    converted.append(self._task(item))
                except ImageError as exc:
                    error = _line(item, str(exc))
                except OSError as exc:
                    problem = "no such file" if isinstance(exc, FileNotFoundError) else f"cannot be read ({type(exc).__name__})"
                    error = _line(item, f"{item.name}: {problem}")
            done(error)
        with self.ws.sessions() as session:
            stored = repository.known_content(session, self._project(session), (digest for digest, _ in converted))
        for digest, data in converted:
            if digest in stored or digest in self.pending:
                self.skipped += 1
            else:
                self.pending[digest] = data
        self.flush()

    def flush(self, everything: bool = False):
        """Send the waiting tasks in bulk requests of ``batch`` (the remainder too when ``everything``)."""
        while len(self.pending) >= self.batch or (everything and self.pending):
            digests = list(islice(self.pending, self.batch))
            self._post([self.pending[d] for d in digests])
            for digest in digests:
                del self.pending[digest]

    def _task(self, item: Item) -> tuple[str, dict]:
        """Read and convert one file; its PNG written under the import folder. Returns its
        content hash and task data."""
        png, dicom_patient = _as_png(item.path, lambda patient_id: patient_key(patient_id, self.secret()))
        digest = hashlib.sha256(png).hexdigest()
        target = self.folder / f"{digest[:16]}.png"
        if not target.exists():
            partial = target.with_name(f".{target.name}.{os.getpid()}")
            partial.write_bytes(png)
            os.replace(partial, target)  # a kill never leaves a half-written PNG under the final name
        data = {"image": f"/data/local-files/?d={target.relative_to(self.root).as_posix()}", "content_hash": digest}
        data.update(item.data)
        data["source"] = item.source
        patient = patient_key(item.patient_id, self.secret()) if item.patient_id else dicom_patient
        if patient:
            data["patient"] = patient
        return digest, data

    def _post(self, tasks: list[dict]):
        """One bulk request, then the created tasks recorded in our database (journal around it)."""
        after = self.last_id if self.last_id is not None else _largest_task_id(self.ws, self.project_id)
        _write_journal(self.journal, after)
        response = self.ws.client.projects.import_tasks(
            id=self.project_id, request=[{"data": t} for t in tasks], return_task_ids=True
        )
        ids = _created_ids(response, len(tasks))
        self.record(list(zip(ids, tasks)))
        self.journal.unlink(missing_ok=True)
        self.added += len(tasks)
        self.last_id = max(ids, default=after)

    def record(self, tasks: list[tuple[int, dict]]) -> int:
        """Our database's rows for these Label Studio tasks (id, data); returns how many were new."""
        new = 0
        with self.ws.sessions.begin() as session:
            project = self._project(session)
            for task_id, data in tasks:
                new += repository.get_live_task(session, project, task_id) is None
                repository.live_task(
                    session, project, task_id, str(data.get("image") or ""),
                    content_hash=_text(data.get("content_hash")), **repository.task_origin(data),
                )
        return new

    def recover(self) -> int:
        """Record the tasks that a run killed between a bulk request and its database write left
        (see the module docstring); returns how many our database did not know."""
        journals = sorted(self.folder.glob(JOURNAL_GLOB))
        if not journals:
            return 0
        after = min(_read_journal(path) for path in journals)
        query = {"filters": _filters(_item("id", "greater", "Number", after)), "ordering": ["tasks:id"]}
        recovered = 0
        for page in _pages(self.ws, self.project_id, query):
            recovered += self.record([(task["id"], task.get("data") or {}) for task in page])
        for path in journals:
            path.unlink(missing_ok=True)
        return recovered

    def adopt(self) -> int:
        """Record the project's tasks our database does not know (made in Label Studio another
        way, or imported by an earlier version), so that their sources and images are skipped
        too: only when Label Studio counts more tasks than our database holds, by one listing
        of cheap fields (after it the counts agree, and later imports list nothing)."""
        theirs = self.ws.client.projects.get(id=self.project_id).task_number or 0
        with self.ws.sessions() as session:
            if theirs <= repository.live_task_count(session, self._project(session)):
                return 0
        adopted = 0
        for page in _pages(self.ws, self.project_id, {"ordering": ["tasks:id"]}):
            with self.ws.sessions() as session:
                known = repository.known_task_ids(session, self._project(session), (t["id"] for t in page))
            adopted += self.record([(t["id"], t.get("data") or {}) for t in page if t["id"] not in known])
        return adopted

    def _project(self, session) -> Project:
        return session.get(Project, self.project_pk)


def _line(item: Item, text: str) -> str:
    return f"{item.row}: {text}" if item.row else text


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _created_ids(response, expected: int) -> list[int]:
    """The ids Label Studio gave the tasks of one bulk request, in request order."""
    ids = getattr(response, "task_ids", None)
    if not isinstance(ids, list) or len(ids) != expected or not all(isinstance(i, int) for i in ids):
        raise ValueError(
            "Label Studio did not return the ids of the tasks it created (an edition that imports in the "
            "background?); the next `labeler import` records them from Label Studio before going on"
        )
    return ids


def _write_journal(path: Path, after_id: int):
    partial = path.with_suffix(".tmp")
    with open(partial, "w") as handle:
        json.dump({"after_id": after_id}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def _read_journal(path: Path) -> int:
    """The mark in a journal; 0 (every task of the project) when it cannot be read."""
    try:
        value = json.loads(path.read_text()).get("after_id")
    except (OSError, ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) and value >= 0 else 0


# -- Label Studio's task list with Data Manager filters -----------------------------------------


def _item(column: str, operator: str, kind: str, value) -> dict:
    return {"filter": f"filter:tasks:{column}", "operator": operator, "type": kind, "value": value}


def _filters(*items: dict) -> dict:
    return {"conjunction": "and", "items": list(items)}


def _tasks_page(ws: Workspace, project_id: int, query: dict, page: int, page_size: int) -> dict:
    """One page of ``GET /api/tasks`` (cheap fields, URIs unresolved): ``{"tasks": [...], "total": N}``."""
    params = {
        "project": project_id, "fields": "task_only", "resolve_uri": "false",
        "page": page, "page_size": page_size, "query": json.dumps(query),
    }
    response = requests.get(f"{ws.label_studio_url.rstrip('/')}/api/tasks/", params=params, headers=ws.auth.header(), timeout=120)
    if response.status_code != 200:
        raise ValueError(f"Label Studio answered HTTP {response.status_code} to a task list")
    answer = response.json()
    return answer if isinstance(answer, dict) else {"tasks": answer, "total": len(answer)}


def _pages(ws: Workspace, project_id: int, query: dict) -> Iterator[list[dict]]:
    page = 1
    while True:
        answer = _tasks_page(ws, project_id, query, page, PAGE_SIZE)
        tasks = answer.get("tasks") or []
        if tasks:
            yield tasks
        if len(tasks) < PAGE_SIZE or page * PAGE_SIZE >= int(answer.get("total") or 0):
            return
        page += 1


def _largest_task_id(ws: Workspace, project_id: int) -> int:
    """The project's largest Label Studio task id (0 when it has none): one row, sorted by Label
    Studio. Tasks created later get larger ids (a sequence, or the largest id + 1)."""
    tasks = _tasks_page(ws, project_id, {"ordering": ["-tasks:id"]}, 1, 1).get("tasks") or []
    return int(tasks[0]["id"]) if tasks else 0


def _unkeyed_count(ws: Workspace, project_id: int) -> int:
    """How many tasks hold an old, unkeyed ``patient`` value (`labeler.patients.is_unkeyed`): those
    a regex filter keeps (none in a keyed project: one request, nothing listed), checked one by one
    since Label Studio matches the text of any JSON value, numbers too."""
    condition = _item("data.patient", "regex", "String", f"^(?!{PREFIX}).")
    pages = _pages(ws, project_id, {"filters": _filters(condition)})
    return sum(is_unkeyed((task.get("data") or {}).get("patient")) for page in pages for task in page)


def _ensure_storage(ws, project_id, folder: Path):
    """Label Studio serves local files only from a project's local-files storage path."""
    for storage in ws.client.import_storage.local.list(project=project_id):
        if Path(storage.path).resolve() == folder:
            return
    ws.client.import_storage.local.create(project=project_id, path=str(folder), use_blob_urls=True, title="labeler import")


# -- one file -------------------------------------------------------------------------------------


def read_file(path: Path) -> bytes:
    """A file's bytes (the only place the import reads an image file)."""
    return path.read_bytes()


def _as_png(path: Path, key: Callable[[str], str]) -> tuple[bytes, str | None]:
    """PNG bytes of an image (8-bit; DICOM windowed and inverted as needed) and its patient key:
    ``key(PatientID)`` for a DICOM with a PatientID, else None."""
    data = read_file(path)
    image = load_image(data, name=path.name)
    gray = (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    picture = to_uint8(image[..., 0] if gray else image[..., ::-1])
    ok, encoded = cv2.imencode(".png", picture)
    if not ok:
        raise ImageError(f"{path.name}: could not be encoded as PNG")
    patient_id = _patient_id(data)
    return encoded.tobytes(), key(patient_id) if patient_id else None


def _patient_id(data: bytes) -> str | None:
    if data[128:132] != b"DICM":
        return None
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["PatientID"])
    return str(dataset.get("PatientID", "") or "") or None
