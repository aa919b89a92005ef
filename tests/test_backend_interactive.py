"""/predict with params.context (Label Studio's interactive pre-annotation) through Flask's test
client, with a tiny real classifier: the answer's mask, the per-image evidence cache, errors."""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from sqlalchemy import func, select

from backend.app import create_app
from backend.interactive import EvidenceCache
from db.engine import make_engine, session_factory
from db.schema import Prediction
from explain.clicks import Evidence
from explain.gradcam import Target
from explain.prelabel import Prelabeler, PrelabelSettings
from models.loading import load_classifier
from test_backend import CONFIG, documents, make_settings, model_path, task  # noqa: F401  (fixtures)


@pytest.fixture
def app(tmp_path, model_path, documents):  # noqa: F811
    return create_app(make_settings(tmp_path, model_path, documents))


def click_body(context, *tasks, config=CONFIG):
    tasks = tasks or (task(11, "img0.png"),)
    return {"tasks": list(tasks), "project": "7.1700000000", "label_config": config,
            "params": {"login": None, "password": None, "context": context}}


def keypoint(x, y, positive=True):
    return {"type": "keypointlabels", "from_name": "click", "to_name": "image", "is_positive": positive,
            "original_width": 80, "original_height": 60, "value": {"x": x, "y": y, "keypointlabels": ["Opacity"]}}


def brush_mask(result, width, height):
    brush = [r for r in result if r["type"] == "brushlabels"]
    assert len(brush) == 1
    assert (brush[0]["original_width"], brush[0]["original_height"]) == (width, height)
    return decode_rle(brush[0]["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 0


def counting(monkeypatch, app):
    """Counts the classifier's calls (every Grad-CAM map and probability goes through ``compute``)."""
    cam = app.config["BACKEND"].predictor.get().prelabeler.cam
    calls, compute = [], cam.compute
    monkeypatch.setattr(cam, "compute", lambda *a, **k: calls.append(1) or compute(*a, **k))
    return calls


def test_a_click_answers_a_brush_mask_holding_the_clicked_pixel_and_a_polygon(app):
    client = app.test_client()
    answer = client.post("/predict", json=click_body({"result": [keypoint(62.5, 25)]}))
    assert answer.status_code == 200, answer.json
    [result] = answer.json["results"]
    assert result["model_version"] == answer.json["model_version"]
    assert {r["type"] for r in result["result"]} == {"brushlabels", "polygonlabels"}
    assert {r["from_name"] for r in result["result"]} == {"mask", "outline"}
    assert all(r["value"][r["type"]] == ["Opacity"] for r in result["result"])
    mask = brush_mask(result["result"], 80, 60)
    assert mask[15, 50]  # 25 % of 60 rows, 62.5 % of 80 columns
    assert 0 < result["score"] <= 1


def test_the_next_clicks_on_an_image_reuse_its_evidence_and_store_nothing(app, monkeypatch, documents, tmp_path):  # noqa: F811
    client = app.test_client()
    calls = counting(monkeypatch, app)
    first = client.post("/predict", json=click_body({"result": [keypoint(62.5, 25)]}))
    assert first.status_code == 200 and len(calls) == 1
    (documents / "xrays" / "img0.png").unlink()  # the next clicks read no image either
    clicks = [keypoint(62.5, 25), keypoint(10, 90)]
    second = client.post("/predict", json=click_body({"result": clicks}))
    assert second.status_code == 200 and len(calls) == 1
    mask = brush_mask(second.json["results"][0]["result"], 80, 60)
    assert mask[15, 50] and mask[54, 8]
    erased = client.post("/predict", json=click_body({"result": [keypoint(62.5, 25), keypoint(62.5, 25, positive=False)]}))
    assert erased.json["results"][0]["result"] == [] and len(calls) == 1  # the negative click removes what it touches
    metrics = client.get("/metrics").text
    assert 'labeler_interactive_answers_total{cache="miss"} 1.0' in metrics
    assert 'labeler_interactive_answers_total{cache="hit"} 2.0' in metrics
    sessions = session_factory(make_engine(app.config["BACKEND"].settings.database_url))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 0


def test_a_context_without_clicks_answers_nothing_and_runs_no_model(app, monkeypatch):
    client = app.test_client()
    calls = counting(monkeypatch, app)
    for context in ({"result": []}, {}):
        answer = client.post("/predict", json=click_body(context))
        assert answer.status_code == 200
        assert answer.json["results"][0]["result"] == []
    assert calls == []


def test_a_null_context_is_an_ordinary_prediction(app):
    answer = app.test_client().post("/predict", json=click_body(None))
    assert answer.status_code == 200
    assert {r["type"] for r in answer.json["results"][0]["result"]} >= {"choices"}  # the one-shot pre-label


@pytest.mark.parametrize(
    "body, named",
    [
        (click_body({"result": [keypoint(10, 10)]}, task(11, "img0.png"), task(12, "img1.png")), "exactly one task, got 2"),
        (click_body({"result": [keypoint("a", 10)]}), "params.context.result[0].value.x must be a number"),
        (click_body({"result": [keypoint(10, 101)]}), "params.context.result[0].value.y must be a percentage in [0, 100], got 101"),
        (click_body({"result": "x"}), "params.context.result must be a list"),
        (click_body([1]), "params.context must be an object"),
        ({**click_body(None), "params": "x"}, "params must be an object"),
        (click_body({"result": [keypoint(10, 10)]}, config=CONFIG.replace("BrushLabels", "RectangleLabels")), "no BrushLabels control"),
    ],
)
def test_malformed_interactive_requests_are_refused_naming_the_problem(app, body, named):
    answer = app.test_client().post("/predict", json=body)
    assert answer.status_code == 400
    assert named in answer.json["error"]


def test_an_unreadable_image_answers_an_empty_result_and_counts_the_failure(app):
    client = app.test_client()
    answer = client.post("/predict", json=click_body({"result": [keypoint(10, 10)]}, task(11, "broken.png")))
    assert answer.status_code == 200 and answer.json["results"][0]["result"] == []
    assert 'labeler_failures_total{kind="image_decode"} 1.0' in client.get("/metrics").text


def test_click_evidence_follows_the_wanted_class_even_when_the_target_mapped_another(model_path):  # noqa: F811
    loaded = load_classifier(model_path)
    prelabeler = Prelabeler(loaded.model, loaded.spec, PrelabelSettings(target=Target("class", "normal")))
    image = np.random.default_rng(1).random((50, 70, 3)).astype(np.float32)
    output = prelabeler.explain([image])[0]
    assert [m.class_index for m in output.explanation.maps] == [1]  # only "normal" was mapped
    name, evidence = prelabeler.click_evidence(image, output, ["covid", "pneumonia"])
    probabilities = output.explanation.probabilities
    assert name == ("covid" if probabilities[0] >= probabilities[2] else "pneumonia")
    from explain.prelabel import model_inputs

    index = loaded.spec.class_names.index(name)
    expected = Evidence.of(image, prelabeler.cam.compute(model_inputs([image], loaded.spec), [index])[2][0])
    assert evidence.shape == (50, 70) and evidence.roi is None
    assert np.allclose(evidence.heat, expected.heat, atol=1e-5)
    same, _ = prelabeler.click_evidence(image, output, ["normal"])
    assert same == "normal"


def test_the_evidence_cache_is_bounded_by_images_and_bytes():
    def evidence(side):
        return ("x", Evidence.of(np.zeros((side, side)), np.zeros((2, 2))))

    cache = EvidenceCache(images=2, max_bytes=10**9)
    for key in "abc":
        cache.put((key,), evidence(4))
    assert len(cache) == 2 and cache.get(("a",)) is None and cache.get(("c",)) is not None
    small = EvidenceCache(images=10, max_bytes=3 * 2 * 100 * 100 * 4)  # three 100 x 100 evidences
    for key in "abcd":
        small.put((key,), evidence(100))
        small.get(("a",))  # recently used: kept
    assert len(small) == 3 and small.get(("a",)) is not None and small.get(("b",)) is None


def test_the_evidence_cache_counts_what_answered_clicks_add():
    """An evidence grows as it answers (the working-size arrays, the answers kept, a bound click
    model's): ``refresh`` counts it again and drops the least recently used entry when over budget."""
    from explain.clicks import Click, segment

    def evidence():
        return ("x", Evidence.of(np.full((400, 400), 0.5), np.zeros((2, 2))))  # works at 128 x 128

    fresh = evidence()[1].nbytes
    cache = EvidenceCache(images=10, max_bytes=2 * fresh + 1000)
    cache.put(("a",), evidence())
    cache.put(("b",), evidence())
    assert len(cache) == 2 and cache.nbytes == 2 * fresh
    answered = cache.get(("b",))[1]
    segment(answered, [Click(200, 200)], method="chained_walker")
    assert answered.nbytes > fresh + 1000
    cache.refresh(("b",))
    assert cache.get(("a",)) is None and cache.get(("b",)) is not None and cache.nbytes == answered.nbytes
    bound = Evidence(answered.gray, answered.heat, clicker=type("Answers", (), {"nbytes": 4096})())
    assert bound.nbytes == fresh + 4096  # a bound click model's answers count too


def test_click_method_setting_chooses_how_clicks_become_a_mask(tmp_path, model_path, documents, monkeypatch):  # noqa: F811
    """CLICK_METHOD (default: explain.clicks.DEFAULT_METHOD) reaches every interactive answer;
    an unknown one is refused at start-up, naming the setting and the choices."""
    from backend import interactive
    from backend.config import Settings
    from explain import clicks

    assert Settings.from_env({"MODEL_PATH": "m.keras"}).method_for_clicks(False) == clicks.DEFAULT_METHOD
    assert Settings.from_env({"MODEL_PATH": "m.keras", "CLICK_METHOD": "grabcut"}).click_method == "grabcut"
    with pytest.raises(ValueError, match="CLICK_METHOD must be one of threshold, .*, got 'sam'"):
        Settings.from_env({"MODEL_PATH": "m.keras", "CLICK_METHOD": "sam"})
    used = []
    monkeypatch.setattr(interactive, "segment", lambda *args: used.append(args[3]) or clicks.segment(*args))
    for method in ("threshold", "region_growing"):
        app = create_app(make_settings(tmp_path, model_path, documents, click_method=method))
        answer = app.test_client().post("/predict", json=click_body({"result": [keypoint(62.5, 25)]}))
        assert answer.status_code == 200, answer.json
        assert brush_mask(answer.json["results"][0]["result"], 80, 60)[15, 50]
    assert used == ["threshold", "region_growing"]


@pytest.fixture(scope="module")
def click_model_path(tmp_path_factory):
    """A tiny real clicker (`labeler train-segmenter --clicks` trains the same kind), trained just enough
    to answer a non-empty mask."""
    from models.clicking import fit_clicker
    from models.loading import save_model

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((6, 32, 32, 1), np.uint8)
    masks[:, 8:20, 10:24] = 1
    model, spec, _ = fit_clicker(images, masks, None, None, size=32, filters=(4, 8), epochs=20, learning_rate=1e-2, verbose=0)
    return save_model(model, spec, tmp_path_factory.mktemp("clicker") / "clicker.keras")


def test_click_model_setting_answers_with_the_click_model_bound_to_the_image(
    tmp_path, model_path, documents, click_model_path, monkeypatch,  # noqa: F811
):
    """CLICK_MODEL makes guided_walker the default method; the model is bound to the image's cached
    evidence, so that each later click costs one forward pass of it and none of the classifier; the
    answer of click_model is the model's own mask. A method that needs a click model without
    CLICK_MODEL, or a CLICK_MODEL that is no clicker, is refused at start-up naming the setting."""
    from backend.config import Settings

    env = {"MODEL_PATH": "m.keras", "CLICK_MODEL": str(click_model_path)}
    assert Settings.from_env(env).method_for_clicks(True) == "guided_walker"
    assert Settings.from_env({**env, "CLICK_METHOD": "grabcut"}).click_method == "grabcut"
    for method in ("click_model", "guided_walker"):
        with pytest.raises(ValueError, match=f"CLICK_METHOD is {method}, but CLICK_MODEL is not set"):
            Settings.from_env({"MODEL_PATH": "m.keras", "CLICK_METHOD": method})
    with pytest.raises(ValueError, match="CLICK_MODEL: cnn.keras is a classifier, not a clicker"):
        create_app(make_settings(tmp_path, model_path, documents, click_model_path=model_path, click_method="click_model"))
    app = create_app(make_settings(tmp_path, model_path, documents, click_model_path=click_model_path, click_method="click_model"))
    mask, answers = second_click_on_one_forward(app, monkeypatch)
    expected = answers([(50.0, 15.0, True), (16.0, 48.0, False)]) >= 0.5
    assert expected.any()
    assert np.array_equal(mask, expected)


def second_click_on_one_forward(app, monkeypatch):
    """A positive click at (50, 15) px, then that click and a negative one at (16, 48): asserts that
    the second answer cost one forward pass of the click model bound to the cached evidence and none
    of the classifier. Returns (the second answer's brush mask, the bound click model)."""
    classifier_calls = counting(monkeypatch, app)
    client = app.test_client()
    first = client.post("/predict", json=click_body({"result": [keypoint(62.5, 25)]}))
    assert first.status_code == 200, first.json
    [(_, evidence)] = app.config["BACKEND"].clicks.cache._entries.values()
    answers = evidence.clicker
    model_calls, forward = [], answers.clicker._forward
    monkeypatch.setattr(answers.clicker, "_forward", lambda x: model_calls.append(1) or forward(x))
    calls_before = len(classifier_calls)
    second = client.post("/predict", json=click_body({"result": [keypoint(62.5, 25), keypoint(20, 80, positive=False)]}))
    assert second.status_code == 200, second.json
    assert len(model_calls) == 1 and len(classifier_calls) == calls_before
    return brush_mask(second.json["results"][0]["result"], 80, 60), answers


def test_guided_walker_asks_the_bound_click_model_once_per_click(
    tmp_path, model_path, documents, click_model_path, monkeypatch,  # noqa: F811
):
    """guided_walker (CLICK_MODEL's default method): each later click is one forward pass of the click
    model bound to the cached evidence, none of the classifier, and the answer holds the positive click."""
    app = create_app(make_settings(tmp_path, model_path, documents, click_model_path=click_model_path, click_method="guided_walker"))
    mask, _ = second_click_on_one_forward(app, monkeypatch)
    assert mask[15, 50] and not mask[48, 16]


def test_a_projects_promoted_click_model_answers_its_clicks_until_rolled_back(
    tmp_path, model_path, documents, click_model_path, monkeypatch,  # noqa: F811
):
    """The click model a project promoted (`db.registry`, role "clicks": what a training job or
    `labeler models promote` does) answers that project's clicks without CLICK_MODEL, with
    guided_walker (the default with a click model); after `labeler models rollback --clicks` the same
    image's clicks are answered from the maps alone (chained_walker), no click model bound."""
    import json

    from backend import interactive
    from db import registry, repository
    from explain import clicks
    from models.loading import load_model

    app = create_app(make_settings(tmp_path, model_path, documents))
    loaded = load_model(click_model_path, kind="clicker")
    sessions = session_factory(make_engine(f"sqlite:///{tmp_path / 'backend.db'}"))
    with sessions.begin() as session:
        project = repository.upsert_project(session, 7, label_studio="")
        row = registry.add_segmenter(session, project, click_model_path.read_bytes(), loaded.version,
                                     json.loads(loaded.spec.to_json()), {}, {}, {}, "promoted: by the test")
        registry.promote(session, project, row.id, "trained")
    used = []
    monkeypatch.setattr(interactive, "segment", lambda *args: used.append(args[3]) or clicks.segment(*args))
    client = app.test_client()
    answer = client.post("/predict", json=click_body({"result": [keypoint(62.5, 25)]}))
    assert answer.status_code == 200, answer.json
    [(_, evidence)] = app.config["BACKEND"].clicks.cache._entries.values()
    assert evidence.clicker is not None and evidence.clicker.clicker.version == loaded.version
    assert used == ["guided_walker"]

    with sessions.begin() as session:
        registry.rollback(session, repository.get_project(session, 7, ""), role="clicks")
    answer = client.post("/predict", json=click_body({"result": [keypoint(62.5, 25)]}))
    assert answer.status_code == 200, answer.json
    assert brush_mask(answer.json["results"][0]["result"], 80, 60)[15, 50]
    assert used == ["guided_walker", "chained_walker"]
    assert [e.clicker is None for _, e in app.config["BACKEND"].clicks.cache._entries.values()] == [False, True]
