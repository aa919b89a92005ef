"""The database package, migrated by Alembic, on real SQLite files and on a real PostgreSQL server.

Every test that touches a database runs twice, ``[sqlite]`` on a fresh file and ``[postgresql]``
on a fresh database of the session's throwaway server (tests/postgres.py); the SQLite-only ones
(pragmas, WAL readers, BEGIN modes) are marked ``SQLITE_ONLY``.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import IntegrityError

import db
from db import repository as repo
from db.schema import AnnotationRevision, Base, Failure, Prediction, Project, Task

TABLES = {"projects", "tasks", "model_versions", "predictions", "annotation_revisions", "failures"}
RESULT = [{"id": "r1", "from_name": "mask", "to_name": "image", "type": "brushlabels",
           "value": {"format": "rle", "rle": [0, 1, 2], "brushlabels": ["Opacity"]}}]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """A fresh, empty (not yet migrated) database: a SQLite file in a folder that does not exist
    yet, or a new database on the PostgreSQL test server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'var' / 'labels.db'}"
    return request.getfixturevalue("postgres_database")


SQLITE_ONLY = pytest.mark.parametrize("url", ["sqlite"], indirect=True)
POSTGRES_ONLY = pytest.mark.parametrize("url", ["postgresql"], indirect=True)


def _dialect(url: str) -> str:
    return sa.engine.make_url(url).get_backend_name()


@pytest.fixture
def engine(url):
    db.migrate(url)
    engine = db.make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def Session(engine):
    return db.session_factory(engine)


@pytest.fixture
def session(Session):
    with Session() as session:
        yield session


@pytest.fixture
def project(session):
    project = db.upsert_project(session, 7, title="CXR", label_config="<View/>")
    session.commit()
    return project


@pytest.fixture
def version(session):
    version = db.model_version(session, "gradcam-v1", "sha256:abc", {"method": "gradcam", "layer": "mixed10"})
    session.commit()
    return version


def _sql_log(engine):
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    return statements


# -- migrations and engine ---------------------------------------------------------------


def test_migrate_creates_folder_and_twice_is_a_no_op(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert db.migrate(url) == db.head_revision()
    if _dialect(url) == "sqlite":
        assert (tmp_path / "var" / "labels.db").is_file()
    engine = db.make_engine(url)
    schema_before = _schema_sql(engine)
    assert db.migrate(url) == db.head_revision()
    assert _schema_sql(engine) == schema_before
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [db.head_revision()]
        assert TABLES <= set(sa.inspect(conn).get_table_names())
    engine.dispose()


def _schema_sql(engine):
    """(kind, name, definition) of every table, column and index, from the catalogue itself."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return conn.exec_driver_sql("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
        columns = conn.exec_driver_sql(
            "SELECT 'column', table_name || '.' || column_name, data_type || ' ' || is_nullable "
            "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 2"
        ).fetchall()
        indexes = conn.exec_driver_sql(
            "SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 2"
        ).fetchall()
        constraints = conn.exec_driver_sql(
            "SELECT 'constraint', conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace ORDER BY 2"
        ).fetchall()
        return columns + indexes + constraints


def test_downgrade_to_base_and_upgrade_again(url, engine):
    config = db.alembic_config(url)
    command.downgrade(config, "base")
    assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}
    command.upgrade(config, "head")
    assert TABLES <= set(sa.inspect(engine).get_table_names())


@SQLITE_ONLY
def test_sqlite_pragmas_on_every_connection(engine):
    reader = engine.execution_options(sqlite_begin="DEFERRED")
    with reader.connect() as first, reader.connect() as second:
        for conn in (first, second):
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000


@SQLITE_ONLY
def test_open_reader_does_not_block_a_writer(engine, Session):
    reader = engine.execution_options(sqlite_begin="DEFERRED")
    with reader.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Project)) == 0
        with Session.begin() as session:
            db.upsert_project(session, 1)
        assert conn.scalar(sa.select(sa.func.count()).select_from(Project)) == 0
    with reader.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(Project)) == 1


@SQLITE_ONLY
def test_bad_begin_mode_refused(url):
    with pytest.raises(ValueError, match="sqlite_begin"):
        db.make_engine(url, sqlite_begin="EVENTUALLY")


def test_alembic_config_keeps_percent_escapes():
    config = db.alembic_config("postgresql://user:p%40ss@host/labels")
    assert config.get_main_option("sqlalchemy.url") == "postgresql://user:p%40ss@host/labels"


def test_migrated_schema_equals_models(engine):
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        indexes = {ix["name"]: ix for ix in sa.inspect(conn).get_indexes("tasks")}
    live = indexes["uq_tasks_project_id_ls_task_id_live"]
    assert live["unique"] and live["column_names"] == ["project_id", "ls_task_id"]
    sql = {name: text for _, name, text in _schema_sql(engine)}
    partial = "WHERE deleted_at IS NULL" if engine.dialect.name == "sqlite" else "WHERE (deleted_at IS NULL)"
    assert sql["uq_tasks_project_id_ls_task_id_live"].endswith(partial)


def test_db_imports_nothing_else_of_the_project():
    code = ("import sys, db; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in {'labeler', 'backend', 'explain', 'models'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- integrity ---------------------------------------------------------------------------


def test_foreign_keys_enforced(session):
    session.add(Task(project_id=999, ls_task_id=1, image_uri="/data/upload/1/a.png"))
    with pytest.raises(IntegrityError):
        session.flush()


def test_unique_live_task_enforced_by_the_database(session, project):
    deleted = datetime(2025, 1, 1, tzinfo=timezone.utc)
    session.add_all([
        Task(project_id=project.id, ls_task_id=5, image_uri="a", deleted_at=deleted),
        Task(project_id=project.id, ls_task_id=5, image_uri="b", deleted_at=deleted),
        Task(project_id=project.id, ls_task_id=5, image_uri="c"),
    ])
    session.commit()
    session.add(Task(project_id=project.id, ls_task_id=5, image_uri="d"))
    with pytest.raises(IntegrityError):
        session.commit()


def test_revision_action_checked_by_the_database(session, project):
    task = db.live_task(session, project, 1, "a")
    session.add(AnnotationRevision(task_id=task.id, ls_annotation_id=1, action="edited", fingerprint="x"))
    with pytest.raises(IntegrityError):
        session.flush()


# -- projects, tasks, model versions -------------------------------------------------------


def test_upsert_project_updates_given_fields_only(session, project):
    created, updated = project.created_at, project.updated_at
    same = db.upsert_project(session, 7)
    assert same is project and same.title == "CXR" and same.updated_at == updated
    db.upsert_project(session, 7, title="CXR v2")
    session.commit()
    assert project.title == "CXR v2" and project.label_config == "<View/>"
    assert project.updated_at > updated and project.created_at == created
    assert session.scalar(sa.select(sa.func.count()).select_from(Project)) == 1


def test_task_id_reuse_keeps_the_deleted_task(session, project):
    first = db.live_task(session, project, 1, "/data/upload/7/a.png", width=100, height=80)
    assert db.live_task(session, project, 1, "/data/upload/7/a.png") is first
    assert db.delete_tasks(session, project, [1, 2]) == 1
    assert db.delete_tasks(session, project, [1]) == 0
    second = db.live_task(session, project, 1, "/data/upload/7/b.png")
    session.commit()
    rows = session.scalars(sa.select(Task).order_by(Task.id)).all()
    assert [t.image_uri for t in rows] == ["/data/upload/7/a.png", "/data/upload/7/b.png"]
    assert [t.is_live for t in rows] == [False, True]
    assert rows[1] is second and second.id != first.id
    assert db.get_live_task(session, project, 1) is second


def test_live_task_with_another_image_replaces_the_live_one(session, project):
    first = db.live_task(session, project, 3, "a.png")
    same = db.live_task(session, project, 3, "a.png", content_hash="h1", width=10, height=20)
    assert same is first and (first.content_hash, first.width, first.height) == ("h1", 10, 20)
    by_hash = db.live_task(session, project, 3, "a.png", content_hash="h2")
    by_uri = db.live_task(session, project, 3, "b.png")
    session.commit()
    assert len({first.id, by_hash.id, by_uri.id}) == 3
    assert [first.is_live, by_hash.is_live, by_uri.is_live] == [False, False, True]


def test_live_task_compares_label_studio_urls_in_normal_form(session, project):
    first = db.live_task(session, project, 4, "/data/upload/1/x.png?a=1")
    assert db.live_task(session, project, 4, "http://ls-host:8080/data/upload/1/x.png?a=1") is first
    assert db.live_task(session, project, 4, "https://ls.example/data/upload/1/x.png?a=1") is first
    assert db.live_task(session, project, 4, "") is first  # unknown: the live task as it is
    assert first.image_uri == "/data/upload/1/x.png?a=1" and first.is_live
    other = db.live_task(session, project, 4, "http://ls-host:8080/data/upload/1/x.png?a=2")
    assert other is not first and not first.is_live
    assert repo.normal_image_uri("http://h/storage-data/s3/x.png") == "/storage-data/s3/x.png"
    assert repo.normal_image_uri("http://h/images/x.png") == "http://h/images/x.png"
    assert repo.normal_image_uri("s3://bucket/data/x.png") == "s3://bucket/data/x.png"
    assert repo.normal_image_uri("http://[::1/data/x.png") == "http://[::1/data/x.png"


def test_a_task_records_its_patient_and_source_from_the_task_data(session, project):
    origin = repo.task_origin({"image": "a.png", "patient": "k1:abc", "source": "ward 3/a.dcm"})
    assert origin == {"patient_key": "k1:abc", "source_name": "ward 3/a.dcm"}
    task = db.live_task(session, project, 8, "a.png", **origin)
    assert (task.patient_key, task.source_name) == ("k1:abc", "ward 3/a.dcm")
    assert db.live_task(session, project, 8, "a.png") is task and task.patient_key == "k1:abc"  # unknown: kept
    db.live_task(session, project, 8, "a.png", patient_key="k1:def")  # e.g. after rekey-patients
    session.commit()
    assert (task.patient_key, task.source_name) == ("k1:def", "ward 3/a.dcm")
    for data in (None, {}, {"patient": 3, "source": ""}, {"patient": "x" * 65, "source": ["a"]}):
        assert repo.task_origin(data) == {"patient_key": None, "source_name": None}


def test_migration_0005_adds_and_drops_the_task_origin(url, engine):
    config = db.alembic_config(url)
    command.downgrade(config, "0004")
    assert not {"patient_key", "source_name"} & {c["name"] for c in sa.inspect(engine).get_columns("tasks")}
    command.upgrade(config, "head")
    assert {"patient_key", "source_name"} <= {c["name"] for c in sa.inspect(engine).get_columns("tasks")}
    indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(engine).get_indexes("tasks")}
    assert indexes["ix_tasks_project_id_content_hash"] == ["project_id", "content_hash"]
    assert indexes["ix_tasks_project_id_source_name"] == ["project_id", "source_name"]


def test_a_task_recorded_without_its_image_takes_the_first_one_given(session, project):
    first = db.live_task(session, project, 5, "")
    assert db.live_task(session, project, 5, "/data/upload/1/y.png", content_hash="h", width=3, height=4) is first
    assert (first.image_uri, first.content_hash, first.width, first.height) == ("/data/upload/1/y.png", "h", 3, 4)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ls_annotation_id": 2**63}, "ls_annotation_id must be an integer id in 0..2\\*\\*63-1"),
        ({"ls_annotation_id": True}, "ls_annotation_id must be an integer id, got bool"),
        ({"completed_by": -1}, "completed_by must be an integer id in"),
        ({"parent_prediction": "3"}, "parent_prediction must be an integer id, got str"),
        ({"result": "x"}, "result must be a list of region objects, got str"),
        ({"result": [[1]]}, "an entry is not an object"),
        ({"lead_time": float("nan")}, "lead_time must be a finite number"),
        ({"lead_time": "5"}, "lead_time must be a finite number"),
        ({"ls_updated_at": 5}, "expected an ISO 8601 timestamp string, got int"),
        ({"ls_created_at": "yesterday"}, "not an ISO 8601 timestamp"),
    ],
)
def test_add_annotation_revision_refuses_mistyped_values_with_a_value_error(session, project, changes, message):
    task = db.live_task(session, project, 6, "a.png")
    values = {"ls_annotation_id": 1, "result": [], **changes}
    with pytest.raises(ValueError, match=message):
        repo.add_annotation_revision(session, task, values.pop("ls_annotation_id"), "created", values.pop("result"), **values)
    with pytest.raises(ValueError, match="ls_task_id must be an integer id in"):
        db.live_task(session, project, 2**64, "a.png")


def test_model_version_get_or_create(session, version):
    settings = {"layer": "mixed10", "method": "gradcam"}
    assert db.model_version(session, "gradcam-v1", "sha256:abc", settings) is version
    with pytest.raises(ValueError, match="new name"):
        db.model_version(session, "gradcam-v1", "sha256:abc", {"method": "gradcam++"})
    other = db.model_version(session, "gradcam-v2", "sha256:abc", {"threshold": np.float32(0.5)})
    session.commit()
    assert other.id != version.id and other.settings == {"threshold": 0.5}


# -- predictions ---------------------------------------------------------------------------


def _predict(session, task, version, heatmap=None, score=0.8, class_name="covid"):
    return db.add_prediction(
        session, task, version,
        probabilities={"covid": np.float32(0.8), "normal": 0.15, "pneumonia": 0.05},
        predicted_class="covid", score=score, class_name=class_name,
        heatmap=heatmap, results=RESULT,
    )


def test_predictions_are_append_only(engine, session, project, version):
    task = db.live_task(session, project, 1, "a.png")
    first = _predict(session, task, version, heatmap=np.full((6, 6), 0.5))
    session.commit()
    statements = _sql_log(engine)
    second = _predict(session, task, version, score=0.6)
    session.commit()
    assert not [s for s in statements if s.lstrip().upper().startswith(("UPDATE", "DELETE"))]
    assert [p.id for p in db.predictions_for(session, project, 1)] == [first.id, second.id]
    session.expire_all()
    assert session.get(Prediction, first.id).score == pytest.approx(0.8)
    assert session.get(Prediction, first.id).probabilities["covid"] == pytest.approx(0.8)
    assert session.get(Prediction, first.id).results == RESULT


def test_prediction_queries_follow_the_live_task(session, project, version):
    old = db.live_task(session, project, 1, "a.png")
    _predict(session, old, version)
    new = db.live_task(session, project, 1, "b.png")
    v2 = db.model_version(session, "gradcam-v2", "sha256:def", {})
    p1 = _predict(session, new, version, class_name="covid")
    p2 = _predict(session, new, v2, class_name="normal")
    session.commit()
    assert [p.id for p in db.predictions_for(session, project, 1)] == [p1.id, p2.id]
    assert len(db.predictions_for(session, project, 1, include_deleted_tasks=True)) == 3
    assert db.latest_prediction(session, project, 1) is p2
    assert db.latest_prediction(session, project, 1, model_version="gradcam-v1") is p1
    assert db.latest_prediction(session, project, 1, class_name="covid") is p1
    assert db.latest_prediction(session, project, 2) is None


def test_prediction_rejects_non_finite_numbers(session, project, version):
    task = db.live_task(session, project, 1, "a.png")
    with pytest.raises(ValueError, match="score"):
        _predict(session, task, version, score=float("nan"))


# -- heatmaps ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (1, 2), (64, 48)])
def test_heatmap_round_trip_within_one_level(shape):
    heatmap = np.random.default_rng(0).random(shape)
    heatmap.flat[0], heatmap.flat[-1] = 0.0, 1.0
    decoded = db.decode_heatmap(db.encode_heatmap(heatmap))
    assert decoded.shape == shape and decoded.dtype == np.float32
    assert np.abs(decoded - heatmap).max() <= 0.5 / 255 + 1e-7
    assert decoded.min() == 0.0 and decoded.max() == 1.0


def test_heatmap_is_compact():
    heatmap = np.random.default_rng(1).random((8, 8)).astype(np.float16)
    assert len(db.encode_heatmap(heatmap)) < 100
    assert len(db.encode_heatmap(np.zeros((64, 64)))) < 60


@pytest.mark.parametrize("bad", [np.zeros(4), np.zeros((2, 2, 2)), np.zeros((0, 3)),
                                 np.full((2, 2), np.nan), np.full((2, 2), 1.5), np.full((2, 2), -0.1)])
def test_heatmap_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        db.encode_heatmap(bad)


def test_heatmap_rejects_foreign_bytes():
    with pytest.raises(ValueError):
        db.decode_heatmap(b"\x89PNG\r\n\x1a\n" + bytes(20))


def test_heatmap_stored_with_the_prediction(Session, session, project, version):
    heatmap = np.linspace(0, 1, 48).reshape(6, 8)
    task = db.live_task(session, project, 1, "a.png")
    prediction_id = _predict(session, task, version, heatmap=heatmap).id
    session.commit()
    with Session() as fresh:
        stored = fresh.get(Prediction, prediction_id)
        assert np.abs(stored.heatmap_array - heatmap).max() <= 1 / 255


# -- annotation revisions --------------------------------------------------------------------


def _revise(session, task, ls_annotation_id=11, action="created", updated="2025-03-01T10:00:00.5Z", **kw):
    return db.add_annotation_revision(
        session, task, ls_annotation_id, action, kw.pop("result", RESULT),
        completed_by=1, updated_by=1, lead_time=12.5, ls_created_at="2025-03-01T10:00:00Z",
        ls_updated_at=updated, parent_prediction=3, **kw,
    )


def test_duplicate_delivery_adds_nothing(session, project):
    task = db.live_task(session, project, 1, "a.png")
    first = _revise(session, task)
    assert first is not None and len(first.fingerprint) == 64
    assert _revise(session, task) is None
    assert _revise(session, task, updated="2025-03-01T12:00:00.5+02:00") is None
    update = _revise(session, task, action="updated", updated="2025-03-01T10:05:00Z")
    session.commit()
    assert [r.id for r in db.revisions(session, project, 1)] == [first.id, update.id]


def test_duplicate_racing_past_the_check_is_caught(session, project, monkeypatch):
    task = db.live_task(session, project, 1, "a.png")
    _revise(session, task)
    checks: list[str] = []
    real_check = repo._fingerprint_exists

    def first_check_misses(session, fingerprint):
        checks.append(fingerprint)
        return len(checks) > 1 and real_check(session, fingerprint)

    monkeypatch.setattr(repo, "_fingerprint_exists", first_check_misses)
    assert _revise(session, task) is None
    assert len(checks) == 2
    session.commit()
    assert session.scalar(sa.select(sa.func.count()).select_from(AnnotationRevision)) == 1
    assert db.get_live_task(session, project, 1) is task


def test_other_integrity_errors_are_not_swallowed(session, project):
    ghost = Task(id=999, project_id=project.id, ls_task_id=9, image_uri="x")
    with pytest.raises(IntegrityError):
        db.add_annotation_revision(session, ghost, 1, "created", [], fingerprint="f" * 64)


def test_revision_fields_and_utc_times(Session, session, project):
    task = db.live_task(session, project, 1, "a.png")
    revision_id = _revise(session, task, was_cancelled=True, ground_truth=True).id
    session.commit()
    with Session() as fresh:
        stored = fresh.get(AnnotationRevision, revision_id)
        assert stored.result == RESULT and stored.lead_time == 12.5 and stored.parent_prediction == 3
        assert stored.was_cancelled is True and stored.ground_truth is True
        assert stored.ls_updated_at == datetime(2025, 3, 1, 10, 0, 0, 500000, tzinfo=timezone.utc)
        for value in (stored.ls_created_at, stored.received_at, fresh.get(Project, project.id).created_at):
            assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
        assert abs(datetime.now(timezone.utc) - stored.received_at) < timedelta(minutes=1)


def test_naive_timestamps_are_refused(session, project):
    project.updated_at = datetime(2025, 1, 1)
    with pytest.raises(sa.exc.StatementError, match="timezone-aware"):
        session.flush()


def test_record_deletion(session, project):
    task = db.live_task(session, project, 1, "a.png")
    other = db.live_task(session, project, 2, "b.png")
    _revise(session, task, ls_annotation_id=11)
    _revise(session, task, ls_annotation_id=11, action="updated", updated="2025-03-02T00:00:00Z")
    kept = _revise(session, other, ls_annotation_id=12)
    deleted = db.record_deletion(session, project, 11)
    assert deleted is not None and deleted.task_id == task.id and deleted.action == "deleted"
    assert deleted.result is None
    assert db.record_deletion(session, project, 11) is None
    assert db.record_deletion(session, project, 404) is None
    assert db.record_deletion(session, db.upsert_project(session, 8), 12) is None
    session.commit()
    assert [r.action for r in db.revisions(session, project, 1)] == ["created", "updated", "deleted"]
    assert db.current_annotations(session, project) == [kept]


def test_deleted_revision_takes_no_result(session, project):
    task = db.live_task(session, project, 1, "a.png")
    with pytest.raises(ValueError, match="action"):
        _revise(session, task, action="removed")
    with pytest.raises(ValueError, match="result"):
        _revise(session, task, action="deleted")


# -- failures ----------------------------------------------------------------------------


def test_failures_stored_on_one_line(session, project):
    db.add_failure(session, "image_fetch", "HTTP 401\n  for /data/upload/7/a.png", project, ls_task_id=4)
    db.add_failure(session, "bad_request", "x" * 900)
    session.commit()
    rows = session.scalars(sa.select(Failure).order_by(Failure.id)).all()
    assert [(f.kind, f.project_id, f.ls_task_id) for f in rows] == [
        ("image_fetch", project.id, 4), ("bad_request", None, None)]
    assert rows[0].message == "HTTP 401 for /data/upload/7/a.png"
    assert len(rows[1].message) == 500 and rows[1].message.endswith("...")
    with pytest.raises(ValueError, match="kind"):
        db.add_failure(session, "", "no kind")


# -- concurrency ---------------------------------------------------------------------------


def test_concurrent_writers_with_duplicate_fingerprints(url, engine, project):
    workers, distinct, shared = 4, 50, 10
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        own = db.make_engine(url)
        Session = db.session_factory(own)
        try:
            barrier.wait()
            for i in range(distinct + shared):
                with Session.begin() as session:
                    proj = db.upsert_project(session, 7)
                    task = db.live_task(session, proj, 1, "a.png")
                    key = f"shared-{i}" if i >= distinct else f"w{worker}-{i}"
                    db.add_annotation_revision(session, task, i, "created", [], fingerprint=key)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            own.dispose()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with db.session_factory(engine)() as session:
        count = session.scalar(sa.select(sa.func.count()).select_from(AnnotationRevision))
        assert count == workers * distinct + shared
        assert session.scalar(sa.select(sa.func.count()).select_from(Task)) == 1


def test_concurrent_migrations_from_several_processes(url):
    """Several backend workers start at once and each migrates: all succeed, one schema results."""
    code = "import sys, db; assert db.migrate(sys.argv[1]) == db.head_revision()"
    processes = [
        subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(4)
    ]
    outputs = [(p.wait(timeout=120), p.stdout.read()[-1500:]) for p in processes]
    assert [rc for rc, _ in outputs] == [0] * 4, outputs
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [db.head_revision()]
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        engine.dispose()


def _task_record(ls_task_id: int, image_uri: str, content_hash=None, width=None, height=None, patient_key=None):
    """What `db.live_tasks` reads of a `repo.PredictionRecord`."""
    return SimpleNamespace(ls_task_id=ls_task_id, image_uri=image_uri, content_hash=content_hash, width=width,
                           height=height, patient_key=patient_key, source_name=None)


def test_live_tasks_in_one_go_keep_replace_and_create_as_one_at_a_time_does(session, project):
    kept = db.live_task(session, project, 1, "a.png")
    replaced = db.live_task(session, project, 2, "b.png", content_hash="h1")
    session.commit()
    records = [
        _task_record(1, "a.png", "ha", 10, 20, patient_key="k1:p"),  # the same image: filled in
        _task_record(2, "b.png", "h2"),  # another content: a new row, the old one deleted
        _task_record(3, "c.png"),  # new
        _task_record(3, "c.png", width=5),  # twice in one batch: the same row
    ]
    got = db.live_tasks(session, project, records)
    session.commit()
    assert got[0] is kept and (kept.content_hash, kept.width, kept.height, kept.patient_key) == ("ha", 10, 20, "k1:p")
    assert got[1] is not replaced and got[1].content_hash == "h2" and not replaced.is_live and got[1].is_live
    assert got[2] is got[3] and got[2].width == 5 and got[2].id is not None
    assert {t.ls_task_id: t.id for t in session.scalars(sa.select(Task).where(Task.deleted_at.is_(None)))} == {
        1: kept.id, 2: got[1].id, 3: got[2].id}
    with pytest.raises(ValueError, match="image_uri must be a string"):
        db.live_tasks(session, project, [_task_record(4, None)])


@pytest.mark.parametrize("in_one_go", [False, True], ids=["one at a time", "in one go"])
def test_concurrent_writers_create_each_live_task_once(url, engine, project, in_one_go):
    """Writers racing to create the same new tasks: the partial unique index lets one win, the
    others get the winner's row (savepoint + re-read), nobody fails; `live_tasks` falls back to
    one at a time when its batch meets a row another writer added."""
    workers, tasks = 4, 20
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []
    seen: dict[int, set[int]] = {n: set() for n in range(tasks)}

    def work() -> None:
        own = db.make_engine(url)
        Session = db.session_factory(own)
        try:
            barrier.wait()
            if in_one_go:
                for start in range(0, tasks, 5):
                    with Session.begin() as session:
                        proj = db.upsert_project(session, 7)
                        batch = [_task_record(100 + n, f"{n}.png") for n in range(start, start + 5)]
                        for n, task in zip(range(start, start + 5), db.live_tasks(session, proj, batch)):
                            seen[n].add(task.id)
                return
            for n in range(tasks):
                with Session.begin() as session:
                    proj = db.upsert_project(session, 7)
                    seen[n].add(db.live_task(session, proj, 100 + n, f"{n}.png").id)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            own.dispose()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(len(ids) == 1 for ids in seen.values()), seen
    with db.session_factory(engine)() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Task)) == tasks


@POSTGRES_ONLY
def test_timestamps_stay_utc_whatever_the_session_time_zone(url):
    db.migrate(url)
    engine = db.make_engine(url, connect_args={"options": "-c TimeZone=Asia/Kolkata"})
    try:
        with db.session_factory(engine)() as session:
            project = db.upsert_project(session, 7)
            task = db.live_task(session, project, 1, "a.png")
            revision_id = _revise(session, task).id
            session.commit()
        with db.session_factory(engine)() as session:
            stored = session.get(AnnotationRevision, revision_id)
            assert stored.ls_updated_at == datetime(2025, 3, 1, 10, 0, 0, 500000, tzinfo=timezone.utc)
            assert stored.ls_updated_at.utcoffset() == timedelta(0)
            local = session.execute(sa.text("SELECT ls_updated_at::text FROM annotation_revisions")).scalar()
            assert local == "2025-03-01 15:30:00.5+05:30"
            since = datetime(2025, 3, 1, 9, 59, tzinfo=timezone.utc)
            assert session.scalar(sa.select(sa.func.count()).where(AnnotationRevision.ls_updated_at > since)) == 1
    finally:
        engine.dispose()


def test_label_studio_ids_beyond_32_bits_are_stored(session):
    """Label Studio's ids are bigints: 2**40 fits every id column on every database."""
    big = 2**40
    project = repo.upsert_project(session, big, label_studio="http://localhost:8080")
    task = repo.live_task(session, project, big + 1, "/data/upload/1/a.png")
    revision = repo.add_annotation_revision(
        session, task, big + 2, "created", [], completed_by=big + 3, updated_by=big + 4, parent_prediction=big + 5
    )
    repo.add_failure(session, "image_fetch", "x", project=project, ls_task_id=big + 6)
    session.commit()
    stored = session.get(AnnotationRevision, revision.id)
    assert (stored.task.project.ls_project_id, stored.task.ls_task_id, stored.ls_annotation_id) == (big, big + 1, big + 2)
    assert (stored.completed_by, stored.updated_by, stored.parent_prediction) == (big + 3, big + 4, big + 5)
    assert session.scalar(sa.select(Failure.ls_task_id)) == big + 6
