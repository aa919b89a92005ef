"""Several backend workers writing to one PostgreSQL database at once lose nothing.

``labeler-backend`` (gunicorn, 3 workers x 2 threads) runs as a real process on loopback with
DATABASE_URL pointing at a fresh database of the session's PostgreSQL test server
(tests/postgres.py), a tiny classifier and a local-files document root. A thread pool then fires
/predict and /webhook requests at it concurrently (webhooks touch the very tasks /predict is
creating, and exact duplicate deliveries race their originals); afterwards every prediction and
every annotation revision must be in the database exactly once, and no request may have failed.
The measured throughput is printed (``pytest -s``) for the README.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from sqlalchemy import func, select

from db.engine import make_engine, session_factory
from db.schema import AnnotationRevision, Failure, Prediction, Project, Task
from postgres import _free_port as free_port
from test_backend import CONFIG, model_path  # noqa: F401  (model_path: the same tiny-model fixture)

pytestmark = pytest.mark.postgres  # also runs labeler-backend (gunicorn) as a process

WORKERS, THREADS = 3, 2
PREDICT_REQUESTS = 24
CREATED, UPDATED, DUPLICATES = 40, 10, 10  # 60 webhooks, 50 distinct revisions
CLIENTS = 12
START_TIMEOUT_S = 120
IMAGES = 4


@pytest.fixture
def documents(tmp_path):
    root = tmp_path / "documents"
    (root / "xrays").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n, (h, w) in enumerate([(60, 80), (90, 50), (64, 64), (40, 48)][:IMAGES]):
        cv2.imwrite(str(root / "xrays" / f"img{n}.png"), rng.integers(0, 255, (h, w), dtype=np.uint8))
    return root


@pytest.fixture
def backend(postgres_database, model_path, documents, tmp_path):
    """``labeler-backend`` with 3 workers on PostgreSQL; yields its URL once every worker has
    loaded the model."""
    port = free_port()
    env = {
        **os.environ,
        "MODEL_PATH": str(model_path),
        "DATABASE_URL": postgres_database,
        "LOCAL_FILES_DOCUMENT_ROOT": str(documents),
        "BACKEND_PORT": str(port),
        "BACKEND_WORKERS": str(WORKERS),
        "BACKEND_THREADS": str(THREADS),
        "NO_PROXY": "127.0.0.1,localhost",
    }
    log_path = tmp_path / "backend.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "labeler-backend")], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_workers(process, url, log_path)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def _wait_for_workers(process, url: str, log_path: Path) -> None:
    """Every worker logs "model ... loaded" once; then /health must say so on many requests in a
    row (each on a new connection, so the kernel spreads them over the workers)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    in_a_row = 0
    while in_a_row < 3 * WORKERS:
        assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"workers did not load the model in {START_TIMEOUT_S} s:\n" + (
            log_path.read_text(errors="replace")[-3000:])
        loaded = log_path.read_text(errors="replace").count("model cnn.keras loaded")
        try:
            ok = loaded >= WORKERS and requests.get(f"{url}/health", timeout=2).json().get("model_loaded")
        except requests.RequestException:
            ok = False
        in_a_row = in_a_row + 1 if ok else 0
        time.sleep(0.05 if ok else 0.5)


def _task(task_id: int) -> dict:
    return {"id": task_id, "data": {"image": f"/data/local-files/?d=xrays/img{task_id % IMAGES}.png"},
            "annotations": [], "predictions": []}


def _annotation_event(action: str, annotation_id: int, task_id: int, updated: str) -> dict:
    result = [{"id": f"r{annotation_id}", "type": "choices", "from_name": "diagnosis", "to_name": "image",
               "value": {"choices": [("covid", "normal", "pneumonia")[annotation_id % 3]]}}]
    return {
        "action": action,
        "annotation": {
            "id": annotation_id, "task": task_id, "project": 7, "result": result, "completed_by": 1 + annotation_id % 4,
            "updated_by": 1, "lead_time": 3.5, "was_cancelled": False, "ground_truth": False,
            "parent_prediction": None, "created_at": "2026-11-28T09:00:00Z", "updated_at": updated,
        },
        "task": _task(task_id),
        "project": {"id": 7, "title": "load"},
    }


def _requests() -> tuple[list[tuple[str, dict]], list[int]]:
    """The shuffled mix of /predict and /webhook bodies, and the task ids /predict covers."""
    calls: list[tuple[str, dict]] = []
    task_ids: list[int] = []
    next_id = 1000
    for n in range(PREDICT_REQUESTS):
        tasks = [_task(next_id + k) for k in range(3 if n % 3 == 0 else 2)]
        next_id += len(tasks)
        task_ids += [t["id"] for t in tasks]
        calls.append(("/predict", {"tasks": tasks, "project": "7.1700000000", "label_config": CONFIG,
                                   "params": {"login": None}}))
    created = [_annotation_event("ANNOTATION_CREATED", a, task_ids[a % len(task_ids)], "2026-11-28T10:00:00Z")
               for a in range(1, CREATED + 1)]
    updated = [_annotation_event("ANNOTATION_UPDATED", a, task_ids[a % len(task_ids)], "2026-11-28T10:05:00.25Z")
               for a in range(1, UPDATED + 1)]
    duplicates = created[UPDATED:UPDATED + DUPLICATES]  # the same deliveries again, racing the first
    calls += [("/webhook", body) for body in created + updated + duplicates]
    random.Random(0).shuffle(calls)
    return calls, task_ids


def test_three_workers_lose_nothing_under_concurrent_load(backend, postgres_database):
    calls, task_ids = _requests()
    local = threading.local()

    def send(call):
        route, body = call
        if not hasattr(local, "http"):
            local.http = requests.Session()
            local.http.trust_env = False
        t0 = time.perf_counter()
        answer = local.http.post(f"{backend}{route}", json=body, timeout=60)
        return route, body, answer.status_code, answer.json(), time.perf_counter() - t0

    barrier_start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(send, calls))
    wall = time.perf_counter() - barrier_start

    failed = [(route, status, reply) for route, _, status, reply, _ in answers if status != 200]
    assert failed == []
    for route, body, _, reply, _ in answers:
        if route == "/predict":
            assert [r["result"] != [] for r in reply["results"]] == [True] * len(body["tasks"])
    stored = sum(reply["stored"] for route, _, _, reply, _ in answers if route == "/webhook")
    assert stored == CREATED + UPDATED  # every duplicate delivery answered "stored": 0
    metrics = requests.get(f"{backend}/metrics", timeout=10).text  # every worker's counts, not one's
    counted = sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
        if line.startswith("labeler_requests_total{") and ('route="/predict"' in line or 'route="/webhook"' in line)
    )
    assert counted == len(answers)

    engine = make_engine(postgres_database)
    try:
        with session_factory(engine)() as session:
            assert session.scalar(select(func.count()).select_from(Project)) == 1
            per_task = dict(session.execute(
                select(Task.ls_task_id, func.count(Prediction.id)).join(Prediction).group_by(Task.ls_task_id)
            ).all())
            assert per_task == {task_id: 1 for task_id in task_ids}
            assert session.scalar(select(func.count()).select_from(Prediction)) == len(task_ids)
            tasks = session.execute(select(Task.ls_task_id, Task.deleted_at)).all()
            assert sorted(t for t, _ in tasks) == sorted(task_ids)  # one row per task, all live
            assert all(deleted is None for _, deleted in tasks)
            revisions = session.execute(select(AnnotationRevision.ls_annotation_id, AnnotationRevision.action)).all()
            assert len(revisions) == CREATED + UPDATED
            assert sorted(revisions) == sorted(
                [(a, "created") for a in range(1, CREATED + 1)] + [(a, "updated") for a in range(1, UPDATED + 1)]
            )
            assert session.scalar(select(func.count()).select_from(Failure)) == 0
    finally:
        engine.dispose()

    latencies = sorted(seconds for *_, seconds in answers)
    by_route = {
        route: sorted(seconds for r, *_, seconds in answers if r == route) for route in ("/predict", "/webhook")
    }

    def p95(values):
        return values[min(len(values) - 1, int(np.ceil(0.95 * len(values))) - 1)]

    print(
        f"\nPostgreSQL load test: {len(answers)} requests ({PREDICT_REQUESTS} /predict with {len(task_ids)} tasks, "
        f"{CREATED + UPDATED + DUPLICATES} /webhook incl. {DUPLICATES} duplicates) from {CLIENTS} clients "
        f"against {WORKERS} workers x {THREADS} threads: {wall:.2f} s wall, {len(answers) / wall:.1f} requests/s, "
        f"p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, p95 {p95(latencies) * 1000:.0f} ms "
        f"(/predict p95 {p95(by_route['/predict']) * 1000:.0f} ms, /webhook p95 {p95(by_route['/webhook']) * 1000:.0f} ms); "
        f"{len(task_ids)} predictions and {CREATED + UPDATED} revisions stored exactly once"
    )
