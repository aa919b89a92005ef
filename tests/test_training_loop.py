"""Training from Label Studio's triggers, through the real Flask app, a real SQLite database and
real (tiny) Keras models: START_TRAINING queues a job and is answered at once; the job trains a
U-Net on the project's corrected masks, scores it against the current pre-labeller on held-out
tasks, and promotes it only when it does better; the project's next /setup and /predict use it.
The same loop against a real Label Studio: test_training_labelstudio.py."""
from __future__ import annotations

import datetime as dt

import cv2
import numpy as np
import pytest
from sqlalchemy import select, update

from backend.app import create_app
from backend.config import Settings
from db import jobs, registry, repository
from db.engine import make_engine, session_factory
from db.schema import TrainingJob
from explain.confidence import map_confidence
from explain.labelstudio.results import brush_result, choices_result
from labeler.synthetic import synthetic_radiograph
from models.splits import split_of
from test_backend import model_path  # noqa: F401  (the tiny classifier fixture)
from test_backend_interactive import click_model_path  # noqa: F401  (a tiny clicker that answers one fixed square)

pytestmark = pytest.mark.train

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="diagnosis" toName="image"><Choice value="covid"/><Choice value="normal"/><Choice value="pneumonia"/></Choices>
  <BrushLabels name="mask" toName="image"><Label value="Opacity"/></BrushLabels>
</View>"""
PROJECT = {"id": 4, "created_at": "2026-11-30T10:00:00Z"}
KEY = "4.1700000000"
TASKS = 36
SIZE = 96


def _test_split(task_id: int) -> str:
    return split_of(f"task-{task_id}", 0, (0.7, 0.15, 0.15))


def _documents(tmp_path):
    """TASKS synthetic radiographs (every fourth clear) under ``documents/xrays``: (the root, their
    true lesions by task id)."""
    root = tmp_path / "documents"
    (root / "xrays").mkdir(parents=True)
    rng = np.random.default_rng(5)
    truths = {}
    for n in range(TASKS):
        image, lesion = synthetic_radiograph(SIZE, n % 4 != 0, rng)
        cv2.imwrite(str(root / "xrays" / f"{n}.png"), image)
        truths[100 + n] = lesion
    return root, truths


@pytest.fixture
def app(tmp_path, model_path):  # noqa: F811
    root, truths = _documents(tmp_path)
    settings = Settings(
        model_path=model_path, database_url=f"sqlite:///{tmp_path / 'backend.db'}", local_files_document_root=root,
        warmup=False, train_min_tasks=8, train_epochs=12, train_size=64, model_cache_dir=tmp_path / "models",
        cam_shape="map",
    )
    flask_app = create_app(settings)
    flask_app.truths = truths
    client = flask_app.test_client()
    assert client.post("/setup", json={"project": KEY, "schema": CONFIG}).status_code == 200
    return flask_app


def _annotate(client, task_id: int, mask: np.ndarray, action="ANNOTATION_CREATED", annotation_id=None):
    result = [choices_result(["covid"], "diagnosis", "image")]
    if mask.any():
        result.append(brush_result(mask, "Opacity", "mask", "image"))
    body = {
        "action": action, "project": PROJECT,
        "task": {"id": task_id, "data": {"image": f"/data/local-files/?d=xrays/{task_id - 100}.png"}},
        "annotation": {"id": annotation_id or 5000 + task_id, "task": task_id, "result": result, "completed_by": 1,
                       "was_cancelled": False, "ground_truth": False, "updated_at": dt.datetime.now(dt.UTC).isoformat()},
    }
    answer = client.post("/webhook", json=body)
    assert answer.status_code == 200, answer.json
    return answer.json


def _start_training(client):
    answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {**PROJECT, "token": "secret"}})
    assert answer.status_code == 200, answer.json
    return answer.json


def _sessions(app):
    return session_factory(make_engine(app.config["BACKEND"].settings.database_url))


def _job(app, job_id):
    with _sessions(app)() as session:
        job = session.get(TrainingJob, int(job_id))
        return job.state, job.message, job.segmenter_id


def test_start_training_queues_one_job_answered_at_once_and_a_bad_body_is_a_400(app):
    client = app.test_client()
    first, again = _start_training(client), _start_training(client)
    assert first["status"] == "queued" and again == {"job": first["job"], "status": "already queued"}
    assert _job(app, first["job"])[0] == "queued"  # nothing ran inside the request
    bad = client.post("/webhook", json={"action": "START_TRAINING", "project": {"title": "no id"}})
    assert bad.status_code == 400 and "project" in bad.json["error"]


def test_too_few_corrected_masks_end_the_job_with_a_reason(app):
    client = app.test_client()
    for task_id in range(100, 103):
        _annotate(client, task_id, app.truths[task_id])
    job_id = _start_training(client)["job"]
    assert app.config["BACKEND"].runner.run_next()
    state, message, model = _job(app, job_id)
    assert state == "done" and model is None
    assert message == "not trained: 3 corrected task(s), TRAIN_MIN_TASKS is 8"


def test_a_better_model_is_promoted_and_used_and_a_worse_one_is_kept_out(app):
    client = app.test_client()
    backend = app.config["BACKEND"]
    for task_id, mask in app.truths.items():
        _annotate(client, task_id, mask)
    held_out = [t for t in app.truths if _test_split(t) == "test"]
    assert held_out, "the seed must leave some held-out tasks"
    gradcam_version = client.post("/setup", json={"project": KEY, "schema": CONFIG}).json["model_version"]

    job_id = _start_training(client)["job"]
    assert backend.runner.run_next()
    state, message, first = _job(app, job_id)
    assert state == "done" and first is not None and "promoted" in message, message
    with _sessions(app)() as session:
        project = repository.get_project(session, 4)
        model = registry.current_segmenter(session, project)
        assert model.id == first
        assert sorted(model.data["test"]) == sorted(held_out) and not set(model.data["train"]) & set(held_out)
        assert model.metrics["candidate"]["edit"] < model.metrics["incumbent"]["edit"]
        weights_id = model.weights_id

    version = client.post("/setup", json={"project": KEY, "schema": CONFIG}).json["model_version"]
    assert version != gradcam_version and f"segmenter:{weights_id}" in version
    open_task = {"id": 100, "data": {"image": "/data/local-files/?d=xrays/0.png"}}
    answer = client.post("/predict", json={"tasks": [open_task], "project": KEY, "label_config": CONFIG}).json
    assert answer["model_version"] == version and answer["results"][0]["model_version"] == version
    # the score of a segmenter's pre-label is its map's confidence, not the class probability
    pipeline = backend.pipeline_for(4, "")
    image = cv2.imread(str(backend.settings.local_files_document_root / "xrays" / "0.png"))[..., ::-1] / 255.0
    maps = pipeline.prelabeler.explain([image.astype(np.float32)])[0].lesion_maps
    assert answer["results"][0]["score"] == pytest.approx(map_confidence(maps), abs=1e-4)
    # another project of the same backend still pre-labels with Grad-CAM
    other = client.post("/setup", json={"project": "9.1700000000", "schema": CONFIG}).json["model_version"]
    assert other == gradcam_version

    # the annotators now "correct" every training task into a wrong square in a corner: the next
    # model learns the squares and does worse on the held-out masks, so the first one stays
    corner = np.zeros((SIZE, SIZE), bool)
    corner[:20, :20] = True
    for task_id in app.truths:
        if task_id not in held_out:
            _annotate(client, task_id, corner, action="ANNOTATION_UPDATED")
    job_id = _start_training(client)["job"]
    assert backend.runner.run_next()
    state, message, second = _job(app, job_id)
    assert state == "done" and second not in (None, first)
    assert message.startswith(f"model #{second} kept segmenter #{first}: edit fraction"), message
    with _sessions(app)() as session:
        project = repository.get_project(session, 4)
        assert registry.current_segmenter(session, project).id == first
        assert len(registry.segmenters_of(session, project)) == 2
    assert client.post("/setup", json={"project": KEY, "schema": CONFIG}).json["model_version"] == version
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'labeler_training_jobs_total{outcome="promoted"} 1.0' in metrics
    assert 'labeler_training_jobs_total{outcome="kept"} 1.0' in metrics


def test_train_every_n_new_annotations_queues_a_job(tmp_path, model_path):  # noqa: F811
    settings = Settings(
        model_path=model_path, database_url=f"sqlite:///{tmp_path / 'b.db'}", warmup=False, train_every=3,
    )
    client = create_app(settings).test_client()
    client.post("/setup", json={"project": KEY, "schema": CONFIG})
    mask = np.zeros((8, 8), bool)
    answers = [_annotate(client, 100 + n, mask) for n in range(4)]
    assert "training" not in answers[0] and "training" not in answers[1]
    assert answers[2]["training"]["status"] == "queued"
    assert "training" not in answers[3]  # 1 new since the job was queued
    more = [_annotate(client, 100 + n, mask, action="ANNOTATION_UPDATED") for n in (1, 2)]
    assert "training" not in more[0]  # 2 new
    assert more[1]["training"] == {"job": answers[2]["training"]["job"], "status": "already queued"}  # 3: joins the waiting job


def test_a_job_of_a_dead_worker_is_resumed_by_the_next_runner(app):
    client = app.test_client()
    job_id = int(_start_training(client)["job"])
    sessions = _sessions(app)
    with sessions.begin() as session:
        assert jobs.claim_job(session, "gone-host:1", stale_after=60).id == job_id  # a worker takes it, then dies
    with sessions.begin() as session:
        session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(
            heartbeat_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=600)))
    backend = app.config["BACKEND"]
    assert backend.runner.run_next()  # the stale job is queued again and run here
    with sessions() as session:
        job = session.get(TrainingJob, job_id)
        assert job.state == "done" and job.attempts == 2 and job.worker == backend.runner.worker
        assert list(session.scalars(select(TrainingJob.id))) == [job_id]


def test_labeler_backend_worker_runs_queued_jobs_without_http(tmp_path, model_path):  # noqa: F811
    """`labeler-backend worker` (a training machine for backends with TRAINING=0) takes a job
    queued in the shared database, records its outcome, and stops on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    settings = Settings(model_path=model_path, database_url=url, warmup=False)
    client = create_app(settings).test_client()  # the HTTP backend, TRAINING off: it only queues
    client.post("/setup", json={"project": KEY, "schema": CONFIG})
    job_id = _start_training(client)["job"]
    env = {**os.environ, "MODEL_PATH": str(model_path), "DATABASE_URL": url, "WARMUP": "0", "TRAIN_MIN_TASKS": "5"}
    worker = subprocess.Popen([str(Path(sys.executable).parent / "labeler-backend"), "worker"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sessions = session_factory(make_engine(url))
        deadline = time.monotonic() + 90
        while True:
            with sessions() as session:
                job = session.get(TrainingJob, int(job_id))
                if job.state == "done":
                    break
            assert time.monotonic() < deadline and worker.poll() is None, "the worker did not run the job"
            time.sleep(0.5)
        assert job.message == "not trained: 0 corrected task(s), TRAIN_MIN_TASKS is 5"
        assert job.worker.endswith(f":{worker.pid}")
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=30)[0]
    assert worker.returncode == 0, output
    assert "Traceback" not in output


CLICK_CONFIG = CONFIG.replace(
    "</View>", '  <KeyPointLabels name="click" toName="image" smart="true"><Label value="Opacity"/></KeyPointLabels>\n</View>'
)


def test_a_project_that_clicks_gets_a_click_model_promoted_only_when_its_clicks_do_better(tmp_path, model_path, click_model_path):  # noqa: F811
    """With smart tools in the config (TRAIN_CLICKS=auto), a job also trains a click model on the
    corrected masks and scores it by the simulated annotator's clicks on the held-out tasks against
    the project's current one (here CLICK_MODEL, a model that always answers one fixed square): it is
    promoted for clicks and then answers the project's clicks. Trained again on masks "corrected" into
    a wrong corner, the next one clicks worse and the promoted one stays."""
    root, truths = _documents(tmp_path)
    settings = Settings(
        model_path=model_path, database_url=f"sqlite:///{tmp_path / 'backend.db'}", local_files_document_root=root,
        warmup=False, train_min_tasks=8, train_epochs=4, train_size=64, model_cache_dir=tmp_path / "models",
        cam_shape="map", click_model_path=click_model_path, click_method="click_model", train_click_steps=60,
    )
    app = create_app(settings)
    client = app.test_client()
    backend = app.config["BACKEND"]
    trainer = backend.trainer  # TRAIN_CLICKS: auto follows the config's smart tools; 1 and 0 override it
    assert trainer._trains_clicks(CLICK_CONFIG) and not trainer._trains_clicks(CONFIG)
    for value, expected in (("0", False), ("1", True)):
        trainer.settings = Settings.from_env({"MODEL_PATH": "m.keras", "TRAIN_CLICKS": value})
        assert trainer._trains_clicks(CLICK_CONFIG) is expected and trainer._trains_clicks(CONFIG) is expected
    trainer.settings = Settings.from_env({"MODEL_PATH": "m.keras", "TRAIN_CLICKS": "1", "CLICK_METHOD": "grabcut"})
    assert not trainer._trains_clicks(CLICK_CONFIG)  # a click model would answer no click
    trainer.settings = settings
    with pytest.raises(ValueError, match="TRAIN_CLICKS must be one of auto, 1, 0, got 'sometimes'"):
        Settings.from_env({"MODEL_PATH": "m.keras", "TRAIN_CLICKS": "sometimes"})
    assert client.post("/setup", json={"project": KEY, "schema": CLICK_CONFIG}).status_code == 200
    for task_id, mask in truths.items():
        _annotate(client, task_id, mask)

    job_id = _start_training(client)["job"]
    assert backend.runner.run_next()
    state, message, _ = _job(app, job_id)
    assert state == "done" and "; click model #" in message, message
    with _sessions(app)() as session:
        project = repository.get_project(session, 4)
        clicker = registry.current_segmenter(session, project, "clicks")
        assert clicker is not None and clicker.spec["kind"] == "clicker", message
        assert f"click model #{clicker.id} promoted for clicks: mean Dice over 5 simulated clicks" in message
        assert "of CLICK_MODEL on" in message
        assert clicker.metrics["candidate"]["dice"] > clicker.metrics["incumbent"]["dice"]
        assert clicker.metrics["candidate"]["n"] == len([t for t in truths if _test_split(t) == "test" and truths[t].any()])
        first, weights_id = clicker.id, clicker.weights_id
    assert backend.clicker_for(4, "").version == weights_id  # the project's clicks now go to it

    corner = np.zeros((SIZE, SIZE), bool)
    corner[:20, :20] = True
    for task_id in truths:
        if _test_split(task_id) != "test":
            _annotate(client, task_id, corner, action="ANNOTATION_UPDATED")
    job_id = _start_training(client)["job"]
    assert backend.runner.run_next()
    state, message, _ = _job(app, job_id)
    assert state == "done" and f"kept click model #{first} for clicks" in message, message
    with _sessions(app)() as session:
        assert registry.current_segmenter(session, repository.get_project(session, 4), "clicks").id == first
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'labeler_click_models_total{outcome="promoted"} 1.0' in metrics
    assert 'labeler_click_models_total{outcome="kept"} 1.0' in metrics
