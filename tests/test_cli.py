"""The ``labeler`` command line: demo data, training a small model and explaining images with it.

One small CNN is trained once per module (synthetic 64 px images, 2 epochs) and shared by the
``explain`` tests. Most commands run in-process with typer's CliRunner; where the real process
matters (exit codes, what reaches stderr) ``.venv/bin/labeler`` runs as a subprocess.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from typer.testing import CliRunner

from explain.images import load_image
from explain.labelstudio.results import Controls
from labeler.cli import app
from models.loading import load_classifier

pytestmark = pytest.mark.train  # the module trains a small CNN (and one test trains two more); real processes too

LABELER = Path(sys.executable).with_name("labeler")
SIZE = 64
CLASSES = ["clear", "opacity"]
CONTROLS = Controls()


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def run_labeler(*args):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # rich's default width: 80
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run([str(LABELER), *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = invoke("demo-data", out, "--per-class", 16, "--size", SIZE, "--seed", 3)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """(model path, CliRunner result) of one small-cnn trained for 2 epochs at 64 x 64."""
    model = tmp_path_factory.mktemp("model") / "m.keras"
    result = invoke("train-classifier", data / "images", "--out", model, "--size", SIZE, "--epochs", 2, "--batch-size", 8)
    assert result.exit_code == 0, result.output
    return model, result


def test_demo_data_layout(data):
    clear = sorted((data / "images" / "clear").glob("*.png"))
    opacity = sorted((data / "images" / "opacity").glob("*.png"))
    masks = sorted((data / "masks").glob("*.png"))
    assert len(clear) == len(opacity) == 16
    assert {p.name for p in masks} == {p.name for p in opacity}  # every opacity image has a lesion
    image = cv2.imread(str(clear[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8
    mask = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) == {0, 255}


def test_demo_data_refuses_tiny_size(tmp_path):
    result = invoke("demo-data", tmp_path / "d", "--size", 8)
    assert result.exit_code == 2
    assert not (tmp_path / "d").exists()


def test_train_classifier_writes_model_and_spec(trained):
    model, result = trained
    assert model.is_file()
    spec = json.loads(model.with_name("m.spec.json").read_text())
    assert spec["class_names"] == CLASSES
    assert spec["input_size"] == [SIZE, SIZE] and spec["target_layer"] == "features"
    loaded = load_classifier(model)
    assert re.search(rf"version {loaded.version}\b", result.stdout)
    assert "32 images (clear 16, opacity 16)" in result.stdout
    assert "epoch" in result.stdout and "validation accuracy" in result.stdout


def test_train_classifier_seed_reproduces_a_run(data, tmp_path):
    versions = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        path = tmp_path / f"{name}.keras"
        result = invoke("train-classifier", data / "images", "--out", path, "--size", 32, "--epochs", 1, "--seed", seed)
        assert result.exit_code == 0, result.output
        versions.append(load_classifier(path).version)
    assert versions[0] == versions[1] != versions[2]


def test_train_classifier_bad_inputs(data, tmp_path):
    one_class = tmp_path / "one"
    (one_class / "clear").mkdir(parents=True)
    for p in sorted((data / "images" / "clear").glob("*.png"))[:3]:
        (one_class / "clear" / p.name).write_bytes(p.read_bytes())
    cases = [
        ([tmp_path / "missing", "--out", tmp_path / "a.keras"], "not a folder"),
        ([one_class, "--out", tmp_path / "b.keras"], "need at least two class folders"),
        ([data / "images", "--out", tmp_path / "model.txt"], "--out must end in .keras or .h5"),
        ([data / "images", "--out", tmp_path / "c.keras", "--arch", "nope"], "--arch must be one of"),
    ]
    for args, message in cases:
        result = invoke("train-classifier", *args, "--epochs", 1, "--size", 32)
        assert result.exit_code == 2, (args, result.output)
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and message in lines[0], (args, result.stderr)
        assert "Traceback" not in result.output
    assert list(tmp_path.glob("*.keras")) == [] and not (tmp_path / "model.txt").exists()


def test_train_classifier_error_in_a_real_process(tmp_path):
    missing = tmp_path / ("a-long-folder-name-" * 4) / "images"  # longer than a terminal line
    result = run_labeler("train-classifier", missing, "--out", tmp_path / "m.keras")
    assert result.returncode == 2
    assert error_lines(result.stderr) == [f"error: {missing}: not a folder"]  # whole, not wrapped
    assert "Traceback" not in result.stderr + result.stdout


# --------------------------------------------------------------------------------------------
# explain


def brush_mask(result: dict) -> np.ndarray:
    h, w = result["original_height"], result["original_width"]
    return decode_rle(result["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def check_outputs(out: Path, image_path: Path, classes: list[str] | None = None) -> dict:
    """Check every file written for one image; returns its Label Studio task.

    classes: those that must have pictures (default: the predicted one)."""
    height, width = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED).shape[:2]
    task = json.loads((out / f"{image_path.stem}.json").read_text())
    assert task["data"] == {"image": image_path.name}
    assert len(task["predictions"]) == 1
    prediction = task["predictions"][0]
    results = prediction["result"]
    choices = [r for r in results if r["type"] == "choices"]
    assert len(choices) == 1
    assert choices[0]["from_name"] == CONTROLS.choices and choices[0]["to_name"] == CONTROLS.to_name
    predicted = choices[0]["value"]["choices"]
    assert len(predicted) == 1 and predicted[0] in CLASSES
    assert prediction["score"] == pytest.approx(choices[0]["score"])
    brushes = [r for r in results if r["type"] == "brushlabels"]
    polygons = [r for r in results if r["type"] == "polygonlabels"]
    assert {r["type"] for r in results} <= {"choices", "brushlabels", "polygonlabels"}
    assert len(brushes) == len(polygons)  # one of each per region; a class may have no region
    for r in brushes:
        assert r["from_name"] == CONTROLS.brush and r["to_name"] == CONTROLS.to_name
        assert (r["original_width"], r["original_height"]) == (width, height)
    for r in polygons:
        assert r["from_name"] == CONTROLS.polygon and r["to_name"] == CONTROLS.to_name
        assert (r["original_width"], r["original_height"]) == (width, height)
        points = np.array(r["value"]["points"])
        assert points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3
        assert points.min() >= 0 and points.max() <= 100
    prefix, suffix = f"{image_path.stem}.", ".mask.png"
    written = sorted(p.name[len(prefix) : -len(suffix)] for p in out.glob(f"{prefix}*{suffix}"))
    assert written == sorted(classes or predicted)
    for cls in written:
        stem = out / f"{image_path.stem}.{cls}"
        panel = cv2.imread(f"{stem}.panel.png", cv2.IMREAD_UNCHANGED)
        assert panel.shape == (height, 3 * width, 3)
        for kind in ("heatmap", "overlay"):
            assert cv2.imread(f"{stem}.{kind}.png", cv2.IMREAD_UNCHANGED).shape == (height, width, 3)
        mask = cv2.imread(f"{stem}.mask.png", cv2.IMREAD_UNCHANGED)
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        union = np.zeros((height, width), bool)
        for r in brushes:
            assert r["value"]["format"] == "rle" and r["value"]["brushlabels"][0] in written
            if r["value"]["brushlabels"] == [cls]:
                decoded = brush_mask(r)
                assert decoded.shape == (height, width) and decoded.any()
                union |= decoded
        np.testing.assert_array_equal(mask == 255, union)
        polygon_labels = [r["value"]["polygonlabels"] for r in polygons if r["value"]["polygonlabels"] == [cls]]
        assert len(polygon_labels) == sum(r["value"]["brushlabels"] == [cls] for r in brushes)
    return task


def regions(task: dict) -> int:
    return sum(r["type"] == "brushlabels" for r in task["predictions"][0]["result"])


@pytest.fixture(scope="module")
def explained(trained, data, tmp_path_factory):
    model, _ = trained
    images = [sorted((data / "images" / name).glob("*.png"))[0] for name in CLASSES]
    out = tmp_path_factory.mktemp("explained")
    result = invoke("explain", *images, "--model", model, "--out", out)
    return images, out, result


def test_explain_writes_pictures_masks_and_tasks(explained):
    images, out, result = explained
    assert result.exit_code == 0, result.output
    tasks = [check_outputs(out, image) for image in images]
    assert sum(map(regions, tasks)) > 0  # the brush and mask checks had something to check
    assert f"wrote {len(images)} image(s)" in result.stdout


def test_explain_prints_the_models_probabilities(explained, trained):
    images, out, result = explained
    loaded = load_classifier(trained[0])
    stdout = " ".join(result.stdout.split())
    for image in images:
        picture = cv2.resize(load_image(image), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        probabilities = loaded.model.predict(loaded.spec.preprocess(picture), verbose=0)[0]
        predicted = CLASSES[int(probabilities.argmax())]
        task = json.loads((out / f"{image.stem}.json").read_text())
        choice = next(r for r in task["predictions"][0]["result"] if r["type"] == "choices")
        assert choice["value"]["choices"] == [predicted]
        assert choice["score"] == pytest.approx(float(probabilities.max()), abs=1e-4)
        assert task["predictions"][0]["model_version"].startswith(loaded.version + "-layercam@features")
        assert image.name in stdout
        for name, p in zip(CLASSES, probabilities):
            assert re.search(rf"{name} {p:.3f}|{name} {p - 5e-4:.3f}|{name} {p + 5e-4:.3f}", stdout), (name, p, stdout)


def test_explain_keeps_the_original_size_of_a_non_square_image(trained, tmp_path):
    model, _ = trained
    rng = np.random.default_rng(5)
    picture = cv2.GaussianBlur(rng.integers(0, 256, (50, 80), dtype=np.uint8), (0, 0), 3)
    image = tmp_path / "wide.png"
    cv2.imwrite(str(image), picture)
    out = tmp_path / "out"
    result = invoke("explain", image, "--model", model, "--out", out)
    assert result.exit_code == 0, result.output
    task = check_outputs(out, image)
    assert cv2.imread(str(next(out.glob("wide.*.panel.png")))).shape == (50, 240, 3)
    assert all(r.get("original_width", 80) == 80 and r.get("original_height", 50) == 50 for r in task["predictions"][0]["result"])


def test_explain_target_above_zero_covers_both_classes(trained, data, tmp_path):
    model, _ = trained
    image = sorted((data / "images" / "opacity").glob("*.png"))[1]
    result = invoke("explain", image, "--model", model, "--out", tmp_path, "--target", "above:0.0")
    assert result.exit_code == 0, result.output
    check_outputs(tmp_path, image, classes=CLASSES)
    assert "-above:0-" in json.loads((tmp_path / f"{image.stem}.json").read_text())["predictions"][0]["model_version"]


def test_explain_bad_image_among_good_ones(trained, data, tmp_path):
    model, _ = trained
    good = sorted((data / "images" / "clear").glob("*.png"))[2:4]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"
    result = run_labeler("explain", good[0], corrupt, good[1], missing, "--model", model, "--out", out)
    assert result.returncode == 1, result.stderr
    for image in good:
        check_outputs(out, image)
    lines = error_lines(result.stderr)
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("error: corrupt.png: ") and lines[1].startswith("error: missing.jpg: ")
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(out.glob("corrupt*")) and not list(out.glob("missing*"))
    assert "wrote 2 image(s)" in result.stdout


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--threshold", "bogus", "--threshold 'bogus'"),
        ("--colormap", "nope", "--colormap must be one of"),
        ("--method", "magic", "method must be one of"),
        ("--model", "missing.keras", "missing.keras"),
        ("--target", "above:2", "probability must be between 0 and 1"),
        ("--target", "pneumonia", "pneumonia"),
    ],
)
def test_explain_bad_options(trained, data, tmp_path, option, value, message):
    model, _ = trained
    image = sorted((data / "images" / "clear").glob("*.png"))[0]
    options = {"--model": str(model), option: str(tmp_path / value) if option == "--model" else value}
    args = [image, "--out", tmp_path / "out"] + [v for pair in options.items() for v in pair]
    result = invoke("explain", *args)
    assert result.exit_code == 2, result.output
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


def test_explain_missing_model_in_a_real_process(data, tmp_path):
    image = sorted((data / "images" / "clear").glob("*.png"))[0]
    result = run_labeler("explain", image, "--model", tmp_path / "missing.keras", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert error_lines(result.stderr) == ["error: missing.keras: no such model file or folder"]
    assert "Traceback" not in result.stderr + result.stdout


def test_explain_shared_research_images(shared_data, trained, tmp_path):
    seed = shared_data / "cxr" / "seed"
    images = sorted(p for p in seed.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    assert len(images) == 3 and not any("__" in p.name for p in images)
    model, _ = trained
    result = invoke("explain", *images, "--model", model, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    tasks = [check_outputs(tmp_path, image) for image in images]
    assert sum(map(regions, tasks)) > 0


def test_method_and_source_help_lists_what_the_code_has():
    """The command line names CAM methods without importing TensorFlow; this keeps that list and
    the engine's registry equal, and the sources' help generated from their registry."""
    from explain.methods import METHODS
    from explain.sources import SOURCES
    from labeler import cli

    assert set(cli.METHOD_NAMES) == set(METHODS)
    result = CliRunner().invoke(cli.app, ["prelabel", "--help"], env={"COLUMNS": "400"})
    for name in SOURCES:
        assert name in result.output


@pytest.mark.parametrize("args, env, expected", [
    ([], {}, False),
    (["--fast-import"], {}, True),
    ([], {"LABEL_STUDIO_FAST_IMPORT": "1"}, True),
    (["--no-fast-import"], {"LABEL_STUDIO_FAST_IMPORT": "1"}, False),
])
def test_prelabel_fast_import_comes_from_its_option_or_the_environment(monkeypatch, tmp_path, args, env, expected):
    from labeler import prelabeling, training

    seen = {}

    def fake(ws, model, settings, batch_size, document_root, **kwargs):
        seen.update(kwargs)
        return prelabeling.PrelabelReport(0, 0, [], 0.0, "v")

    monkeypatch.setattr(prelabeling, "prelabel_project", fake)
    monkeypatch.setattr(training, "promoted_segmenter", lambda ws: None)
    result = CliRunner().invoke(app, ["prelabel", "--model", str(tmp_path / "m.keras"), "--database-url", "sqlite://",
                                      "--label-studio-url", "http://127.0.0.1:9", "--api-key", "k", "--project", "1",
                                      *args], env=env)
    assert result.exit_code == 0, result.output
    assert seen["fast_import"] is expected
