"""``labeler init`` and ``labeler import``: a Label Studio project set up for pre-labelling."""
from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import cv2
import requests
from rich.progress import Progress

from explain.images import ImageError, load_image, to_uint8
from explain.labelstudio.configs import labeling_config
from labeler.class_folders import IMAGE_SUFFIXES
from labeler.patients import is_unkeyed, patient_key, patient_secret
from labeler.workspace import Workspace
from models.spec import load_spec


def init_project(
    ws: Workspace, model_path: Path, title: str, backend_url: str | None, region_labels=None, region_kinds=None
) -> int:
    """Create (or, with ``ws.project_id``, update) the project whose config comes from the model
    spec (``labeling_config``'s defaults where ``region_labels`` / ``region_kinds`` are None);
    connect the backend and check that its webhook is registered. Returns the project id."""
    options = {"region_labels": region_labels, "region_kinds": region_kinds}
    config = labeling_config(load_spec(model_path).class_names, **{k: v for k, v in options.items() if v})
    if ws.project_id is None:
        project_id = ws.client.projects.create(title=title, label_config=config).id
    else:
        project_id = ws.project_id
        ws.client.projects.update(id=project_id, title=title, label_config=config)
    if backend_url:
        connect_backend(ws, project_id, backend_url.rstrip("/"))
    return project_id


def connect_backend(ws: Workspace, project_id: int, backend_url: str):
    """The backend as the project's ML backend, and exactly one webhook to its /webhook."""
    try:
        health = requests.get(f"{backend_url}/health", timeout=5).json()
    except (requests.RequestException, ValueError):
        raise ValueError(f"the backend at {backend_url} does not answer /health") from None
    if health.get("status") != "UP":
        raise ValueError(f"the backend at {backend_url} is not up: {health}")
    if not any(m.url.rstrip("/") == backend_url for m in ws.client.ml.list(project=project_id)):
        ws.client.ml.create(project=project_id, url=backend_url, title="Grad-CAM pre-labels")
    hooks = [h for h in ws.client.webhooks.list(project=project_id) if h.url.rstrip("/") == f"{backend_url}/webhook"]
    if not hooks:  # Label Studio registers it when it connects the backend; older servers do not
        ws.client.webhooks.create(project=project_id, url=f"{backend_url}/webhook", send_payload=True, send_for_all_actions=True)


def set_active_model_version(ws: Workspace, project_id: int, version: str):
    """Make ``version`` the project's active model version. Label Studio's Data Manager shows (and
    sorts by) the prediction score of the active version's predictions only; a project whose
    active version is anything else, the ML backend's title say, shows no score at all. Label
    Studio accepts only a version that some prediction of the project (or a backend title) has."""
    ws.client.projects.update(id=project_id, model_version=version)


@dataclass(frozen=True)
class Imported:
    added: int
    skipped: int
    errors: list[str]


def image_files(paths: list[Path]) -> list[Path]:
    """Image files among ``paths``, folders searched recursively, in a stable order."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def import_images(ws: Workspace, paths: list[Path], document_root: Path, batch: int = 100) -> Imported:
    """Copy images into ``document_root/labeler-<project>/`` as PNG named by content hash and add
    one task each (local-files URL, ``content_hash``, ``patient`` key); images already in the
    project (same hash) are skipped. DICOM keeps no patient data: only a keyed hash of PatientID
    (`labeler.patients`; the secret is read from the database on the first DICOM that has one).
    A project still holding old unkeyed ``patient`` values is refused before anything is copied:
    keys of two kinds would split one patient in two (``labeler rekey-patients`` converts them)."""
    project_id = ws.require_project()
    existing = [t.data for t in ws.client.tasks.list(project=project_id, fields="task_only", resolve_uri=False)]
    unkeyed = sum(1 for data in existing if is_unkeyed((data or {}).get("patient")))
    if unkeyed:
        raise ValueError(
            f"project {project_id} has {unkeyed} task(s) with an old, unkeyed patient value; "
            "run `labeler rekey-patients` first (same --database-url), then import again"
        )
    folder = (document_root / f"labeler-{project_id}").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    _ensure_storage(ws, project_id, folder)
    known = {(data or {}).get("content_hash") for data in existing}
    secret = functools.cache(lambda: patient_secret(ws))
    files = image_files(paths)
    pending, errors, skipped, added = [], [], 0, 0
    with Progress(transient=True) as progress:
        bar = progress.add_task("importing", total=len(files))
        for path in files:
            try:
                png, patient = _as_png(path, lambda patient_id: patient_key(patient_id, secret()))
            except ImageError as exc:
                errors.append(str(exc))
                progress.advance(bar)
                continue
            digest = hashlib.sha256(png).hexdigest()
            if digest in known:
                skipped += 1
            else:
                known.add(digest)
                (folder / f"{digest[:16]}.png").write_bytes(png)
                relative = folder.relative_to(document_root.resolve()) / f"{digest[:16]}.png"
                pending.append({"image": f"/data/local-files/?d={relative.as_posix()}", "content_hash": digest, "patient": patient})
            if len(pending) >= batch:
                added += _import(ws, project_id, pending)
            progress.advance(bar)
    added += _import(ws, project_id, pending)
    return Imported(added, skipped, errors)


def _import(ws, project_id, tasks) -> int:
    if tasks:
        ws.client.projects.import_tasks(id=project_id, request=[{"data": t} for t in tasks])
    count = len(tasks)
    tasks.clear()
    return count


def _ensure_storage(ws, project_id, folder: Path):
    """Label Studio serves local files only from a project's local-files storage path."""
    for storage in ws.client.import_storage.local.list(project=project_id):
        if Path(storage.path).resolve() == folder:
            return
    ws.client.import_storage.local.create(project=project_id, path=str(folder), use_blob_urls=True, title="labeler import")


def _as_png(path: Path, key: Callable[[str], str]) -> tuple[bytes, str | None]:
    """PNG bytes of an image (8-bit; DICOM windowed and inverted as needed) and its patient key:
    ``key(PatientID)`` for a DICOM with a PatientID, else None."""
    data = path.read_bytes()
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
