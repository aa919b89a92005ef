"""The training-job queue. Every function takes a Session and flushes; the caller commits.

A job goes queued -> running -> done | failed. A project has at most one queued job (a new
request while one waits is folded into it) and at most one running job; both are enforced by
partial unique indexes, so several processes may enqueue and claim at once: claims lock their
candidate (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises writers) and change it
only while it is still queued, and an index conflict just moves on to the next candidate.
A running job whose worker stops sending heartbeats is queued again (or failed after
``max_attempts``) by `requeue_stale`, which every `claim_job` runs first.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.util import identity_key

from .schema import AnnotationRevision, Project, Task, TrainingJob
from .timestamps import utcnow

_TRIGGER_MAX = 32
_WORKER_MAX = 200
_PROGRESS_MAX = 200
_FINAL_STATES = ("done", "failed")
_CORRECTIONS = ("created", "updated")


def _line(text: str) -> str:
    """One line: whitespace (newlines included) squeezed to single spaces."""
    return " ".join(str(text).split())


def _short(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    line = _line(text)
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _check_worker(worker: str) -> None:
    if not isinstance(worker, str) or not worker or len(worker) > _WORKER_MAX:
        raise ValueError(f"worker must be 1..{_WORKER_MAX} characters (e.g. 'host:pid'), got {str(worker)[:40]!r}")


def _queued(session: Session, project_id: int) -> TrainingJob | None:
    return session.scalars(
        select(TrainingJob).where(TrainingJob.project_id == project_id, TrainingJob.state == "queued")
    ).first()


def enqueue_training(session: Session, project: Project, trigger: str) -> tuple[TrainingJob, bool]:
    """Queue a training job for the project: (job, True) for a new one, or (the job already
    waiting, False) when one is queued (left unchanged), also when a concurrent caller queued
    it first. ``trigger`` (1..32 characters) names who asked; the new job's ``revision_mark``
    is the project's newest annotation revision id (None when it has none)."""
    if not isinstance(trigger, str) or not trigger or len(trigger) > _TRIGGER_MAX:
        raise ValueError(f"trigger must be 1..{_TRIGGER_MAX} characters, got {str(trigger)[:40]!r}")
    waiting = _queued(session, project.id)
    if waiting is not None:
        return waiting, False
    mark = session.scalar(
        select(func.max(AnnotationRevision.id))
        .join(Task, AnnotationRevision.task_id == Task.id)
        .where(Task.project_id == project.id)
    )
    job = TrainingJob(project_id=project.id, state="queued", trigger=trigger, attempts=0, revision_mark=mark)
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        winner = _queued(session, project.id)
        if winner is None:
            raise
        return winner, False
    return job, True


def _update_job(session: Session, job_id: int, where: tuple[Any, ...], **values: Any) -> bool:
    """UPDATE one job only while ``where`` holds; True when it did. A copy of the job already
    in the session is expired, so that it is read again."""
    result = session.execute(
        update(TrainingJob).where(TrainingJob.id == job_id, *where).values(**values),
        execution_options={"synchronize_session": False},
    )
    loaded = session.identity_map.get(identity_key(TrainingJob, job_id))
    if loaded is not None:
        session.expire(loaded)
    return result.rowcount == 1


def requeue_stale(session: Session, stale_after: float, max_attempts: int = 3) -> list[TrainingJob]:
    """Deal with running jobs whose last heartbeat is over ``stale_after`` seconds old (their
    worker died or hangs): back to queued while they have had fewer than ``max_attempts``
    claims and their project has no queued job, failed otherwise. Returns the changed jobs."""
    now = utcnow()
    stale = session.scalars(
        select(TrainingJob)
        .where(TrainingJob.state == "running", TrainingJob.heartbeat_at < now - timedelta(seconds=stale_after))
        .order_by(TrainingJob.id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).all()
    changed = []
    for job in stale:
        seen = job.heartbeat_at.isoformat(timespec="seconds") if job.heartbeat_at else "an unknown time"
        why = f"interrupted (worker {job.worker} stopped responding at {seen})"
        if job.attempts < max_attempts and _queued(session, job.project_id) is None:
            try:
                with session.begin_nested():
                    job.state, job.message = "queued", f"{why}; queued again"
                    job.worker = job.started_at = job.heartbeat_at = job.progress = None
                    session.flush()
                changed.append(job)
                continue
            except IntegrityError:  # a job of the project was queued meanwhile
                pass
        ending = f" after {job.attempts} attempts" if job.attempts >= max_attempts else "; a newer job is queued"
        job.state, job.message, job.finished_at, job.progress = "failed", why + ending, now, None
        session.flush()
        changed.append(job)
    return changed


def _claimable(project: Project | None):
    """Queued jobs, oldest first, of projects without a running job."""
    running = aliased(TrainingJob)
    query = select(TrainingJob.id).where(
        TrainingJob.state == "queued",
        ~exists().where(running.project_id == TrainingJob.project_id, running.state == "running"),
    )
    if project is not None:
        query = query.where(TrainingJob.project_id == project.id)
    return query.order_by(TrainingJob.requested_at, TrainingJob.id)


def claim_job(
    session: Session,
    worker: str,
    stale_after: float = 60.0,
    max_attempts: int = 3,
    project: Project | None = None,
) -> TrainingJob | None:
    """Take the oldest queued job (of ``project`` when given) whose project runs no job: it
    becomes running for ``worker`` ("host:pid"; started and heartbeat now, one more attempt).
    None when there is none. Runs `requeue_stale` first. Safe with claimers in other
    processes: each job is claimed by one of them, and a project never runs two jobs."""
    _check_worker(worker)
    requeue_stale(session, stale_after, max_attempts)
    tried: set[int] = set()
    while True:
        try:
            # in the SAVEPOINT: a candidate given up releases its row lock again
            with session.begin_nested():
                query = _claimable(project).with_for_update(skip_locked=True, of=TrainingJob)
                if tried:
                    query = query.where(TrainingJob.id.not_in(tried))
                job_id = session.scalar(query.limit(1))
                if job_id is None:
                    return None
                tried.add(job_id)
                now = utcnow()
                claimed = _update_job(
                    session, job_id, (TrainingJob.state == "queued",),
                    state="running", started_at=now, heartbeat_at=now, worker=worker,
                    attempts=TrainingJob.attempts + 1, progress=None,
                )
        except IntegrityError:  # the project started running another job meanwhile
            continue
        if claimed:
            return session.get(TrainingJob, job_id, populate_existing=True)


def heartbeat(session: Session, job_id: int, worker: str, progress: str | None = None) -> bool:
    """Record that ``worker`` still runs the job (and its ``progress``, e.g. "epoch 3/30", when
    given). False when the job is no longer running for this worker: it was taken from it
    (requeued after missed heartbeats) and the worker should stop."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = _short(progress, _PROGRESS_MAX)
    return _update_job(session, job_id, (TrainingJob.state == "running", TrainingJob.worker == worker), **values)


def finish_job(
    session: Session, job_id: int, worker: str, state: str, message: str, segmenter_id: int | None = None
) -> bool:
    """End the job that ``worker`` runs as "done" or "failed" with a one-line ``message`` and
    the segmenter it produced. False (nothing changed) when the job is no longer running for
    this worker."""
    if state not in _FINAL_STATES:
        raise ValueError(f"state must be one of {_FINAL_STATES}, got {state!r}")
    return _update_job(
        session, job_id, (TrainingJob.state == "running", TrainingJob.worker == worker),
        state=state, finished_at=utcnow(), message=_line(message), segmenter_id=segmenter_id, progress=None,
    )


def recent_jobs(session: Session, project: Project | None = None, limit: int = 20) -> list[TrainingJob]:
    """The newest ``limit`` jobs (of ``project`` when given), newest first."""
    query = select(TrainingJob)
    if project is not None:
        query = query.where(TrainingJob.project_id == project.id)
    return list(session.scalars(query.order_by(TrainingJob.id.desc()).limit(limit)))


def last_job(session: Session, project: Project) -> TrainingJob | None:
    """The project's newest job, or None."""
    return next(iter(recent_jobs(session, project, limit=1)), None)


def annotations_since(session: Session, project: Project, mark: int | None) -> int:
    """How many annotations of the project were created or updated after revision id ``mark``
    (all of them when None): the corrections a job queued at ``mark`` has not seen."""
    query = (
        select(func.count())
        .select_from(AnnotationRevision)
        .join(Task, AnnotationRevision.task_id == Task.id)
        .where(Task.project_id == project.id, AnnotationRevision.action.in_(_CORRECTIONS))
    )
    if mark is not None:
        query = query.where(AnnotationRevision.id > mark)
    return session.scalar(query) or 0
