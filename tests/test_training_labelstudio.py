"""The training loop inside a real Label Studio 1.23: annotations saved in Label Studio reach the
backend (webhooks), "Start training" (``POST /api/ml/<id>/train``, what the model settings' button
calls) reaches it as a START_TRAINING webhook, the job trains and promotes a U-Net, Label Studio
re-pre-labels the open tasks with it (the next /predict uses it) and its version becomes the
project's active one, so that the Data Manager shows the scores; a worse model is not promoted.
The project's config has a smart keypoint, so each job also trains and scores a click model.

Label Studio (labeler/studio.py) and the backend (``labeler-backend``, gunicorn, TRAINING=1) run as
real processes on loopback; the images are synthetic radiographs with known lesions in a
local-files storage.
"""
from __future__ import annotations

import re
import time

import cv2
import keras
import numpy as np
import pytest
from sqlalchemy import select

from backend.training import SEED, SPLIT
from db.engine import make_engine, session_factory
from db.schema import TrainingJob
from explain.labelstudio.results import brush_result, choices_result
from labeler.demo import BackendProcess
from labeler.synthetic import synthetic_radiograph
from models.classifiers import build_small_cnn
from models.loading import save_classifier
from models.splits import split_of, stored_patient

pytestmark = pytest.mark.train

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="diagnosis" toName="image"><Choice value="clear"/><Choice value="opacity"/></Choices>
  <BrushLabels name="mask" toName="image"><Label value="Opacity"/></BrushLabels>
  <KeyPointLabels name="click" toName="image" smart="true"><Label value="Opacity"/></KeyPointLabels>
</View>"""
IMAGES, ANNOTATED, SIZE = 36, 30, 96


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    folder = tmp_path_factory.mktemp("training-backend")
    keras.utils.set_random_seed(0)
    model, spec = build_small_cnn(("clear", "opacity"), input_size=(32, 32), filters=(4, 8))
    database_url = f"sqlite:///{folder / 'labeler.db'}"
    settings = {
        "MODEL_PATH": str(save_classifier(model, spec, folder / "cnn.keras")),
        "DATABASE_URL": database_url,
        "LABEL_STUDIO_URL": label_studio.url,  # the token comes from /setup
        "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root),
        "TRAIN_MIN_TASKS": "8", "TRAIN_EPOCHS": "30", "TRAIN_SIZE": "64", "CAM_SHAPE": "map",
        "MODEL_CACHE_DIR": str(folder / "models"), "TRAIN_CLICK_STEPS": "60",
    }
    process = BackendProcess.start(settings, folder / "backend.log", timeout=120)
    yield {"url": process.url, "db": database_url, "log": folder / "backend.log"}
    process.stop()


@pytest.fixture(scope="module")
def project(label_studio, ls, http, backend):
    """A project of synthetic radiographs, the backend connected; ANNOTATED tasks (the test
    split's first) are annotated in Label Studio with their true lesions. Yields (project id, ML backend id, tasks by
    id, true masks by task id, annotation ids by task id)."""
    pid = ls.projects.create(title="training loop", label_config=CONFIG).id
    folder = label_studio.document_root / f"training{pid}"
    folder.mkdir()
    rng = np.random.default_rng(11)
    lesions = {}
    for n in range(IMAGES):
        image, lesion = synthetic_radiograph(SIZE, n % 4 != 0, rng)
        cv2.imwrite(str(folder / f"{n:02d}.png"), image)
        lesions[n] = lesion
    storage = http.post(
        f"{label_studio.url}/api/storages/localfiles",
        json={"project": pid, "path": str(folder), "regex_filter": r".*\.png", "use_blob_urls": True}, timeout=30,
    ).json()
    assert http.post(f"{label_studio.url}/api/storages/localfiles/{storage['id']}/sync", timeout=60).ok
    tasks = _wait(lambda: (t := list(ls.tasks.list(project=pid))) and len(t) == IMAGES and t)
    ml_id = ls.ml.create(project=pid, url=backend["url"], title="cxr-labeler").id
    truths = {t.id: lesions[int(re.search(r"(\d+)\.png$", t.data["image"]).group(1))] for t in tasks}
    annotations = {}
    # the test-split patients first: tasks are their own patients ("task-<id>"), so which ids Label
    # Studio gave (the tests before this one create tasks too) decides the split; without a held-out
    # patient a job rightly refuses to train
    def held_out_first(task):
        return split_of(stored_patient(None, task.id), SEED, SPLIT) != "test", task.id

    chosen = sorted(tasks, key=held_out_first)[:ANNOTATED]
    assert any(not held_out_first(t)[0] for t in chosen), "no task of the project falls in the test split"
    for task in chosen:
        answer = http.post(f"{label_studio.url}/api/tasks/{task.id}/annotations", json={"result": _result(truths[task.id])}, timeout=30)
        assert answer.status_code == 201, answer.text
        annotations[task.id] = answer.json()["id"]
    return pid, ml_id, {t.id: t for t in tasks}, truths, annotations


def _result(mask):
    result = [choices_result(["opacity" if mask.any() else "clear"], "diagnosis", "image")]
    if mask.any():
        result.append(brush_result(mask, "Opacity", "mask", "image"))
    return result


def _wait(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)
    return value


def _finished_job(backend, after: int = 0, seconds=300.0):
    sessions = session_factory(make_engine(backend["db"]))

    def finished():
        with sessions() as session:
            job = session.scalars(select(TrainingJob).where(TrainingJob.id > after).order_by(TrainingJob.id)).first()
            return job is not None and job.state in ("done", "failed") and (job.id, job.state, job.message)

    return _wait(finished, seconds)


def test_start_training_in_label_studio_promotes_a_model_that_then_pre_labels(label_studio, ls, http, project, backend):
    pid, ml_id, tasks, truths, annotations = project
    before = ls.projects.get(id=pid).model_version
    assert http.post(f"{label_studio.url}/api/ml/{ml_id}/train", timeout=30).status_code == 200  # "Start training"
    job_id, state, message = _finished_job(backend)
    assert state == "done" and "promoted" in message, message
    # the config has a smart tool (its annotators click), so the job trained and scored a click model too
    assert re.search(r"; click model #\d+ (promoted|kept no click model) for clicks: mean Dice over 5 simulated clicks", message), message

    # Label Studio re-pre-labels the open tasks with the promoted model, and its version becomes the active one
    version = _wait(lambda: (v := ls.projects.get(id=pid).model_version) and "segmenter:" in v and v, 120)
    assert version != before
    open_tasks = [t for t in tasks if t not in annotations]
    for task_id in open_tasks:
        predictions = [p for p in ls.predictions.list(task=task_id) if p.model_version == version]
        assert len(predictions) == 1, task_id
        assert 0.0 <= predictions[0].score <= 1.0
    assert not [p for t in annotations for p in ls.predictions.list(task=t) if p.model_version == version]  # done ones are left alone
    # the Data Manager's score column (Label Studio averages the active version's prediction scores)
    listed = http.get(f"{label_studio.url}/api/tasks", params={"project": pid, "page_size": 100, "fields": "all"}, timeout=30).json()
    scores = {t["id"]: t.get("predictions_score") for t in listed["tasks"]}
    assert all(scores[task_id] is not None for task_id in open_tasks), scores
    # "Label Stream" with uncertainty sampling serves the least confident open task first
    http.patch(f"{label_studio.url}/api/projects/{pid}", json={"sampling": "Uncertainty sampling"}, timeout=30)
    nxt = http.get(f"{label_studio.url}/api/projects/{pid}/next", timeout=60).json()
    assert nxt["id"] == min(open_tasks, key=lambda t: scores[t])

    # a worse model (trained on wrong corrections) is registered but not promoted
    corner = np.zeros((SIZE, SIZE), bool)
    corner[:24, :24] = True
    for task_id, annotation_id in annotations.items():
        if split_of(stored_patient(None, task_id), SEED, SPLIT) != "test":
            answer = http.patch(f"{label_studio.url}/api/annotations/{annotation_id}", json={"result": _result(corner)}, timeout=30)
            assert answer.status_code == 200, answer.text
    assert http.post(f"{label_studio.url}/api/ml/{ml_id}/train", timeout=30).status_code == 200
    _, state, message = _finished_job(backend, after=job_id)
    assert state == "done" and "kept segmenter" in message, message
    time.sleep(1)
    assert ls.projects.get(id=pid).model_version == version
    # Label Studio's own "Start model training on annotation submission" sends the same request on a save
    http.patch(f"{label_studio.url}/api/projects/{pid}", json={"start_training_on_annotation_update": True}, timeout=30)
    open_task = next(t for t in tasks if t not in annotations)
    http.post(f"{label_studio.url}/api/tasks/{open_task}/annotations", json={"result": _result(truths[open_task])}, timeout=30)
    sessions = session_factory(make_engine(backend["db"]))
    with sessions() as session:
        newest = session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc())).first()
        assert newest.id > job_id + 1 and newest.trigger == "label-studio"
    log = backend["log"].read_text()  # START_TRAINING's body (the project's tokens among its fields) is never logged
    assert "task_data_password" not in log and "label_config_hash" not in log
