"""The project's corrected masks as stored in our database: every live task with at least one
current (last revision not deleted), not cancelled annotation. Read by ``labeler export`` and by
the backend's training jobs, so that both train on the same data. `corrected_tasks` holds ids
only and streams the records a chunk of tasks at a time (memory flat in the project's size)."""
from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select


@dataclass
class Annotation:
    ls_annotation_id: int
    completed_by: int | None
    result: list[dict]
    order: tuple  # sort key: most recently updated last


@dataclass
class TaskRecord:
    ls_task_id: int
    image_uri: str
    width: int | None
    height: int | None
    annotations: list[Annotation]
    prediction: list[dict] | None = None
    model_version: str = ""
    patient_key: str | None = None  # the task data's patient value as stored (tasks.patient_key)


Sessions = Callable[[], AbstractContextManager]
CHUNK = 256  # tasks whose records are loaded (and held) at a time


@dataclass
class CorrectedTasks:
    """The corrected tasks of a project as of one read (`corrected_tasks`), in task id order.

    Only ids are held (numpy arrays, about 40 bytes per task): which annotation revisions and
    which prediction each task uses. Iterating loads the records `CHUNK` tasks at a time, each
    chunk in its own session of ``sessions``; revisions and predictions are append-only, so every
    pass yields the same records whatever was written since (a task's patient key is read fresh).
    A task whose chosen revisions all lack a result is skipped, so ``len`` may count one more.
    """

    sessions: Sessions
    ls_task_ids: np.ndarray  # (N,) int64, ascending
    task_rows: np.ndarray  # (N,) int64 tasks.id
    starts: np.ndarray  # (N + 1,) int64: task i's revisions are revision_ids[starts[i]:starts[i + 1]]
    revision_ids: np.ndarray  # (R,) int64
    prediction_ids: np.ndarray  # (N,) int64 latest prediction's id, -1 when none (or not asked)
    without_patient: np.ndarray  # (N,) bool: no patient key stored at the time of the read

    def __len__(self) -> int:
        return len(self.ls_task_ids)

    def missing_patient_keys(self) -> list[int]:
        """Label Studio ids of the tasks that had no patient key stored."""
        return self.ls_task_ids[self.without_patient].tolist()

    def __iter__(self) -> Iterator[TaskRecord]:
        for begin in range(0, len(self), CHUNK):
            with self.sessions() as session:
                records = self._load(session, begin, min(begin + CHUNK, len(self)))
            yield from records

    def _load(self, session, begin: int, end: int) -> list[TaskRecord]:
        from .schema import AnnotationRevision, ModelVersion, Prediction, Task

        rows = self.task_rows[begin:end].tolist()
        tasks = {
            t.id: TaskRecord(t.ls_task_id, t.image_uri, t.width, t.height, [], patient_key=t.patient_key)
            for t in session.execute(
                select(Task.id, Task.ls_task_id, Task.image_uri, Task.width, Task.height, Task.patient_key)
                .where(Task.id.in_(rows))
            )
        }
        revision_ids = self.revision_ids[self.starts[begin]:self.starts[end]].tolist()
        revisions = session.execute(
            select(
                AnnotationRevision.id, AnnotationRevision.task_id, AnnotationRevision.ls_annotation_id,
                AnnotationRevision.completed_by, AnnotationRevision.result, AnnotationRevision.ls_updated_at,
                AnnotationRevision.ls_created_at, AnnotationRevision.received_at,
            ).where(AnnotationRevision.id.in_(revision_ids)).order_by(AnnotationRevision.id)
        )
        for r in revisions:
            if r.result is None:
                continue
            stamp = r.ls_updated_at or r.ls_created_at or r.received_at
            order = (stamp.timestamp() if stamp else 0.0, r.id)
            tasks[r.task_id].annotations.append(Annotation(r.ls_annotation_id, r.completed_by, r.result, order))
        prediction_ids = [int(p) for p in self.prediction_ids[begin:end] if p >= 0]
        if prediction_ids:
            query = (
                select(Prediction.task_id, Prediction.results, ModelVersion.name)
                .join(ModelVersion, Prediction.model_version_id == ModelVersion.id)
                .where(Prediction.id.in_(prediction_ids))
            )
            for p in session.execute(query):
                tasks[p.task_id].prediction = list(p.results or [])
                tasks[p.task_id].model_version = p.name
        return [tasks[row] for row in rows if tasks[row].annotations]


def corrected_tasks(
    session, sessions: Sessions, ls_project_id: int, predictions: bool = False, label_studio: str | None = None
) -> tuple[CorrectedTasks, str | None]:
    """Live tasks with at least one current (last revision not deleted), not cancelled annotation,
    read in `session` as ids only, and the project's labelling config as stored (None when none
    is: it tells the readers which labels exist and which controls are smart); the records
    are then loaded through ``sessions`` (see `CorrectedTasks`). ``label_studio`` names the
    project's Label Studio (see `db.repository.get_project`)."""
    from .repository import get_project, last_revision_ids
    from .schema import AnnotationRevision, Prediction, Task

    project = get_project(session, ls_project_id, label_studio)
    if project is None:
        raise ValueError(f"project {ls_project_id} is not in the database: run `labeler sync` (or connect the backend) first")
    live = (Task.project_id == project.id, Task.deleted_at.is_(None))
    last_ids = last_revision_ids(project)
    query = (
        select(Task.ls_task_id, Task.id, AnnotationRevision.id, Task.patient_key.is_(None))
        .join(Task, AnnotationRevision.task_id == Task.id)
        .where(
            AnnotationRevision.id.in_(last_ids), AnnotationRevision.action != "deleted",
            AnnotationRevision.was_cancelled.is_not(True),
        )
        .order_by(Task.ls_task_id, AnnotationRevision.id)
    )
    ls_ids, rows, starts, revisions, without = array("q"), array("q"), array("q"), array("q"), array("b")
    for ls_task_id, row, revision_id, no_key in session.execute(query).yield_per(10_000):
        if not rows or rows[-1] != row:
            ls_ids.append(ls_task_id)
            rows.append(row)
            starts.append(len(revisions))
            without.append(bool(no_key))
        revisions.append(revision_id)
    starts.append(len(revisions))
    task_rows = np.frombuffer(rows, np.int64) if rows else np.zeros(0, np.int64)
    prediction_ids = np.full(len(task_rows), -1, np.int64)
    if predictions and len(task_rows):
        latest = (
            select(Prediction.task_id, func.max(Prediction.id)).join(Task).where(*live)
            .group_by(Prediction.task_id).order_by(Prediction.task_id)
        )
        pairs = np.array(session.execute(latest).all(), np.int64).reshape(-1, 2)
        order = np.argsort(task_rows)
        at = np.searchsorted(pairs[:, 0], task_rows[order])
        found = at < len(pairs)
        found[found] &= pairs[at[found], 0] == task_rows[order][found]
        prediction_ids[order[found]] = pairs[at[found], 1]
    tasks = CorrectedTasks(
        sessions, np.array(ls_ids, np.int64), task_rows, np.array(starts, np.int64), np.array(revisions, np.int64),
        prediction_ids, np.array(without, bool),
    )
    return tasks, project.label_config


def read_tasks(
    session, ls_project_id: int, predictions: bool = False, label_studio: str | None = None
) -> tuple[list[TaskRecord], str | None]:
    """`corrected_tasks` with every record loaded in `session` (for callers that need them all,
    e.g. a training job)."""
    tasks, config = corrected_tasks(session, lambda: nullcontext(session), ls_project_id, predictions, label_studio)
    return list(tasks), config


def chosen_annotations(annotations: list[Annotation], mode: str) -> list[Annotation]:
    """The annotations `combine` uses, oldest first: the most recently updated one ("latest"),
    or each annotator's most recently updated one ("majority")."""
    ordered = sorted(annotations, key=lambda a: a.order)
    if mode == "latest":
        return [ordered[-1]]
    per_annotator: dict[Any, Annotation] = {}
    for annotation in ordered:  # later ones replace earlier ones of the same annotator
        key = annotation.completed_by if annotation.completed_by is not None else f"a{annotation.ls_annotation_id}"
        per_annotator[key] = annotation
    return sorted(per_annotator.values(), key=lambda a: a.order)
