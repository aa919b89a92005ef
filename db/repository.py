"""Reading and appending rows. Every function takes a Session and flushes; the caller commits.

Nothing here deletes a row: tasks are soft-deleted, predictions and annotation revisions are
only ever added. Functions that insert under a unique key survive a concurrent writer that
inserted the same key first (the insert runs in a SAVEPOINT and the winner's row is returned).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .fingerprints import revision_fingerprint
from .heatmaps import decode_heatmap, encode_heatmap
from .jsoncodec import canonical
from .schema import (
    REVISION_ACTIONS,
    AnnotationRevision,
    Failure,
    LabelStudioLink,
    ModelVersion,
    Prediction,
    Project,
    SyncMark,
    Task,
)
from .timestamps import parse_ls_time, utcnow

_Row = TypeVar("_Row")
_KIND_MAX = 32
_MESSAGE_MAX = 500
_ID_MAX = 2**63 - 1  # Label Studio ids are 64-bit; larger ones cannot be stored


def _add_unique(session: Session, row: _Row, find: Callable[[], _Row | None]) -> _Row:
    """Insert `row` in a SAVEPOINT; on a unique-key conflict return the existing row."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        existing = find()
        if existing is None:
            raise
        return existing
    return row


def get_project(session: Session, ls_project_id: int, label_studio: str | None = None) -> Project | None:
    """The project with this Label Studio id in the Label Studio ``label_studio`` (a
    `db.identity.label_studio_identity`), or None.

    A known identity also finds a row recorded before its Label Studio was known (identity "");
    ``None`` or "" finds the one project with this id whatever its Label Studio, and raises
    ValueError when several Label Studios have one.
    """
    rows = list(session.scalars(select(Project).where(Project.ls_project_id == ls_project_id).order_by(Project.id)))
    if label_studio:
        return next((p for p in rows if p.label_studio == label_studio), None) or next(
            (p for p in rows if p.label_studio == ""), None
        )
    if len(rows) > 1:
        names = ", ".join(p.label_studio or "(unknown)" for p in rows)
        raise ValueError(f"project {ls_project_id} exists in several Label Studios ({names}): name one (LABEL_STUDIO_URL)")
    return rows[0] if rows else None


def upsert_project(
    session: Session,
    ls_project_id: int,
    title: str | None = None,
    label_config: str | None = None,
    label_studio: str = "",
) -> Project:
    """The project with this Label Studio id (see `get_project`), created when new; a given title
    or labelling config replaces the stored one and moves ``updated_at``. A row recorded before
    its Label Studio was known takes on a known ``label_studio``."""
    project = get_project(session, ls_project_id, label_studio)
    if project is None:
        new = Project(label_studio=label_studio, ls_project_id=ls_project_id, title=title, label_config=label_config)
        project = _add_unique(session, new, lambda: get_project(session, ls_project_id, label_studio))
    changes = {
        name: value
        for name, value in (("title", title), ("label_config", label_config), ("label_studio", label_studio or None))
        if value is not None and getattr(project, name) != value
    }
    if changes:
        for name, value in changes.items():
            setattr(project, name, value)
        project.updated_at = utcnow()
        session.flush()
    return project


def get_live_task(session: Session, project: Project, ls_task_id: int) -> Task | None:
    """The task with this Label Studio id that has not been deleted, or None."""
    return session.scalars(
        select(Task).where(
            Task.project_id == project.id,
            Task.ls_task_id == ls_task_id,
            Task.deleted_at.is_(None),
        )
    ).first()


def live_task(
    session: Session,
    project: Project,
    ls_task_id: int,
    image_uri: str,
    content_hash: str | None = None,
    width: int | None = None,
    height: int | None = None,
    patient_key: str | None = None,
    source_name: str | None = None,
) -> Task:
    """The live task for `ls_task_id`, created when there is none.

    Label Studio reuses task ids after deletes: when the live row shows another image (another
    ``image_uri`` in `normal_image_uri` form, or another known ``content_hash``), it is marked
    deleted and a new row created. An empty ``image_uri`` means "not known" and matches any
    row. A missing image URI, hash and size (pixels) on a matching row are filled in; a given
    ``patient_key`` / ``source_name`` (see `task_origin`) replaces the stored one, since the
    task data may change in Label Studio (e.g. ``labeler rekey-patients``).
    """
    found = get_live_task(session, project, _checked_task_id(ls_task_id, image_uri))
    task = _kept_or_new(project, found, ls_task_id, image_uri, content_hash, width, height, patient_key, source_name)
    session.flush()
    if task is found:
        return task
    return _add_unique(session, task, lambda: get_live_task(session, project, ls_task_id))


def live_tasks(session: Session, project: Project, records: Sequence["PredictionRecord"]) -> list[Task]:
    """`live_task` for each record (its task id, image, size and origin), in order, with one
    query and one flush for them all; one at a time when another writer added one meanwhile."""
    ids = sorted({_checked_task_id(r.ls_task_id, r.image_uri) for r in records})
    found: dict[int, Task] = {}
    for start in range(0, len(ids), 500):  # bounded IN lists
        query = select(Task).where(
            Task.project_id == project.id, Task.deleted_at.is_(None), Task.ls_task_id.in_(ids[start : start + 500])
        )
        found.update((task.ls_task_id, task) for task in session.scalars(query))
    try:
        with session.begin_nested():
            tasks = []
            for r in records:
                task = _kept_or_new(
                    project, found.get(r.ls_task_id), r.ls_task_id, r.image_uri, r.content_hash, r.width, r.height,
                    r.patient_key, r.source_name,
                )
                session.add(task)
                found[r.ls_task_id] = task
                tasks.append(task)
            session.flush()  # updates (a replaced row marked deleted) go before inserts
        return tasks
    except IntegrityError:
        return [
            live_task(session, project, r.ls_task_id, r.image_uri, r.content_hash, r.width, r.height, r.patient_key, r.source_name)
            for r in records
        ]


def _checked_task_id(ls_task_id: int, image_uri: str) -> int:
    check_id(ls_task_id, "ls_task_id")
    if not isinstance(image_uri, str):
        raise ValueError(f"image_uri must be a string, got {type(image_uri).__name__}")
    return ls_task_id


def _kept_or_new(
    project: Project, task: Task | None, ls_task_id: int, image_uri: str, content_hash, width, height, patient_key, source_name,
) -> Task:
    """``task`` (the live row, or None) brought up to date when it shows the same image; else a new
    (unsaved) row, ``task`` marked deleted (see `live_task`)."""
    if task is not None and _same_image(task, image_uri, content_hash):
        fill = (("image_uri", image_uri or None), ("content_hash", content_hash), ("width", width), ("height", height))
        for name, value in fill:
            if value is not None and not getattr(task, name):
                setattr(task, name, value)
        for name, value in (("patient_key", patient_key), ("source_name", source_name)):
            if value is not None and getattr(task, name) != value:
                setattr(task, name, value)
        return task
    if task is not None:
        task.deleted_at = utcnow()
    return Task(
        project_id=project.id,
        ls_task_id=ls_task_id,
        image_uri=image_uri,
        content_hash=content_hash,
        width=width,
        height=height,
        patient_key=patient_key,
        source_name=source_name,
    )


PATIENT_DATA_KEY = "patient"  # task data key of the keyed patient value (labeler.patients)
# The data keys a patient key is taken from, first found (the export has always read
# ``patient_id`` too), so that stored keys split exactly as the export's earlier keys did.
PATIENT_DATA_KEYS = ("patient_id", PATIENT_DATA_KEY)
SOURCE_DATA_KEY = "source"  # task data key of the original file's path, as imported
_PATIENT_MAX = 64
_SOURCE_MAX = 1024


def task_origin(data: Mapping[str, Any] | None) -> dict[str, str | None]:
    """``{"patient_key": ..., "source_name": ...}`` from a task's data (its ``patient_id`` or
    ``patient`` value, and its ``source`` value), for `live_task`; a missing, non-string, empty
    or too long value is None."""
    data = data if isinstance(data, Mapping) else {}

    def text(key: str, limit: int) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) and 0 < len(value) <= limit else None

    patient = next((v for v in (text(k, _PATIENT_MAX) for k in PATIENT_DATA_KEYS) if v is not None), None)
    return {"patient_key": patient, "source_name": text(SOURCE_DATA_KEY, _SOURCE_MAX)}


def fill_patient_keys(session: Session, project: Project, keys: Mapping[int, str]) -> int:
    """Store ``keys`` (Label Studio task id -> patient key, from `task_origin`) on the project's
    live tasks that have none yet (one batched UPDATE); returns how many rows were given one."""
    if not keys:
        return 0
    table = Task.__table__
    statement = (
        update(table)
        .where(table.c.project_id == project.id, table.c.ls_task_id == bindparam("task"),
               table.c.deleted_at.is_(None), table.c.patient_key.is_(None))
        .values(patient_key=bindparam("key"))
    )
    result = session.connection().execute(statement, [{"task": t, "key": k} for t, k in keys.items()])
    return result.rowcount


def _same_image(task: Task, image_uri: str, content_hash: str | None) -> bool:
    if image_uri and task.image_uri and normal_image_uri(task.image_uri) != normal_image_uri(image_uri):
        return False
    return content_hash is None or task.content_hash is None or task.content_hash == content_hash


def normal_image_uri(uri: str) -> str:
    """The form in which image URIs are compared: Label Studio serves its files under ``/data/``
    and ``/storage-data/``, and names them by a relative path or by an absolute URL on its own
    host, so ``http://ls-host:8080/data/upload/1/x.png`` becomes ``/data/upload/1/x.png``
    (path and query). Any other URI is returned as it is."""
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return uri
    if parts.scheme in ("http", "https") and parts.path.startswith(("/data/", "/storage-data/")):
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return uri


def _finite_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond float's range
        return False


def check_id(value, name: str, optional: bool = False) -> None:
    """ValueError naming ``name`` unless ``value`` is a Label Studio id: an integer (not a bool)
    in 0..2**63-1 (or None when optional)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "null" if value is None else type(value).__name__
        raise ValueError(f"{name} must be an integer id, got {kind}")
    if not 0 <= value <= _ID_MAX:
        raise ValueError(f"{name} must be an integer id in 0..2**63-1, got {value}")


def delete_tasks(session: Session, project: Project, ls_task_ids: Iterable[int]) -> int:
    """Mark the live tasks with these Label Studio ids deleted; returns how many were live."""
    ids = {int(i) for i in ls_task_ids}
    if not ids:
        return 0
    tasks = session.scalars(
        select(Task).where(
            Task.project_id == project.id,
            Task.ls_task_id.in_(ids),
            Task.deleted_at.is_(None),
        )
    ).all()
    now = utcnow()
    for task in tasks:
        task.deleted_at = now
    session.flush()
    return len(tasks)


def get_model_version(session: Session, name: str) -> ModelVersion | None:
    """The model version with this name, or None."""
    return session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()


def model_version(
    session: Session, name: str, weights_id: str, settings: Mapping[str, Any]
) -> ModelVersion:
    """The model version called `name`, created when new.

    Raises ValueError when the name already stands for other weights or settings: Label Studio
    skips tasks that have a prediction of the current version, so any change needs a new name.
    """
    if not name:
        raise ValueError("name must be a non-empty model_version string")
    settings = dict(settings)
    version = get_model_version(session, name)
    if version is None:
        new = ModelVersion(name=name, weights_id=weights_id, settings=settings)
        version = _add_unique(session, new, lambda: get_model_version(session, name))
    if version.weights_id != weights_id or canonical(version.settings) != canonical(settings):
        raise ValueError(
            f"model version {name!r} already stands for weights {version.weights_id!r} and "
            f"settings {version.settings!r}; use a new name for weights {weights_id!r}, "
            f"settings {settings!r}"
        )
    return version


def add_prediction(
    session: Session,
    task: Task,
    version: ModelVersion,
    probabilities: Mapping[str, float],
    predicted_class: str,
    score: float,
    class_name: str,
    heatmap: np.ndarray | bytes | None,
    results: Sequence[Mapping[str, Any]],
    flush: bool = True,
) -> Prediction:
    """Append one prediction (written at once, unless ``flush`` is False: then with the session's next flush).

    Parameters
    ----------
    probabilities : Mapping[str, float]
        Class name -> probability in [0, 1].
    predicted_class, score : str, float
        The top class and the score sent to Label Studio.
    class_name : str
        The class whose heatmap this is.
    heatmap : np.ndarray or bytes or None
        (H, W) values in [0, 1] at the CAM layer's resolution (stored with `encode_heatmap`,
        within 0.5/255), bytes already in that encoding, or None.
    results : Sequence[Mapping]
        The Label Studio regions sent for the task.
    """
    probs = {str(k): float(v) for k, v in probabilities.items()}
    if not all(math.isfinite(p) for p in probs.values()):
        raise ValueError(f"probabilities must be finite, got {probs}")
    score = float(score)
    if not math.isfinite(score):
        raise ValueError(f"score must be finite, got {score}")
    if isinstance(heatmap, (bytes, bytearray, memoryview)):
        heatmap = bytes(heatmap)
        decode_heatmap(heatmap)
    elif heatmap is not None:
        heatmap = encode_heatmap(heatmap)
    prediction = Prediction(
        task_id=task.id,
        model_version_id=version.id,
        probabilities=probs,
        predicted_class=str(predicted_class),
        score=score,
        class_name=str(class_name),
        heatmap=heatmap,
        results=[dict(r) for r in results],
    )
    session.add(prediction)
    if flush:
        session.flush()
    return prediction


def _fingerprint_exists(session: Session, fingerprint: str) -> bool:
    found = session.scalar(
        select(AnnotationRevision.id).where(AnnotationRevision.fingerprint == fingerprint)
    )
    return found is not None


def add_annotation_revision(
    session: Session,
    task: Task,
    ls_annotation_id: int,
    action: str,
    result: Sequence[Mapping[str, Any]] | None,
    *,
    completed_by: int | None = None,
    updated_by: int | None = None,
    lead_time: float | None = None,
    was_cancelled: bool = False,
    ground_truth: bool = False,
    ls_created_at: str | datetime | None = None,
    ls_updated_at: str | datetime | None = None,
    parent_prediction: int | None = None,
    fingerprint: str | None = None,
) -> AnnotationRevision | None:
    """Append one received state of an annotation; None (nothing added) for a repeated delivery.

    ``action`` is "created", "updated" or "deleted" (whose ``result`` must be None);
    ``lead_time`` is in seconds; ``ls_*_at`` are Label Studio ISO strings or aware datetimes.
    ``fingerprint`` defaults to `revision_fingerprint` of the Label Studio ids, action,
    ``ls_updated_at`` and result.
    """
    if action not in REVISION_ACTIONS:
        raise ValueError(f"action must be one of {REVISION_ACTIONS}, got {action!r}")
    if action == "deleted" and result is not None:
        raise ValueError("result must be None for a deleted revision")
    if result is not None and not isinstance(result, (list, tuple)):
        raise ValueError(f"result must be a list of region objects, got {type(result).__name__}")
    if result is not None and not all(isinstance(r, Mapping) for r in result):
        raise ValueError("result must be a list of region objects; an entry is not an object")
    for name, value in (("ls_annotation_id", ls_annotation_id), ("completed_by", completed_by),
                        ("updated_by", updated_by), ("parent_prediction", parent_prediction)):
        check_id(value, name, optional=name != "ls_annotation_id")
    if lead_time is not None and not _finite_number(lead_time):
        raise ValueError(f"lead_time must be a finite number of seconds, got {str(lead_time)[:40]}")
    result_json = None if result is None else [dict(r) for r in result]
    updated_at = parse_ls_time(ls_updated_at)
    if fingerprint is None:
        fingerprint = revision_fingerprint(
            task.project.ls_project_id, task.ls_task_id, ls_annotation_id, action, updated_at,
            result_json, task.project.label_studio,
        )
    if _fingerprint_exists(session, fingerprint):
        return None
    revision = AnnotationRevision(
        task_id=task.id,
        ls_annotation_id=ls_annotation_id,
        action=action,
        result=result_json,
        completed_by=completed_by,
        updated_by=updated_by,
        lead_time=None if lead_time is None else float(lead_time),
        was_cancelled=bool(was_cancelled),
        ground_truth=bool(ground_truth),
        ls_created_at=parse_ls_time(ls_created_at),
        ls_updated_at=updated_at,
        parent_prediction=parent_prediction,
        fingerprint=fingerprint,
    )
    try:
        with session.begin_nested():
            session.add(revision)
            session.flush()
    except IntegrityError:
        if _fingerprint_exists(session, fingerprint):
            return None
        raise
    return revision


def last_revision(session: Session, project: Project, ls_annotation_id: int) -> AnnotationRevision | None:
    """The newest stored revision of a Label Studio annotation in this project."""
    return session.scalars(
        select(AnnotationRevision)
        .join(Task)
        .where(Task.project_id == project.id, AnnotationRevision.ls_annotation_id == ls_annotation_id)
        .order_by(AnnotationRevision.id.desc())
        .limit(1)
    ).first()


def add_ls_annotation(session: Session, task: Task, annotation: Mapping[str, Any], action: str) -> AnnotationRevision | None:
    """A revision from a Label Studio annotation object, as webhooks and exports carry it
    (``id``, ``result``, ``completed_by`` as an id or a user object, ``lead_time``, ...).
    None when this very state is already stored."""

    def user(value):
        value = value.get("id") if isinstance(value, Mapping) else value
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return add_annotation_revision(
        session,
        task,
        annotation["id"],
        action,
        annotation.get("result"),
        completed_by=user(annotation.get("completed_by")),
        updated_by=user(annotation.get("updated_by")),
        lead_time=annotation.get("lead_time"),
        was_cancelled=bool(annotation.get("was_cancelled")),
        ground_truth=bool(annotation.get("ground_truth")),
        ls_created_at=annotation.get("created_at"),
        ls_updated_at=annotation.get("updated_at"),
        parent_prediction=annotation.get("parent_prediction"),
    )


def record_deletion(
    session: Session, project: Project, ls_annotation_id: int
) -> AnnotationRevision | None:
    """Append a "deleted" revision on the task of the annotation's last revision.

    None when the annotation is unknown in this project or already deleted.
    """
    last = last_revision(session, project, ls_annotation_id)
    if last is None or last.action == "deleted":
        return None
    return add_annotation_revision(session, last.task, ls_annotation_id, "deleted", None)


def add_failure(
    session: Session,
    kind: str,
    message: str,
    project: Project | None = None,
    ls_task_id: int | None = None,
) -> Failure:
    """Record a failure. ``kind`` is a short code ("image_fetch", "image_decode", "model",
    "bad_request", ...); ``message`` is squeezed to one line of at most 500 characters and must
    carry no patient data."""
    if not kind or len(kind) > _KIND_MAX:
        raise ValueError(f"kind must be 1..{_KIND_MAX} characters, got {kind!r}")
    line = " ".join(str(message).split())
    if len(line) > _MESSAGE_MAX:
        line = line[: _MESSAGE_MAX - 3] + "..."
    failure = Failure(
        project_id=None if project is None else project.id,
        ls_task_id=ls_task_id,
        kind=kind,
        message=line,
    )
    session.add(failure)
    session.flush()
    return failure


def revisions(
    session: Session,
    project: Project,
    ls_task_id: int | None = None,
    *,
    include_deleted_tasks: bool = False,
) -> list[AnnotationRevision]:
    """Annotation revisions of the project (or one task), oldest first; only live tasks'
    unless `include_deleted_tasks`."""
    query = select(AnnotationRevision).join(Task).where(Task.project_id == project.id)
    if ls_task_id is not None:
        query = query.where(Task.ls_task_id == ls_task_id)
    if not include_deleted_tasks:
        query = query.where(Task.deleted_at.is_(None))
    return list(session.scalars(query.order_by(AnnotationRevision.id)))


def known_sources(session: Session, project: Project, source_names: Iterable[str]) -> set[str]:
    """Those of ``source_names`` that a live task of the project has (one indexed query)."""
    return _known(session, project, Task.source_name, source_names)


def known_content(session: Session, project: Project, content_hashes: Iterable[str]) -> set[str]:
    """Those of ``content_hashes`` that a live task of the project shows (one indexed query)."""
    return _known(session, project, Task.content_hash, content_hashes)


def known_task_ids(session: Session, project: Project, ls_task_ids: Iterable[int]) -> set[int]:
    """Those of ``ls_task_ids`` that are live tasks of the project (one indexed query)."""
    return _known(session, project, Task.ls_task_id, ls_task_ids)


def live_task_count(session: Session, project: Project) -> int:
    """How many live tasks the project has."""
    return session.scalar(
        select(func.count()).select_from(Task).where(Task.project_id == project.id, Task.deleted_at.is_(None))
    )


def _known(session: Session, project: Project, column, values: Iterable) -> set:
    wanted = list(set(values))
    if not wanted:
        return set()
    query = select(column).where(Task.project_id == project.id, Task.deleted_at.is_(None), column.in_(wanted))
    return set(session.scalars(query))


def current_annotations(session: Session, project: Project) -> list[AnnotationRevision]:
    """The last revision of every annotation on the project's live tasks, deleted ones left out."""
    query = (
        select(AnnotationRevision)
        .where(AnnotationRevision.id.in_(last_revision_ids(project)), AnnotationRevision.action != "deleted")
        .order_by(AnnotationRevision.id)
    )
    return list(session.scalars(query))


def last_revision_ids(project: Project):
    """Subquery: the id of the newest revision of every annotation on the project's live tasks."""
    return (
        select(func.max(AnnotationRevision.id))
        .join(Task)
        .where(Task.project_id == project.id, Task.deleted_at.is_(None))
        .group_by(AnnotationRevision.ls_annotation_id)
    )


def live_counts(session: Session, project: Project) -> tuple[int, dict[int, int]]:
    """How many live tasks the project has, and Label Studio task id -> number of current (not
    deleted) annotations for the live tasks that have any: what Label Studio's own counts
    (``task_number``; per task ``total_annotations + cancelled_annotations``) should equal."""
    tasks = live_task_count(session, project)
    # an annotation belongs to one task: grouping by (task, annotation) reads the index
    # (task_id, ls_annotation_id) alone
    last = (
        select(func.max(AnnotationRevision.id))
        .join(Task)
        .where(Task.project_id == project.id, Task.deleted_at.is_(None))
        .group_by(AnnotationRevision.task_id, AnnotationRevision.ls_annotation_id)
    )
    rows = session.execute(
        select(Task.ls_task_id, func.count(AnnotationRevision.id))
        .join(Task, AnnotationRevision.task_id == Task.id)
        .where(AnnotationRevision.id.in_(last), AnnotationRevision.action != "deleted")
        .group_by(Task.ls_task_id)
    )
    return tasks, {int(task): int(n) for task, n in rows}


def live_task_ids(session: Session, project: Project) -> set[int]:
    """Label Studio ids of the project's live tasks."""
    return set(session.scalars(select(Task.ls_task_id).where(Task.project_id == project.id, Task.deleted_at.is_(None))))


def current_annotation_ids(session: Session, task: Task) -> set[int]:
    """Label Studio ids of the annotations of this task row whose newest revision is not "deleted"."""
    last = select(func.max(AnnotationRevision.id)).where(AnnotationRevision.task_id == task.id).group_by(
        AnnotationRevision.ls_annotation_id
    )
    return set(
        session.scalars(
            select(AnnotationRevision.ls_annotation_id).where(
                AnnotationRevision.id.in_(last), AnnotationRevision.action != "deleted"
            )
        )
    )


def sync_mark(session: Session, project: Project) -> datetime | None:
    """The Label Studio ``updated_at`` up to which ``labeler sync`` has read the project, or None
    (never synced)."""
    return session.scalar(select(SyncMark.mark).where(SyncMark.project_id == project.id))


def save_sync_mark(session: Session, project: Project, mark: datetime) -> SyncMark:
    """Record (or replace) the project's sync mark (an aware datetime) and when it was saved."""
    find = lambda: session.scalars(select(SyncMark).where(SyncMark.project_id == project.id)).first()  # noqa: E731
    row = find() or _add_unique(session, SyncMark(project_id=project.id, mark=mark), find)
    row.mark, row.synced_at = mark, utcnow()
    session.flush()
    return row


def predictions_for(
    session: Session, project: Project, ls_task_id: int, *, include_deleted_tasks: bool = False
) -> list[Prediction]:
    """Predictions for a task, oldest first; only the live task's unless `include_deleted_tasks`."""
    query = select(Prediction).join(Task).where(
        Task.project_id == project.id, Task.ls_task_id == ls_task_id
    )
    if not include_deleted_tasks:
        query = query.where(Task.deleted_at.is_(None))
    return list(session.scalars(query.order_by(Prediction.id)))


def latest_prediction(
    session: Session,
    project: Project,
    ls_task_id: int,
    *,
    model_version: str | None = None,
    class_name: str | None = None,
) -> Prediction | None:
    """The newest prediction for the live task, optionally of one model version name or one
    heatmap class; None when there is none."""
    query = select(Prediction).join(Task).where(
        Task.project_id == project.id, Task.ls_task_id == ls_task_id, Task.deleted_at.is_(None)
    )
    if model_version is not None:
        query = query.join(ModelVersion).where(ModelVersion.name == model_version)
    if class_name is not None:
        query = query.where(Prediction.class_name == class_name)
    return session.scalars(query.order_by(Prediction.id.desc()).limit(1)).first()


@dataclass(frozen=True)
class PredictionRecord:
    """One task's pre-label as sent to Label Studio, for `store_predictions`.

    heatmaps : (class name, (h, w) heatmap in [0, 1]) per explained class; may be empty.
    """

    ls_task_id: int
    image_uri: str
    content_hash: str | None
    width: int
    height: int
    probabilities: Mapping[str, float]
    predicted_class: str
    score: float
    heatmaps: Sequence[tuple[str, np.ndarray]]
    results: Sequence[Mapping[str, Any]]
    patient_key: str | None = None
    source_name: str | None = None

    @classmethod
    def of(cls, prelabel, ls_task_id: int, image_uri: str, content_hash: str | None, results, score: float, data=None):
        """From an ``explain.prelabel.Prelabel`` (read by attribute: width, height,
        probabilities, predicted, classes[].class_name / .heatmap) and the task's data."""
        return cls(
            **task_origin(data),
            ls_task_id=ls_task_id,
            image_uri=image_uri,
            content_hash=content_hash,
            width=prelabel.width,
            height=prelabel.height,
            probabilities=prelabel.probabilities,
            predicted_class=prelabel.predicted,
            score=score,
            heatmaps=[(c.class_name, c.heatmap) for c in prelabel.classes],
            results=results,
        )


def store_predictions(
    session: Session,
    ls_project_id: int,
    version_name: str,
    weights_id: str,
    settings: Mapping[str, Any],
    records: Sequence[PredictionRecord],
    failures: Sequence[tuple[int, str, str]] = (),
    label_studio: str = "",
) -> Project:
    """A batch of pre-labels (one prediction row per explained class, or one without a heatmap)
    and of failures ``(ls_task_id, kind, message)``, shared by the backend and ``labeler prelabel``."""
    project = upsert_project(session, ls_project_id, label_studio=label_studio)
    version = model_version(session, version_name, weights_id, settings)
    for record, task in zip(records, live_tasks(session, project, records)):
        for class_name, heatmap in record.heatmaps or [(record.predicted_class, None)]:
            add_prediction(
                session, task, version, record.probabilities, record.predicted_class, record.score,
                class_name, heatmap, record.results, flush=False,
            )
    session.flush()
    for ls_task_id, kind, message in failures:
        add_failure(session, kind, message, project=project, ls_task_id=ls_task_id)
    return project


@dataclass(frozen=True)
class StoredAnswer:
    """What was sent (or was about to be sent) to Label Studio for one task by one model version."""

    ls_task_id: int
    image_uri: str
    results: list[dict[str, Any]]
    score: float


def stored_answers(
    session: Session, project: Project, version_name: str, ls_task_ids: Iterable[int]
) -> dict[int, StoredAnswer]:
    """The newest stored answer of model version ``version_name`` for each of these live tasks
    that has one (by Label Studio task id); how ``labeler prelabel`` reposts, after a crash,
    predictions our database holds but Label Studio never received."""
    ids = sorted({int(i) for i in ls_task_ids})
    answers: dict[int, StoredAnswer] = {}
    for start in range(0, len(ids), 500):  # bounded IN lists
        rows = session.execute(
            select(Task.ls_task_id, Task.image_uri, Prediction.results, Prediction.score)
            .join(Prediction, Prediction.task_id == Task.id)
            .join(ModelVersion, Prediction.model_version_id == ModelVersion.id)
            .where(
                Task.project_id == project.id,
                Task.deleted_at.is_(None),
                Task.ls_task_id.in_(ids[start : start + 500]),
                ModelVersion.name == version_name,
            )
            .order_by(Prediction.id)
        )
        for ls_task_id, image_uri, results, score in rows:
            answers[ls_task_id] = StoredAnswer(ls_task_id, image_uri, results, score)
    return answers


def get_link(session: Session, project_key: str) -> LabelStudioLink | None:
    """What /setup told about the Label Studio project ``project_key`` ("<id>.<epoch>"), or None."""
    return session.scalars(select(LabelStudioLink).where(LabelStudioLink.project_key == project_key)).first()


def link_of_project(session: Session, project: Project) -> LabelStudioLink | None:
    """The newest link /setup recorded for ``project`` (its keys are "<id>.<epoch>")."""
    return session.scalars(
        select(LabelStudioLink)
        .where(LabelStudioLink.project_key.like(f"{project.ls_project_id}.%"), LabelStudioLink.label_studio == project.label_studio)
        .order_by(LabelStudioLink.updated_at.desc())
    ).first()


def save_link(session: Session, project_key: str, label_studio: str, url: str, token: str | None) -> LabelStudioLink:
    """Record (or replace) the Label Studio base URL and token of one Label Studio project."""
    link = get_link(session, project_key)
    if link is None:
        new = LabelStudioLink(project_key=project_key, label_studio=label_studio, url=url, token=token)
        link = _add_unique(session, new, lambda: get_link(session, project_key))
    if (link.label_studio, link.url, link.token) != (label_studio, url, token):
        link.label_studio, link.url, link.token = label_studio, url, token
        link.updated_at = utcnow()
        session.flush()
    return link


def store_outcomes(
    session: Session,
    ls_project_id: int,
    version_name: str,
    weights_id: str,
    settings: Mapping[str, Any],
    outcomes: Sequence[Any],
    label_studio: str = "",
) -> Project:
    """`store_predictions` for a batch of ``explain.service.TaskOutcome`` (read by attribute:
    ``task_id``, ``uri``, ``content_hash``, ``prelabel``, ``answer``, ``failure``, ``data``), as the
    backend and ``labeler prelabel`` both store them."""
    records = [
        PredictionRecord.of(o.prelabel, o.task_id, o.uri, o.content_hash, o.answer["result"], o.answer["score"], o.data)
        for o in outcomes
        if o.prelabel is not None
    ]
    failures = [(o.task_id, *o.failure) for o in outcomes if o.failure is not None]
    return store_predictions(
        session, ls_project_id, version_name, weights_id, settings, records, failures, label_studio=label_studio
    )
