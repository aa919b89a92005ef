"""The generated labelling config's defaults, and the backend's gating setting."""
from __future__ import annotations

import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend.config import Settings
from explain.labelstudio.configs import labeling_config, plan_for


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


def test_interactive_config_adds_smart_tools_that_get_no_pre_labels():
    from explain.labelstudio.configs import click_targets

    config = labeling_config(("covid", "normal"), region_kinds=["brush", "polygon"], interactive=True)
    smart = {c.tag: (c.name, list(c.labels), c.attr.get("smart")) for c in LabelInterface(config).controls if c.attr.get("smart")}
    assert smart == {"KeyPointLabels": ("click", ["Opacity"], "true"), "RectangleLabels": ("box", ["Opacity"], "true")}
    plan = plan_for(config, ("covid", "normal"))
    assert {c.rectangle for c in plan.controls} == {None}
    targets = click_targets(config, plan)
    assert (targets.brush, targets.polygon, targets.mapping) == ("mask", "outline", {"covid": "Opacity"})
    assert "smart" not in labeling_config(("covid",))
    with pytest.raises(ValueError, match="must include brush"):
        labeling_config(("covid",), region_kinds=["polygon"], interactive=True)
