"""Regressions: webhooks never split a task, bad input is a 4xx (never a 500), and every request
is bounded (tasks per /predict, body bytes, log lines per failed batch)."""
from __future__ import annotations

import base64
import json
import logging

import pytest
from sqlalchemy import func, select

from backend.app import create_app
from backend.config import Settings
from db import repository
from db.schema import AnnotationRevision, Failure, Prediction, Project, Task
from test_backend import CONFIG, annotation_event, count, make_settings, model_path, predict_body, task  # noqa: F401

IMG0 = "/data/local-files/?d=xrays/img0.png"


@pytest.fixture
def documents(tmp_path):
    import cv2
    import numpy as np

    root = tmp_path / "documents"
    (root / "xrays").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n, (h, w) in enumerate([(60, 80), (90, 50)]):
        cv2.imwrite(str(root / "xrays" / f"img{n}.png"), rng.integers(0, 255, (h, w), dtype=np.uint8))
    return root


@pytest.fixture
def settings(tmp_path, model_path, documents):  # noqa: F811
    return make_settings(tmp_path, model_path, documents)


@pytest.fixture
def client(settings):
    client = create_app(settings).test_client()
    config = {"action": "PROJECT_UPDATED", "project": {"id": 7, "title": "CXR", "label_config": CONFIG}}
    assert client.post("/webhook", json=config).status_code == 200
    return client


@pytest.fixture
def sessions(settings, client):
    from db.engine import make_engine, session_factory

    return session_factory(make_engine(settings.database_url))


def event(action, annotation_id, task_id, data, updated="2026-11-28T10:00:00Z"):
    body = annotation_event(action, annotation_id, task_id, updated=updated)
    if data is None:
        del body["task"]
    else:
        body["task"]["data"] = data
    return body


def tasks_by_row(sessions):
    """(ls_task_id, image_uri, live, annotation ids, prediction count) per task row, oldest first."""
    with sessions() as session:
        rows = []
        for t in session.scalars(select(Task).order_by(Task.id)):
            annotations = session.scalars(select(AnnotationRevision.ls_annotation_id).where(AnnotationRevision.task_id == t.id))
            predictions = session.scalar(select(func.count()).select_from(Prediction).where(Prediction.task_id == t.id))
            rows.append((t.ls_task_id, t.image_uri, t.deleted_at is None, sorted(set(annotations)), predictions))
        return rows


# --- 8. webhooks never split a task ----------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [{}, {"caption": "no image key"}, {"image": "http://ls-host:8080" + IMG0}, {"image": "https://other:443" + IMG0}],
    ids=["empty-data", "no-image-key", "absolute-url", "absolute-url-https"],
)
def test_a_webhook_naming_the_image_otherwise_or_not_at_all_keeps_the_predicted_task(client, sessions, data):
    assert client.post("/predict", json=predict_body(task(11, "img0.png"), project="7")).status_code == 200
    assert client.post("/webhook", json=event("ANNOTATION_CREATED", 5, 11, data)).json == {"status": "ok", "stored": 1}
    assert tasks_by_row(sessions) == [(11, IMG0, True, [5], 1)]


def test_a_webhook_naming_another_image_still_replaces_a_reused_task_id(client, sessions):
    assert client.post("/predict", json=predict_body(task(11, "img0.png"), project="7")).status_code == 200
    other = {"image": "http://ls-host:8080/data/local-files/?d=xrays/img1.png"}
    assert client.post("/webhook", json=event("ANNOTATION_CREATED", 5, 11, other)).json["stored"] == 1
    assert tasks_by_row(sessions) == [(11, IMG0, False, [], 1), (11, other["image"], True, [5], 0)]


@pytest.mark.parametrize("with_task_data", [True, False])
def test_a_late_update_of_an_annotation_of_a_deleted_task_leaves_the_task_that_reused_its_id(client, sessions, with_task_data):
    assert client.post("/webhook", json=event("ANNOTATION_CREATED", 5, 11, {"image": IMG0})).json["stored"] == 1
    assert client.post("/webhook", json={"action": "TASKS_DELETED", "tasks": [{"id": 11}], "project": {"id": 7}}).json["deleted"] == 1
    img1 = "/data/local-files/?d=xrays/img1.png"
    assert client.post("/webhook", json=event("ANNOTATION_CREATED", 6, 11, {"image": img1})).json["stored"] == 1
    late = event("ANNOTATION_UPDATED", 5, 11, {"image": IMG0} if with_task_data else None, updated="2026-11-28T10:05:00Z")
    assert client.post("/webhook", json=late).json["stored"] == 1
    assert tasks_by_row(sessions) == [(11, IMG0, False, [5], 0), (11, img1, True, [6], 0)]
    with sessions() as session:
        project = session.scalars(select(Project)).one()
        assert [(r.ls_annotation_id, r.action) for r in repository.current_annotations(session, project)] == [(6, "created")]


# --- 9. bad input is a 400 naming the problem, never a 500 -----------------------------------
def _predict_with(**changes):
    body = predict_body(task(1, "img0.png"))
    for key, value in changes.items():
        if key == "task_id":
            body["tasks"][0]["id"] = value
        else:
            body[key] = value
    return body


@pytest.mark.parametrize(
    "body, message",
    [
        (_predict_with(label_config=5), "label_config must be a string"),
        (_predict_with(label_config=[]), "label_config must be a string"),
        (_predict_with(label_config={}), "label_config must be a string"),
        (_predict_with(task_id=2**70), "tasks[0].id must be an integer id in 0..2**63-1"),
        (_predict_with(task_id=2**63), "tasks[0].id must be an integer id in 0..2**63-1"),
        (_predict_with(task_id=-1), "tasks[0].id must be an integer id in 0..2**63-1"),
        (_predict_with(task_id=True), "tasks[0].id must be an integer id, got bool"),
        (_predict_with(task_id=1.0), "tasks[0].id must be an integer id, got float"),
        (_predict_with(project=2**70), "project must be an integer id in 0..2**63-1"),
        (_predict_with(project=True), "project must look like '<id>.<timestamp>'"),
        (_predict_with(project="-1.5"), "project must look like '<id>.<timestamp>'"),
        ("[" * 100_000 + "]" * 100_000, "request body must be a JSON object"),
        ('{"tasks": ' + "[" * 100 + "]" * 100 + "}", "nested deeper than 64 levels"),
        ('{"tasks": [{"id": NaN, "data": {}}]}', "request body must be a JSON object"),
    ],
)
def test_malformed_predict_bodies_get_a_400_not_a_500(client, sessions, body, message):
    answer = client.post("/predict", data=body if isinstance(body, str) else json.dumps(body), content_type="application/json")
    assert answer.status_code == 400, answer.json
    assert message in answer.json["error"]
    assert count(sessions, Task) == 0 and count(sessions, Failure) == 0


@pytest.mark.parametrize("schema", [5, [], {"xml": CONFIG}])
def test_setup_with_a_schema_that_is_not_a_string_gets_a_400(client, schema):
    answer = client.post("/setup", json={"project": "7.1700000000", "schema": schema})
    assert answer.status_code == 400 and "schema must be a string (the labelling config XML)" in answer.json["error"]


def _webhook_with(field, value):
    body = annotation_event("ANNOTATION_CREATED")
    if field in ("task", "project"):
        body[field]["id"] = value
    else:
        body["annotation"][field] = value
    return body


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("result", "x", "result must be a list of region objects, got str"),
        ("result", [1, 2], "result must be a list of region objects; an entry is not an object"),
        ("lead_time", "12", "lead_time must be a finite number of seconds"),
        ("lead_time", {}, "lead_time must be a finite number of seconds"),
        ("lead_time", 10**400, "lead_time must be a finite number of seconds"),
        ("updated_at", 5, "expected an ISO 8601 timestamp string, got int"),
        ("updated_at", "garbage", "not an ISO 8601 timestamp"),
        ("created_at", 5, "expected an ISO 8601 timestamp string, got int"),
        ("created_at", "9999-12-31T23:59:59-05:00", "out of range in UTC"),
        ("id", 2**70, "the annotation's 'id' must be an integer id in 0..2**63-1"),
        ("id", True, "integer 'id'"),
        ("task", 2**70, "the annotation's task id must be an integer id in 0..2**63-1"),
        ("project", 2**70, "project must be an integer id in 0..2**63-1"),
        ("completed_by", 2**70, "completed_by must be an integer id in 0..2**63-1"),
        ("parent_prediction", "3", "parent_prediction must be an integer id, got str"),
    ],
)
def test_mistyped_webhooks_get_a_400_and_store_nothing(client, sessions, field, value, message):
    answer = client.post("/webhook", json=_webhook_with(field, value))
    assert answer.status_code == 400, answer.json
    assert message in answer.json["error"]
    assert count(sessions, AnnotationRevision) == 0 and count(sessions, Task) == 0


@pytest.mark.parametrize(
    "body, message",
    [
        ({"action": "TASKS_DELETED", "project": {"id": 7}, "tasks": [{"id": 2**64}]}, "'tasks' id must be an integer id in 0..2**63-1"),
        ({"action": "ANNOTATIONS_DELETED", "project": {"id": 7}, "annotations": [{"id": False}]}, "integer 'id'"),
        ({"action": "ANNOTATIONS_CREATED", "project": {"id": 7}, "annotations": [{"id": 1, "task": [1]}], "tasks": [{"id": [1]}]},
         "the annotation's task id must be an integer id, got list"),
        ({"action": "ANNOTATIONS_CREATED", "project": {"id": 7}, "annotations": [], "tasks": 5}, None),
        ({"action": "PROJECT_UPDATED", "project": {"id": 7, "label_config": ["<View/>"]}}, "the project's 'label_config' must be a string"),
    ],
)
def test_other_mistyped_webhooks_get_a_400(client, body, message):
    answer = client.post("/webhook", json=body)
    if message is None:
        assert answer.status_code == 200 and answer.json == {"status": "ok", "stored": 0}
    else:
        assert answer.status_code == 400 and message in answer.json["error"]


@pytest.mark.parametrize("configured", ["secret", "s\u00e9cret\u2603"])
def test_basic_auth_compares_non_ascii_credentials(tmp_path, model_path, documents, configured):  # noqa: F811
    settings = make_settings(tmp_path, model_path, documents, basic_auth_user="ls", basic_auth_pass=configured)
    client = create_app(settings).test_client()

    def health(user, password):
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return client.get("/health", headers={"Authorization": f"Basic {token}"})

    assert health("ls", configured).status_code == 200
    for user, password in [("ls", "s\u00e9cret"), ("l\u00fc", configured), ("\u00fc", "\u00e4")]:
        answer = health(user, password)
        assert answer.status_code == 401 and answer.json == {"error": "authentication required"}


# --- 10. every request is bounded ------------------------------------------------------------
def test_more_tasks_than_max_tasks_per_request_get_a_413_before_any_work(client, sessions):
    tasks = [task(n, "missing.png") for n in range(1001)]  # the default limit is 1000
    answer = client.post("/predict", json=predict_body(*tasks))
    assert answer.status_code == 413
    assert "1001 tasks in one request, over MAX_TASKS_PER_REQUEST=1000" in answer.json["error"]
    assert "labeler prelabel" in answer.json["error"]
    assert count(sessions, Failure) == 0
    assert 'labeler_failures_total{kind="too_large"} 1.0' in client.get("/metrics").get_data(as_text=True)


def test_max_tasks_per_request_and_max_request_bytes_are_settings(tmp_path, model_path, documents):  # noqa: F811
    assert Settings.from_env({"MODEL_PATH": "m.keras"}).max_tasks_per_request == 1000
    assert Settings.from_env({"MODEL_PATH": "m.keras"}).max_request_bytes == 64 * 1024 * 1024
    env = {"MODEL_PATH": "m.keras", "MAX_TASKS_PER_REQUEST": "2", "MAX_REQUEST_BYTES": "4000"}
    assert (Settings.from_env(env).max_tasks_per_request, Settings.from_env(env).max_request_bytes) == (2, 4000)
    with pytest.raises(ValueError, match="MAX_TASKS_PER_REQUEST must be positive"):
        Settings.from_env({"MODEL_PATH": "m.keras", "MAX_TASKS_PER_REQUEST": "0"})
    client = create_app(make_settings(tmp_path, model_path, documents, max_tasks_per_request=2, max_request_bytes=4000)).test_client()
    two = client.post("/predict", json=predict_body(task(1, "img0.png"), task(2, "img1.png")))
    assert two.status_code == 200 and len(two.json["results"]) == 2
    three = client.post("/predict", json=predict_body(task(1, "img0.png"), task(2, "img1.png"), task(3, "img0.png")))
    assert three.status_code == 413 and "MAX_TASKS_PER_REQUEST=2" in three.json["error"]
    big = predict_body(task(1, "img0.png"))
    big["params"] = {"padding": "x" * 5000}
    for route in ("/predict", "/webhook"):
        answer = client.post(route, data=json.dumps(big), content_type="application/json")
        assert answer.status_code == 413 and answer.json == {"error": "request body is over MAX_REQUEST_BYTES=4000 bytes"}


def test_the_failures_of_a_batch_are_logged_as_one_line_per_kind(client, sessions, caplog):
    tasks = [task(n, f"missing{n}.png") for n in range(1, 51)] + [task(100 + n, "img0.png") for n in range(2)]
    tasks += [{"id": 200 + n, "data": {"image": "ftp://host/x.png"}} for n in range(3)]
    with caplog.at_level(logging.WARNING, logger="backend"):
        answer = client.post("/predict", json=predict_body(*tasks))
    assert answer.status_code == 200 and [bool(r["result"]) for r in answer.json["results"]] == [False] * 50 + [True] * 2 + [False] * 3
    lines = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert len(lines) == 2, lines
    ids = ", ".join(str(n) for n in range(1, 21))
    assert lines[0].startswith(f"50 task(s) failed (config): tasks {ids} and 30 more; first: task 1: ")
    assert lines[1].startswith("3 task(s) failed (bad_task): tasks 200, 201, 202; first: task 200: ")
    assert count(sessions, Failure) == 53


def test_max_image_pixels_is_a_setting_and_an_image_over_it_fails_alone(tmp_path, model_path, documents):
    assert Settings.from_env({"MODEL_PATH": "m.keras", "MAX_IMAGE_PIXELS": "5000"}).max_image_pixels == 5000
    # img0.png is 80 x 60 = 4,800 pixels, img1.png 50 x 90 = 4,500: a cap of 4,600 refuses only img0
    client = create_app(make_settings(tmp_path, model_path, documents, max_image_pixels=4600)).test_client()
    answer = client.post("/predict", json=predict_body(task(1, "img0.png"), task(2, "img1.png")))
    assert answer.status_code == 200
    first, second = answer.json["results"]
    assert first["result"] == [] and second["result"]


def test_the_plan_cache_keeps_only_the_newest_configs(tmp_path, model_path, documents):
    from backend.app import PLAN_CACHE

    app = create_app(make_settings(tmp_path, model_path, documents))
    backend = app.config["BACKEND"]
    for n in range(PLAN_CACHE + 20):  # configs that differ only in a label: each is parsed and kept
        config = CONFIG.replace('<Label value="Opacity"/>', f'<Label value="Opacity"/><Label value="x{n}"/>', 1)
        backend.plan(config, ("covid", "normal", "pneumonia"))
    assert len(backend._plans) == PLAN_CACHE
    newest = CONFIG.replace('<Label value="Opacity"/>', f'<Label value="Opacity"/><Label value="x{PLAN_CACHE + 19}"/>', 1)
    assert (newest, ("covid", "normal", "pneumonia")) in backend._plans
