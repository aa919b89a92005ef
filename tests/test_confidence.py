"""The prediction score: low means the pre-label is likely wrong (Label Studio's uncertainty
sampling serves the lowest score first)."""
from __future__ import annotations

import numpy as np
import pytest

from explain.confidence import class_confidence, map_confidence


def test_sure_maps_score_one_and_coin_tosses_zero():
    assert map_confidence(np.zeros((8, 8, 1))) == pytest.approx(1.0, abs=1e-4)
    assert map_confidence(np.ones((8, 8))) == pytest.approx(1.0, abs=1e-4)
    assert map_confidence(np.full((8, 8, 2), 0.5)) == pytest.approx(0.0, abs=1e-6)


def test_an_unsure_blob_lowers_the_score_in_proportion_to_its_area():
    small, large = np.zeros((10, 10)), np.zeros((10, 10))
    small[:2, :5] = 0.5   # 10 % of the pixels are coin tosses
    large[:5, :10] = 0.5  # 50 %
    assert map_confidence(small) == pytest.approx(0.9, abs=1e-3)
    assert map_confidence(large) == pytest.approx(0.5, abs=1e-3)


def test_the_region_of_interest_decides_which_pixels_count():
    maps = np.zeros((10, 10))
    maps[:, :5] = 0.5                    # unsure on the left half only
    left, right = np.zeros((20, 20)), np.zeros((20, 20))
    left[:, :10], right[:, 10:] = 0.9, 0.9   # an ROI map of another size, resized
    assert map_confidence(maps, left) == pytest.approx(0.0, abs=1e-3)
    assert map_confidence(maps, right) == pytest.approx(1.0, abs=1e-3)
    assert map_confidence(maps, np.zeros((20, 20))) == pytest.approx(0.5, abs=1e-3)  # empty ROI: every pixel


def test_class_confidence_is_the_top_probability():
    assert class_confidence(np.array([0.2, 0.7, 0.1])) == pytest.approx(0.7)
