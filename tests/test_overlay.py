"""Pictures of heatmaps: colours, blending and the three-panel figure."""
import cv2
import numpy as np
import pytest

from explain.overlay import COLORMAPS, colorize, overlay, panel


def test_colorize_maps_levels_through_the_colormap():
    heat = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    jet = colorize(heat, "jet")
    assert jet.shape == (3, 4, 3) and jet.dtype == np.uint8
    assert jet[0, 0, 2] > jet[0, 0, 0]  # low heat is blue in jet
    assert jet[-1, -1, 0] > jet[-1, -1, 2]  # high heat is red
    assert not np.array_equal(jet, colorize(heat, "viridis"))
    np.testing.assert_array_equal(colorize(np.full((2, 2), np.nan)), colorize(np.zeros((2, 2))))


def test_overlay_blends_by_alpha_and_resizes_the_heatmap():
    image = np.full((6, 10), 0.5, np.float32)
    heat = np.ones((3, 5), np.float32)
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0), np.full((6, 10, 3), 128, np.uint8))
    np.testing.assert_array_equal(overlay(image, heat, alpha=1.0), colorize(np.ones((6, 10))))


def test_panel_is_original_heatmap_overlay_side_by_side():
    rng = np.random.default_rng(0)
    image = rng.random((7, 9, 3), dtype=np.float32)
    heat = rng.random((2, 3), dtype=np.float32)
    picture = panel(image, heat, "turbo")
    assert picture.shape == (7, 27, 3)
    np.testing.assert_array_equal(picture[:, :9], np.rint(image * 255).astype(np.uint8))
    full = cv2.resize(heat, (9, 7), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(picture[:, 9:18], colorize(full, "turbo"))
    np.testing.assert_array_equal(picture[:, 18:], overlay(image, full, "turbo"))


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="colormap must be one of"):
        colorize(np.zeros((2, 2)), "rainbow")
    with pytest.raises(ValueError, match="heatmap must be 2-D"):
        colorize(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay(np.zeros((2, 2)), np.zeros((2, 2)), alpha=2)
    assert set(COLORMAPS) >= {"jet", "inferno", "viridis"}
