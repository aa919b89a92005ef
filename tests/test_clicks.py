"""Click to segment (explain/clicks.py): every method on a synthetic radiograph."""
from __future__ import annotations

import numpy as np
import pytest

from explain.clicks import DEFAULT_METHOD, METHODS, NEEDS_CLICKER, Box, Click, Evidence, segment

# click_model and guided_walker answer with a trained click model, not from the evidence alone: tests/test_clicking.py
FROM_EVIDENCE = [name for name in METHODS if name not in NEEDS_CLICKER]
SEEDED = [name for name in FROM_EVIDENCE if name != "threshold"]
N = 256


def dice(a, b) -> float:
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def scene():
    """A dark lung ellipse (the roi) in a bright body, a bright disc (the lesion) in the lung, a
    blurry blob of heat over it, and a second bright, hot blob (a false part) at the lung's bottom."""
    yy, xx = np.mgrid[:N, :N] / N
    lung = ((xx - 0.5) / 0.35) ** 2 + ((yy - 0.5) / 0.42) ** 2 <= 1
    disc = (xx - 0.42) ** 2 + (yy - 0.4) ** 2 <= 0.08**2
    false = (xx - 0.55) ** 2 + (yy - 0.75) ** 2 <= 0.05**2
    gray = np.where(lung, 0.25, 0.7).astype(np.float32)
    gray[disc | false] = 0.6
    gray = np.clip(gray + np.random.default_rng(0).normal(0, 0.02, gray.shape), 0, 1).astype(np.float32)
    heat = np.exp(-((xx - 0.45) ** 2 + (yy - 0.42) ** 2) / (2 * 0.1**2))
    heat = np.maximum(heat, np.exp(-((xx - 0.55) ** 2 + (yy - 0.75) ** 2) / (2 * 0.06**2))).astype(np.float32)
    return {"gray": gray, "heat": heat, "lung": lung, "disc": disc, "false": false}


def evidence(scene, roi=True, size=N):
    return Evidence.of(scene["gray"], scene["heat"][:: N // size or 1, :: N // size or 1], scene["lung"] if roi else None)


@pytest.mark.parametrize("method", SEEDED)
def test_one_positive_click_inside_the_lesion_outlines_it(scene, method):
    mask = segment(evidence(scene), [Click(0.42 * N, 0.4 * N)], method=method)
    assert mask.shape == (N, N) and mask.dtype == bool
    assert dice(mask, scene["disc"]) > 0.8
    assert not (mask & scene["false"]).any()


def test_default_method_is_registered_and_used(scene):
    assert DEFAULT_METHOD in METHODS
    ev = evidence(scene)
    clicks = [Click(0.42 * N, 0.4 * N)]
    assert (segment(ev, clicks) == segment(ev, clicks, method=DEFAULT_METHOD)).all()


@pytest.mark.parametrize("method", FROM_EVIDENCE)
def test_a_negative_click_removes_the_false_part_it_touches(scene, method):
    ev = evidence(scene)
    # two positive clicks: the lesion and the false blob; then "not lesion" on the false blob
    both = segment(ev, [Click(0.42 * N, 0.4 * N), Click(0.55 * N, 0.75 * N)], method=method)
    assert both[int(0.75 * N), int(0.55 * N)]
    fixed = segment(ev, [Click(0.42 * N, 0.4 * N), Click(0.55 * N, 0.75 * N), Click(0.55 * N, 0.75 * N, False)], method=method)
    assert not fixed[int(0.75 * N), int(0.55 * N)]
    assert (fixed & scene["false"]).sum() < 0.2 * scene["false"].sum()
    assert fixed[int(0.4 * N), int(0.42 * N)]


@pytest.mark.parametrize("method", FROM_EVIDENCE)
def test_nothing_outside_the_roi_but_a_click_outside_it_is_answered(scene, method):
    ev = evidence(scene)
    inside = segment(ev, [Click(0.42 * N, 0.4 * N)], method=method)
    assert not (inside & ~scene["lung"]).any()
    outside = segment(ev, [Click(0.05 * N, 0.05 * N)], method=method)  # the body's corner, outside the lungs
    assert outside[int(0.05 * N), int(0.05 * N)]
    assert outside.sum() < 0.1 * N * N


@pytest.mark.parametrize("method", FROM_EVIDENCE)
def test_a_positive_box_outlines_the_lesion_inside_it_and_a_negative_box_erases(scene, method):
    ev = evidence(scene)
    box = Box(0.32 * N, 0.3 * N, 0.2 * N, 0.2 * N)
    mask = segment(ev, boxes=[box], method=method)
    assert dice(mask, scene["disc"]) > 0.7
    assert not mask[: int(0.29 * N)].any() and not mask[int(0.51 * N):].any()
    erased = segment(ev, [Click(0.42 * N, 0.4 * N)], [Box(0.4 * N, 0.3 * N, 0.2 * N, 0.3 * N, positive=False)], method=method)
    assert not erased[int(0.31 * N):int(0.59 * N), int(0.41 * N):int(0.59 * N)].any()


@pytest.mark.parametrize("method", FROM_EVIDENCE)
def test_deterministic_and_empty_without_a_positive_click(scene, method):
    ev = evidence(scene, size=32)  # a low-resolution map, as the classifier gives
    clicks = [Click(0.42 * N, 0.4 * N), Click(0.6 * N, 0.5 * N, False)]
    first = segment(ev, clicks, method=method)
    assert (first == segment(evidence(scene, size=32), clicks, method=method)).all()
    assert (first == segment(ev, clicks, method=method)).all()  # the cached working size changes nothing
    assert not segment(ev, [], method=method).any()
    assert not segment(ev, [Click(10, 10, False)], method=method).any()


@pytest.mark.parametrize("method", SEEDED)
def test_without_a_roi_the_whole_image_is_allowed(scene, method):
    mask = segment(evidence(scene, roi=False), [Click(0.42 * N, 0.4 * N)], method=method)
    assert dice(mask, scene["disc"]) > 0.7


def test_bad_input_is_a_value_error_naming_it(scene):
    ev = evidence(scene)
    with pytest.raises(ValueError, match="method"):
        segment(ev, [Click(1, 1)], method="sam")
    with pytest.raises(ValueError, match="image"):
        Evidence.of(np.zeros((2, 2, 2, 2)), scene["heat"])
    with pytest.raises(ValueError, match="heatmap"):
        Evidence.of(scene["gray"], np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="roi"):
        Evidence.of(scene["gray"], scene["heat"], np.ones((3, 3)))


def test_scaled_walker_seeds_grow_with_the_room_the_clicks_leave():
    """In a flat lung (no edge to follow) the answer of a click deep inside it is a wide patch, and a
    negative click takes back about its own half of the way between the two clicks."""
    yy, xx = np.mgrid[:N, :N] / N
    lung = ((xx - 0.5) / 0.4) ** 2 + ((yy - 0.5) / 0.45) ** 2 <= 1
    gray = np.where(lung, 0.25, 0.7).astype(np.float32)
    gray = np.clip(gray + np.random.default_rng(1).normal(0, 0.02, gray.shape), 0, 1).astype(np.float32)
    ev = Evidence.of(gray, np.zeros((8, 8), np.float32), lung)
    one = segment(ev, [Click(0.5 * N, 0.5 * N)], method="scaled_walker")
    assert one.sum() > 0.1 * lung.sum() and not (one & ~lung).any()
    two = segment(ev, [Click(0.35 * N, 0.5 * N), Click(0.65 * N, 0.5 * N, False)], method="scaled_walker")
    row = two[N // 2]
    assert row[int(0.35 * N):int(0.45 * N)].all()  # the positive click's side, 1/3 of the way and more
    assert not row[int(0.55 * N):int(0.7 * N)].any()  # the negative click's side
    small = segment(ev, [Click(0.35 * N, 0.5 * N), Click(0.65 * N, 0.5 * N, False)], method="random_walker")
    assert small.sum() < two.sum()  # fixed 1.2 % seeds claim less


def flat_lung():
    """A flat lung (no edge to follow) in a bright body and no map: the clicks alone shape the answer."""
    yy, xx = np.mgrid[:N, :N] / N
    lung = ((xx - 0.5) / 0.4) ** 2 + ((yy - 0.5) / 0.45) ** 2 <= 1
    gray = np.where(lung, 0.25, 0.7).astype(np.float32)
    gray = np.clip(gray + np.random.default_rng(1).normal(0, 0.02, gray.shape), 0, 1).astype(np.float32)
    return Evidence.of(gray, np.zeros((8, 8), np.float32), lung)


def test_chained_walker_answers_a_first_click_as_scaled_walker(scene):
    ev = evidence(scene)
    for click in (Click(0.42 * N, 0.4 * N), Click(0.55 * N, 0.75 * N)):
        assert (segment(ev, [click], method="chained_walker") == segment(ev, [click], method="scaled_walker")).all()


def test_chained_walker_a_click_just_past_its_answer_grows_it_a_little():
    """A positive click a few pixels past the previous answer's border (the middle of a thin missed
    sliver) gets a seed as thin as that gap, where scaled_walker's reaches halfway to the negative click."""
    ev = flat_lung()
    before = [Click(0.3 * N, 0.5 * N), Click(0.75 * N, 0.5 * N, False)]
    first = segment(ev, before, method="chained_walker")
    edge = int(np.flatnonzero(first[N // 2]).max())
    clicks = before + [Click(edge + 6.5, N // 2)]
    chained = segment(ev, clicks, method="chained_walker")
    scaled = segment(ev, clicks, method="scaled_walker")
    assert chained[N // 2, edge + 6] and chained[first].all()
    assert (chained & ~first).sum() < 0.6 * (scaled & ~first).sum()
    assert np.flatnonzero(chained[N // 2]).max() < np.flatnonzero(scaled[N // 2]).max() - 5
