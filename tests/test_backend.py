"""The ML backend through Flask's test client: protocol shapes, batches, storage, webhooks, errors.

Images come from a local-files document root on disk; the end-to-end tests against a real Label
Studio server are in test_backend_labelstudio.py.
"""
from __future__ import annotations

import base64
import json

import cv2
import keras
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from sqlalchemy import func, select

from backend.app import create_app
from backend.config import Settings
from db.engine import make_engine, session_factory
from db.schema import AnnotationRevision, Failure, Prediction, Task
from models.classifiers import build_small_cnn
from models.loading import save_classifier

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="diagnosis" toName="image"><Choice value="covid"/><Choice value="normal"/><Choice value="pneumonia"/></Choices>
  <BrushLabels name="mask" toName="image"><Label value="Opacity"/></BrushLabels>
  <PolygonLabels name="outline" toName="image"><Label value="Opacity"/></PolygonLabels>
</View>"""


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model, spec = build_small_cnn(("covid", "normal", "pneumonia"), input_size=(32, 32), filters=(4, 8))
    return save_classifier(model, spec, tmp_path_factory.mktemp("model") / "cnn.keras")


@pytest.fixture
def documents(tmp_path):
    root = tmp_path / "documents"
    (root / "xrays").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n, (h, w) in enumerate([(60, 80), (90, 50), (64, 64)]):
        cv2.imwrite(str(root / "xrays" / f"img{n}.png"), rng.integers(0, 255, (h, w), dtype=np.uint8))
    (root / "xrays" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


def make_settings(tmp_path, model_path, documents, **overrides):
    values = dict(
        model_path=model_path,
        database_url=f"sqlite:///{tmp_path / 'backend.db'}",
        local_files_document_root=documents,
        warmup=False,
        cam_threshold="fraction:0.3",
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path, model_path, documents):
    return make_settings(tmp_path, model_path, documents)


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


@pytest.fixture
def sessions(settings, client):
    return session_factory(make_engine(settings.database_url))


def task(task_id, name):
    return {"id": task_id, "data": {"image": f"/data/local-files/?d=xrays/{name}"}, "annotations": [], "predictions": []}


def predict_body(*tasks, project="7.1700000000"):
    return {"tasks": list(tasks), "project": project, "label_config": CONFIG, "params": {"login": None}}


def count(sessions, table, *where):
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(table).where(*where))


def test_health_and_setup_name_the_model_version(client, settings, tmp_path, model_path, documents):
    health = client.get("/health")
    assert health.status_code == 200 and health.json["status"] == "UP"
    setup = client.post("/setup", json={"project": "7.1700000000", "schema": CONFIG, "hostname": "http://x", "access_token": "t"})
    assert setup.status_code == 200
    version = setup.json["model_version"]
    assert version.startswith(f"{_weights(model_path)}-layercam@features-")
    assert "fraction0.3" in version
    other = make_settings(tmp_path / "b", model_path, documents, cam_method="gradcam++")
    (tmp_path / "b").mkdir()
    other_version = create_app(other).test_client().post("/setup", json={"project": "7", "schema": CONFIG}).json
    assert other_version["model_version"] != version and "gradcam++" in other_version["model_version"]


def _weights(model_path):
    from models.loading import load_classifier

    return load_classifier(model_path).version


def test_predict_answers_one_result_per_task_in_order_and_stores_them(client, sessions):
    first = task(11, "img0.png")
    first["data"].update(patient="k1:p9", source="ward/img0.dcm")
    answer = client.post("/predict", json=predict_body(first, task(12, "img1.png"), task(13, "img2.png")))
    assert answer.status_code == 200
    results = answer.json["results"]
    assert len(results) == 3
    sizes = [(80, 60), (50, 90), (64, 64)]
    for result, (width, height) in zip(results, sizes):
        assert result["model_version"] == answer.json["model_version"]
        kinds = {r["type"] for r in result["result"]}
        assert "choices" in kinds
        for region in result["result"]:
            assert region["to_name"] == "image"
            if region["type"] == "brushlabels":
                assert (region["original_width"], region["original_height"]) == (width, height)
                mask = decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3]
                assert mask.any() and region["value"]["brushlabels"] == ["Opacity"]
                assert region["from_name"] == "mask"
            if region["type"] == "polygonlabels":
                points = np.array(region["value"]["points"])
                assert len(points) >= 3 and points.min() >= 0 and points.max() <= 100
            if region["type"] == "choices":
                assert region["value"]["choices"][0] in ("covid", "normal", "pneumonia")
    assert sum(r["type"] == "brushlabels" for result in results for r in result["result"]) >= 1
    assert count(sessions, Task) == 3
    with sessions() as session:
        origins = session.execute(select(Task.ls_task_id, Task.patient_key, Task.source_name).order_by(Task.ls_task_id)).all()
    assert origins == [(11, "k1:p9", "ward/img0.dcm"), (12, None, None), (13, None, None)]
    assert count(sessions, Prediction) == 3
    with sessions() as session:
        stored = session.scalars(select(Prediction).join(Task).where(Task.ls_task_id == 12)).one()
        assert stored.results == results[1]["result"]
        assert stored.heatmap_array.shape == (16, 16)  # one 2x2 pooling of 32x32
        assert set(stored.probabilities) == {"covid", "normal", "pneumonia"}


def test_a_bad_image_fails_alone_and_is_recorded(client, sessions):
    answer = client.post("/predict", json=predict_body(task(1, "img0.png"), task(2, "broken.png"), task(3, "missing.png"), task(4, "img2.png")))
    assert answer.status_code == 200
    results = answer.json["results"]
    assert [bool(r["result"]) for r in results] == [True, False, False, True]
    assert count(sessions, Prediction) == 2
    with sessions() as session:
        failures = session.scalars(select(Failure).order_by(Failure.ls_task_id)).all()
    assert [(f.ls_task_id, f.kind) for f in failures] == [(2, "image_decode"), (3, "config")]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'labeler_failures_total{kind="image_decode"} 1.0' in metrics
    assert "labeler_predictions_total 2.0" in metrics
    assert 'labeler_model_info{version="' in metrics


@pytest.mark.parametrize(
    "body, message",
    [
        (None, "request body must be a JSON object"),
        ({"tasks": []}, "tasks must be a non-empty list"),
        ({"tasks": [{"id": 1}]}, "tasks[0] must be an object with a 'data' object"),
        ({"tasks": [{"id": "x", "data": {}}]}, "tasks[0].id must be an integer id, got str"),
        ({"tasks": [task(1, "img0.png")], "project": "abc"}, "project must look like"),
        ({"tasks": [task(1, "img0.png")], "project": "9.1"}, "label_config is missing"),
        ({"tasks": [task(1, "img0.png")], "label_config": "<View><Text name='t' value='$t'/></View>"}, "no <Image> object"),
        ({"tasks": [task(1, "img0.png")], "label_config": "<View"}, "not a valid labelling config"),
    ],
)
def test_malformed_predict_bodies_get_a_400_naming_the_problem(client, body, message):
    answer = client.post("/predict", data="not json" if body is None else json.dumps(body), content_type="application/json")
    assert answer.status_code == 400
    assert message in answer.json["error"]
    assert "Traceback" not in answer.get_data(as_text=True)


def test_config_without_supported_controls_is_refused(client):
    config = "<View><Image name='image' value='$image'/><TextArea name='note' toName='image'/></View>"
    answer = client.post("/predict", json={"tasks": [task(1, "img0.png")], "label_config": config})
    assert answer.status_code == 400 and "no BrushLabels, PolygonLabels, RectangleLabels or Choices" in answer.json["error"]


def test_basic_auth_when_configured(tmp_path, model_path, documents):
    settings = make_settings(tmp_path, model_path, documents, basic_auth_user="ls", basic_auth_pass="secret")
    client = create_app(settings).test_client()
    assert client.get("/health").status_code == 401
    assert client.get("/health").json == {"error": "authentication required"}
    good = base64.b64encode(b"ls:secret").decode()
    bad = base64.b64encode(b"ls:wrong").decode()
    assert client.get("/health", headers={"Authorization": f"Basic {good}"}).status_code == 200
    assert client.get("/health", headers={"Authorization": f"Basic {bad}"}).status_code == 401


def annotation_event(action, annotation_id=5, task_id=11, result=None, updated="2026-11-28T10:00:00.000000Z"):
    return {
        "action": action,
        "annotation": {
            "id": annotation_id, "task": task_id, "project": 7, "result": result or [], "completed_by": 1,
            "updated_by": 1, "lead_time": 12.5, "was_cancelled": False, "ground_truth": False,
            "parent_prediction": 3, "created_at": "2026-11-28T09:59:00Z", "updated_at": updated,
        },
        "task": {"id": task_id, "data": {"image": "/data/local-files/?d=xrays/img0.png", "patient": "k1:p1", "source": "a/img0.png"}},
        "project": {"id": 7, "title": "CXR"},
    }


def test_webhooks_store_revisions_once_and_never_overwrite(client, sessions):
    region = [{"id": "a", "type": "choices", "from_name": "diagnosis", "to_name": "image", "value": {"choices": ["covid"]}}]
    created = annotation_event("ANNOTATION_CREATED", result=region)
    assert client.post("/webhook", json=created).json == {"status": "ok", "stored": 1}
    assert client.post("/webhook", json=created).json == {"status": "ok", "stored": 0}
    updated = annotation_event("ANNOTATION_UPDATED", result=[], updated="2026-11-28T10:05:00Z")
    assert client.post("/webhook", json=updated).json["stored"] == 1
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 5}], "project": {"id": 7}}
    assert client.post("/webhook", json=deleted).json["stored"] == 1
    assert client.post("/webhook", json=deleted).json["stored"] == 0
    with sessions() as session:
        revisions = session.scalars(select(AnnotationRevision).order_by(AnnotationRevision.id)).all()
    assert [r.action for r in revisions] == ["created", "updated", "deleted"]
    assert revisions[0].result == region and revisions[0].lead_time == 12.5 and revisions[0].parent_prediction == 3
    with sessions() as session:
        assert session.execute(select(Task.patient_key, Task.source_name)).one() == ("k1:p1", "a/img0.png")
    tasks_deleted = {"action": "TASKS_DELETED", "tasks": [{"id": 11}], "project": {"id": 7}}
    assert client.post("/webhook", json=tasks_deleted).json == {"status": "ok", "deleted": 1}
    assert count(sessions, Task, Task.deleted_at.is_(None)) == 0 and count(sessions, Task) == 1
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 7, "title": "New"}}).status_code == 200
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}}).json == {"job": "1", "status": "queued"}
    assert client.post("/webhook", json={"action": "SOMETHING_NEW", "project": {"id": 7}}).json["status"] == "ignored"


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "needs an 'action'"),
        ({"action": "ANNOTATION_CREATED"}, "needs a project id"),
        ({"action": "ANNOTATION_CREATED", "project": {"id": 7}, "annotation": {"id": "x"}}, "integer 'id'"),
        ({"action": "ANNOTATIONS_DELETED", "project": {"id": 7}, "annotations": "5"}, "'annotations' must be a list"),
        ({"action": "TASKS_DELETED", "project": {"id": 7}, "tasks": [{"id": None}]}, "integer 'id'"),
    ],
)
def test_malformed_webhooks_get_a_400(client, body, message):
    answer = client.post("/webhook", json=body)
    assert answer.status_code == 400 and message in answer.json["error"]


def test_a_model_that_cannot_load_gets_a_503_naming_it(tmp_path, documents):
    settings = make_settings(tmp_path, tmp_path / "missing.keras", documents)
    client = create_app(settings).test_client()
    answer = client.post("/predict", json=predict_body(task(1, "img0.png")))
    assert answer.status_code == 503
    assert answer.json == {"error": "model could not be loaded: missing.keras: no such model file or folder"}
    assert client.get("/health").json["model_loaded"] is False


def test_bad_settings_stop_the_server_with_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    command = [str(Path(sys.executable).parent / "labeler-backend")]
    for env, message in [
        ({}, "error: MODEL_PATH is not set"),
        ({"MODEL_PATH": "m.keras", "CAM_THRESHOLD": "magic"}, "error: CAM_THRESHOLD 'magic'"),
        ({"MODEL_PATH": "m.keras", "BATCH_SIZE": "many"}, "error: BATCH_SIZE must be a int"),
    ]:
        done = subprocess.run(command, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines()[-1].startswith(message) and "Traceback" not in done.stderr


def test_mixed_precision_is_a_setting_and_part_of_the_version(tmp_path, model_path, documents):
    settings = make_settings(tmp_path, model_path, documents, mixed_precision=True)
    client = create_app(settings).test_client()
    version = client.post("/setup", json={"project": "7", "schema": CONFIG}).json["model_version"]
    assert version.endswith("-fp16")
    answer = client.post("/predict", json=predict_body(task(1, "img0.png")))
    assert answer.status_code == 200 and answer.json["results"][0]["model_version"] == version
    assert Settings.from_env({"MODEL_PATH": "m.keras", "MIXED_PRECISION": "yes"}).mixed_precision
    with pytest.raises(ValueError, match="MIXED_PRECISION must be"):
        Settings.from_env({"MODEL_PATH": "m.keras", "MIXED_PRECISION": "maybe"})
