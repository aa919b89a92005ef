"""The ML backend against a real Label Studio 1.23 server, with real chest X-rays.

Label Studio (labeler/studio.py) and the backend (``labeler-backend``, gunicorn) run as real
processes on loopback; images are imported both as uploads (which the backend downloads from
Label Studio with the token /setup gave it) and through local-files storage (which it reads
from the shared document root).
"""
from __future__ import annotations

import shutil
import time

import cv2
import keras
import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface
from sqlalchemy import select

from db.engine import make_engine, session_factory
from db.schema import AnnotationRevision, Failure, Prediction, Project, Task
from models.classifiers import build_small_cnn
from models.loading import save_classifier
from labeler.demo import BackendProcess

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="diagnosis" toName="image"><Choice value="covid"/><Choice value="pneumonia"/></Choices>
  <BrushLabels name="mask" toName="image"><Label value="Opacity"/></BrushLabels>
  <PolygonLabels name="outline" toName="image"><Label value="Opacity"/></PolygonLabels>
</View>"""
UPLOADS, LOCAL = 3, 3


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    """``labeler-backend`` on a free port, with a tiny classifier and its own SQLite file."""
    folder = tmp_path_factory.mktemp("backend")
    keras.utils.set_random_seed(0)
    model, spec = build_small_cnn(("covid", "pneumonia"), input_size=(64, 64), filters=(8, 16))
    model_path = save_classifier(model, spec, folder / "cnn.keras")
    database_url = f"sqlite:///{folder / 'labeler.db'}"
    settings = {
        "MODEL_PATH": str(model_path),
        "DATABASE_URL": database_url,
        "LABEL_STUDIO_URL": label_studio.url,  # the token comes from /setup
        "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root),
    }
    process = BackendProcess.start(settings, folder / "backend.log", timeout=120)
    yield {"url": process.url, "db": database_url, "log": folder / "backend.log"}
    process.stop()


@pytest.fixture(scope="module")
def xrays(shared_data):
    """Real X-rays of different sizes, non-square ones included."""
    images = sorted((shared_data / "cxr" / "images").glob("*.png"))
    chosen, sizes = [], set()
    for path in images:
        height, width = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).shape
        if (width, height) not in sizes:
            sizes.add((width, height))
            chosen.append(path)
        if len(chosen) == UPLOADS + LOCAL:
            break
    return chosen


@pytest.fixture(scope="module")
def project(label_studio, ls, http, backend, xrays):
    """A project with uploads, local files and one corrupt image, connected to the backend and
    pre-labelled through the Data Manager action."""
    pid = ls.projects.create(title="e2e", label_config=CONFIG).id
    files = {f"file_{n}": (p.name, p.read_bytes(), "image/png") for n, p in enumerate(xrays[:UPLOADS])}
    answer = http.post(f"{label_studio.url}/api/projects/{pid}/import", files=files, timeout=60)
    assert answer.status_code == 201, answer.text
    folder = label_studio.document_root / f"project{pid}"
    folder.mkdir()
    for path in xrays[UPLOADS:]:
        shutil.copy(path, folder / path.name)
    (folder / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    storage = http.post(
        f"{label_studio.url}/api/storages/localfiles",
        json={"project": pid, "path": str(folder), "regex_filter": r".*\.png", "use_blob_urls": True},
        timeout=30,
    ).json()
    assert http.post(f"{label_studio.url}/api/storages/localfiles/{storage['id']}/sync", timeout=60).ok
    tasks = _wait(lambda: (t := list(ls.tasks.list(project=pid))) and len(t) == UPLOADS + LOCAL + 1 and t)
    ls.ml.create(project=pid, url=backend["url"], title="Grad-CAM")
    ls.actions.create(id="retrieve_tasks_predictions", project=pid, selected_items={"all": True, "excluded": []})
    return pid, tasks, folder


def _wait(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)
    return value


def _image_size(label_studio, http, task) -> tuple[int, int]:
    uri = task.data["image"]
    data = http.get(uri if uri.startswith("http") else label_studio.url + uri, timeout=30).content
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return image.shape[1], image.shape[0]


def test_every_task_gets_valid_pre_labels_and_the_corrupt_one_fails_alone(label_studio, ls, http, project, backend):
    pid, tasks, _ = project
    interface = LabelInterface(CONFIG)
    allowed = {c.name: set(c.labels) for c in interface.controls}
    regions = 0
    for task in tasks:
        predictions = ls.predictions.list(task=task.id)
        if task.data["image"].endswith("zz_corrupt.png"):
            assert all(not p.result for p in predictions)
            continue
        assert len(predictions) == 1, f"task {task.id} has {len(predictions)} predictions"
        result = predictions[0].result
        width, height = _image_size(label_studio, http, task)
        assert {r["type"] for r in result} >= {"choices"}
        for region in result:
            kind = region["type"]
            labels = region["value"][kind]
            assert set(labels) <= allowed[region["from_name"]]
            if kind == "brushlabels":
                regions += 1
                assert (region["original_width"], region["original_height"]) == (width, height)
                mask = decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3]
                assert mask.any()
            if kind == "polygonlabels":
                points = np.array(region["value"]["points"])
                assert points.shape[0] >= 3 and points.min() >= 0 and points.max() <= 100
                assert cv2.contourArea(points.astype(np.float32)) > 0
    assert regions >= UPLOADS + LOCAL
    sessions = session_factory(make_engine(backend["db"]))
    with sessions() as session:
        stored = session.scalars(select(Prediction).join(Task).join(Project).where(Project.ls_project_id == pid)).all()
        failures = session.scalars(select(Failure).where(Failure.ls_task_id.is_not(None))).all()
    assert len(stored) == UPLOADS + LOCAL
    corrupt = next(t.id for t in tasks if t.data["image"].endswith("zz_corrupt.png"))
    assert [(f.ls_task_id, f.kind) for f in failures] == [(corrupt, "image_decode")]
    metrics = requests.get(f"{backend['url']}/metrics", timeout=5).text
    assert 'labeler_failures_total{kind="image_decode"} 1.0' in metrics


def test_annotation_revisions_reach_the_database_through_webhooks(ls, project, backend):
    pid, tasks, _ = project
    task = tasks[0]
    choice = [{"from_name": "diagnosis", "to_name": "image", "type": "choices", "value": {"choices": ["covid"]}}]
    annotation = ls.annotations.create(id=task.id, result=choice, lead_time=4.2)
    changed = [{**choice[0], "value": {"choices": ["pneumonia"]}}]
    ls.annotations.update(id=annotation.id, result=changed)
    ls.annotations.delete(id=annotation.id)
    sessions = session_factory(make_engine(backend["db"]))

    def revisions():
        with sessions() as session:
            rows = session.scalars(
                select(AnnotationRevision).where(AnnotationRevision.ls_annotation_id == annotation.id).order_by(AnnotationRevision.id)
            ).all()
        return rows if len(rows) == 3 else None

    rows = _wait(revisions)
    assert [r.action for r in rows] == ["created", "updated", "deleted"]
    assert rows[0].result[0]["value"] == {"choices": ["covid"]} and rows[0].lead_time == pytest.approx(4.2)
    assert rows[1].result[0]["value"] == {"choices": ["pneumonia"]}
    assert rows[2].result is None
    assert rows[0].completed_by is not None


def test_personal_access_token_downloads_uploads_from_the_real_server(label_studio, http, project):
    from explain.labelstudio.fetch import ImageFetcher, LabelStudioAuth

    _, tasks, _ = project
    upload = next(t for t in tasks if t.data["image"].startswith("/data/upload/"))
    pat = http.post(f"{label_studio.url}/api/token/", timeout=10).json()["token"]
    auth = LabelStudioAuth(label_studio.url, pat)
    assert auth.is_personal_token
    data = ImageFetcher(label_studio.url, auth).fetch(upload.data["image"], upload.id)
    assert data == http.get(label_studio.url + upload.data["image"], timeout=10).content
    assert auth.header()["Authorization"].startswith("Bearer ")
