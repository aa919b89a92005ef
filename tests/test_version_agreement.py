"""One model version means one thing, whoever writes it (RELIABILITY.md, defect 1): ``labeler
prelabel`` and the backend name the same model and settings alike and record the same settings,
and a batch the database refuses is not answered to Label Studio either."""
from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from backend.app import create_app
from backend.predictor import prelabel_settings as backend_settings
from db import repository
from db.engine import make_engine, session_factory
from db.migrating import alembic_config, migrate
from db.schema import ModelVersion, Prediction, Project
from explain.prelabel import Prelabeler
from labeler.cli import prelabel_settings as cli_settings
from models.loading import load_classifier
from test_backend import count, documents, make_settings, model_path, predict_body, task  # noqa: F401 (fixtures)


def cli_defaults():
    return cli_settings("layercam", None, "predicted", "fraction:0.2", 0.001, 64)


def test_cli_and_backend_defaults_are_the_same_settings(tmp_path, model_path, documents):
    settings = make_settings(tmp_path, model_path, documents, cam_threshold="fraction:0.2")
    assert backend_settings(settings) == cli_defaults()


def test_backend_writes_under_a_version_the_cli_recorded_first(tmp_path, model_path, documents):
    settings = make_settings(tmp_path, model_path, documents, cam_threshold="fraction:0.2")
    loaded = load_classifier(model_path)
    prelabeler = Prelabeler(loaded.model, loaded.spec, cli_defaults())
    migrate(settings.database_url)
    sessions = session_factory(make_engine(settings.database_url))
    with sessions.begin() as session:  # what `labeler prelabel` records for its first batch
        repository.store_predictions(
            session, 7, prelabeler.version(loaded.version), loaded.version, prelabeler.recorded_settings, []
        )
    answer = create_app(settings).test_client().post("/predict", json=predict_body(task(1, "img0.png")))
    assert answer.status_code == 200
    assert answer.json["model_version"] == prelabeler.version(loaded.version)
    assert count(sessions, Prediction) >= 1


def test_a_batch_the_database_refuses_is_answered_503_and_names_why(tmp_path, model_path, documents):
    settings = make_settings(tmp_path, model_path, documents)
    client = create_app(settings).test_client()
    version = client.post("/setup", json={"project": "7"}).json["model_version"]
    sessions = session_factory(make_engine(settings.database_url))
    with sessions.begin() as session:  # the same name already stands for other settings
        session.add(ModelVersion(name=version, weights_id="other", settings={"method": "other"}))
    answer = client.post("/predict", json=predict_body(task(1, "img0.png"), task(2, "img1.png")))
    assert answer.status_code == 503
    assert "could not be stored" in answer.json["error"] and version in answer.json["error"]
    assert "results" not in answer.json
    assert count(sessions, Prediction) == 0


def test_migration_names_the_precision_of_versions_either_face_wrote(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0001")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(
            "INSERT INTO model_versions (name, weights_id, settings, created_at) VALUES "
            "('backend', 'w', '{\"method\": \"layercam\", \"mixed_precision\": false}', '2026-11-01'),"
            "('backend-fp16', 'w', '{\"method\": \"layercam\", \"mixed_precision\": true}', '2026-11-01'),"
            "('cli', 'w', '{\"method\": \"layercam\"}', '2026-11-01')"
        ))
        connection.execute(sa.text(
            "INSERT INTO projects (ls_project_id, created_at, updated_at) VALUES (3, '2026-11-01', '2026-11-01')"
        ))
    migrate(url)
    with session_factory(make_engine(url))() as session:
        settings = {v.name: v.settings for v in session.scalars(sa.select(ModelVersion))}
        assert settings == {
            "backend": {"method": "layercam", "precision": "float32"},
            "backend-fp16": {"method": "layercam", "precision": "mixed_float16"},
            "cli": {"method": "layercam", "precision": "float32"},
        }
        project = session.scalars(sa.select(Project)).one()
        assert project.label_studio == ""
        # the first face that knows its Label Studio takes the old row on, nothing is split
        assert repository.upsert_project(session, 3, label_studio="http://localhost:8080").id == project.id
        assert repository.upsert_project(session, 3, label_studio="http://other:8080").id != project.id
