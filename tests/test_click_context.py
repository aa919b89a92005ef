"""Label Studio's interactive context -> clicks and boxes (explain.labelstudio.context), the answer's
targets in a labelling config (configs.click_targets) and the answer's results (results.mask_results)."""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from explain.clicks import Box, Click
from explain.labelstudio.configs import click_targets, plan_for
from explain.labelstudio.context import MAX_REGIONS, ContextError, Prompt, parse_context
from explain.labelstudio.results import mask_results, region_mask


def keypoint(x, y, positive=None, label="Opacity", **extra):
    region = {
        "id": "k1", "type": "keypointlabels", "from_name": "click", "to_name": "image", "origin": "manual",
        "original_width": 200, "original_height": 100, "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]}, **extra,
    }
    if positive is not None:
        region["is_positive"] = positive
    return region


def rectangle(x, y, w, h, positive=True):
    return {
        "type": "rectanglelabels", "from_name": "box", "to_name": "image", "is_positive": positive,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": ["Opacity"]},
    }


def test_keypoints_and_rectangles_become_clicks_and_boxes_in_original_pixels():
    context = {"result": [keypoint(25, 50), keypoint(75.5, 10, positive=False), rectangle(10, 20, 30, 40, positive=False)]}
    prompt = parse_context(context)
    assert prompt.label == "Opacity"
    assert prompt.clicks(200, 100) == (Click(50, 50, True), Click(151, 10, False))
    assert prompt.boxes(200, 100) == (Box(20, 20, 60, 40, False),)
    assert Click(151, 10).pixel((100, 200)) == (10, 151)  # row = y, col = x


def test_missing_or_null_is_positive_means_positive_and_other_region_types_are_ignored():
    brush = {"type": "brushlabels", "value": {"format": "rle", "rle": [1, 2], "brushlabels": ["Opacity"]}}
    prompt = parse_context({"result": [keypoint(1, 2), keypoint(3, 4, positive=None) | {"is_positive": None}, brush]})
    assert [c.positive for c in prompt.clicks(100, 100)] == [True, True]
    assert prompt.boxes(100, 100) == ()


def test_the_label_is_the_first_positive_regions_label():
    prompt = parse_context({"result": [keypoint(1, 1, positive=False, label="Other"), keypoint(2, 2, label="Nodule")]})
    assert prompt.label == "Nodule"
    assert parse_context({"result": [keypoint(1, 1) | {"value": {"x": 1, "y": 1}}]}).label is None


def test_no_context_is_none_and_a_context_without_clicks_is_an_empty_prompt():
    assert parse_context(None) is None
    for context in ({}, {"result": None}, {"result": []}, {"result": [{"type": "choices", "value": {}}]},
                    {"project_credentials_login": "u", "result": []}):
        prompt = parse_context(context)
        assert isinstance(prompt, Prompt) and not prompt


@pytest.mark.parametrize(
    "context, named",
    [
        ([], "params.context must be an object, got list"),
        ("x", "params.context must be an object, got str"),
        ({"result": {"x": 1}}, "params.context.result must be a list"),
        ({"result": [5]}, "params.context.result[0] must be an object"),
        ({"result": [{"type": "keypointlabels", "value": None}]}, "params.context.result[0].value must be an object"),
        ({"result": [keypoint("10", 5)]}, "params.context.result[0].value.x must be a number"),
        ({"result": [keypoint(10, True)]}, "params.context.result[0].value.y must be a number"),
        ({"result": [keypoint(10, None)]}, "value.y must be a number (percent of the image), got null"),
        ({"result": [keypoint(float("nan"), 5)]}, "value.x must be a number"),
        ({"result": [keypoint(1, 1), keypoint(100.5, 5)]}, "params.context.result[1].value.x must be a percentage in [0, 100], got 100.5"),
        ({"result": [keypoint(-1, 5)]}, "must be a percentage in [0, 100], got -1"),
        ({"result": [keypoint(1, 5, positive="yes")]}, "params.context.result[0].is_positive must be true or false, got str"),
        ({"result": [rectangle(60, 10, 50, 10)]}, "params.context.result[0].value: the rectangle reaches past the image"),
        ({"result": [rectangle(10, 10, -5, 10)]}, "value.width must be a percentage"),
        ({"result": [{"type": "rectanglelabels", "value": {"x": 1, "y": 1}}]}, "value.width must be a number"),
        ({"result": [keypoint(1, 1)] * (MAX_REGIONS + 1)}, f"has {MAX_REGIONS + 1} regions, over the {MAX_REGIONS}"),
    ],
)
def test_malformed_contexts_are_refused_naming_the_problem(context, named):
    with pytest.raises(ContextError) as error:
        parse_context(context)
    assert named in str(error.value)


def test_percentages_a_rounding_error_past_the_edge_are_clipped():
    prompt = parse_context({"result": [keypoint(100.0000001, -0.0000001), rectangle(0, 0, 100.0000001, 100)]})
    assert prompt.points == ((100.0, 0.0, True),)
    assert prompt.rectangles == ((0.0, 0.0, 100.0, 100.0, True),)


INTERACTIVE = """<View>
  <Image name="image" value="$image"/>
  <Choices name="diagnosis" toName="image"><Choice value="covid"/><Choice value="normal"/></Choices>
  <BrushLabels name="mask" toName="image"><Label value="Opacity"/></BrushLabels>
  <PolygonLabels name="outline" toName="image"><Label value="Opacity"/></PolygonLabels>
  <KeyPointLabels name="click" toName="image" smart="true" smartOnly="true"><Label value="Opacity"/></KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true" smartOnly="true"><Label value="Opacity"/></RectangleLabels>
</View>"""


def test_smart_tools_get_no_pre_labels_and_answers_go_to_the_brush_and_polygon_controls():
    plan = plan_for(INTERACTIVE, ("covid", "normal"))
    assert {c.rectangle for c in plan.controls} == {None}  # the smart RectangleLabels is the annotator's prompt
    targets = click_targets(INTERACTIVE, plan)
    assert (targets.to_name, targets.brush, targets.polygon) == ("image", "mask", "outline")
    assert targets.mapping == {"covid": "Opacity"}
    assert targets.wanted("Opacity") == ("covid",) and targets.wanted("Unknown") == ("covid",)
    assert targets.label("Opacity", "normal") == "Opacity" and targets.label(None, "covid") == "Opacity"


def test_a_config_without_brush_labels_has_no_click_targets():
    config = INTERACTIVE.replace("BrushLabels", "RectangleLabels").replace('name="mask"', 'name="r"')
    with pytest.raises(ValueError, match="no BrushLabels control"):
        click_targets(config, plan_for(config, ("covid", "normal")))


def test_mask_results_are_one_brush_region_and_one_polygon_per_part():
    mask = np.zeros((40, 60), bool)
    mask[5:15, 5:20] = True
    mask[25:35, 40:55] = True
    results = mask_results(mask, "Opacity", "image", "mask", "outline", score=0.7)
    assert [r["type"] for r in results] == ["brushlabels", "polygonlabels", "polygonlabels"]
    brush = results[0]
    decoded = decode_rle(brush["value"]["rle"]).reshape(40, 60, 4)[:, :, 3] > 0
    assert (decoded == mask).all() and brush["score"] == 0.7
    union = region_mask(results[1]) | region_mask(results[2])
    assert (union == mask).all()
    assert mask_results(np.zeros((4, 4), bool), "Opacity", "image", "mask") == []
    assert [r["type"] for r in mask_results(mask, "Opacity", "image", "mask")] == ["brushlabels"]
