"""``labeler demo``: Label Studio + backend + a demo project pre-labelled by the backend; a rerun
reuses everything (same login, same project, nothing imported or predicted twice)."""
from __future__ import annotations

import keras
import numpy as np
from label_studio_sdk import LabelStudio

from labeler.demo import start_demo
from labeler.synthetic import write_dataset
from models.classifiers import build_small_cnn
from models.loading import save_classifier


def test_demo_starts_pre_labels_and_restarts(tmp_path):
    folder = tmp_path / "demo"
    write_dataset(folder / "data", per_class=5, size=96, seed=2)
    keras.utils.set_random_seed(0)
    model, spec = build_small_cnn(("clear", "opacity"), input_size=(64, 64), filters=(8, 16))
    kernel, _ = model.get_layer("predictions").get_weights()
    model.get_layer("predictions").set_weights([kernel, np.array([-5.0, 5.0], np.float32)])  # says "opacity"
    save_classifier(model, spec, folder / "model.keras")  # the demo trains one only when missing

    first = start_demo(folder, log=lambda line: None)
    try:
        ls = LabelStudio(base_url=first.studio.url, api_key=first.studio.token)
        tasks = list(ls.tasks.list(project=first.project_id))
        assert len(tasks) == 7  # 5 opacity + 2 clear
        predictions = ls.predictions.list(project=first.project_id)
        assert sorted(p.task for p in predictions) == sorted(t.id for t in tasks)
        assert len({p.model_version for p in predictions}) == 1 and "gradcam@features" in predictions[0].model_version
        assert any(r["type"] == "brushlabels" for p in predictions for r in p.result)
        login = (first.studio.username, first.studio.password, first.studio.token)
    finally:
        first.stop()

    second = start_demo(folder, log=lambda line: None)
    try:
        assert (second.studio.username, second.studio.password, second.studio.token) == login
        assert second.project_id == first.project_id
        ls = LabelStudio(base_url=second.studio.url, api_key=second.studio.token)
        assert len(list(ls.tasks.list(project=second.project_id))) == 7
        assert len(ls.predictions.list(project=second.project_id)) == 7
        assert [m.url for m in ls.ml.list(project=second.project_id)] == [second.backend_url]
    finally:
        second.stop()
