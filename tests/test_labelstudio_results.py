"""Label Studio result dicts: keys, percentages and RLE as Label Studio 1.23 stores them."""
from __future__ import annotations

import json

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from explain.labelstudio.results import (
    brush_result,
    choices_result,
    polygon_result,
    rectangle_result,
    region_id,
)

IMAGE_KEYS = {"id", "from_name", "to_name", "type", "original_width", "original_height", "image_rotation", "value"}


def test_brush_result_decodes_to_the_mask_at_original_size():
    height, width = 150, 220
    mask = np.zeros((height, width), dtype=bool)
    mask[20:60, 30:200] = True
    mask[100:140, 5:15] = True
    result = brush_result(mask, "Opacity", "tag", "image", score=0.83)

    assert set(result) == IMAGE_KEYS | {"score"}
    assert result["type"] == "brushlabels"
    assert (result["from_name"], result["to_name"]) == ("tag", "image")
    assert (result["original_width"], result["original_height"], result["image_rotation"]) == (width, height, 0)
    assert set(result["value"]) == {"format", "rle", "brushlabels"}
    assert result["value"]["format"] == "rle" and result["value"]["brushlabels"] == ["Opacity"]
    rle = result["value"]["rle"]
    assert all(type(v) is int and 0 <= v <= 255 for v in rle)
    alpha = decode_rle(rle).reshape(height, width, 4)[:, :, 3]
    assert np.array_equal(alpha, np.where(mask, 255, 0))
    assert type(result["score"]) is float and result["score"] == 0.83
    json.dumps(result)


def test_brush_result_accepts_uint8_mask():
    mask = np.zeros((10, 30), dtype=np.uint8)
    mask[2:5, 3:9] = 1
    result = brush_result(mask, "Opacity", "tag", "image")
    alpha = decode_rle(result["value"]["rle"]).reshape(10, 30, 4)[:, :, 3]
    assert np.array_equal(alpha, mask * 255)


def test_polygon_percentages_on_non_square_image():
    width, height = 400, 200
    polygon = np.array([[0.0, 0.0], [100.0, 50.0], [400.0, 200.0], [30.0, 123.4567]])
    result = polygon_result(polygon, width, height, "Opacity", "poly", "image", score=np.float32(0.5))

    assert set(result) == IMAGE_KEYS | {"score"}
    assert result["type"] == "polygonlabels"
    assert (result["original_width"], result["original_height"], result["image_rotation"]) == (400, 200, 0)
    assert result["value"] == {
        "points": [[0.0, 0.0], [25.0, 25.0], [100.0, 100.0], [7.5, 61.7284]],
        "closed": True,
        "polygonlabels": ["Opacity"],
    }
    assert all(type(c) is float for point in result["value"]["points"] for c in point)
    assert type(result["score"]) is float and result["score"] == 0.5


def test_polygon_points_are_clipped_into_the_image():
    result = polygon_result([[-5, 10], [250, -1], [120, 90]], 200, 100, "Opacity", "poly", "image")
    assert result["value"]["points"] == [[0.0, 10.0], [100.0, 0.0], [60.0, 90.0]]


def test_rectangle_percentages_on_non_square_image():
    result = rectangle_result((40, 30, 120, 45), 400, 150, "Opacity", "box", "image")
    assert set(result) == IMAGE_KEYS
    assert result["type"] == "rectanglelabels"
    assert (result["original_width"], result["original_height"]) == (400, 150)
    assert result["value"] == {
        "x": 10.0,
        "y": 20.0,
        "width": 30.0,
        "height": 30.0,
        "rotation": 0,
        "rectanglelabels": ["Opacity"],
    }


def test_rectangle_is_clipped_and_rounded():
    value = rectangle_result((-10, 290, 50, 30), 300, 300, "Opacity", "box", "image")["value"]
    assert (value["x"], value["y"], value["width"], value["height"]) == (0.0, 96.6667, 13.3333, 3.3333)


def test_choices_result():
    result = choices_result(["covid"], "label", "image", score=0.91)
    assert set(result) == {"id", "from_name", "to_name", "type", "value", "score"}
    assert result["type"] == "choices"
    assert result["value"] == {"choices": ["covid"]}
    assert result["score"] == 0.91


def test_score_is_omitted_when_none():
    assert "score" not in choices_result(["normal"], "label", "image")
    assert "score" not in polygon_result([[0, 0], [1, 0], [0, 1]], 10, 10, "Opacity", "poly", "image")


def test_ids_are_unique():
    mask = np.ones((4, 4), dtype=bool)
    results = [brush_result(mask, "Opacity", "tag", "image") for _ in range(50)]
    results += [choices_result(["covid"], "label", "image") for _ in range(50)]
    ids = [r["id"] for r in results] + [region_id() for _ in range(500)]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, str) and i for i in ids)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: brush_result(np.zeros((2, 2, 2), bool), "Opacity", "tag", "image"), "mask"),
        (lambda: polygon_result([[0, 0], [1, 1]], 10, 10, "Opacity", "poly", "image"), "polygon_xy"),
        (lambda: polygon_result([[0, 0], [1, 1], [0, np.nan]], 10, 10, "Opacity", "poly", "image"), "polygon_xy"),
        (lambda: polygon_result([[0, 0], [1, 1], [0, 1]], 0, 10, "Opacity", "poly", "image"), "width"),
        (lambda: rectangle_result((0, 0, -1, 5), 10, 10, "Opacity", "box", "image"), "box"),
        (lambda: rectangle_result((0, 0, 1, 5), 10, 10.5, "Opacity", "box", "image"), "height"),
        (lambda: choices_result([], "label", "image"), "choices"),
        (lambda: choices_result("covid", "label", "image"), "choices"),
        (lambda: choices_result(["covid"], "", "image"), "from_name"),
        (lambda: choices_result(["covid"], "label", "image", score=float("nan")), "score"),
        (lambda: rectangle_result((0, 0, 1, 5), 10, 10, "", "box", "image"), "label"),
    ],
)
def test_bad_arguments_name_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_results_back_to_masks_round_trip_the_regions():
    from explain.labelstudio.results import region_mask, result_choices, results_to_masks
    from explain.regions import RegionSettings, extract_regions

    height, width = 90, 140
    rows, cols = np.mgrid[:height, :width]
    heat = np.exp(-(((cols - 40) / 15.0) ** 2 + ((rows - 30) / 12.0) ** 2)) + np.exp(-(((cols - 100) / 14.0) ** 2 + ((rows - 60) / 16.0) ** 2))
    regions = extract_regions(heat / heat.max(), RegionSettings(max_vertices=64))
    assert len(regions) == 2
    union = regions[0].mask | regions[1].mask
    brush = [brush_result(r.mask, "Opacity", "mask", "image") for r in regions]
    polygons = [polygon_result(r.polygon, width, height, "Opacity", "outline", "image") for r in regions]
    boxes = [rectangle_result(r.box, width, height, "Box", "box", "image") for r in regions]
    masks = results_to_masks(brush + [choices_result(["covid"], "dx", "image")])
    assert list(masks) == ["Opacity"] and (masks["Opacity"] == union).all()
    from_polygons = results_to_masks(polygons)["Opacity"]
    assert (from_polygons & union).sum() / (from_polygons | union).sum() >= 0.9
    for region, box in zip(regions, boxes):
        x, y, w, h = region.box
        expected = np.zeros((height, width), bool)
        expected[y : y + h, x : x + w] = True
        assert (region_mask(box) == expected).all()
    assert result_choices(brush + [choices_result(["covid"], "dx", "image")]) == ["covid"]
    with pytest.raises(ValueError, match="result type must be one of"):
        region_mask({"type": "choices", "value": {}})


def test_a_rotated_box_turns_about_its_top_left_corner():
    from explain.labelstudio.results import region_mask

    value = {"x": 10, "y": 10, "width": 20, "height": 10, "rotation": 90, "rectanglelabels": ["a"]}
    mask = region_mask({"type": "rectanglelabels", "original_width": 100, "original_height": 100, "value": value})
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 29, 0, 9)  # 20 x 10 pixels
