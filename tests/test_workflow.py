"""The project-scale workflow against a real Label Studio: init -> import -> prelabel -> two
annotators -> sync -> export -> stats, with the backend connected and sharing the database.

Masks are checked pixel by pixel against the annotations and the statistics against values
computed here from the same masks.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import keras
import numpy as np
import pydicom
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select
from typer.testing import CliRunner

from db.engine import make_engine, session_factory
from db.schema import AnnotationRevision, Prediction, Project, Task
from explain.labelstudio.results import brush_result, choices_result
from labeler.cli import app
from labeler.demo import BackendProcess
from models.classifiers import build_small_cnn
from models.loading import save_classifier
from labeler.synthetic import write_dataset

CLASSES = ("covid", "normal", "pneumonia")


def write_dicom(path: Path, patient_id: str, seed: int | None = None) -> Path:
    """A small DX DICOM of ``patient_id``; its pixels follow ``seed`` (default: the id's length)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.PatientName, ds.PatientID = "Doe^Jane", patient_id
    ds.Modality, ds.PhotometricInterpretation = "DX", "MONOCHROME2"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 80, 100, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    seed = len(patient_id) if seed is None else seed
    ds.PixelData = np.random.default_rng(seed).integers(0, 255, (80, 100), dtype=np.uint8).tobytes()
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def setup(label_studio, tmp_path_factory):
    """Model, images, a shared database and a running backend."""
    folder = tmp_path_factory.mktemp("workflow")
    keras.utils.set_random_seed(1)
    model, spec = build_small_cnn(CLASSES, input_size=(64, 64), filters=(8, 16))
    model_path = save_classifier(model, spec, folder / "cnn.keras")
    write_dataset(folder / "data", per_class=3, size=96, seed=3)
    write_dicom(folder / "data" / "images" / "scan1.dcm", "PATIENT-0001")
    write_dicom(folder / "data" / "images" / "scan2.dcm", "PATIENT-0001x")
    env = {
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "DATABASE_URL": f"sqlite:///{folder / 'labeler.db'}",
        "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root),
    }
    backend = BackendProcess.start({**env, "MODEL_PATH": str(model_path)}, folder / "backend.log", timeout=120)
    yield {"folder": folder, "model": model_path, "env": env, "backend": backend.url}
    backend.stop()


def _wait(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)
    return value


def labeler(env, *args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_the_whole_workflow(setup, ls, label_studio):
    env, folder = dict(setup["env"]), setup["folder"]
    output = labeler(env, "init", "--model", setup["model"], "--backend-url", setup["backend"], "--title", "workflow")
    project = int(output.split("LABEL_STUDIO_PROJECT=")[1].split()[0])
    env["LABEL_STUDIO_PROJECT"] = str(project)
    config = ls.projects.get(id=project).label_config
    assert '<BrushLabels name="mask" toName="image"><Label value="Opacity"/></BrushLabels>' in config
    assert "PolygonLabels" not in config and '<Choice value="pneumonia"/>' in config
    assert len([m for m in ls.ml.list(project=project) if m.url == setup["backend"]]) == 1
    assert len([h for h in ls.webhooks.list(project=project) if h.url == f"{setup['backend']}/webhook"]) == 1
    labeler(env, "init", "--model", setup["model"], "--backend-url", setup["backend"], "--project", project)
    assert len([h for h in ls.webhooks.list(project=project) if h.url == f"{setup['backend']}/webhook"]) == 1

    assert "imported 8, skipped 0" in labeler(env, "import", folder / "data" / "images")
    assert "imported 0, skipped 8" in labeler(env, "import", folder / "data" / "images")
    tasks = list(ls.tasks.list(project=project, fields="all"))
    assert len(tasks) == 8
    patients = {t.data["patient"] for t in tasks if t.data.get("patient")}
    assert len(patients) == 2 and not any("PATIENT" in json.dumps(t.data) or "Doe" in json.dumps(t.data) for t in tasks)

    assert "pre-labelled 8 task(s)" in labeler(env, "prelabel", "--model", setup["model"], "--batch-size", 3)
    assert "pre-labelled 0 task(s)" in labeler(env, "prelabel", "--model", setup["model"])
    predictions = {t.id: ls.predictions.list(task=t.id) for t in tasks}
    assert all(len(p) == 1 for p in predictions.values())
    # the Data Manager shows (and sorts by) the scores of the active model version only
    versions = {p[0].model_version for p in predictions.values()}
    assert versions == {ls.projects.get(id=project).model_version}
    listed = requests.get(f"{label_studio.url}/api/tasks", params={"project": project, "fields": "all"},
                          headers={"Authorization": f"Token {label_studio.token}"}, timeout=30).json()
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    assert all(t["predictions_score"] is not None for t in listed), listed

    # Two annotators on three tasks: masks made here, so the truth is known exactly.
    second = ls.users.create(username="second", email="second@example.com", password="second-pass-123")
    rng = np.random.default_rng(0)
    chosen = [t for t in tasks if not t.data.get("patient")][:3]
    truth = {}
    for n, task in enumerate(chosen):
        height, width = 96, 96
        for annotator in (None, second.id):
            if annotator and n == 2:
                continue
            mask = np.zeros((height, width), bool)
            y, x = rng.integers(5, 50, 2)
            mask[y : y + 30, x : x + 25] = True
            choice = CLASSES[int(rng.integers(3))]
            result = [brush_result(mask, "Opacity", "mask", "image"), choices_result([choice], "diagnosis", "image")]
            extra = {"completed_by": annotator} if annotator else {}
            created = ls.annotations.create(id=task.id, result=result, lead_time=5.0, **extra)
            truth[(task.id, annotator or "admin")] = (mask, choice, created.id)
            time.sleep(1.1)  # distinct updated_at, so "latest" is well defined
    # One annotation updated, one created then deleted.
    first_task = chosen[0].id
    mask, choice, annotation_id = truth[(first_task, "admin")]
    moved = np.roll(mask, 7, axis=1)
    ls.annotations.update(id=annotation_id, result=[brush_result(moved, "Opacity", "mask", "image"), choices_result([choice], "diagnosis", "image")])
    truth[(first_task, "admin")] = (moved, choice, annotation_id)
    doomed = ls.annotations.create(id=chosen[2].id, result=[choices_result(["covid"], "diagnosis", "image")])
    ls.annotations.delete(id=doomed.id)

    sessions = session_factory(make_engine(env["DATABASE_URL"]))

    def count():
        with sessions() as session:
            return session.scalar(select(func.count()).select_from(AnnotationRevision))

    _wait(lambda: count() == 5 + 1 + 2)  # webhooks: 5 created, 1 updated, doomed created + deleted
    assert "0 new revision(s)" in labeler(env, "sync")
    assert "0 new revision(s)" in labeler(env, "sync")

    export = folder / "export"
    labeler(env, "export", export, "--annotators", "latest", "--document-root", label_studio.document_root)
    index = json.loads((export / "labels.json").read_text())["labels"].index("Opacity") + 1
    rows = {int(r["task_id"]): r for r in csv.DictReader(open(export / "manifest.csv"))}
    assert set(rows) == {t.id for t in chosen}
    for task in chosen:
        latest = truth.get((task.id, second.id)) or truth[(task.id, "admin")]
        if task.id == first_task:
            latest = truth[(task.id, "admin")]  # updated after the second annotator saved
        exported = cv2.imread(str(export / rows[task.id]["mask_file"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(exported == index, latest[0])
        assert rows[task.id]["choice"] == latest[1]

    stats = folder / "stats"
    labeler(env, "stats", "--out", stats)
    per_task = list(csv.DictReader(open(stats / "per_task.csv")))
    assert len(per_task) == 5
    for row in per_task:
        task_id, annotator = int(row["ls_task_id"]), int(row["annotator"])
        key = (task_id, second.id) if annotator == second.id else (task_id, "admin")
        final = truth[key][0]
        predicted = np.zeros_like(final)
        for region in predictions[task_id][0].result:
            if region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Opacity"]:
                predicted |= decode_rle(region["value"]["rle"]).reshape(96, 96, 4)[:, :, 3] > 0
        dice = 2 * (predicted & final).sum() / (predicted.sum() + final.sum())
        assert float(row["dice"]) == pytest.approx(dice, abs=1e-6)
        assert int(row["pixels_added"]) == int((final & ~predicted).sum())
    summary = {(r["metric"], r["scope"]): r["value"] for r in csv.DictReader(open(stats / "summary.csv"))}
    admin = ls.users.whoami().id
    pairs = [(truth[(t.id, "admin")][1], truth[(t.id, second.id)][1]) for t in chosen[:2]]
    observed = np.mean([a == b for a, b in pairs])
    expected = sum(np.mean([a == c for a, _ in pairs]) * np.mean([b == c for _, b in pairs]) for c in CLASSES)
    kappa = summary[("cohen_kappa", f"annotators {admin} vs {second.id}")]
    if expected < 1:
        assert float(kappa) == pytest.approx((observed - expected) / (1 - expected), abs=1e-6)
    else:
        assert kappa == ""  # undefined when both always chose one and the same class
    assert (stats / "report.html").read_text().count("data:image/png;base64") >= 1


def test_an_interrupted_prelabel_resumes_and_predicts_every_task_once(setup, ls, label_studio):
    env = dict(setup["env"])
    output = labeler(env, "init", "--model", setup["model"], "--title", "resume")
    project = int(output.split("LABEL_STUDIO_PROJECT=")[1].split()[0])
    env["LABEL_STUDIO_PROJECT"] = str(project)
    images = setup["folder"] / "many"
    write_dataset(images, per_class=24, size=96, seed=9)
    labeler(env, "import", images / "images")
    tasks = [t.id for t in ls.tasks.list(project=project)]
    assert len(tasks) == 48
    sessions = session_factory(make_engine(env["DATABASE_URL"]))

    def stored() -> int:  # predictions of this project in our database (written before Label Studio's)
        with sessions() as session:
            return session.scalar(
                select(func.count()).select_from(Prediction).join(Task).join(Project)
                .where(Project.ls_project_id == project)
            )

    command = [str(Path(sys.executable).parent / "labeler"), "prelabel", "--model", str(setup["model"]), "--batch-size", "2"]
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(lambda: stored() >= 2, 120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial, posted = stored(), len(ls.predictions.list(project=project))
    assert 0 < partial < 48 and posted <= partial  # bulk posts gather several batches: some stored, not yet posted
    output = labeler(env, "prelabel", "--model", setup["model"], "--batch-size", 4)
    per_task = {t: len(ls.predictions.list(task=t)) for t in tasks}
    assert set(per_task.values()) == {1}
    assert stored() == 48  # the stored ones were posted from the database, not predicted again
    if partial > posted:
        assert f"re-posted {partial - posted} stored prediction" in output
