"""Gating (no regions for an improbable class) and the generated labelling config's defaults."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend.config import Settings
from explain.labelstudio.configs import labeling_config, plan_for
from explain.prelabel import Prelabeler, PrelabelSettings, prelabel_settings
from models.spec import ModelSpec

INPUT = (32, 32)


@pytest.fixture(scope="module")
def brightness_model():
    """conv(1x1, weight 1/3) -> GAP -> dense [+4, -4]: p(bright) = sigmoid(8 x mean brightness)."""
    inputs = keras.Input((*INPUT, 3))
    x = keras.layers.Conv2D(1, 1, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="dense")(x))
    model.get_layer("conv").set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32), np.zeros(1, np.float32)])
    model.get_layer("dense").set_weights([np.array([[4.0, -4.0]], np.float32), np.zeros(2, np.float32)])
    return model, ModelSpec(input_size=INPUT, class_names=("bright", "dark"))


def square(side: int) -> np.ndarray:
    """A 64x64 black image with a white side x side square in its corner."""
    image = np.zeros((64, 64, 3), np.float32)
    image[:side, :side] = 1.0
    return image


def test_min_probability_gates_regions_per_image(brightness_model):
    model, spec = brightness_model
    faint, strong = square(24), square(48)  # mean brightness 0.14 / 0.56: p(bright) ~ 0.76 / 0.99
    settings = prelabel_settings(method="gradcam", min_probability=0.9)
    gated_faint, gated_strong = Prelabeler(model, spec, settings)([faint, strong])
    ungated_faint, _ = Prelabeler(model, spec, prelabel_settings(method="gradcam"))([faint, strong])
    assert 0.6 < gated_faint.probabilities["bright"] < 0.9 < gated_strong.probabilities["bright"]
    assert gated_faint.classes[0].class_name == "bright" and gated_faint.classes[0].regions == []
    assert gated_faint.classes[0].heatmap.max() > 0  # the map is still there, only no regions are drawn
    assert ungated_faint.classes[0].regions and gated_strong.classes[0].regions


def test_min_probability_names_the_version_and_is_checked(brightness_model):
    model, spec = brightness_model
    plain = Prelabeler(model, spec, prelabel_settings(method="gradcam")).description
    gated = Prelabeler(model, spec, prelabel_settings(method="gradcam", min_probability=0.5)).description
    assert gated == plain + "-p0.5"
    for bad in (-0.1, 1.0, True, "0.5"):
        with pytest.raises(ValueError, match="min_probability must be a probability"):
            PrelabelSettings(min_probability=bad)


def test_backend_reads_min_probability():
    assert Settings.from_env({"MODEL_PATH": "m.keras"}).min_probability == 0.0
    assert Settings.from_env({"MODEL_PATH": "m.keras", "MIN_PROBABILITY": "0.7"}).min_probability == 0.7
    for bad in ("1", "-0.2", "high"):
        with pytest.raises(ValueError, match="MIN_PROBABILITY"):
            Settings.from_env({"MODEL_PATH": "m.keras", "MIN_PROBABILITY": bad})


def controls(config: str) -> dict[str, list[str]]:
    return {c.tag: list(c.labels) for c in LabelInterface(config).controls}


def test_default_config_outlines_one_lesion_label_with_one_tool():
    config = labeling_config(("covid", "normal", "pneumonia"))
    assert controls(config) == {"Choices": ["covid", "normal", "pneumonia"], "BrushLabels": ["Opacity"]}
    plan = plan_for(config, ("covid", "normal", "pneumonia"))
    (brush,) = [c for c in plan.controls if c.brush]
    assert brush.labels == {"covid": "Opacity", "pneumonia": "Opacity"} and brush.polygon is None


def test_config_with_chosen_labels_and_kinds():
    config = labeling_config(("covid", "normal"), region_labels=["GGO", "Consolidation"], region_kinds=["brush", "polygon"])
    assert controls(config) == {
        "Choices": ["covid", "normal"], "BrushLabels": ["GGO", "Consolidation"], "PolygonLabels": ["GGO", "Consolidation"],
    }
    assert "BrushLabels" not in controls(labeling_config(("covid",), region_kinds=["polygon"]))
    with pytest.raises(ValueError, match="region kinds must be some of brush, polygon, got ellipse"):
        labeling_config(("covid",), region_kinds=["ellipse"])
    with pytest.raises(ValueError, match="no region labels"):
        labeling_config(("covid",), region_labels=[])
