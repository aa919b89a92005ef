"""Click to segment against a real Label Studio 1.23: `labeler init --interactive` connects the
backend for interactive pre-annotations, and Label Studio's interactive-annotating call (what the
labelling UI sends when an annotator places a smart keypoint) answers a brush mask at the click."""
from __future__ import annotations

import cv2
import keras
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from sqlalchemy import func, select
from typer.testing import CliRunner

from db.engine import make_engine, session_factory
from db.schema import Prediction
from labeler.cli import app
from labeler.demo import BackendProcess
from models.classifiers import build_small_cnn
from models.loading import save_classifier

WIDTH, HEIGHT = 120, 90


@pytest.fixture(scope="module")
def setup(label_studio, tmp_path_factory):
    folder = tmp_path_factory.mktemp("interactive")
    keras.utils.set_random_seed(2)
    model, spec = build_small_cnn(("covid", "normal"), input_size=(32, 32), filters=(4, 8))
    model_path = save_classifier(model, spec, folder / "cnn.keras")
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "DATABASE_URL": f"sqlite:///{folder / 'labeler.db'}"}
    backend = BackendProcess.start({**env, "MODEL_PATH": str(model_path)}, folder / "backend.log", timeout=120)
    yield {"model": model_path, "env": env, "backend": backend.url, "db": env["DATABASE_URL"]}
    backend.stop()


def test_a_smart_keypoint_through_label_studio_answers_a_brush_mask_at_the_click(setup, label_studio, ls, http):
    result = CliRunner().invoke(
        app, ["init", "--model", str(setup["model"]), "--backend-url", setup["backend"], "--title", "clicks",
              "--region-kind", "brush", "--region-kind", "polygon", "--interactive"],
        env=setup["env"], catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    project = int(result.output.split("LABEL_STUDIO_PROJECT=")[1].split()[0])
    [connection] = ls.ml.list(project=project)
    assert connection.is_interactive
    image = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH), dtype=np.uint8)
    files = {"file": ("xray.png", cv2.imencode(".png", image)[1].tobytes(), "image/png")}
    assert http.post(f"{label_studio.url}/api/projects/{project}/import", files=files, timeout=60).status_code == 201
    [task] = ls.tasks.list(project=project)
    predictions = len(ls.predictions.list(task=task.id))
    click = {  # a smart keypoint as the labelling UI serialises it
        "id": "k7Qx1", "type": "keypointlabels", "from_name": "click", "to_name": "image", "origin": "manual",
        "original_width": WIDTH, "original_height": HEIGHT, "image_rotation": 0, "is_positive": True,
        "value": {"x": 70.0, "y": 40.0, "width": 0.67, "keypointlabels": ["Opacity"]},
    }
    answer = http.post(
        f"{label_studio.url}/api/ml/{connection.id}/interactive-annotating",
        json={"task": task.id, "context": {"result": [click]}}, timeout=60,
    )
    assert answer.status_code == 200, answer.text
    data = answer.json()["data"]  # Label Studio passes on the backend's results[0]
    brush = [r for r in data["result"] if r["type"] == "brushlabels"]
    assert len(brush) == 1 and brush[0]["value"]["brushlabels"] == ["Opacity"] and brush[0]["from_name"] == "mask"
    assert (brush[0]["original_width"], brush[0]["original_height"]) == (WIDTH, HEIGHT)
    mask = decode_rle(brush[0]["value"]["rle"]).reshape(HEIGHT, WIDTH, 4)[:, :, 3] > 0
    assert mask[36, 84]  # 40 % of 90 rows, 70 % of 120 columns
    assert any(r["type"] == "polygonlabels" and r["from_name"] == "outline" for r in data["result"])
    assert data["model_version"]
    bad = http.post(  # a malformed click: Label Studio answers 200 with only the backend's status in "errors"
        f"{label_studio.url}/api/ml/{connection.id}/interactive-annotating",
        json={"task": task.id, "context": {"result": [{**click, "value": {"x": "left", "y": 40}}]}}, timeout=60,
    )
    assert bad.status_code == 200 and "data" not in bad.json(), bad.text
    assert "400 Client Error" in bad.json()["errors"][0], bad.text
    assert len(ls.predictions.list(task=task.id)) == predictions  # interactive answers are drafts, not predictions
    with session_factory(make_engine(setup["db"]))() as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == predictions
