"""The training-job queue (db.jobs) and the segmenter registry (db.registry), migrated by
Alembic, on a real SQLite file and on the real PostgreSQL test server (tests/postgres.py), as
tests/test_db.py does; the concurrency tests run threads with their own sessions on both."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.exc import IntegrityError

import db
from db import jobs
from db.schema import Promotion, TrainingJob
from test_db import Session, engine, session, url  # noqa: F401  (a fresh SQLite / PostgreSQL database, migrated)

NEW_TABLES = {"training_jobs", "segmenters", "promotions"}
SPEC = {"kind": "unet", "input": [64, 64, 1]}


@pytest.fixture
def projects(session):
    """Two projects, A (Label Studio id 1) and B (2)."""
    pair = [db.upsert_project(session, n, title=f"P{n}") for n in (1, 2)]
    session.commit()
    return pair


def _revise(session, project, ls_task_id, ls_annotation_id, action="created"):
    task = db.live_task(session, project, ls_task_id, f"/data/upload/{ls_task_id}.png")
    result = None if action == "deleted" else []
    key = f"{project.id}-{ls_annotation_id}-{action}-{ls_task_id}"
    return db.add_annotation_revision(session, task, ls_annotation_id, action, result, fingerprint=key)


def _age(session, job_id, seconds=600):
    """Pretend the job's worker died: its last heartbeat ``seconds`` ago."""
    session.execute(
        sa.update(TrainingJob).where(TrainingJob.id == job_id).values(heartbeat_at=db.utcnow() - timedelta(seconds=seconds))
    )
    session.commit()


def _segmenter(session, project, weights=b"keras-bytes", **changes):
    fields = dict(
        weights=weights, weights_id=f"sha256:{weights.hex()[:16]}", spec=SPEC, settings={"epochs": 30},
        data={"train": [1, 2], "val": [3], "test": [4]}, metrics={"candidate": {"edit": 0.61}},
        verdict="promoted: edit 0.61 < 0.82 (gradcam)",
    )
    fields.update(changes)
    return db.add_segmenter(session, project, **fields)


# -- migration ---------------------------------------------------------------------------


def test_migration_0004_adds_and_drops_the_training_tables(url, engine):
    config = db.alembic_config(url)
    assert NEW_TABLES <= set(sa.inspect(engine).get_table_names())
    command.downgrade(config, "0003")
    tables = set(sa.inspect(engine).get_table_names())
    assert not tables & NEW_TABLES and {"projects", "label_studio_links"} <= tables
    command.upgrade(config, "head")
    assert NEW_TABLES <= set(sa.inspect(engine).get_table_names())
    indexes = {ix["name"]: ix for ix in sa.inspect(engine).get_indexes("training_jobs")}
    for state in ("queued", "running"):
        assert indexes[f"uq_training_jobs_project_id_{state}"]["unique"]
    fks = {fk["referred_table"] for fk in sa.inspect(engine).get_foreign_keys("training_jobs")}
    assert fks == {"projects", "segmenters"}


def test_the_database_holds_one_queued_and_one_running_job_per_project(session, projects):
    a, b = projects
    rows = [TrainingJob(project_id=a.id, state=s, trigger="command") for s in ("queued", "running", "done", "done", "failed", "failed")]
    session.add_all(rows + [TrainingJob(project_id=b.id, state=s, trigger="command") for s in ("queued", "running")])
    session.commit()
    for state in ("queued", "running"):
        session.add(TrainingJob(project_id=a.id, state=state, trigger="command"))
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()
    session.add(TrainingJob(project_id=a.id, state="paused", trigger="command"))
    with pytest.raises(IntegrityError):
        session.flush()


# -- queue -------------------------------------------------------------------------------


def test_enqueue_coalesces_while_a_job_waits(session, projects):
    a, b = projects
    _revise(session, a, 10, 100)
    newest = _revise(session, a, 11, 101, "updated")
    _revise(session, b, 12, 102)  # another project's revision is newer still
    job, new = db.enqueue_training(session, a, "label-studio")
    session.commit()
    assert new and (job.state, job.trigger, job.attempts, job.revision_mark) == ("queued", "label-studio", 0, newest.id)
    again, new = db.enqueue_training(session, a, "every-annotations")
    assert (again.id, new, again.trigger) == (job.id, False, "label-studio")
    assert db.claim_job(session, "host:1").id == job.id
    third, new = db.enqueue_training(session, a, "command")
    assert new and third.id != job.id
    with pytest.raises(ValueError, match="trigger"):
        db.enqueue_training(session, b, "")
    session.add(db.Project(ls_project_id=3))
    session.flush()
    empty = db.get_project(session, 3)
    assert db.enqueue_training(session, empty, "command")[0].revision_mark is None


def test_claim_takes_the_oldest_job_of_a_project_running_none(session, projects):
    a, b = projects
    first, _ = db.enqueue_training(session, a, "command")
    second, _ = db.enqueue_training(session, b, "command")
    session.commit()
    claimed = db.claim_job(session, "host:1")
    session.commit()
    assert claimed.id == first.id
    assert (claimed.state, claimed.worker, claimed.attempts) == ("running", "host:1", 1)
    assert claimed.started_at == claimed.heartbeat_at is not None
    later, _ = db.enqueue_training(session, a, "command")  # A already runs a job: this one waits
    session.commit()
    assert db.claim_job(session, "host:2", project=a) is None
    assert db.claim_job(session, "host:2").id == second.id
    assert db.claim_job(session, "host:3") is None
    assert db.finish_job(session, first.id, "host:1", "done", "edit 0.61")
    assert db.claim_job(session, "host:3").id == later.id
    session.commit()
    states = dict(session.execute(sa.select(TrainingJob.id, TrainingJob.state)).all())
    assert states == {first.id: "done", second.id: "running", later.id: "running"}


def test_claim_relies_on_the_index_when_its_check_misses_a_running_job(session, projects, monkeypatch):
    """Another process may start a job between the candidate query and the update: the unique
    index refuses the second running job, and the claim goes on to the next candidate."""
    a, b = projects
    running, _ = db.enqueue_training(session, a, "command")
    db.claim_job(session, "host:1")
    waiting, _ = db.enqueue_training(session, a, "command")
    other, _ = db.enqueue_training(session, b, "command")
    session.commit()

    def blind(project):  # the candidate query without its "no running job" condition
        query = sa.select(TrainingJob.id).where(TrainingJob.state == "queued")
        return query.order_by(TrainingJob.requested_at, TrainingJob.id)

    monkeypatch.setattr(jobs, "_claimable", blind)
    assert db.claim_job(session, "host:2").id == other.id
    assert db.claim_job(session, "host:3") is None
    session.commit()
    assert session.get(TrainingJob, waiting.id).state == "queued"
    assert session.get(TrainingJob, running.id).worker == "host:1"


def test_a_dead_workers_job_is_queued_again_then_failed(session, projects):
    a, _ = projects
    job, _ = db.enqueue_training(session, a, "command")
    db.claim_job(session, "w1")
    session.commit()
    assert db.requeue_stale(session, stale_after=60) == []  # its heartbeat is fresh
    _age(session, job.id)
    assert db.claim_job(session, "w2", stale_after=60).id == job.id  # requeued, then claimed again
    session.commit()
    assert (job.worker, job.attempts, job.state) == ("w2", 2, "running")
    assert job.message.startswith("interrupted (worker w1 stopped responding at ")
    assert job.message.endswith("); queued again")
    assert not db.heartbeat(session, job.id, "w1", "epoch 9/30")
    assert not db.finish_job(session, job.id, "w1", "done", "late result")
    assert db.heartbeat(session, job.id, "w2", "epoch 1/30")
    session.commit()
    assert (job.progress, job.state, job.worker) == ("epoch 1/30", "running", "w2")
    _age(session, job.id)
    assert db.claim_job(session, "w3").attempts == 3
    session.commit()
    _age(session, job.id)
    assert [j.id for j in db.requeue_stale(session, stale_after=60, max_attempts=3)] == [job.id]
    session.commit()
    assert job.state == "failed" and job.finished_at is not None
    assert job.message.startswith("interrupted (worker w3 stopped responding at ")
    assert job.message.endswith(") after 3 attempts")
    assert db.claim_job(session, "w4") is None


def test_a_dead_workers_job_fails_when_a_newer_one_waits(session, projects):
    a, _ = projects
    job, _ = db.enqueue_training(session, a, "command")
    db.claim_job(session, "w1")
    newer, _ = db.enqueue_training(session, a, "every-annotations")
    session.commit()
    _age(session, job.id, seconds=120)
    assert db.requeue_stale(session, stale_after=300) == []  # not stale yet by this measure
    assert db.claim_job(session, "w2", stale_after=60).id == newer.id
    session.commit()
    assert job.state == "failed" and job.message.endswith("; a newer job is queued")
    assert job.message.startswith("interrupted (worker w1 stopped responding at ")


def test_a_dead_workers_job_fails_when_a_job_is_queued_during_the_requeue(session, projects, monkeypatch):
    """A job queued by another process after the requeue looked: the index refuses a second
    queued job, and the dead worker's job fails instead."""
    a, _ = projects
    job, _ = db.enqueue_training(session, a, "command")
    db.claim_job(session, "w1")
    newer, _ = db.enqueue_training(session, a, "command")
    session.commit()
    _age(session, job.id)
    monkeypatch.setattr(jobs, "_queued", lambda session, project_id: None)  # the look that misses it
    assert [j.id for j in db.requeue_stale(session, stale_after=60)] == [job.id]
    session.commit()
    assert job.state == "failed" and job.message.endswith("; a newer job is queued")
    assert session.get(TrainingJob, newer.id).state == "queued"


def test_heartbeat_and_finish_belong_to_the_running_worker(session, projects):
    a, _ = projects
    job, _ = db.enqueue_training(session, a, "command")
    db.claim_job(session, "host:7")
    session.commit()
    before = job.heartbeat_at
    assert db.heartbeat(session, job.id, "host:7")
    session.commit()
    assert job.heartbeat_at > before and job.progress is None
    assert not db.heartbeat(session, job.id, "host:8")
    with pytest.raises(ValueError, match="state"):
        db.finish_job(session, job.id, "host:7", "running", "x")
    model = _segmenter(session, a, job_id=job.id)
    assert not db.finish_job(session, job.id, "host:8", "done", "not mine")
    assert db.finish_job(session, job.id, "host:7", "done", "trained:\n edit 0.61", segmenter_id=model.id)
    session.commit()
    assert (job.state, job.message, job.segmenter_id, job.progress) == ("done", "trained: edit 0.61", model.id, None)
    assert job.finished_at >= job.started_at
    assert not db.finish_job(session, job.id, "host:7", "failed", "twice")
    assert not db.heartbeat(session, job.id, "host:7")


def test_annotations_since_counts_new_corrections_of_the_project(session, projects):
    a, b = projects
    assert db.annotations_since(session, a, None) == 0
    first = _revise(session, a, 1, 11)
    _revise(session, a, 1, 11, "updated")
    _revise(session, a, 2, 12)
    _revise(session, a, 2, 12, "deleted")
    _revise(session, b, 3, 13)
    session.commit()
    assert db.annotations_since(session, a, None) == 3
    assert db.annotations_since(session, a, first.id) == 2
    job, _ = db.enqueue_training(session, a, "every-annotations")
    assert db.annotations_since(session, a, job.revision_mark) == 0
    _revise(session, a, 4, 14)
    assert db.annotations_since(session, a, job.revision_mark) == 1
    assert db.annotations_since(session, b, None) == 1


def test_recent_and_last_jobs_newest_first(session, projects):
    a, b = projects
    assert db.last_job(session, a) is None and db.recent_jobs(session) == []
    ids = []
    for _ in range(3):
        for project in (a, b):
            ids.append(db.enqueue_training(session, project, "command")[0].id)
            claimed = db.claim_job(session, "w", project=project)
            db.finish_job(session, claimed.id, "w", "done", "ok")
    session.commit()
    assert [j.id for j in db.recent_jobs(session)] == ids[::-1]
    assert [j.id for j in db.recent_jobs(session, a, limit=2)] == [ids[4], ids[2]]
    assert db.last_job(session, b).id == ids[5]


# -- registry ----------------------------------------------------------------------------


def test_promotions_replay_as_a_stack(session, projects):
    a, b = projects
    first = _segmenter(session, a, b"A")
    second = _segmenter(session, a, b"B")
    assert db.current_segmenter(session, a) is None and db.promotion_stack(session, a) == []
    db.promote(session, a, first.id, "trained")
    db.promote(session, a, second.id, "trained", note="edit 0.55 < 0.61")
    session.commit()
    assert db.promotion_stack(session, a) == [first.id, second.id]
    assert db.current_segmenter(session, a).id == second.id
    back = db.rollback(session, a, note="worse on new images")
    assert (back.reason, back.segmenter_id) == ("rollback", first.id)
    assert db.current_segmenter(session, a).id == first.id
    assert db.rollback(session, a).segmenter_id is None
    assert db.current_segmenter(session, a) is None and db.promotion_stack(session, a) == []
    with pytest.raises(ValueError, match="nothing to roll back"):
        db.rollback(session, a)
    db.promote(session, a, second.id, "promote")
    db.promote(session, a, None, "promote", note="back to Grad-CAM")
    assert db.promotion_stack(session, a) == [second.id, None] and db.current_segmenter(session, a) is None
    assert db.rollback(session, a).segmenter_id == second.id
    assert db.current_segmenter(session, a).id == second.id
    session.commit()
    reasons = [(p.reason, p.segmenter_id) for p in db.promotions_of(session, a)]
    assert reasons == [("trained", first.id), ("trained", second.id), ("rollback", first.id), ("rollback", None),
                       ("promote", second.id), ("promote", None), ("rollback", second.id)]
    assert db.promotion_stack(session, b) == []


def test_promote_refuses_foreign_segmenters_and_unknown_reasons(session, projects):
    a, b = projects
    theirs = _segmenter(session, b)
    with pytest.raises(ValueError, match=f"segmenter {theirs.id} belongs to another project"):
        db.promote(session, a, theirs.id, "promote")
    with pytest.raises(ValueError, match="segmenter 9999 does not exist"):
        db.promote(session, a, 9999, "promote")
    with pytest.raises(ValueError, match="reason must be one of"):
        db.promote(session, b, theirs.id, "because")
    with pytest.raises(ValueError, match=r"rollback\(\)"):
        db.promote(session, b, theirs.id, "rollback")
    assert db.promotions_of(session, a) == db.promotions_of(session, b) == []
    session.add(Promotion(project_id=a.id, reason="demote"))
    with pytest.raises(IntegrityError):
        session.flush()


def test_click_models_have_their_own_promotion_stack(session, projects):
    """A click model (spec kind "clicker") is promoted, listed and rolled back on the "clicks" stack,
    which never moves the pre-label source, and the other way round; a model is refused for the
    other role, and an unknown role is refused (by the registry and by the database)."""
    a, _ = projects
    segmenter = _segmenter(session, a, b"S")
    clicker = _segmenter(session, a, b"C", spec={"kind": "clicker", "input": [64, 64, 1]})
    assert db.role_of(clicker) == "clicks" and db.role_of(segmenter) == "prelabel"
    db.promote(session, a, segmenter.id, "trained")
    db.promote(session, a, clicker.id, "trained")  # its role from its kind
    assert db.current_segmenter(session, a).id == segmenter.id
    assert db.current_segmenter(session, a, "clicks").id == clicker.id
    assert db.promotion_stack(session, a, "clicks") == [clicker.id] and db.promotion_stack(session, a) == [segmenter.id]
    with pytest.raises(ValueError, match=f"model {clicker.id} is a click model: it cannot be promoted for 'prelabel'"):
        db.promote(session, a, clicker.id, "promote", role="prelabel")
    with pytest.raises(ValueError, match=f"model {segmenter.id} is a segmenter: it cannot be promoted for 'clicks'"):
        db.promote(session, a, segmenter.id, "promote", role="clicks")
    with pytest.raises(ValueError, match="role must be one of"):
        db.promote(session, a, None, "promote", role="hover")
    assert db.rollback(session, a, role="clicks").segmenter_id is None
    assert db.current_segmenter(session, a, "clicks") is None and db.current_segmenter(session, a).id == segmenter.id
    with pytest.raises(ValueError, match="no clicks promotion left"):
        db.rollback(session, a, role="clicks")
    assert [(p.reason, p.segmenter_id) for p in db.promotions_of(session, a, "clicks")] == [("trained", clicker.id), ("rollback", None)]
    session.commit()
    session.add(Promotion(project_id=a.id, reason="promote", role="hover"))
    with pytest.raises(IntegrityError):
        session.flush()


def test_migration_0009_gives_every_earlier_promotion_the_prelabel_role(url, engine, Session):
    config = db.alembic_config(url)
    command.downgrade(config, "0008")
    assert "role" not in {c["name"] for c in sa.inspect(engine).get_columns("promotions")}
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO projects (ls_project_id, label_studio, title, created_at, updated_at) "
                             "VALUES (7, '', 't', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        project_id = conn.execute(sa.text("SELECT id FROM projects")).scalar_one()
        conn.execute(sa.text("INSERT INTO promotions (project_id, reason, created_at) VALUES (:p, 'promote', CURRENT_TIMESTAMP)"),
                     {"p": project_id})
    command.upgrade(config, "head")
    with Session() as session:
        assert session.execute(sa.select(Promotion.role, Promotion.segmenter_id)).all() == [("prelabel", None)]


def test_segmenters_list_without_reading_their_weights(engine, Session, projects):
    a, b = projects
    blobs = [bytes([n]) * 4096 for n in range(1, 4)]
    with Session.begin() as session:
        ids = [_segmenter(session, a, blob).id for blob in blobs]
        _segmenter(session, b, b"other")
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    with Session() as session:
        listed = db.segmenters_of(session, a)
        assert [m.id for m in listed] == ids[::-1]
        assert all("weights" in sa.inspect(m).unloaded for m in listed)
        assert "weights," not in statements[-1] and "weights " not in statements[-1].replace("weights_id", "")
        assert listed[0].data == {"train": [1, 2], "val": [3], "test": [4]} and listed[0].spec == SPEC
        assert listed[0].verdict == "promoted: edit 0.61 < 0.82 (gradcam)"
        assert listed[0].weights == blobs[2]  # read on access
        stored = db.get_segmenter(session, ids[0])
        assert stored.weights == blobs[0] and stored.weights_id == f"sha256:{blobs[0].hex()[:16]}"
        assert db.get_segmenter(session, 9999) is None
        with pytest.raises(ValueError, match="weights"):
            _segmenter(session, a, b"")


# -- concurrency -------------------------------------------------------------------------


def _in_threads(count, work):
    """Run work(i) in `count` threads started together; re-raise the first error."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i):
        try:
            barrier.wait()
            work(i)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and not any(t.is_alive() for t in threads)


def _claim_all(Session, workers=8):
    """Each of `workers` threads (own session) claims until nothing is left; (job, project) ids."""
    claims: list[tuple[int, int]] = []

    def work(i):
        while True:
            with Session.begin() as session:
                job = db.claim_job(session, f"host:{i}")
                if job is None:
                    return
                claims.append((job.id, job.project_id))

    _in_threads(workers, work)
    return claims


def _running_per_project(session):
    rows = session.execute(
        sa.select(TrainingJob.project_id, sa.func.count()).where(TrainingJob.state == "running").group_by(TrainingJob.project_id)
    ).all()
    return dict(rows)


def test_concurrent_claims_take_each_job_once(Session):
    with Session.begin() as session:
        queued = sorted(db.enqueue_training(session, db.upsert_project(session, n), "command")[0].id for n in range(6))
    claims = _claim_all(Session)
    assert sorted(job for job, _ in claims) == queued
    with Session() as session:
        running = _running_per_project(session)
        assert len(running) == 6 and set(running.values()) == {1}
        assert session.scalar(sa.select(sa.func.count()).where(TrainingJob.state == "queued")) == 0


def test_concurrent_claims_never_run_two_jobs_of_a_project(Session):
    with Session.begin() as session:
        projects = [db.upsert_project(session, n) for n in range(6)]
        for project in projects:
            db.enqueue_training(session, project, "command")
    first = dict(_claim_all(Session))
    with Session.begin() as session:
        waiting = {db.enqueue_training(session, p, "command")[0].id: p.id for p in projects}
    assert _claim_all(Session) == []  # every project already runs a job
    done = [job for job, project in first.items() if project in {projects[0].id, projects[3].id}]
    with Session.begin() as session:
        for job in done:
            assert db.finish_job(session, job, session.get(TrainingJob, job).worker, "done", "ok")
    claims = _claim_all(Session)
    assert sorted(project for _, project in claims) == sorted([projects[0].id, projects[3].id])
    assert all(waiting[job] == project for job, project in claims)
    with Session() as session:
        assert set(_running_per_project(session).values()) == {1}


def test_concurrent_enqueues_queue_one_job(Session):
    with Session.begin() as session:
        project = db.upsert_project(session, 1)
    results: list[tuple[int, bool]] = []

    def work(i):
        with Session.begin() as session:
            job, new = db.enqueue_training(session, db.get_project(session, 1), f"t{i}")
            results.append((job.id, new))

    _in_threads(8, work)
    assert len({job for job, _ in results}) == 1 and sum(new for _, new in results) == 1
    with Session() as session:
        rows = session.scalars(sa.select(TrainingJob).where(TrainingJob.project_id == project.id)).all()
        assert [r.state for r in rows] == ["queued"]


def test_training_splits_by_the_stored_patient_key(session, projects):
    """Two tasks of one patient (tasks.patient_key) always land in the same split of a training
    job, which task-level keys would not give; tasks without a key are their own patient."""
    from backend.training import corrected_examples, split_examples
    from models.splits import split_of

    project = projects[0]
    patients = {}
    for n in range(40):
        for ls_task_id in (1000 + 2 * n, 1001 + 2 * n):
            task = db.live_task(session, project, ls_task_id, f"/data/upload/{ls_task_id}.png", patient_key=f"k1:p{n}")
            db.add_annotation_revision(session, task, ls_task_id, "created", [], fingerprint=f"p-{ls_task_id}")
            patients[ls_task_id] = f"k1:p{n}"
    loner = db.live_task(session, project, 5000, "/data/upload/5000.png")
    db.add_annotation_revision(session, loner, 5000, "created", [], fingerprint="p-5000")
    session.commit()
    examples, _ = corrected_examples(session, project)
    assert {e.task_id: e.patient for e in examples} == {**patients, 5000: "task-5000"}
    side = {e.task_id: name for name, part in split_examples(examples).items() for e in part}
    for n in range(40):
        assert side[1000 + 2 * n] == side[1001 + 2 * n]
    assert {side[t] for t in patients} == {"train", "val", "test"}
    task_level = {t: split_of(f"task-{t}", 0, (0.7, 0.15, 0.15)) for t in patients}
    assert any(task_level[1000 + 2 * n] != task_level[1001 + 2 * n] for n in range(40))  # the test has teeth


def test_corrected_tasks_stream_the_same_records_and_fill_missing_patient_keys(session, projects, monkeypatch):
    """`corrected_tasks` holds ids only and loads chunks; it yields what `read_tasks` does, and
    `fill_patient_keys` gives keys only to live rows that lack one."""
    from contextlib import nullcontext

    import db.corrected as corrected
    from db.repository import fill_patient_keys

    project = projects[0]
    for t in range(1, 8):
        task = db.live_task(session, project, t, f"/data/upload/{t}.png", patient_key="k1:x" if t == 3 else None)
        db.add_annotation_revision(session, task, 100 + t, "created", [{"t": t}], fingerprint=f"c-{t}")
        if t % 2:  # a newer revision of the same annotation replaces it
            db.add_annotation_revision(session, task, 100 + t, "updated", [{"t": -t}], fingerprint=f"u-{t}")
    db.add_annotation_revision(session, db.live_task(session, project, 5, ""), 205, "created", [{"c": 1}],
                               was_cancelled=True, fingerprint="x-5")
    session.commit()
    monkeypatch.setattr(corrected, "CHUNK", 3)
    tasks, _ = corrected.corrected_tasks(session, lambda: nullcontext(session), 1)
    records = list(tasks)
    assert [r.ls_task_id for r in records] == list(range(1, 8)) and len(tasks) == 7
    assert [[a.result for a in r.annotations] for r in records] == [[[{"t": -t}]] if t % 2 else [[{"t": t}]] for t in range(1, 8)]
    assert records == list(tasks) == corrected.read_tasks(session, 1)[0]
    assert tasks.missing_patient_keys() == [1, 2, 4, 5, 6, 7]
    assert fill_patient_keys(session, project, {1: "k1:a", 3: "k1:other", 99: "k1:z"}) == 1
    session.commit()
    assert [r.patient_key for r in tasks][:3] == ["k1:a", None, "k1:x"]  # read fresh, never overwritten
