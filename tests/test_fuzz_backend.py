"""Fuzzing /predict, /webhook and /setup of a real app (Flask test client, SQLite migrated by Alembic, a tiny
Keras model) with Hypothesis: arbitrary JSON and valid bodies with one field replaced.

Properties: never a 5xx; every answer is a JSON object, ``{"error": ...}`` for a 4xx and the
route's own shape otherwise; no traceback in an answer or a log record; a /predict batch of good
and bad tasks gets one result per task, in order, a non-empty one for every good task.
Examples are derandomized (the same on every run) and bounded (about 30 s on 2 cores).
"""
from __future__ import annotations

import copy
import json
import logging

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.app import create_app
from test_backend import CONFIG, make_settings, model_path, predict_body, task  # noqa: F401  (model_path: the tiny-model fixture)

pytestmark = pytest.mark.slow  # Hypothesis examples, about 30 s on 2 cores



def fuzz(examples: int):
    """Reproducible (derandomized, no example database) and bounded Hypothesis settings."""
    return settings(
        max_examples=examples, derandomize=True, database=None, deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


SIZES = {"img0.png": (80, 60), "img1.png": (50, 90), "img2.png": (64, 64)}  # width, height


class Records(logging.Handler):
    """Every log record of the module's requests, formatted (tracebacks included)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def records():
    handler = Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


@pytest.fixture(scope="module")
def client(tmp_path_factory, model_path, records):  # noqa: F811
    folder = tmp_path_factory.mktemp("fuzz")
    documents = folder / "documents"
    (documents / "xrays").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (width, height) in SIZES.items():
        cv2.imwrite(str(documents / "xrays" / name), rng.integers(0, 255, (height, width), dtype=np.uint8))
    (documents / "xrays" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    client = create_app(make_settings(folder, model_path, documents, max_request_bytes=2_000_000)).test_client()
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 7, "label_config": CONFIG}}).status_code == 200
    return client


# --- strategies ------------------------------------------------------------------------------
EDGE = st.sampled_from([
    0, -1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**70, 10**30, True, False, 1.5, -0.0, 1e308, 5.0,
    "", " ", "7", "7.1", "-1", "x" * 70_000, "\u00e9\u4e2d\U0001f4a5", "\ud800", "\x00", "NaN",
    "2026-11-28T10:00:00Z", "9999-12-31T23:59:59-05:00", "garbage", "<View", "http://ls-host:8080/data/upload/1/x.png",
    "/data/local-files/?d=../../etc/passwd", "[", {}, [], [{}], [1], {"id": 2**64}, None,
])
SCALARS = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**62, max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30) | EDGE
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=25,
)
KEYS = st.sampled_from(["tasks", "project", "label_config", "action", "annotation", "annotations", "task", "data", "id"])
OBJECTS = st.dictionaries(KEYS | st.text(max_size=10), JSON, max_size=6)
ACTIONS = st.sampled_from([
    "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED", "TASKS_DELETED",
    "PROJECT_UPDATED", "START_TRAINING",
])


def annotation(annotation_id=5, task_id=11):
    region = {"id": "a", "type": "choices", "from_name": "diagnosis", "to_name": "image", "value": {"choices": ["covid"]}}
    return {
        "id": annotation_id, "task": task_id, "project": 7, "result": [region], "completed_by": 1, "updated_by": {"id": 1},
        "lead_time": 12.5, "was_cancelled": False, "ground_truth": False, "parent_prediction": 3,
        "created_at": "2026-11-28T09:59:00Z", "updated_at": "2026-11-28T10:00:00.000000Z",
    }


def webhook_body(action: str) -> dict:
    """A valid body of each webhook action."""
    project = {"id": 7, "title": "CXR", "label_config": CONFIG}
    data = {"image": "/data/local-files/?d=xrays/img0.png"}
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        return {"action": action, "annotation": annotation(), "task": {"id": 11, "data": data}, "project": project}
    if action == "ANNOTATIONS_CREATED":
        return {"action": action, "annotations": [annotation(6, 12)], "tasks": [{"id": 12, "data": data}], "project": project}
    if action == "ANNOTATIONS_DELETED":
        return {"action": action, "annotations": [{"id": 5}], "project": project}
    if action == "TASKS_DELETED":
        return {"action": action, "tasks": [{"id": 11}], "project": project}
    return {"action": action, "project": project}


def paths(value, prefix=()):
    """Every path (keys / indices) into a JSON value, the root excluded."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield (*prefix, key)
        yield from paths(child, (*prefix, key))


@st.composite
def mutated(draw, bodies):
    """A valid body with one field (at any depth) replaced by another JSON value, or deleted."""
    body = copy.deepcopy(draw(bodies))
    path = draw(st.sampled_from(sorted(paths(body), key=repr)))
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(EDGE | JSON)
    return body


PREDICT_BODIES = st.builds(
    lambda names, project: predict_body(*(task(n + 1, name) for n, name in enumerate(names)), project=project),
    st.lists(st.sampled_from(sorted(SIZES)), min_size=1, max_size=3),
    st.sampled_from(["7.1700000000", "7", 7, None]),
)
WEBHOOK_BODIES = ACTIONS.map(webhook_body)
SETUP_BODIES = st.just({"project": "7.1700000000", "schema": CONFIG, "hostname": "http://ls-host:8080", "access_token": "t"})

BAD_IMAGES = st.sampled_from([
    "/data/local-files/?d=xrays/broken.png", "/data/local-files/?d=xrays/missing.png", "", 5, None, [], {"uri": 1},
    "x" * 70_000, "ftp://host/x.png", "/data/local-files/?d=../../../etc/passwd", "\u00e9\ud800", "http://[::1",
    "s3://bucket/x.png", "/data/upload/1/x.png",
])


# --- properties --------------------------------------------------------------------------------
def check(answer, records, route: str) -> dict:
    """The answer is a JSON object: an error for a 4xx, else the route's own keys; never a 5xx or
    a traceback, in the answer or in the log."""
    text = answer.get_data(as_text=True)
    assert answer.status_code < 500, text[:500]
    assert "Traceback" not in text and 'File "' not in text
    logged = "\n".join(records.lines)
    assert "Traceback" not in logged and 'File "' not in logged, logged[-2000:]
    records.lines.clear()
    body = json.loads(text)
    assert isinstance(body, dict)
    if answer.status_code >= 400:
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    else:
        assert {"/predict": "results", "/webhook": "status", "/setup": "model_version"}[route] in body
    return body


def post(client, route, body):
    return client.post(route, data=json.dumps(body), content_type="application/json")


@fuzz(600)
@given(st.sampled_from(["/predict", "/webhook", "/setup"]), OBJECTS | JSON)
def test_arbitrary_json_never_gets_a_5xx(client, records, route, body):
    check(post(client, route, body), records, route)


@fuzz(300)
@given(mutated(PREDICT_BODIES))
def test_predict_bodies_with_one_field_changed_never_get_a_5xx(client, records, body):
    check(post(client, "/predict", body), records, "/predict")


@fuzz(1000)
@given(mutated(WEBHOOK_BODIES))
def test_webhook_bodies_with_one_field_changed_never_get_a_5xx(client, records, body):
    check(post(client, "/webhook", body), records, "/webhook")


@fuzz(150)
@given(mutated(SETUP_BODIES))
def test_setup_bodies_with_one_field_changed_never_get_a_5xx(client, records, body):
    check(post(client, "/setup", body), records, "/setup")


@fuzz(80)
@given(
    st.lists(st.one_of(st.sampled_from(sorted(SIZES)).map(lambda n: ("good", n)), BAD_IMAGES.map(lambda u: ("bad", u))),
             min_size=1, max_size=6),
    st.lists(st.integers(0, 2**63 - 1), min_size=6, max_size=6, unique=True),
)
def test_good_tasks_among_bad_ones_each_get_their_own_result_in_order(client, records, kinds, ids):
    tasks = []
    for (kind, value), task_id in zip(kinds, ids):
        tasks.append(task(task_id, value) if kind == "good" else {"id": task_id, "data": {"image": value}})
    answer = post(client, "/predict", predict_body(*tasks))
    results = check(answer, records, "/predict")["results"]
    assert answer.status_code == 200 and len(results) == len(tasks)
    for (kind, value), result in zip(kinds, results):
        if kind == "bad":
            assert result["result"] == []
            continue
        assert result["result"], value
        sized = [r for r in result["result"] if "original_width" in r]
        assert all((r["original_width"], r["original_height"]) == SIZES[value] for r in sized)
