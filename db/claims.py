"""Pre-label claims: how several ``labeler prelabel`` workers on one project (processes, machines
sharing one database) split its tasks so that no task is pre-labelled twice. Every function
takes a Session and flushes; the caller commits.

A worker claims a batch of candidate tasks before it reads them: a task nobody claimed gets a
row (``INSERT ... ON CONFLICT DO NOTHING RETURNING``: of two workers inserting the same row one
gets it, the other waits for it and gets nothing); a claim that is not done and older than the
lease (its worker died, or released it) is taken over (its rows locked with ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, SQLite serialises writers; the UPDATE repeats the staleness test); a
done claim is claimed again only through `reopen_done` (its prediction was deleted in Label
Studio since). The same statements run on SQLite and PostgreSQL.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .schema import PrelabelClaim, Project
from .timestamps import utcnow

#: A claim not done this long after it was made may be taken over (seconds).
DEFAULT_LEASE_S = 600.0
_WORKER_MAX = 200
_CHUNK = 500  # bounded IN lists and VALUES
_RELEASED = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Claimed:
    """Task ids claimed by one call: ``new`` had no claim; ``taken_over`` had a stale one (its
    worker may have posted a prediction before it stopped: check before posting another)."""

    new: list[int]
    taken_over: list[int]

    @property
    def ids(self) -> list[int]:
        return sorted(self.new + self.taken_over)


def _check(worker: str, lease_s: float) -> None:
    if not isinstance(worker, str) or not worker or len(worker) > _WORKER_MAX:
        raise ValueError(f"worker must be 1..{_WORKER_MAX} characters (e.g. 'host:pid'), got {str(worker)[:40]!r}")
    if lease_s <= 0:
        raise ValueError(f"lease_s must be > 0, got {lease_s}")


def _insert(session: Session):
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(PrelabelClaim)
    if dialect == "sqlite":
        return sqlite.insert(PrelabelClaim)
    raise ValueError(f"pre-label claims need SQLite or PostgreSQL, not {dialect}")


def _of(project: Project, version: str):
    return (PrelabelClaim.project_id == project.id, PrelabelClaim.model_version == version)


def claim_tasks(
    session: Session,
    project: Project,
    version: str,
    ls_task_ids: Iterable[int],
    worker: str,
    lease_s: float = DEFAULT_LEASE_S,
) -> Claimed:
    """Claim for ``worker`` ("host:pid") every one of ``ls_task_ids`` that no other worker holds
    for model ``version``: unclaimed ones, and those whose claim is not done and was made over
    ``lease_s`` seconds ago. Safe with claimers in other transactions and processes: each task
    goes to one of them."""
    _check(worker, lease_s)
    ids = sorted({int(i) for i in ls_task_ids})  # one order for every claimer: no lock cycles
    now = utcnow()
    new: list[int] = []
    taken: list[int] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        rows = [
            {"project_id": project.id, "model_version": version, "ls_task_id": i, "worker": worker, "claimed_at": now}
            for i in chunk
        ]
        inserted = _insert(session).values(rows).on_conflict_do_nothing(
            index_elements=["project_id", "model_version", "ls_task_id"]
        ).returning(PrelabelClaim.ls_task_id)
        got = set(session.scalars(inserted))
        new += got
        rest = [i for i in chunk if i not in got]
        if not rest:
            continue
        stale = (*_of(project, version), PrelabelClaim.done_at.is_(None), PrelabelClaim.claimed_at < now - timedelta(seconds=lease_s))
        locked = list(session.scalars(
            select(PrelabelClaim.id)
            .where(*stale, PrelabelClaim.ls_task_id.in_(rest))
            .order_by(PrelabelClaim.id)
            .with_for_update(skip_locked=True)
        ))
        if locked:
            result = session.scalars(
                update(PrelabelClaim)
                .where(PrelabelClaim.id.in_(locked), *stale)
                .values(worker=worker, claimed_at=now)
                .returning(PrelabelClaim.ls_task_id),
                execution_options={"synchronize_session": False},
            )
            taken += result
    session.flush()
    return Claimed(sorted(new), sorted(taken))


def done_among(session: Session, project: Project, version: str, ls_task_ids: Iterable[int]) -> list[int]:
    """Which of these tasks have a done claim, sorted."""
    ids = sorted({int(i) for i in ls_task_ids})
    done: list[int] = []
    for start in range(0, len(ids), _CHUNK):
        done += session.scalars(
            select(PrelabelClaim.ls_task_id)
            .where(*_of(project, version), PrelabelClaim.done_at.is_not(None),
                   PrelabelClaim.ls_task_id.in_(ids[start : start + _CHUNK]))
        )
    return sorted(done)


def reopen_done(
    session: Session, project: Project, version: str, ls_task_ids: Iterable[int], worker: str,
    done_before: datetime | None = None,
) -> list[int]:
    """Claim for ``worker`` the done claims of these tasks (those finished before
    ``done_before`` when given): the caller saw them lack a prediction in Label Studio after
    they were done, so their prediction was deleted since. Of several workers reopening one
    task, one gets it (the UPDATE requires it still done). Returns the task ids reopened."""
    ids = sorted({int(i) for i in ls_task_ids})
    reopened: list[int] = []
    done = PrelabelClaim.done_at.is_not(None) if done_before is None else PrelabelClaim.done_at < done_before
    for start in range(0, len(ids), _CHUNK):
        reopened += session.scalars(
            update(PrelabelClaim)
            .where(*_of(project, version), done, PrelabelClaim.ls_task_id.in_(ids[start : start + _CHUNK]))
            .values(worker=worker, claimed_at=utcnow(), done_at=None)
            .returning(PrelabelClaim.ls_task_id),
            execution_options={"synchronize_session": False},
        )
    session.flush()
    return sorted(reopened)


def finish_claims(session: Session, project: Project, version: str, ls_task_ids: Iterable[int], worker: str) -> int:
    """Mark ``worker``'s claims of these tasks done (their predictions reached Label Studio):
    nobody claims them again. Returns how many."""
    ids = sorted({int(i) for i in ls_task_ids})
    done = 0
    for start in range(0, len(ids), _CHUNK):
        result = session.execute(
            update(PrelabelClaim)
            .where(*_of(project, version), PrelabelClaim.worker == worker, PrelabelClaim.done_at.is_(None),
                   PrelabelClaim.ls_task_id.in_(ids[start : start + _CHUNK]))
            .values(done_at=utcnow()),
            execution_options={"synchronize_session": False},
        )
        done += result.rowcount
    session.flush()
    return done


def release_claims(
    session: Session, project: Project, version: str, worker: str, ls_task_ids: Iterable[int] | None = None
) -> int:
    """Make ``worker``'s claims that are not done (of ``ls_task_ids`` when given) free to take
    over at once: it stopped before finishing them, is known to be gone, or could not pre-label
    those tasks. Returns how many."""
    where = [*_of(project, version), PrelabelClaim.worker == worker, PrelabelClaim.done_at.is_(None)]
    chunks = [None]
    if ls_task_ids is not None:
        ids = sorted({int(i) for i in ls_task_ids})
        chunks = [ids[start : start + _CHUNK] for start in range(0, len(ids), _CHUNK)]
    released = 0
    for chunk in chunks:
        result = session.execute(
            update(PrelabelClaim)
            .where(*where, *([] if chunk is None else [PrelabelClaim.ls_task_id.in_(chunk)]))
            .values(claimed_at=_RELEASED),
            execution_options={"synchronize_session": False},
        )
        released += result.rowcount
    session.flush()
    return released


def open_workers(session: Session, project: Project, version: str) -> list[str]:
    """The workers holding claims that are not done (released ones excluded), sorted."""
    return list(session.scalars(
        select(PrelabelClaim.worker)
        .where(*_of(project, version), PrelabelClaim.done_at.is_(None), PrelabelClaim.claimed_at > _RELEASED)
        .distinct()
        .order_by(PrelabelClaim.worker)
    ))
