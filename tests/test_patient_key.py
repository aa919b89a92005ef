"""Patient keys: a keyed hash of PatientID with a per-database secret (migration 0002), and
``labeler rekey-patients`` that converts the old unsalted values in Label Studio task data.

The old value is computed here with hashlib, independently of labeler.patients, so that a key
equal to it (the reversible scheme) fails the tests.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from db.engine import make_engine, session_factory
from db.installation import patient_key_secret
from db.migrating import migrate
from db.schema import Installation
from labeler.cli import app
from labeler.patients import keyed, patient_key, patient_secret
from labeler.importing import _as_png
from labeler.workspace import Workspace
from test_workflow import write_dicom

REPO = Path(__file__).resolve().parents[1]
LABELER = Path(sys.executable).with_name("labeler")
PATIENT = "PATIENT-0042"


def old_value(patient_id: str) -> str:
    """What earlier versions stored: sha256(PatientID) hex[:16], reversible by enumeration."""
    return hashlib.sha256(patient_id.encode()).hexdigest()[:16]


def secret_of(url: str) -> str:
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            return patient_key_secret(session)
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def no_shared_secret(monkeypatch):
    monkeypatch.delenv("PATIENT_KEY_SECRET", raising=False)


@pytest.fixture
def two_databases(tmp_path):
    return [f"sqlite:///{tmp_path / name / 'labeler.db'}" for name in ("a", "b")]


def test_key_is_keyed_not_the_plain_sha256_prefix(two_databases):
    ws = Workspace(database_url=two_databases[0])
    key = patient_key(PATIENT, patient_secret(ws))
    assert re.fullmatch(r"k1:[0-9a-f]{24}", key)
    assert old_value(PATIENT) not in key and hashlib.sha256(PATIENT.encode()).hexdigest()[:24] not in key


def test_key_differs_between_databases_and_is_stable_within_one(two_databases):
    a, b = (patient_key(PATIENT, patient_secret(Workspace(database_url=url))) for url in two_databases)
    assert a != b
    again = patient_key(PATIENT, patient_secret(Workspace(database_url=two_databases[0])))  # a new process, same db
    assert again == a
    assert patient_key("PATIENT-0043", patient_secret(Workspace(database_url=two_databases[0]))) != a


def test_shared_secret_from_the_environment(two_databases, monkeypatch):
    monkeypatch.setenv("PATIENT_KEY_SECRET", "s" * 40)
    a, b = (patient_key(PATIENT, patient_secret(Workspace(database_url=url))) for url in two_databases)
    assert a == b == keyed(old_value(PATIENT), "s" * 40)
    monkeypatch.setenv("PATIENT_KEY_SECRET", "short")
    with pytest.raises(ValueError, match="at least 32 characters"):
        patient_secret(Workspace(database_url=two_databases[0]))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    return request.getfixturevalue("postgres_database")


def test_migration_makes_exactly_one_secret_and_upgrading_again_keeps_it(url):
    migrate(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(Installation.id, Installation.patient_key_secret)).all()
        assert len(rows) == 1 and re.fullmatch(r"[0-9a-f]{64}", rows[0].patient_key_secret)
        migrate(url)
        with engine.connect() as conn:
            assert conn.execute(sa.select(Installation.id, Installation.patient_key_secret)).all() == rows
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # one row only
            conn.execute(sa.insert(Installation).values(id=2, patient_key_secret="0" * 64))
    finally:
        engine.dispose()


def test_rekeying_an_old_value_gives_the_key_of_a_fresh_import(tmp_path, two_databases):
    secret = patient_secret(Workspace(database_url=two_databases[0]))
    dicom = write_dicom(tmp_path / "scan.dcm", PATIENT, seed=1)
    _, fresh = _as_png(dicom, lambda patient_id: patient_key(patient_id, secret))
    assert fresh == keyed(old_value(PATIENT), secret)
    assert fresh != keyed(old_value(PATIENT), patient_secret(Workspace(database_url=two_databases[1])))


# -- end to end against a real Label Studio -----------------------------------------------------


def labeler(env, *args):
    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)


def test_rekey_patients_end_to_end(label_studio, ls, tmp_path):
    from explain.labelstudio.configs import labeling_config

    project = ls.projects.create(title="rekey", label_config=labeling_config(["clear", "opacity"])).id
    url = f"sqlite:///{tmp_path / 'labeler.db'}"
    env = {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "LABEL_STUDIO_PROJECT": str(project), "DATABASE_URL": url,
        "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root),
    }
    # Tasks as an earlier `labeler import` left them: two with old values, one without a patient.
    old = [
        {"image": "/data/local-files/?d=old/a.png", "content_hash": "a" * 64, "patient": old_value(PATIENT)},
        {"image": "/data/local-files/?d=old/b.png", "content_hash": "b" * 64, "patient": old_value("PATIENT-0007")},
        {"image": "/data/local-files/?d=old/c.png", "content_hash": "c" * 64},
    ]
    ls.projects.import_tasks(id=project, request=[{"data": d} for d in old])
    dicom = write_dicom(tmp_path / "new-scan.dcm", PATIENT, seed=2)  # same patient, a new image

    def data_by_hash():
        return {t.data["content_hash"]: t.data for t in ls.tasks.list(project=project, resolve_uri=False)}

    # import refuses to mix key kinds: one error line naming the command, nothing imported
    run_env = {**os.environ, **env, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    run_env.pop("PATIENT_KEY_SECRET", None)
    refused = subprocess.run([str(LABELER), "import", str(dicom)], env=run_env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert [line for line in refused.stderr.splitlines() if line.strip()] == [
        f"error: project {project} has 2 task(s) with an old, unkeyed patient value; "
        "run `labeler rekey-patients` first (same --database-url), then import again"
    ]
    assert len(data_by_hash()) == 3

    result = labeler(env, "rekey-patients")
    assert result.exit_code == 0, result.output
    secret = secret_of(url)
    expected = {"a" * 64: keyed(old_value(PATIENT), secret), "b" * 64: keyed(old_value("PATIENT-0007"), secret)}
    assert "re-keyed 2 task(s), 0 already keyed" in result.output
    after = data_by_hash()
    assert {h: d.get("patient") for h, d in after.items()} == {**expected, "c" * 64: None}
    assert [after[d["content_hash"]]["image"] for d in old] == [d["image"] for d in old]  # the rest is kept

    again = labeler(env, "rekey-patients")
    assert "re-keyed 0 task(s), 2 already keyed" in again.output and data_by_hash() == after

    imported = labeler(env, "import", dicom)
    assert imported.exit_code == 0 and "imported 1" in imported.output, imported.output
    new = [d for h, d in data_by_hash().items() if h not in after]
    assert len(new) == 1 and new[0]["patient"] == expected["a" * 64]  # the same patient as old task a
    assert PATIENT not in str(data_by_hash()) and "Doe" not in str(data_by_hash())


def test_rekey_resumes_a_partly_converted_project(label_studio, ls, tmp_path):
    from explain.labelstudio.configs import labeling_config

    project = ls.projects.create(title="rekey-resume", label_config=labeling_config(["clear", "opacity"])).id
    url = f"sqlite:///{tmp_path / 'labeler.db'}"
    migrate(url)
    secret = secret_of(url)
    done = keyed(old_value("P-1"), secret)  # what an interrupted run had already written
    ls.projects.import_tasks(id=project, request=[
        {"data": {"image": "/x/1.png", "content_hash": "1", "patient": done}},
        {"data": {"image": "/x/2.png", "content_hash": "2", "patient": old_value("P-2")}},
    ])
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "LABEL_STUDIO_PROJECT": str(project), "DATABASE_URL": url}
    result = labeler(env, "rekey-patients")
    assert "re-keyed 1 task(s), 1 already keyed" in result.output, result.output
    patients = {t.data["content_hash"]: t.data["patient"] for t in ls.tasks.list(project=project, resolve_uri=False)}
    assert patients == {"1": done, "2": keyed(old_value("P-2"), secret)}
