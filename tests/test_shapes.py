"""Shape methods (explain/shapes.py): the outline follows the image, the map says where."""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from explain.prelabel import Prelabeler, PrelabelSettings, prelabel_settings
from explain.regions import RegionSettings, Threshold, extract_regions, threshold_mask
from explain.shapes import SHAPES, apply_shape
from models.spec import ModelSpec

METHODS = [name for name in SHAPES if name != "map"]


def scene(n: int = 256, offset: float = 0.07):
    """A dark lung ellipse in a bright body, a bright disc in the lung, and a blurry blob of heat
    whose centre is ``offset`` (fraction of the side) away from the disc's, down and right.
    Returns gray (n, n) in [0, 1], heat (n, n) in [0, 1], lung and disc (n, n) bool."""
    yy, xx = np.mgrid[:n, :n] / n
    lung = ((xx - 0.5) / 0.35) ** 2 + ((yy - 0.5) / 0.42) ** 2 <= 1
    disc = (xx - 0.45) ** 2 + (yy - 0.45) ** 2 <= 0.09**2
    gray = np.where(lung, 0.25, 0.7).astype(np.float32)
    gray[disc] = 0.6
    gray = np.clip(gray + np.random.default_rng(0).normal(0, 0.02, gray.shape).astype(np.float32), 0, 1)
    c = 0.45 + offset
    heat = np.exp(-((xx - c) ** 2 + (yy - c) ** 2) / (2 * 0.1**2)).astype(np.float32)
    return gray, heat, lung, disc


def dice(a, b) -> float:
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def bright_disc():
    gray, heat, lung, disc = scene()
    return gray, heat, lung, disc, threshold_mask(heat, Threshold("fraction", 0.5), lung)


@pytest.mark.parametrize("name", METHODS)
def test_each_method_outlines_the_bright_disc_better_than_the_map(bright_disc, name):
    gray, heat, lung, disc, mask = bright_disc
    baseline = dice(mask, disc)
    assert baseline < 0.45  # the map alone misses half the disc
    for roi in (lung, None):
        out = apply_shape(name, mask, heat, gray, roi)
        assert out.shape == mask.shape and out.dtype == bool
        assert dice(out, disc) > baseline + 0.15, (name, roi is None, dice(out, disc), baseline)


@pytest.mark.parametrize("name", METHODS)
def test_nothing_outside_the_roi_and_the_same_answer_twice(bright_disc, name):
    gray, heat, lung, disc, _ = bright_disc
    half = lung.copy()
    half[:, : half.shape[1] // 2 - 10] = False  # cuts through the disc
    mask = threshold_mask(heat, Threshold("fraction", 0.3), half)
    first = apply_shape(name, mask, heat, gray, half)
    assert first.any() and not first[~half].any()
    np.testing.assert_array_equal(first, apply_shape(name, mask, heat, gray, half))


@pytest.mark.parametrize("name", list(SHAPES))
def test_flat_images_and_large_images(name):
    n = 64
    gray = np.full((n, n), 0.5, np.float32)
    yy, xx = np.mgrid[:n, :n] / n
    heat = np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.02).astype(np.float32)
    mask = heat >= 0.5
    roi = np.zeros((n, n), bool)
    roi[8:56, 8:56] = True
    for r in (None, roi):
        out = apply_shape(name, mask, heat, gray, r)
        assert out.shape == (n, n) and (r is None or not out[~r].any())
    assert not apply_shape(name, np.zeros((n, n), bool), np.zeros((n, n), np.float32), gray, None).any()
    big = scene(1024)  # worked on at 256 px and scaled back up
    out = apply_shape(name, big[1] >= 0.5, big[1], big[0], big[2])
    assert out.shape == (1024, 1024) and dice(out, big[3]) > 0.3


def test_region_settings_name_the_shape_only_when_it_is_not_the_map(bright_disc):
    gray, heat, lung, disc, _ = bright_disc
    assert RegionSettings().describe() == "fraction0.2-min0.001-fill-v64"
    assert RegionSettings(shape="grabcut").describe() == "fraction0.2-min0.001-fill-v64-shape:grabcut"
    with pytest.raises(ValueError, match="shape must be one of map, intensity"):
        RegionSettings(shape="snake")
    settings = RegionSettings(Threshold("fraction", 0.5), shape="intensity")
    with pytest.raises(ValueError, match="needs the gray image"):
        extract_regions(heat, settings, lung)
    with pytest.raises(ValueError, match="needs the gray image"):
        extract_regions(heat, settings, lung, gray[:10])
    (shaped,) = extract_regions(heat, settings, lung, gray)
    (plain,) = extract_regions(heat, RegionSettings(Threshold("fraction", 0.5)), lung, gray)
    assert dice(shaped.mask, disc) > dice(plain.mask, disc) + 0.2
    assert prelabel_settings(shape="slic").regions.shape == "slic"


def test_the_command_line_and_the_backend_name_every_shape(tmp_path):
    from backend.config import Settings
    from backend.predictor import prelabel_settings as backend_settings
    from labeler import cli

    assert cli.SHAPE_NAMES == tuple(SHAPES)
    result = CliRunner().invoke(cli.app, ["explain", str(tmp_path / "a.png"), "--model", str(tmp_path / "m.keras"),
                                          "--out", str(tmp_path), "--shape", "snake"])
    assert result.exit_code == 2 and "error: --shape must be one of map, intensity" in result.output
    env = {"MODEL_PATH": "m.keras", "CAM_SHAPE": "watershed"}
    assert backend_settings(Settings.from_env(env)).regions.shape == "watershed"
    # one default for every face: the settings factory's, the backend's and both commands'
    import inspect

    from explain.prelabel import prelabel_settings

    default = prelabel_settings().regions.shape
    assert default == "grabcut" == Settings.from_env({"MODEL_PATH": "m.keras"}).cam_shape
    assert {inspect.signature(command).parameters["shape"].default for command in (cli.explain, cli.prelabel)} == {default}
    with pytest.raises(ValueError, match="CAM_SHAPE: shape must be one of"):
        Settings.from_env({**env, "CAM_SHAPE": "snake"})


def test_the_shape_setting_changes_the_prelabels_and_the_version():
    """conv(1x1) -> GAP -> dense: the "bright" map is the image at 32 x 32, blurred back up; the
    "intensity" outline follows the disc in the full-size image instead."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(1, 1, activation="relu", name="conv")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32), np.zeros(1, np.float32)])
    model.layers[-1].set_weights([np.array([[4.0, -4.0]], np.float32), np.zeros(2, np.float32)])
    spec = ModelSpec(input_size=(32, 32), class_names=("bright", "dark"))
    n = 256
    yy, xx = np.mgrid[:n, :n]
    disc = (xx - 100) ** 2 + (yy - 120) ** 2 <= 30**2
    image = np.repeat(np.where(disc, 0.9, 0.2).astype(np.float32)[..., None], 3, axis=2)
    results = {}
    for shape in ("map", "intensity"):
        settings = PrelabelSettings(regions=RegionSettings(Threshold("fraction", 0.2), shape=shape))
        prelabeler = Prelabeler(model, spec, settings)
        (prelabel,) = prelabeler([image])
        results[shape] = (prelabeler.version("w1"), np.any([r.mask for r in prelabel.classes[0].regions], axis=0))
    assert results["map"][0] == "w1-gradcam@conv-logit-predicted-fraction0.2-min0.001-fill-v64"
    assert results["intensity"][0] == results["map"][0] + "-shape:intensity"
    assert not np.array_equal(results["map"][1], results["intensity"][1])
    assert dice(results["intensity"][1], disc) > dice(results["map"][1], disc) + 0.02
