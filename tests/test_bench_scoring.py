"""The benchmarks' scoring helper (benchmarks/cam_quality.py ``score``, ``trivial_scores``,
``best_on_val``) on hand-made masks: Dice, IoU, edit fraction and false positives."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import cam_quality  # noqa: E402

H = W = 40


def rect(y0, y1, x0, x1):
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


TRUTH = rect(0, 10, 0, 10)  # 100 px
HALF_OVER = rect(0, 10, 5, 15)  # 100 px, 50 of them on the truth
EMPTY = np.zeros((H, W), bool)


def test_half_overlap_scores_dice_half_and_edit_one():
    s = cam_quality.score([HALF_OVER], [TRUTH], ["opacity"])
    assert s["dice"] == pytest.approx(0.5)
    assert s["iou"] == pytest.approx(50 / 150)
    assert s["edit"] == pytest.approx(1.0)  # 50 to erase + 50 to paint over 100 true pixels
    assert (s["n_opacity"], s["n_clear"]) == (1, 0)


def test_edit_is_the_mean_over_opacity_images_and_counts_both_kinds_of_error():
    big = rect(0, 20, 0, 20)  # 400 px covering the truth: 300 to erase
    s = cam_quality.score([TRUTH, EMPTY, big, big], [TRUTH, TRUTH, TRUTH, EMPTY], ["opacity"] * 3 + ["clear"])
    assert s["edit"] == pytest.approx((0.0 + 1.0 + 3.0) / 3)  # the clear image is not in the mean
    assert s["dice"] == pytest.approx((1.0 + 0.0 + 200 / 500) / 3)


def test_an_empty_truth_costs_nothing_when_nothing_is_drawn():
    s = cam_quality.score([EMPTY, rect(0, 1, 0, 1)], [EMPTY, EMPTY], ["opacity", "opacity"])
    assert s["edit"] == pytest.approx((0.0 + 1.0) / 2)


def test_false_positives_relative_to_the_image_and_to_the_lungs():
    lung = rect(0, 20, 0, 20)  # 400 px
    drawn = rect(0, 10, 0, 10)  # 100 px on a clear image
    s = cam_quality.score([drawn, EMPTY, drawn], [EMPTY, EMPTY, EMPTY], ["clear"] * 3, lungs=[lung, lung, None])
    assert s["fp"] == pytest.approx((100 / (H * W) * 2) / 3)
    assert s["fp_lung"] == pytest.approx((100 / 400 + 0) / 2)  # the image without a lung mask is left out
    assert s["fp_any"] == pytest.approx(2 / 3)
    assert (s["n_clear"], s["n_clear_lung"]) == (3, 2)
    assert np.isnan(s["edit"]) and np.isnan(s["dice"])  # no opacity image
    assert np.isnan(cam_quality.score([drawn], [EMPTY], ["clear"])["fp_lung"])  # no lung masks at all


def test_trivial_baselines_are_scored_like_any_prediction():
    lung = rect(0, 20, 0, 20)
    out = cam_quality.trivial_scores([TRUTH, EMPTY, TRUTH], ["opacity", "clear", "opacity"], [lung, lung, None])
    whole, empty = out["whole lung"], out["empty"]
    assert whole["dice"] == pytest.approx(200 / 500) and whole["edit"] == pytest.approx(3.0)
    assert (whole["n_opacity"], whole["n_clear"]) == (1, 1)  # the image without lungs is left out
    assert whole["fp_lung"] == pytest.approx(1.0) and whole["fp"] == pytest.approx(400 / (H * W))
    assert empty["dice"] == 0.0 and empty["edit"] == 1.0 and empty["fp"] == 0.0
    assert empty["n_opacity"] == 2


def test_the_default_is_chosen_on_edit_fraction_then_dice():
    s = lambda edit, dice, fp=0.0: {"edit": edit, "dice": dice, "fp": fp}  # noqa: E731
    assert cam_quality.best_on_val({"a": s(0.9, 0.6), "b": s(0.8, 0.4)}) == "b"
    assert cam_quality.best_on_val({"a": s(0.8, 0.4), "b": s(0.8, 0.5)}) == "b"
    assert cam_quality.best_on_val({"a": s(0.8, 0.5, 0.2), "b": s(0.8, 0.5, 0.1)}) == "b"


import prelabel_quality  # noqa: E402


def test_the_post_hoc_gate_keeps_only_classes_at_least_that_probable():
    drawn = [(0.7, TRUTH), (0.95, HALF_OVER)]
    assert (prelabel_quality.gated(drawn, (H, W), 0.0) == (TRUTH | HALF_OVER)).all()
    assert (prelabel_quality.gated(drawn, (H, W), 0.7) == (TRUTH | HALF_OVER)).all()  # at the gate: kept, as the backend
    assert (prelabel_quality.gated(drawn, (H, W), 0.8) == HALF_OVER).all()
    assert not prelabel_quality.gated(drawn, (H, W), 0.99).any()


def test_the_product_default_never_uses_the_true_lungs():
    s = lambda edit, dice: {"edit": edit, "dice": dice}  # noqa: E731
    scores = {("map", "lungs+3%", "fraction:0.2", 0.0): s(0.5, 0.6), ("map", "roi model", "fraction:0.2", 0.0): s(0.7, 0.5),
              ("map", "none", "fraction:0.2", 0.8): s(0.7, 0.55), prelabel_quality.BASELINE_EMPTY: s(0.1, 0.0)}
    assert prelabel_quality.best(scores)[1] == "lungs+3%"
    assert prelabel_quality.best(scores, ("none", "roi model")) == ("map", "none", "fraction:0.2", 0.8)  # tie on edit: Dice
