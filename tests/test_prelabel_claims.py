"""Pre-label claims (db.claims), migrated by Alembic, on a real SQLite file and on the real
PostgreSQL test server (tests/postgres.py): each task goes to one worker, also when threads with
their own sessions claim at once; stale claims are taken over, done ones never."""
from __future__ import annotations

import sys
from datetime import timedelta

import pytest
import sqlalchemy as sa

import db
from db import claims
from db.schema import PrelabelClaim
from test_db import Session, engine, session, url  # noqa: F401  (a fresh SQLite / PostgreSQL database, migrated)
from test_training_db import _in_threads

V = "cnn-v1"


@pytest.fixture
def project(session):
    project = db.upsert_project(session, 7, title="CXR")
    session.commit()
    return project


def _age(session, seconds):
    session.execute(sa.update(PrelabelClaim).values(claimed_at=db.utcnow() - timedelta(seconds=seconds)))
    session.commit()


def test_a_task_is_claimed_once_per_version_and_project(session, project):
    first = claims.claim_tasks(session, project, V, [3, 1, 2], "a:1")
    assert (first.new, first.taken_over) == ([1, 2, 3], [])
    second = claims.claim_tasks(session, project, V, [2, 3, 4], "b:2")
    assert second.ids == [4]
    assert claims.claim_tasks(session, project, "other", [2], "b:2").ids == [2]  # another version
    other = db.upsert_project(session, 8)
    assert claims.claim_tasks(session, other, V, [2], "b:2").ids == [2]  # another project
    session.commit()
    assert claims.open_workers(session, project, V) == ["a:1", "b:2"]


def test_stale_claims_are_taken_over_and_done_ones_never(session, project):
    claims.claim_tasks(session, project, V, [1, 2, 3], "a:1")
    assert claims.finish_claims(session, project, V, [1], "a:1") == 1
    session.commit()
    assert claims.claim_tasks(session, project, V, [1, 2, 3], "b:2", lease_s=600).ids == []  # within the lease
    _age(session, 601)
    took = claims.claim_tasks(session, project, V, [1, 2, 3], "b:2", lease_s=600)
    assert (took.new, took.taken_over) == ([], [2, 3])  # 1 is done: never again
    assert claims.finish_claims(session, project, V, [2, 3], "a:1") == 0  # no longer a's
    session.commit()
    assert claims.claim_tasks(session, project, V, [2, 3], "c:3").ids == []  # b's claims are fresh


def test_done_claims_reopen_only_when_done_before_the_time_given(session, project):
    claims.claim_tasks(session, project, V, [1, 2, 3], "a:1")
    claims.finish_claims(session, project, V, [1, 2], "a:1")
    session.commit()
    later = db.utcnow() + timedelta(seconds=1)
    assert claims.reopen_done(session, project, V, [1, 2, 3], "b:2", db.utcnow() - timedelta(seconds=60)) == []  # done since
    assert claims.reopen_done(session, project, V, [1, 3], "b:2", later) == [1]  # 3 is open, not done
    assert claims.reopen_done(session, project, V, [1], "c:3", later) == []  # one worker gets it
    session.commit()
    row = session.scalars(sa.select(PrelabelClaim).where(PrelabelClaim.ls_task_id == 1)).one()
    assert (row.worker, row.done_at) == ("b:2", None)
    assert claims.claim_tasks(session, project, V, [1], "c:3").ids == []  # b's fresh claim again
    assert claims.done_among(session, project, V, [1, 2, 3]) == [2]
    assert claims.reopen_done(session, project, V, [2], "c:3") == [2]  # any done claim, when no time is given


def test_released_claims_are_free_at_once(session, project):
    claims.claim_tasks(session, project, V, [1, 2, 3], "a:1")
    assert claims.release_claims(session, project, V, "a:1", [3]) == 1  # only the tasks named
    assert claims.claim_tasks(session, project, V, [1, 2, 3], "c:3").taken_over == [3]
    claims.finish_claims(session, project, V, [2, 3], "a:1")  # 3 is c's now: stays open
    assert claims.release_claims(session, project, V, "a:1") == 1
    session.commit()
    assert claims.open_workers(session, project, V) == ["c:3"]
    took = claims.claim_tasks(session, project, V, [1, 2], "b:2")
    assert (took.new, took.taken_over) == ([], [1])


def test_bad_worker_or_lease_is_refused(session, project):
    with pytest.raises(ValueError, match="worker"):
        claims.claim_tasks(session, project, V, [1], "")
    with pytest.raises(ValueError, match="lease"):
        claims.claim_tasks(session, project, V, [1], "a:1", lease_s=0)


def _claim_in_threads(Session, project_id, workers, ids, lease_s=600.0):  # noqa: N803
    got: dict[int, list[int]] = {i: [] for i in range(workers)}

    def work(i):
        for start in range(0, len(ids), 7):  # overlapping windows, as workers walking one pending list do
            with Session.begin() as session:
                project = session.get(db.Project, project_id)
                got[i] += claims.claim_tasks(session, project, V, ids[start : start + 14], f"w:{i}", lease_s).ids

    _in_threads(workers, work)
    return got


def test_concurrent_claims_give_each_task_to_one_worker(Session, project):  # noqa: N803
    ids = list(range(1, 201))
    got = _claim_in_threads(Session, project.id, 6, ids)
    assert sorted(sum(got.values(), [])) == ids
    with Session() as session:
        rows = session.execute(sa.select(PrelabelClaim.ls_task_id, PrelabelClaim.worker)).all()
    assert sorted(r.ls_task_id for r in rows) == ids
    assert all(r.ls_task_id in got[int(r.worker[2:])] for r in rows)


def test_concurrent_take_overs_give_each_stale_task_to_one_worker(Session, project):  # noqa: N803
    ids = list(range(1, 101))
    with Session.begin() as session:
        claims.claim_tasks(session, session.get(db.Project, project.id), V, ids, "dead:1")
        claims.finish_claims(session, session.get(db.Project, project.id), V, ids[:10], "dead:1")
    with Session() as session:
        _age(session, 700)
    got = _claim_in_threads(Session, project.id, 6, ids)
    assert sorted(sum(got.values(), [])) == ids[10:]


@pytest.mark.skipif(sys.platform != "linux", reason="nice is per thread only on Linux")
def test_reading_and_saving_threads_run_at_a_lower_cpu_priority_than_the_model():
    """The model's thread keeps its priority; a thread started by ``_in_background`` (and the
    threads it starts in turn) run BACKGROUND_NICE steps lower."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from labeler.prelabeling import BACKGROUND_NICE, _in_background

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine = nice()
    with ThreadPoolExecutor(1, initializer=_in_background) as background:
        inner = background.submit(lambda: (nice(), ThreadPoolExecutor(1).submit(nice).result())).result()
    assert inner == (min(19, mine + BACKGROUND_NICE),) * 2
    assert nice() == mine
