"""Stream one project's current annotations, and the predictions they may have started from, out
of our database in chunks of tasks: a fixed number of queries per chunk (never one per task),
keyset-paginated by Label Studio task id, so that memory holds one chunk's results at a time.

Per chunk of `CHUNK_TASKS` live tasks that have revisions: the tasks; per annotation its revision
count and first / last revision ids (an index-only read of ``(task_id, ls_annotation_id)``); the
current (last) revisions, left out when deleted, cancelled or outside the window; the first
revisions' times; every candidate prediction's id, version and time (index-only through
``(task_id, model_version_id, created_at)``), and finally the results of the predictions picked.
Only plain rows come back (no ORM objects in the session's identity map).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from db.schema import AnnotationRevision, ModelVersion, Prediction, Project, Task
from db.timestamps import UTCDateTime
from labeler.stats.window import Window

CHUNK_TASKS = 200

AR = AnnotationRevision
# the annotation's time, as `labeler.stats.window` defines it
ANNOTATION_TIME = func.coalesce(AR.ls_updated_at, AR.ls_created_at, AR.received_at, type_=UTCDateTime)


@dataclass(slots=True)
class TaskRow:
    id: int
    ls_task_id: int
    width: int | None
    height: int | None


@dataclass(slots=True)
class RevisionRow:
    """A current annotation revision, with what its history says."""

    id: int
    ls_annotation_id: int
    completed_by: int | None
    lead_time: float | None
    result: list[dict] | None
    revisions: int  # how many revisions the annotation has
    started: datetime | None = None  # the earlier of its first revision's ls_created_at and received_at
    prediction: "PredictionRow | None" = None  # the pre-label it most likely started from
    source: str = "none"  # before / latest / none (see `collect.pick_prediction`)


@dataclass(slots=True)
class PredictionRow:
    id: int
    model_version: str
    created_at: datetime | None
    results: list[dict] | None = None  # loaded only for the picked ones
    predicted_class: str | None = None


@dataclass(slots=True)
class AnnotatedTask:
    """One task's kept current annotations (oldest revision id first, each with its picked
    prediction) and its candidate predictions (oldest id first; only picked ones carry results)."""

    task: TaskRow
    annotations: list[RevisionRow] = field(default_factory=list)
    predictions: list[PredictionRow] = field(default_factory=list)


Picker = Callable[[list[PredictionRow], "datetime | None"], tuple["PredictionRow | None", str]]


def annotated_tasks(
    session: Session,
    project: Project,
    pick: Picker,
    *,
    model_version_id: int | None = None,
    window: Window = Window(),
    chunk: int | None = None,
) -> Iterator[list[AnnotatedTask]]:
    """Chunks of annotated tasks, by Label Studio task id; tasks without a kept annotation left
    out. `pick(predictions, started)` chooses each annotation's prediction among its task's (of
    `model_version_id` when given), as `collect.pick_prediction` does."""
    size = chunk or CHUNK_TASKS
    last = None
    while True:
        query = select(Task.id, Task.ls_task_id, Task.width, Task.height).where(
            Task.project_id == project.id,
            Task.deleted_at.is_(None),
            exists().where(AR.task_id == Task.id),
        )
        if last is not None:
            query = query.where(Task.ls_task_id > last)
        tasks = [TaskRow(*row) for row in session.execute(query.order_by(Task.ls_task_id).limit(size))]
        if not tasks:
            return
        last = tasks[-1].ls_task_id
        found = _read_chunk(session, tasks, pick, model_version_id, window)
        if found:
            yield found
        if len(tasks) < size:
            return


def _read_chunk(session: Session, tasks: list[TaskRow], pick: Picker, model_version_id: int | None, window: Window):
    by_id = {t.id: AnnotatedTask(t) for t in tasks}
    history = session.execute(
        select(AR.ls_annotation_id, func.max(AR.id), func.min(AR.id), func.count())
        .where(AR.task_id.in_(list(by_id)))
        .group_by(AR.ls_annotation_id)
    ).all()
    counts = {last_id: (first_id, n) for _, last_id, first_id, n in history}

    query = select(AR.id, AR.task_id, AR.ls_annotation_id, AR.completed_by, AR.lead_time, AR.result).where(
        AR.id.in_(list(counts)), AR.action != "deleted", AR.was_cancelled.is_not(True)
    )
    if window.since is not None:
        query = query.where(ANNOTATION_TIME >= window.since)
    if window.until is not None:
        query = query.where(ANNOTATION_TIME < window.until)
    current: dict[int, RevisionRow] = {}  # by its first revision's id
    for rid, task_id, ann_id, completed_by, lead_time, result in session.execute(query.order_by(AR.id)):
        first_id, n = counts[rid]
        row = RevisionRow(rid, ann_id, completed_by, lead_time, result, n)
        current[first_id] = row
        by_id[task_id].annotations.append(row)
    if not current:
        return []
    for first_id, created, received in session.execute(
        select(AR.id, AR.ls_created_at, AR.received_at).where(AR.id.in_(list(current)))
    ):
        starts = [t for t in (created, received) if t is not None]
        current[first_id].started = min(starts) if starts else None

    kept = [t for t in by_id.values() if t.annotations]
    query = (
        select(Prediction.id, Prediction.task_id, ModelVersion.name, Prediction.created_at)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(Prediction.task_id.in_([t.task.id for t in kept]))
    )
    if model_version_id is not None:
        query = query.where(Prediction.model_version_id == model_version_id)
    # sorted here, not by ORDER BY id: that makes SQLite walk the model version's index instead
    for pid, task_id, version, created in sorted(session.execute(query)):
        by_id[task_id].predictions.append(PredictionRow(pid, version, created))

    picked: dict[int, PredictionRow] = {}
    for task in kept:
        for annotation in task.annotations:
            annotation.prediction, annotation.source = pick(task.predictions, annotation.started)
            if annotation.prediction is not None:
                picked[annotation.prediction.id] = annotation.prediction
    if picked:
        for pid, results, predicted_class in session.execute(
            select(Prediction.id, Prediction.results, Prediction.predicted_class).where(Prediction.id.in_(list(picked)))
        ):
            picked[pid].results, picked[pid].predicted_class = results, predicted_class
    return kept


def results_of(session: Session, revision_ids: list[int], prediction_ids: list[int]) -> tuple[dict[int, Any], dict[int, Any]]:
    """({revision id: result}, {prediction id: results}) for a few ids (the report's thumbnails)."""
    revisions = {i: r for i, r in session.execute(select(AR.id, AR.result).where(AR.id.in_(revision_ids)))} if revision_ids else {}
    predictions = {
        i: r for i, r in session.execute(select(Prediction.id, Prediction.results).where(Prediction.id.in_(prediction_ids)))
    } if prediction_ids else {}
    return revisions, predictions
