"""``labeler train`` and ``labeler models``: queue a training job for a project, follow it, and
list, promote or roll back the project's trained models (segmenters and click models), all
through our database (``db.jobs``, ``db.registry``); the jobs themselves run in the backend
(TRAINING=1) or ``labeler-backend worker``."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from db import jobs, registry, repository
from db.schema import PROMOTION_ROLES, TrainingJob
from labeler.workspace import Workspace
from models.loading import unpack_segmenter



def _project(session, ws: Workspace):
    project_id = ws.require_project()
    project = repository.get_project(session, project_id, ws.label_studio)
    if project is None:
        raise ValueError(f"project {project_id} is not in the database: connect the backend to it or run `labeler sync` first")
    return project


@dataclass(frozen=True)
class JobView:
    id: int
    state: str
    trigger: str
    requested_at: object
    progress: str | None
    message: str | None


def _view(job) -> JobView:
    return JobView(job.id, job.state, job.trigger, job.requested_at, job.progress, job.message)


def queue_training(ws: Workspace) -> tuple[JobView, bool]:
    """Queue a job for the project (or join the one already waiting); (job, newly queued)."""
    with ws.sessions.begin() as session:
        job, created = jobs.enqueue_training(session, _project(session, ws), "command")
        return _view(job), created


def job_state(ws: Workspace, job_id: int) -> JobView:
    with ws.sessions() as session:
        job = session.get(TrainingJob, job_id)
        if job is None:
            raise ValueError(f"no training job {job_id}")
        return _view(job)


def wait_for(ws: Workspace, job_id: int, timeout: float, on_change=lambda view: None, poll: float = 2.0) -> JobView:
    """Poll the job until it is done or failed (``on_change`` sees every new state / progress);
    ValueError when ``timeout`` seconds pass first."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        view = job_state(ws, job_id)
        if (view.state, view.progress) != last:
            last = (view.state, view.progress)
            on_change(view)
        if view.state in ("done", "failed"):
            return view
        if time.monotonic() > deadline:
            raise ValueError(f"training job {job_id} is still {view.state} after {timeout:.0f} s (is a backend with TRAINING=1 or `labeler-backend worker` running?)")
        time.sleep(poll)


@dataclass(frozen=True)
class ModelView:
    id: int
    created_at: object
    weights_id: str
    counts: dict
    metrics: dict
    verdict: str
    current: bool
    role: str  # "prelabel" (a segmenter) or "clicks" (a click model): db.registry.role_of


def project_models(ws: Workspace) -> tuple[list[ModelView], list[JobView], dict[str, int | None]]:
    """The project's models (newest first), its recent jobs, and per role ("prelabel", "clicks")
    the current model's id (None: Grad-CAM, or no promoted click model)."""
    with ws.sessions() as session:
        project = _project(session, ws)
        current = {}
        for role in PROMOTION_ROLES:
            row = registry.current_segmenter(session, project, role)
            current[role] = row.id if row is not None else None
        models = [
            ModelView(
                m.id, m.created_at, m.weights_id, {k: len(v) for k, v in (m.data or {}).items()}, m.metrics or {},
                m.verdict or "", m.id == current[registry.role_of(m)], registry.role_of(m),
            )
            for m in registry.segmenters_of(session, project)
        ]
        return models, [_view(j) for j in jobs.recent_jobs(session, project, limit=10)], current


def promote(ws: Workspace, segmenter_id: int) -> str:
    """Make a model of the project current by hand (whatever its scores): a segmenter pre-labels,
    a click model answers clicks. Returns its role."""
    with ws.sessions.begin() as session:
        project = _project(session, ws)
        model = registry.get_segmenter(session, segmenter_id)
        if model is None or model.project_id != project.id:
            raise ValueError(f"model {segmenter_id} is not a model of project {project.ls_project_id} (see `labeler models list`)")
        registry.promote(session, project, segmenter_id, "promote", note="promoted by hand (labeler models promote)")
        return registry.role_of(model)


def rollback(ws: Workspace, role: str = "prelabel") -> int | None:
    """Go back to the ``role``'s model before the current one; returns the model now current (None:
    Grad-CAM, or no promoted click model)."""
    with ws.sessions.begin() as session:
        row = registry.rollback(session, _project(session, ws), note="labeler models rollback", role=role)
        return row.segmenter_id


def promoted_segmenter(ws: Workspace) -> tuple[int, Path] | None:
    """The project's promoted segmenter as a model file (written once into the model cache), or
    None when it has none: what ``labeler prelabel`` uses when no ``--source`` is given, as the
    backend does."""
    with ws.sessions() as session:
        project = repository.get_project(session, ws.require_project(), ws.label_studio)
        model = registry.current_segmenter(session, project) if project is not None else None
        if model is None:
            return None
        path = unpack_segmenter(model.weights, json.dumps(model.spec), model.weights_id)
        return model.id, path
