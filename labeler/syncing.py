"""``labeler sync``: the project's annotations pulled from Label Studio into our database, at a cost
in proportion to what changed since the last sync. Webhooks are the normal path; sync catches up
what they missed (e.g. while the backend was down). Idempotent and append-only: states already
stored add nothing; annotations and tasks gone from Label Studio get a "deleted" revision / mark.

**What changed.** Label Studio 1.23 moves a task's ``updated_at`` whenever one of its annotations
is created, updated or deleted (``Annotation.save`` / ``delete`` save the task; the Data
Manager's "delete annotations" action sets it; measured), and when a prediction is added. So a
sync asks the Data Manager only for the tasks with ``updated_at`` after the project's mark
(table ``sync_marks``), with their annotations, and compares each such task's annotations with
ours: new and changed states are stored, and annotations of that task missing in Label Studio
are recorded deleted. The first sync of a project (no mark) and ``--full`` export the whole
project instead, as before.

**The mark** is ``min(newest updated_at read, server time when the sync began - OVERLAP)``. The
server time (the HTTP ``Date`` of the first answer, Label Studio's own clock, so our clock does
not matter) bounds a change still being committed while we read: its ``updated_at`` can be a
little older than the rows we see. OVERLAP covers writes that commit within that long; a change
older than the mark is never asked for again.

**Deleted tasks** leave nothing to list by date. After the changes are applied, Label Studio's
counts (project ``task_number`` and ``total_annotations_number + skipped_annotations_number``,
one request) are compared with ours (`db.repository.live_counts`). Only when they differ are
all task ids listed, cheaply (``fields=task_only``, by id, no annotations), with each task's
``total_annotations + cancelled_annotations``: our live tasks missing there are marked deleted
(with their annotations), tasks we lack and tasks whose annotation count differs from ours are
fetched with their annotations and compared as above. That also catches an annotation deleted by
a path that does not touch its task.

**Limit.** Counts are compared after the changes are applied, so a delete balanced by a create
does not hide it: the created task or annotation moves ``updated_at``, is fetched, and our count
then exceeds Label Studio's. Missed only: a task or annotation deleted without its webhook
while another appears in Label Studio *without* moving any ``updated_at`` past the mark (e.g.
rows written straight into Label Studio's database), which leaves every count equal; webhooks
record such deletions normally, and ``labeler sync --full`` finds them.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

from db import repository
from db.timestamps import parse_ls_time
from explain.labelstudio.configs import task_image_uri
from labeler.workspace import Workspace

#: How long a Label Studio write may take to commit after taking its ``updated_at``.
OVERLAP = timedelta(seconds=60)
PAGE_SIZE = 100  # changed tasks per request (they come with annotations and predictions)
ID_PAGE_SIZE = 1000  # tasks per request when listing ids only
_DM_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # the Data Manager's Datetime filter format (UTC)

#: progress(done, total): tasks applied so far of ``total`` (None while unknown).
Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class SyncReport:
    """What one sync did. ``full``: the whole project was exported (first sync or ``--full``);
    ``tasks`` / ``annotations``: tasks read with their annotations (the changed ones unless
    full) and how many annotations they had; ``added``: new revisions; ``listed``: task ids
    listed because Label Studio's counts differed from ours (0 when they agreed)."""

    full: bool
    tasks: int
    annotations: int
    added: int
    deleted_annotations: int
    deleted_tasks: int
    listed: int = 0


@dataclass(frozen=True)
class _Task:
    """A task as read from Label Studio: ``annotations`` as Label Studio's JSON objects."""

    id: int
    data: dict
    annotations: list[dict]
    updated_at: datetime | None


@dataclass
class _Tally:
    tasks: int = 0
    annotations: int = 0
    added: int = 0
    deleted_annotations: int = 0
    deleted_tasks: int = 0


def export_tasks(ws: Workspace, project_id: int) -> list[dict]:
    """All tasks of the project with their annotations (Label Studio's JSON export)."""
    chunks = ws.client.projects.exports.download_sync(id=project_id, export_type="JSON", download_all_tasks=True)
    return json.loads(b"".join(chunks))


def sync_project(ws: Workspace, full: bool = False, progress: Progress | None = None, overlap: timedelta = OVERLAP) -> SyncReport:
    """Bring our database level with the project in Label Studio (see the module's docstring);
    ``full`` exports everything even when the project has a mark."""
    project_id = ws.require_project()
    answer = ws.client.projects.with_raw_response.get(id=project_id)
    details, began = answer.data, _server_time(answer.headers)
    with ws.sessions.begin() as session:
        project = repository.upsert_project(
            session, project_id, title=details.title, label_config=details.label_config, label_studio=ws.label_studio
        )
        mark = None if full else repository.sync_mark(session, project)
    tally, listed = _Tally(), 0
    report = progress or (lambda done, total: None)
    if mark is None:
        tasks = [_from_export(t) for t in export_tasks(ws, project_id)]
        newest = _apply(ws, details.label_config, tasks, tally, lambda done: report(done, len(tasks)))
        exported = {t.id for t in tasks}
        with ws.sessions.begin() as session:
            project = repository.get_project(session, project_id, ws.label_studio)
            stale = repository.live_task_ids(session, project) - exported
            _drop_tasks(session, project, stale, tally)
    else:
        pages = _ChangedTasks(ws, project_id, mark)
        newest = _apply(ws, details.label_config, pages, tally, lambda done: report(done, pages.total))
        listed = _reconcile(ws, project_id, details.label_config, tally)
    newest = max((t for t in (newest, mark) if t is not None), default=None)
    with ws.sessions.begin() as session:
        project = repository.get_project(session, project_id, ws.label_studio)
        repository.save_sync_mark(session, project, _new_mark(newest, began, overlap))
    return SyncReport(mark is None, tally.tasks, tally.annotations, tally.added, tally.deleted_annotations, tally.deleted_tasks, listed)


def _server_time(headers) -> datetime | None:
    """Label Studio's clock from an answer's ``Date`` header (to the second, rounded down)."""
    try:
        return parsedate_to_datetime(headers.get("date")).astimezone(timezone.utc)
    except (TypeError, ValueError):
        return None


def _new_mark(newest: datetime | None, began: datetime | None, overlap: timedelta) -> datetime:
    """Every task updated at or before this has been read (see the module's docstring)."""
    bound = None if began is None else began - overlap
    if newest is None:
        return bound if bound is not None else datetime(1970, 1, 1, tzinfo=timezone.utc)
    if bound is None:  # no server clock: step back from the newest row seen
        return newest - overlap
    return min(newest, bound)


def _from_export(task: dict) -> _Task:
    return _Task(task["id"], task.get("data") or {}, task.get("annotations") or [], parse_ls_time(task.get("updated_at")))


def _from_sdk(task) -> _Task:
    updated = task.updated_at
    return _Task(task.id, task.data or {}, task.annotations or [], None if updated is None else parse_ls_time(updated))


class _ChangedTasks:
    """The tasks updated after ``since`` with their annotations, oldest change first, read by
    keyset on ``updated_at`` (pages by number would skip a task when one before it is deleted
    meanwhile). ``total`` is Label Studio's count of them once the first page is in."""

    def __init__(self, ws: Workspace, project_id: int, since: datetime):
        self.ws, self.project_id, self.since = ws, project_id, since
        self.total: int | None = None

    def __iter__(self) -> Iterator[_Task]:
        cursor, operator, size, seen = self.since, "greater", PAGE_SIZE, set()
        while True:
            page = self.ws.client.tasks.list(
                project=self.project_id, fields="all", page=1, page_size=size, query=_updated_query(operator, cursor)
            )
            if self.total is None:
                self.total = page.response.total
            tasks = [_from_sdk(t) for t in page.items or []]
            fresh = [t for t in tasks if (t.id, t.updated_at) not in seen]
            yield from fresh
            seen.update((t.id, t.updated_at) for t in fresh)
            if len(tasks) < size:
                return
            newest = max(t.updated_at for t in tasks)
            if newest == cursor and operator == "greater_or_equal":
                size *= 2  # more tasks share this updated_at than a page holds (a bulk action)
            # ">=" keeps the tasks that share the page's last updated_at; `seen` drops repeats
            cursor, operator = newest, "greater_or_equal"


def _updated_query(operator: str, since: datetime) -> str:
    value = since.astimezone(timezone.utc).strftime(_DM_TIME)
    item = {"filter": "filter:tasks:updated_at", "operator": operator, "type": "Datetime", "value": value}
    return json.dumps({"filters": {"conjunction": "and", "items": [item]}, "ordering": ["tasks:updated_at"]})


def _apply(ws: Workspace, label_config: str, tasks: Iterable[_Task], tally: _Tally, done: Callable[[int], None]) -> datetime | None:
    """Store what these tasks hold (one transaction per page of tasks); the newest ``updated_at``."""
    newest, batch = None, []
    for task in tasks:
        batch.append(task)
        if task.updated_at is not None and (newest is None or task.updated_at > newest):
            newest = task.updated_at
        if len(batch) == PAGE_SIZE:
            _apply_batch(ws, label_config, batch, tally)
            batch = []
            done(tally.tasks)
    _apply_batch(ws, label_config, batch, tally)
    done(tally.tasks)
    return newest


def _apply_batch(ws: Workspace, label_config: str, tasks: list[_Task], tally: _Tally) -> None:
    if not tasks:
        return
    with ws.sessions.begin() as session:
        project = repository.get_project(session, ws.project_id, ws.label_studio)
        for task in tasks:
            _apply_task(session, project, label_config, task, tally)


def _apply_task(session, project, label_config: str, task: _Task, tally: _Tally) -> None:
    """One task's annotations: new states stored, ours missing from ``task`` recorded deleted."""
    live = repository.live_task(
        session, project, task.id, task_image_uri(task.data, label_config), **repository.task_origin(task.data)
    )
    ours = repository.current_annotation_ids(session, live)
    for annotation in task.annotations:
        last = repository.last_revision(session, project, annotation["id"])
        if last is not None and last.action != "deleted" and _same_state(last, annotation):
            continue
        action = "created" if last is None else "updated"
        tally.added += repository.add_ls_annotation(session, live, annotation, action) is not None
    gone = ours - {a["id"] for a in task.annotations}
    tally.deleted_annotations += sum(repository.record_deletion(session, project, i) is not None for i in sorted(gone))
    tally.tasks += 1
    tally.annotations += len(task.annotations)


def _drop_tasks(session, project, ls_task_ids: Iterable[int], tally: _Tally) -> None:
    """Tasks gone from Label Studio: their current annotations recorded deleted, then the tasks."""
    ids = sorted(ls_task_ids)
    for ls_task_id in ids:
        live = repository.get_live_task(session, project, ls_task_id)
        gone = repository.current_annotation_ids(session, live) if live is not None else set()
        tally.deleted_annotations += sum(repository.record_deletion(session, project, i) is not None for i in sorted(gone))
    tally.deleted_tasks += repository.delete_tasks(session, project, ids)


def _reconcile(ws: Workspace, project_id: int, label_config: str, tally: _Tally) -> int:
    """Compare Label Studio's counts with ours; when they differ, list task ids with their
    annotation counts and repair what differs. Returns how many tasks were listed (0: equal)."""
    details = ws.client.projects.get(id=project_id)
    theirs_tasks = details.task_number or 0
    theirs_annotations = (details.total_annotations_number or 0) + (details.skipped_annotations_number or 0)
    with ws.sessions.begin() as session:
        project = repository.get_project(session, project_id, ws.label_studio)
        ours_tasks, ours_counts = repository.live_counts(session, project)
    if (ours_tasks, sum(ours_counts.values())) == (theirs_tasks, theirs_annotations):
        return 0
    listed = _task_counts(ws, project_id)
    with ws.sessions.begin() as session:
        project = repository.get_project(session, project_id, ws.label_studio)
        ours_tasks, ours_counts = repository.live_counts(session, project)
        _drop_tasks(session, project, repository.live_task_ids(session, project) - listed.keys(), tally)
        live = repository.live_task_ids(session, project)
    differing = sorted(i for i, n in listed.items() if i not in live or ours_counts.get(i, 0) != n)
    for start in range(0, len(differing), PAGE_SIZE):
        ids = differing[start : start + PAGE_SIZE]
        query = json.dumps({"selectedItems": {"all": False, "included": ids}})
        page = ws.client.tasks.list(project=project_id, fields="all", page=1, page_size=len(ids), query=query)
        _apply_batch(ws, label_config, [_from_sdk(t) for t in page.items or []], tally)
    return len(listed)


def _task_counts(ws: Workspace, project_id: int) -> dict[int, int]:
    """Every task id of the project -> its ``total_annotations + cancelled_annotations``, read
    by keyset on id with ``fields=task_only`` (no annotations or predictions)."""
    counts: dict[int, int] = {}
    after = -1
    while True:
        item = {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": after}
        query = json.dumps({"filters": {"conjunction": "and", "items": [item]}, "ordering": ["tasks:id"]})
        page = ws.client.tasks.list(project=project_id, fields="task_only", page=1, page_size=ID_PAGE_SIZE, query=query)
        tasks = page.items or []
        for t in tasks:
            counts[t.id] = (t.total_annotations or 0) + (t.cancelled_annotations or 0)
        if len(tasks) < ID_PAGE_SIZE:
            return counts
        after = max(t.id for t in tasks)


def _same_state(revision, annotation: dict) -> bool:
    return revision.result == annotation.get("result") and revision.ls_updated_at == parse_ls_time(annotation.get("updated_at"))
