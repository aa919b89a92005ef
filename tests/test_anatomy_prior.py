"""The anatomy prior: an ROI model (a lung segmenter) confines pre-label regions to the lungs, in
the pipeline (`explain.anatomy`, `explain.prelabel`), the backend (ROI_MODEL_PATH, /health) and the
command line (--roi-model; train-segmenter on a folder of image / mask pairs).

The models are tiny real Keras models with hand-set weights, so that where the maps are hot is
known: the classifier's Grad-CAM follows the image's RED channel, the ROI model's lungs are where
the GREEN channel is bright.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from backend.app import create_app
from backend.config import Settings
from backend.predictor import NO_PRIOR, prelabel_settings as backend_settings
from explain.anatomy import PriorSettings, roi_mask
from explain.prelabel import Prelabeler, PrelabelSettings
from labeler.cli import app, prelabel_settings as cli_settings
from labeler.pipelines import build_prelabeler
from labeler.synthetic import synthetic_case
from models.classifiers import build_small_cnn
from models.loading import load_classifier, load_segmenter, save_model
from models.segmentation import Segmenter
from models.spec import ModelSpec
from test_backend import CONFIG, documents, make_settings, model_path, predict_body, task  # noqa: F401 (fixtures)

HEIGHT, WIDTH = 60, 80


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# --- roi_mask on hand-made maps ----------------------------------------------------------------

def test_the_two_largest_components_are_kept_and_specks_dropped():
    probabilities = np.zeros((20, 20), np.float32)
    probabilities[2:18, 1:8] = 0.9  # left lung, 112 px
    probabilities[2:16, 11:18] = 0.8  # right lung, 98 px
    probabilities[17:19, 15:19] = 0.9  # a third, smaller component (8 px, over 1 % of 400)
    probabilities[0, 19] = 1.0  # a speck
    mask = roi_mask(probabilities, 20, 20, PriorSettings(margin=0))
    expected = np.zeros((20, 20), bool)
    expected[2:18, 1:8] = expected[2:16, 11:18] = True
    np.testing.assert_array_equal(mask, expected)
    assert roi_mask(probabilities, 20, 20, PriorSettings(margin=0, keep=3)).sum() == expected.sum() + 8


def test_holes_are_filled_and_channels_maxed():
    probabilities = np.zeros((20, 20, 2), np.float32)
    probabilities[3:17, 3:10, 0] = 0.9  # left lung on channel 0, with a hole
    probabilities[7:10, 5:8, 0] = 0.1
    probabilities[3:17, 12:18, 1] = 0.9  # right lung on channel 1
    mask = roi_mask(probabilities, 20, 20, PriorSettings(margin=0))
    assert mask[3:17, 3:10].all() and mask[3:17, 12:18].all() and mask.sum() == 14 * 7 + 14 * 6


def test_the_margin_is_a_fraction_of_the_shorter_side_in_pixels():
    probabilities = np.zeros((10, 10), np.float32)
    probabilities[4:6, 4:6] = 1.0
    bare = roi_mask(probabilities, 200, 100, PriorSettings(margin=0))  # the map stretched to 100 x 200 px
    mask = roi_mask(probabilities, 200, 100, PriorSettings(margin=0.1))  # round(0.1 * 100) = 10 px
    (top, bottom), (left, right) = [(v.min(), v.max()) for v in np.nonzero(bare)]
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (top - 10, bottom + 10, left - 10, right + 10)
    assert not mask[top - 10, left - 10]  # a disk, not a square: the corner is further than 10 px
    assert (mask & bare).sum() == bare.sum() > 0


def test_a_map_without_lungs_gives_an_empty_roi():
    assert not roi_mask(np.zeros((8, 8), np.float32), 30, 20).any()
    assert roi_mask(np.zeros((8, 8), np.float32), 30, 20).shape == (20, 30)
    assert not roi_mask(np.full((8, 8), 0.49, np.float32), 30, 20).any()  # below the threshold


@pytest.mark.parametrize("field, value", [("threshold", 1.5), ("threshold", 0), ("margin", -0.1), ("margin", True), ("keep", 0), ("keep", 1.5)])
def test_prior_settings_name_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        PriorSettings(**{field: value})
    assert PriorSettings().describe() == "t0.5-k2-m0.03"


# --- the pipeline ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def red_classifier(tmp_path_factory):
    """A classifier whose class "opacity" wins and whose Grad-CAM is the image's red channel."""
    keras.utils.set_random_seed(0)
    model, spec = build_small_cnn(("clear", "opacity"), input_size=(32, 32), filters=(1,))
    kernel = np.zeros((3, 3, 3, 1), np.float32)
    kernel[1, 1, 0, 0] = 1.0  # the red channel, at the centre
    model.get_layer("conv1").set_weights([kernel])
    model.get_layer("norm1").set_weights([np.ones(1), np.zeros(1), np.zeros(1), np.ones(1)])
    model.get_layer("predictions").set_weights([np.array([[-1.0, 1.0]], np.float32), np.zeros(2, np.float32)])
    return save_model(model, spec, tmp_path_factory.mktemp("classifier") / "red.keras")


@pytest.fixture(scope="module")
def roi_path(tmp_path_factory):
    """An ROI model (a segmenter of one label, "Lungs"): lungs where the green channel is bright."""
    inputs = keras.Input((16, 16, 3))
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", name="lungs")(inputs)
    model = keras.Model(inputs, outputs)
    model.get_layer("lungs").set_weights([np.array([0.0, 20.0, 0.0], np.float32).reshape(1, 1, 3, 1), np.array([-10.0], np.float32)])
    spec = ModelSpec(input_size=(16, 16), class_names=("Lungs",), kind="segmenter")
    return save_model(model, spec, tmp_path_factory.mktemp("roi") / "lungs.keras")


def picture(lungs_left=True) -> np.ndarray:
    """(HEIGHT, WIDTH, 3): lungs (green) on the left half; a strong lesion (red) on the right, a
    faint one on the left."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    if lungs_left:
        image[:, : WIDTH // 2, 1] = 1.0
    image[20:40, 55:70, 0] = 1.0
    image[20:40, 12:26, 0] = 0.5
    return image


def region_pixels(prelabel) -> np.ndarray:
    mask = np.zeros((prelabel.height, prelabel.width), bool)
    for cls in prelabel.classes:
        for region in cls.regions:
            mask |= region.mask
    return mask


def test_no_region_pixel_lies_outside_the_lungs(red_classifier, roi_path):
    loaded, roi_model = load_classifier(red_classifier), Segmenter(load_segmenter(roi_path))
    settings = PrelabelSettings()
    plain = Prelabeler(loaded.model, loaded.spec, settings)
    hot = region_pixels(plain([picture()])[0])
    assert hot[:, WIDTH // 2 + 5 :].any()  # the CAM is hot on the right: without the prior, regions go there
    prior = Prelabeler(loaded.model, loaded.spec, settings, roi_model=roi_model)
    inside = region_pixels(prior([picture()])[0])
    margin = round(0.03 * HEIGHT)
    assert inside.any()  # the faint lesion: thresholds are taken inside the lungs
    assert not inside[:, WIDTH // 2 + margin :].any()
    assert inside[20:40, 12:26].mean() > 0.5
    # An explicit roi is AND-ed with the prior's.
    rows = np.zeros((HEIGHT, WIDTH), bool)
    rows[:30] = True
    both = region_pixels(prior([picture()], [rows])[0])
    assert both.any() and not both[30:].any() and not both[:, WIDTH // 2 + margin :].any()


def test_a_prior_that_finds_no_lungs_draws_nothing(red_classifier, roi_path):
    loaded, roi_model = load_classifier(red_classifier), Segmenter(load_segmenter(roi_path))
    prelabeler = Prelabeler(loaded.model, loaded.spec, PrelabelSettings(), roi_model=roi_model)
    prelabel = prelabeler([picture(lungs_left=False)])[0]
    assert prelabel.probabilities and not region_pixels(prelabel).any()


def test_the_version_and_recorded_settings_name_the_prior_only_when_there_is_one(red_classifier, roi_path):
    loaded, roi_model = load_classifier(red_classifier), Segmenter(load_segmenter(roi_path))
    plain = Prelabeler(loaded.model, loaded.spec, PrelabelSettings())
    prior = Prelabeler(loaded.model, loaded.spec, PrelabelSettings(), roi_model=roi_model, prior=PriorSettings(margin=0.05))
    assert prior.version("w") == f"{plain.version('w')}+roi:{roi_model.version}-t0.5-k2-m0.05"
    assert "roi" not in plain.version("w") and "roi" not in plain.recorded_settings
    assert prior.recorded_settings == {
        **plain.recorded_settings, "roi": roi_model.version, "prior": {"threshold": 0.5, "margin": 0.05, "keep": 2}
    }


# --- the backend -------------------------------------------------------------------------------

def test_health_says_whether_the_prior_is_active(tmp_path, model_path, documents, roi_path):
    without = create_app(make_settings(tmp_path, model_path, documents)).test_client()
    assert without.get("/health").json["anatomy_prior"] == {"active": False, "reason": NO_PRIOR}
    (tmp_path / "b").mkdir()
    client = create_app(make_settings(tmp_path / "b", model_path, documents, roi_model_path=roi_path)).test_client()
    health = client.get("/health").json["anatomy_prior"]
    assert health["active"] is True and health["model"] is None  # not loaded yet
    version = client.post("/setup", json={"project": "7", "schema": CONFIG}).json["model_version"]
    roi_version = load_segmenter(roi_path).version
    assert version.endswith(f"+roi:{roi_version}-t0.5-k2-m0.03")
    answer = client.get("/health")
    assert answer.json["anatomy_prior"] == {"active": True, "model": roi_version, "margin": 0.03}
    assert str(roi_path.parent) not in answer.get_data(as_text=True) and roi_path.name not in answer.get_data(as_text=True)
    predicted = client.post("/predict", json=predict_body(task(1, "img0.png")))
    assert predicted.status_code == 200 and predicted.json["results"][0]["model_version"] == version


def test_the_cli_names_the_same_version_as_the_backend(tmp_path, model_path, documents, roi_path):
    settings = make_settings(tmp_path, model_path, documents, roi_model_path=roi_path, roi_margin=0.05, cam_threshold="fraction:0.2")
    backend_version = create_app(settings).test_client().post("/setup", json={"project": "7", "schema": CONFIG}).json["model_version"]
    cli = cli_settings("layercam", None, "predicted", "fraction:0.2", 0.001, 64)
    assert cli == backend_settings(settings)
    from labeler.cli import prior_settings

    loaded, prelabeler = build_prelabeler(model_path, cli, roi_model_path=roi_path, prior=prior_settings(0.05))
    assert prelabeler.version(loaded.version) == backend_version and "+roi:" in backend_version


def labeler_backend(env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "labeler-backend")]
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{tmp_path / 'b.db'}", **env}
    if "PYTHONPATH" in os.environ:  # a checkout's code, not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_a_roi_model_that_is_no_segmenter_stops_the_backend_with_one_line(tmp_path, model_path):
    done = labeler_backend({"MODEL_PATH": str(model_path), "ROI_MODEL_PATH": str(model_path)}, tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ROI_MODEL_PATH: cnn.keras is a classifier, not a segmenter")
    assert str(model_path.parent) not in line
    with pytest.raises(ValueError, match="ROI_MODEL_PATH: missing.keras: no such model file or folder"):
        create_app(Settings(model_path=model_path, database_url=f"sqlite:///{tmp_path / 'c.db'}", roi_model_path=tmp_path / "missing.keras"))
    with pytest.raises(ValueError, match=r"^ROI_MARGIN: margin must be a fraction in \[0, 0.5\]"):
        create_app(Settings.from_env({"MODEL_PATH": str(model_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}", "ROI_MARGIN": "0.9"}))
    with pytest.raises(ValueError, match="ROI_MARGIN must be a float"):
        Settings.from_env({"MODEL_PATH": "m.keras", "ROI_MARGIN": "wide"})
    assert Settings.from_env({"MODEL_PATH": "m.keras", "ROI_MODEL_PATH": "r.keras", "ROI_MARGIN": "0"}).roi_margin == 0


# --- the command line --------------------------------------------------------------------------

def test_prelabel_without_a_roi_model_says_so_in_one_line(model_path):
    result = invoke("prelabel", "--model", model_path, "--database-url", "sqlite://")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines[0] == "note: no anatomy prior (--roi-model): regions may land outside the lungs"
    assert lines[-1].startswith("error: ")


def test_explain_with_a_roi_model_masks_only_the_lungs(tmp_path, red_classifier, roi_path):
    cv2.imwrite(str(tmp_path / "x.png"), cv2.cvtColor(np.uint8(picture() * 255), cv2.COLOR_RGB2BGR))
    result = invoke("explain", tmp_path / "x.png", "--model", red_classifier, "--out", tmp_path / "out", "--roi-model", roi_path)
    assert result.exit_code == 0, result.output
    mask = cv2.imread(str(tmp_path / "out" / "x.opacity.mask.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.any() and not mask[:, WIDTH // 2 + round(0.03 * HEIGHT) :].any()
    task_json = json.loads((tmp_path / "out" / "x.json").read_text())
    assert "+roi:" in task_json["predictions"][0]["model_version"]
    bad = invoke("explain", tmp_path / "x.png", "--model", red_classifier, "--out", tmp_path / "out", "--roi-model", red_classifier)
    assert bad.exit_code == 2 and bad.output.strip().splitlines()[-1].startswith("error: --roi-model: red.keras: this is a classifier")


def lung_pairs(folder: Path, count: int, size: int = 48, image_suffix: str = ".png") -> Path:
    rng = np.random.default_rng(4)
    for name in ("images", "masks"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    for n in range(count):
        image, _, lungs = synthetic_case(size, n % 2 == 0, rng)
        cv2.imwrite(str(folder / "images" / f"case{n}{image_suffix}"), image)
        cv2.imwrite(str(folder / "masks" / f"case{n}.png"), np.uint8(lungs) * (255 if n % 2 else 1))  # 0/255 and 0/1
    return folder


@pytest.mark.train
def test_train_segmenter_on_image_mask_pairs_makes_a_lungs_roi_model(tmp_path):
    pairs = lung_pairs(tmp_path / "pairs", 10)
    cv2.imwrite(str(pairs / "images" / "extra.jpg"), np.zeros((48, 48), np.uint8))
    cv2.imwrite(str(pairs / "masks" / "extra.png"), np.zeros((48, 48), np.uint8))
    out = tmp_path / "roi.keras"
    result = invoke("train-segmenter", pairs, "--out", out, "--size", 32, "--filters", "4,8", "--epochs", 2)
    assert result.exit_code == 0, result.output
    assert "labels Lungs; 9 train / 2 val tasks" in result.output  # --val-fraction 0.2 of 11 images
    roi_model = Segmenter(load_segmenter(out))
    assert roi_model.labels == ("Lungs",) and roi_model.spec.input_size == (32, 32)
    assert roi_model([np.zeros((50, 70, 3), np.float32)]).shape == (1, 32, 32, 1)


def test_train_segmenter_refuses_a_folder_of_neither_form_or_with_images_lacking_masks(tmp_path):
    (tmp_path / "other").mkdir()
    result = invoke("train-segmenter", tmp_path / "other", "--out", tmp_path / "m.keras")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'other'}: neither a `labeler export --format png` folder (manifest.csv) nor a "
        "folder of image / mask pairs (images/ and masks/)"
    ]
    pairs = lung_pairs(tmp_path / "pairs", 4)
    (pairs / "masks" / "case1.png").unlink()
    (pairs / "masks" / "case3.png").unlink()
    result = invoke("train-segmenter", pairs, "--out", tmp_path / "m.keras")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: ") and "2 image(s) have no mask" in result.output


def test_demo_data_writes_the_lungs_of_every_image(tmp_path):
    from labeler.demo import lung_pairs as demo_pairs
    from labeler.synthetic import write_dataset

    write_dataset(tmp_path / "data", per_class=2, size=48, seed=1)
    images = sorted(p.name for p in (tmp_path / "data" / "images").glob("*/*.png"))
    assert sorted(p.name for p in (tmp_path / "data" / "lungs").glob("*.png")) == images and len(images) == 4
    for name in images:
        lungs = cv2.imread(str(tmp_path / "data" / "lungs" / name), cv2.IMREAD_GRAYSCALE)
        assert set(np.unique(lungs)) == {0, 255} and 0.1 < (lungs > 0).mean() < 0.5
    pairs = demo_pairs(tmp_path / "data", tmp_path / "pairs")
    assert sorted(p.name for p in (pairs / "images").iterdir()) == sorted(p.name for p in (pairs / "masks").iterdir()) == images
