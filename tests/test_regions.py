"""Heatmap thresholding and region extraction on constructed heatmaps."""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
from skimage.measure import points_in_poly

from explain.regions import (
    Region,
    RegionSettings,
    Threshold,
    extract_regions,
    threshold_mask,
)


def _disk(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _ellipse(shape, center, radii):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - center[0]) / radii[0]) ** 2 + ((xx - center[1]) / radii[1]) ** 2 <= 1


def _fill_poly(polygon, shape):
    """cv2.fillPoly on the pixel grid: pixel centres sit at +0.5 in the corner frame."""
    out = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(out, [np.round((polygon - 0.5) * 16).astype(np.int32)], 1, shift=4)
    return out.astype(bool)


def _iou(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def _inside_polygon(polygon, shape):
    """Pixels whose centres (col + 0.5, row + 0.5) lie inside an (x, y) corner-frame polygon."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])
    return points_in_poly(centres, polygon).reshape(shape)


@pytest.fixture
def levels():
    """80 x 120 heat: background 0.1, blob A at 0.5, blob B at 1.0."""
    heat = np.full((80, 120), 0.1)
    a = np.zeros(heat.shape, dtype=bool)
    a[10:30, 10:40] = True
    b = np.zeros(heat.shape, dtype=bool)
    b[50:70, 70:110] = True
    heat[a], heat[b] = 0.5, 1.0
    return heat, a, b


# --- Threshold and RegionSettings -------------------------------------------------


def test_threshold_describe():
    assert Threshold("fraction", 0.2).describe() == "fraction0.2"
    assert Threshold("fraction", 0.15).describe() == "fraction0.15"
    assert Threshold("percentile", 90).describe() == "percentile90"
    assert Threshold("otsu").describe() == "otsu"
    assert RegionSettings().describe() == "fraction0.2-min0.001-fill-v64"
    described = RegionSettings(Threshold("otsu"), 0.01, False, 8).describe()
    assert described == "otsu-min0.01-holes-v8"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"method": "mean"}, "method"),
        ({"method": "fraction", "value": 0.0}, "value"),
        ({"method": "fraction", "value": 1.5}, "value"),
        ({"method": "percentile", "value": -1}, "value"),
        ({"method": "percentile", "value": 101}, "value"),
        ({"method": "fraction", "value": float("nan")}, "value"),
        ({"method": "fraction", "value": "0.2"}, "value"),
    ],
)
def test_bad_threshold_names_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name) as info:
        Threshold(**kwargs)
    assert repr(next(iter(kwargs.values())) if name == "method" else kwargs["value"]) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"threshold": "otsu"}, "threshold"),
        ({"min_area": -0.1}, "min_area"),
        ({"min_area": 1.0}, "min_area"),
        ({"fill_holes": 1}, "fill_holes"),
        ({"max_vertices": 2}, "max_vertices"),
        ({"max_vertices": 8.0}, "max_vertices"),
    ],
)
def test_bad_settings_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RegionSettings(**kwargs)


# --- threshold_mask -------------------------------------------------------------


def test_fraction(levels):
    heat, a, b = levels
    assert np.array_equal(threshold_mask(heat, Threshold("fraction", 0.4)), a | b)
    assert np.array_equal(threshold_mask(heat, Threshold("fraction", 0.6)), b)
    assert np.array_equal(threshold_mask(heat, Threshold("fraction", 0.5)), a | b)  # >= is inclusive
    assert threshold_mask(heat, Threshold("fraction", 0.05)).all()


def test_percentile():
    heat = np.arange(100, dtype=float).reshape(10, 10) / 99
    mask = threshold_mask(heat, Threshold("percentile", 90))
    # 90th percentile of 0..99 is 89.1: the 10 values 90..99, i.e. the last row
    expected = np.zeros((10, 10), dtype=bool)
    expected[9] = True
    assert np.array_equal(mask, expected)
    assert threshold_mask(heat, Threshold("percentile", 0)).all()
    assert np.count_nonzero(threshold_mask(heat, Threshold("percentile", 50))) == 50


def test_otsu_splits_a_bimodal_heatmap():
    rng = np.random.default_rng(0)
    blob = _ellipse((90, 130), (40, 70), (20, 35))
    heat = np.where(blob, 0.8, 0.15) + rng.uniform(-0.1, 0.1, blob.shape)
    assert np.array_equal(threshold_mask(heat, Threshold("otsu")), blob)


@pytest.mark.parametrize("threshold", [Threshold("fraction", 0.2), Threshold("percentile", 50), Threshold("otsu")])
@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_flat_heatmap_gives_empty_mask_without_warnings(threshold, level):
    heat = np.full((30, 50), level)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask = threshold_mask(heat, threshold)
        regions = extract_regions(heat, RegionSettings(threshold))
    assert mask.dtype == bool and mask.shape == (30, 50) and not mask.any()
    assert regions == []


def test_roi_restricts_statistics_and_mask(levels):
    heat, a, b = levels
    roi = np.zeros(heat.shape, dtype=np.uint8)
    roi[:40, :60] = 1  # holds blob A only
    # Without the ROI, blob B (1.0) sets the max and A (0.5) falls below 0.8 * max.
    assert np.array_equal(threshold_mask(heat, Threshold("fraction", 0.8)), b)
    # Inside the ROI the max is A's 0.5, and B is outside it.
    assert np.array_equal(threshold_mask(heat, Threshold("fraction", 0.8), roi=roi), a)
    assert np.array_equal(threshold_mask(heat, Threshold("fraction", 0.8), roi=roi.astype(bool)), a)


def test_roi_percentile_uses_roi_pixels_only():
    heat = np.tile(np.linspace(0, 1, 100), (10, 1))
    roi = np.zeros(heat.shape, dtype=bool)
    roi[:, :50] = True
    mask = threshold_mask(heat, Threshold("percentile", 80), roi=roi)
    # The ROI's values are columns 0..49; its 80th percentile lies between columns 39 and 40.
    expected = np.zeros(heat.shape, dtype=bool)
    expected[:, 40:50] = True
    assert np.array_equal(mask, expected)


def test_roi_flat_inside_gives_empty_mask(levels):
    heat, _, _ = levels
    roi = np.zeros(heat.shape, dtype=bool)
    roi[0:5, 0:5] = True  # background only: flat inside
    assert not threshold_mask(heat, Threshold("fraction", 0.2), roi=roi).any()


@pytest.mark.parametrize(
    ("heatmap", "roi", "name"),
    [
        (np.zeros((10, 10, 3)), None, "heatmap"),
        (np.zeros(10), None, "heatmap"),
        (np.where(np.eye(10) > 0, np.nan, 0.5), None, "heatmap"),
        (np.where(np.eye(10) > 0, np.inf, 0.5), None, "heatmap"),
        (np.zeros((10, 10)), np.ones((10, 11), dtype=bool), "roi"),
        (np.zeros((10, 10)), np.ones((10, 10)), "roi"),
    ],
)
def test_bad_inputs_name_the_parameter(heatmap, roi, name):
    with pytest.raises(ValueError, match=name):
        threshold_mask(heatmap, Threshold("fraction", 0.2), roi=roi)
    with pytest.raises(ValueError, match=name):
        extract_regions(heatmap, roi=roi)


def test_roi_shape_mismatch_echoes_shapes():
    with pytest.raises(ValueError, match=r"roi.*\(10, 10\).*\(12, 10\)"):
        threshold_mask(np.zeros((10, 10)), Threshold("otsu"), roi=np.ones((12, 10), dtype=bool))


# --- extract_regions ------------------------------------------------------------


def test_min_area_drops_small_blobs():
    heat = np.zeros((100, 200))
    heat[10:15, 10:15] = 1.0  # 25 px
    heat[40:70, 100:130] = 0.9  # 900 px
    # min_area 0.01 of 20000 px = 200 px
    regions = extract_regions(heat, RegionSettings(min_area=0.01))
    assert [r.area for r in regions] == [900]
    assert sorted(r.area for r in extract_regions(heat, RegionSettings(min_area=0.001))) == [25, 900]


def test_holes_are_filled_only_when_asked():
    shape = (120, 160)
    disk = _disk(shape, (60, 80), 40)
    hole = _disk(shape, (60, 80), 20)
    heat = np.where(disk & ~hole, 1.0, 0.0)

    (filled,) = extract_regions(heat, RegionSettings(fill_holes=True))
    assert np.array_equal(filled.mask, disk)
    assert filled.area == np.count_nonzero(disk)

    (ring,) = extract_regions(heat, RegionSettings(fill_holes=False))
    assert np.array_equal(ring.mask, disk & ~hole)
    assert ring.area == np.count_nonzero(disk & ~hole)


def test_box_and_mask_of_a_hand_made_blob():
    heat = np.zeros((50, 90))
    heat[10:20, 30:60] = 0.8  # rows 10..19, cols 30..59
    heat[20, 45] = 0.6  # one pixel below: box grows to row 20
    heat[9, 60] = 0.7  # diagonal neighbour (8-connected): col 60, row 9
    (region,) = extract_regions(heat, RegionSettings(min_area=0.0))
    assert region.box == (30, 9, 31, 12)
    assert all(type(v) is int for v in region.box)
    assert region.area == 10 * 30 + 2
    assert region.mask.dtype == bool and region.mask.shape == heat.shape
    assert np.array_equal(region.mask, heat > 0)


def test_axis_aligned_rectangle_polygon_is_exact_in_corner_frame():
    heat = np.zeros((60, 100))
    heat[10:30, 20:70] = 1.0
    (region,) = extract_regions(heat)
    corners = {tuple(p) for p in region.polygon.tolist()}
    assert corners == {(20.0, 10.0), (70.0, 10.0), (70.0, 30.0), (20.0, 30.0)}
    assert region.polygon.dtype == np.float64


def _l_shape(shape):
    mask = np.zeros(shape, dtype=bool)
    mask[20:100, 30:60] = True
    mask[70:100, 30:150] = True
    return mask


@pytest.mark.parametrize(
    ("shape", "make"),
    [
        ((150, 260), lambda s: _disk(s, (70, 120), 35)),
        ((150, 260), lambda s: _disk(s, (75, 200), 16)),
        ((200, 130), lambda s: _ellipse(s, (100, 60), (70, 30))),
        ((300, 180), lambda s: _ellipse(s, (150, 90), (20, 60))),
        ((130, 220), _l_shape),
    ],
)
def test_polygon_rasterises_back_onto_the_mask(shape, make):
    blob = make(shape)
    heat = np.where(blob, 0.9, 0.0)
    (region,) = extract_regions(heat)
    assert np.array_equal(region.mask, blob)
    polygon = region.polygon
    assert polygon.ndim == 2 and polygon.shape[1] == 2 and 3 <= len(polygon) <= 64
    assert (polygon[:, 0] >= 0).all() and (polygon[:, 0] <= shape[1]).all()
    assert (polygon[:, 1] >= 0).all() and (polygon[:, 1] <= shape[0]).all()
    assert _iou(_inside_polygon(polygon, shape), region.mask) >= 0.9
    assert _iou(_fill_poly(polygon, shape), region.mask) >= 0.9


def test_polygon_is_not_shifted():
    # A half-pixel convention error shows up as a systematic offset of the centroid.
    shape = (140, 220)
    blob = _ellipse(shape, (70, 110), (40, 60))
    (region,) = extract_regions(np.where(blob, 1.0, 0.0))
    rows, cols = np.nonzero(_inside_polygon(region.polygon, shape))
    mrows, mcols = np.nonzero(blob)
    assert abs(rows.mean() - mrows.mean()) < 0.1 and abs(cols.mean() - mcols.mean()) < 0.1


def test_vertex_budget_is_respected():
    shape = (200, 240)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    angle = np.arctan2(yy - 100, xx - 120)
    radius = np.hypot(yy - 100, xx - 120)
    star = radius <= 50 + 30 * np.cos(9 * angle)
    rng = np.random.default_rng(3)
    noisy = _disk(shape, (100, 120), 70) & ~(rng.random(shape) < 0.02) | (rng.random(shape) < 0.01)
    for blob in (star, noisy):
        for budget in (3, 8, 20):
            regions = extract_regions(np.where(blob, 1.0, 0.0), RegionSettings(max_vertices=budget))
            assert regions and all(3 <= len(r.polygon) <= budget for r in regions)
            if budget >= 8:  # still a rough outline, not a sliver
                largest = max(regions, key=lambda r: r.area)
                assert _iou(_inside_polygon(largest.polygon, shape), largest.mask) > 0.5
    (region,) = extract_regions(np.where(star, 1.0, 0.0), RegionSettings(max_vertices=64))
    assert len(region.polygon) > 8  # the star needs more than 8 vertices unless forced


def test_score_and_peak_are_heat_inside_region_and_sorted():
    rng = np.random.default_rng(7)
    shape = (120, 200)
    heat = np.zeros(shape)
    masks = [_disk(shape, (30, 40), 15), _disk(shape, (80, 100), 20), _disk(shape, (40, 160), 12)]
    for mask, level in zip(masks, (0.5, 0.9, 0.7)):
        heat[mask] = level + rng.uniform(-0.05, 0.05, np.count_nonzero(mask))
    regions = extract_regions(heat, RegionSettings(Threshold("fraction", 0.3)))
    assert len(regions) == 3
    assert [r.score for r in regions] == sorted((r.score for r in regions), reverse=True)
    assert [np.array_equal(r.mask, m) for r, m in zip(regions, [masks[1], masks[2], masks[0]])] == [True] * 3
    for region in regions:
        assert isinstance(region, Region)
        assert type(region.score) is float and type(region.peak) is float
        assert region.score == pytest.approx(heat[region.mask].mean())
        assert region.peak == heat[region.mask].max()
        assert region.area == np.count_nonzero(region.mask)


def test_roi_restricts_regions(levels):
    heat, a, b = levels
    roi = np.zeros(heat.shape, dtype=bool)
    roi[:, :60] = True
    (region,) = extract_regions(heat, RegionSettings(Threshold("fraction", 0.8)), roi=roi)
    assert np.array_equal(region.mask, a)


def test_bad_settings_type_is_rejected():
    with pytest.raises(ValueError, match="settings"):
        extract_regions(np.zeros((5, 5)), settings=Threshold("otsu"))


def test_value_threshold_is_absolute_even_on_flat_maps():
    probabilities = np.array([[0.2, 0.5], [0.7, 0.49]], np.float32)
    assert threshold_mask(probabilities, Threshold.parse("value:0.5")).tolist() == [[False, True], [True, False]]
    flat = np.full((3, 3), 0.7, np.float32)  # a segmenter sure of every pixel: all on, unlike relative methods
    assert threshold_mask(flat, Threshold("value", 0.5)).all()
    assert not threshold_mask(flat, Threshold("fraction", 0.5)).any()
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="in \\(0, 1\\] for method 'value'"):
            Threshold("value", bad)
