"""models.clicking: the click-conditioned U-Net (inputs, the simulated annotator, training, answers
per image) and explain.clicks' click_model method on top of it; tiny real Keras models."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from explain.clicks import Box, Click, Evidence, segment
from models.clicking import CLICK_RADIUS, Clicker, brightness, click_curve, click_input, error_click, fit_clicker
from models.loading import load_model, save_model
from models.spec import CLICK_CHANNELS, ModelSpec


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)

SIZE = 64


def two_blobs(rng):
    """(SIZE, SIZE, 3) uint8 image with two bright discs on noise, and (SIZE, SIZE, 1) truth: one of them."""
    image = rng.normal(70, 12, (SIZE, SIZE)).astype(np.float32)
    centres = [(int(rng.integers(12, 26)), int(rng.integers(12, 52))), (int(rng.integers(38, 52)), int(rng.integers(12, 52)))]
    discs = []
    for row, col in centres:
        disc = np.zeros((SIZE, SIZE), np.uint8)
        cv2.circle(disc, (col, row), int(rng.integers(6, 10)), 1, thickness=-1)
        image[disc > 0] += 90
        discs.append(disc)
    picked = discs[int(rng.integers(2))]
    rgb = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    return rgb, picked[..., None], discs


def answer_after_clicks(answers, truth: np.ndarray, clicks: int = 3) -> np.ndarray:
    """(H, W) bool answer of one image's bound clicker (``Clicker.on``) after up to ``clicks`` clicks
    of the simulated annotator (``error_click``) against the (H, W) bool truth."""
    points, mask = [], np.zeros(truth.shape, bool)
    for _ in range(clicks):
        point = error_click(mask, truth)
        if point is None:
            break
        points.append((point[1] + 0.5, point[0] + 0.5, point[2]))
        mask = answers(points) >= 0.5
    return mask


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A clicker trained on two-disc images where the truth is the disc clicked on, saved and loaded."""
    rng = np.random.default_rng(0)
    samples = [two_blobs(rng) for _ in range(40)]
    images = np.stack([s[0] for s in samples])
    masks = np.stack([s[1] for s in samples])
    model, spec, report = fit_clicker(images[:32], masks[:32], images[32:], masks[32:], size=SIZE, filters=(8, 16, 32),
                                      epochs=40, learning_rate=3e-3, verbose=0)
    path = save_model(model, spec, tmp_path_factory.mktemp("clicker") / "clicker.keras")
    return load_model(path, kind="clicker"), report


def test_the_input_holds_brightness_click_discs_and_the_previous_answer():
    image = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    previous = np.zeros((32, 32), bool)
    previous[:4] = True
    x = click_input(image, [(10, 20, True), (25, 5, False)], previous)
    assert x.shape == (32, 32, 1 + CLICK_CHANNELS) and x.dtype == np.float32
    assert np.array_equal(x[..., 0], image)
    radius = max(1, round(CLICK_RADIUS * 32))
    assert x[10, 20, 1] == 1 and x[10, 20 + radius + 1, 1] == 0 and x[10, 20, 2] == 0
    assert x[25, 5, 2] == 1 and x[25, 5, 1] == 0
    assert x[..., 1].sum() == x[..., 2].sum() > 1  # the same disc for either sign
    assert np.array_equal(x[..., 3] > 0, previous)
    assert not click_input(image, [], None)[..., 1:].any()


def test_brightness_ignores_exposure_and_contrast():
    rng = np.random.default_rng(1)
    gray = rng.random((20, 30)).astype(np.float32) * 0.5 + 0.2
    assert np.allclose(brightness(gray), brightness(gray * 0.6 + 0.1), atol=1e-4)
    assert abs(float(np.median(brightness(gray)))) < 1e-6


def test_the_simulated_annotator_clicks_the_centre_of_the_largest_error_with_its_sign():
    truth = np.zeros((40, 40), bool)
    truth[5:15, 5:15] = True  # 100 px missed ...
    answer = np.zeros((40, 40), bool)
    answer[20:36, 20:36] = True  # ... against 256 px too many: the negative click wins
    row, col, positive = error_click(answer, truth)
    assert not positive and (row, col) in {(27, 27), (27, 28), (28, 27), (28, 28)}
    answer[20:36, 20:36] = False
    assert error_click(answer, truth)[2] is True
    assert error_click(truth, truth) is None
    rng = np.random.default_rng(0)
    jittered = {error_click(answer, truth, rng, jitter=1.0)[:2] for _ in range(20)}
    assert len(jittered) > 1 and all(truth[r, c] for r, c in jittered)


@pytest.mark.train
def test_a_trained_clicker_outlines_the_disc_that_was_clicked_not_the_other(trained):
    """Three clicks of the simulated annotator on one of two alike discs: the answer is that disc."""
    loaded, report = trained
    assert loaded.spec.kind == "clicker" and loaded.spec.input_channels == 1 + CLICK_CHANNELS
    assert report.val_dice is not None and report.val_dice == max(report.history["val_dice"])
    clicker = Clicker(loaded)
    rng = np.random.default_rng(7)
    hits = []
    for _ in range(6):
        image, _, discs = two_blobs(rng)
        answers = clicker.on(image[..., 0] / 255.0)
        for clicked, other in (discs, discs[::-1]):
            truth = clicked > 0
            mask = answer_after_clicks(answers, truth)
            dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
            spilled = (mask & (other > 0)).sum() / other.sum()
            hits.append(dice > 0.7 and spilled < 0.2)
    assert np.mean(hits) >= 0.8, hits


@pytest.mark.train
def test_answers_are_kept_per_click_sequence_so_each_new_click_costs_one_forward_pass(trained, monkeypatch):
    loaded, _ = trained
    clicker = Clicker(loaded)
    calls = []
    forward = clicker._forward
    monkeypatch.setattr(clicker, "_forward", lambda x: calls.append(np.asarray(x)) or forward(x))
    image, _, discs = two_blobs(np.random.default_rng(3))
    answers = clicker.on(cv2.resize(image[..., 0], (96, 80)) / 255.0)  # any image size: answers at its size
    clicks = [(30.0, 20.0, True), (60.0, 50.0, False), (10.0, 10.0, True)]
    first = answers(clicks[:1])
    assert first.shape == (80, 96) and len(calls) == 1
    answers(clicks[:2])
    answers(clicks)
    assert len(calls) == 3  # the previous answers were kept, not recomputed
    assert np.array_equal(answers(clicks[:1]), first) and len(calls) == 3
    # each input carries the answer to the clicks before its last one
    second = answers.small(tuple(answers.point(*c) for c in clicks[:2]))
    assert np.array_equal(calls[2][0, ..., 3] > 0, second >= 0.5) and not calls[0][0, ..., 3].any()
    assert calls[2][0, ..., 1].sum() > calls[1][0, ..., 1].sum()  # the third click's positive disc


def test_a_segmenter_is_no_clicker(tmp_path):
    from models.unet import build_unet

    model, spec = build_unet(("lesion",), (32, 32), filters=(4, 8))
    with pytest.raises(ValueError, match="this is a segmenter, not a clicker"):
        Clicker(load_model(save_model(model, spec, tmp_path / "seg.keras")))
    assert ModelSpec((32, 32), ("lesion",), channels=1, kind="segmenter").input_channels == 1


# ---------------------------------------------------------------- explain.clicks' click_model method


def fake_clicker(shape):
    """A stand-in for a bound click model: a 12-pixel disc around every positive click, minus 6 around negatives."""
    seen = []

    def answer(points):
        seen.append(list(points))
        out = np.zeros(shape, np.uint8)
        for x, y, positive in points:
            if positive:
                cv2.circle(out, (int(x), int(y)), 12, 1, thickness=-1)
        for x, y, positive in points:
            if not positive:
                cv2.circle(out, (int(x), int(y)), 6, 0, thickness=-1)
        return out.astype(np.float32)

    return answer, seen


def test_click_model_answers_the_models_mask_confined_to_the_roi_and_boxes_as_centre_clicks():
    shape = (60, 80)
    roi = np.zeros(shape, bool)
    roi[:, :45] = True
    answer, seen = fake_clicker(shape)
    evidence = Evidence(np.zeros(shape, np.float32), np.zeros(shape, np.float32), roi, clicker=answer)
    mask = segment(evidence, [Click(40, 30), Click(44, 30, positive=False)], method="click_model")
    assert seen[-1] == [(40, 30, True), (44, 30, False)]
    assert mask[30, 30] and not mask[30, 44] and not mask[30, 50]  # negative disc off; outside the roi off
    assert not segment(evidence, [Click(40, 30, positive=False)], method="click_model").any()
    boxed = segment(evidence, [], [Box(20, 20, 20, 10)], method="click_model")
    assert seen[-1] == [(30.0, 25.0, True)]  # the box's centre
    assert boxed[25, 30] and boxed[20:30, 20:40].sum() == boxed.sum()  # bounded by the box
    without = Evidence(evidence.gray, evidence.heat, roi)
    with pytest.raises(ValueError, match="needs a click model .*CLICK_MODEL"):
        segment(without, [Click(40, 30)], method="click_model")


def test_guided_walker_follows_the_models_answer_and_keeps_every_click():
    """On a featureless image the walk has only the click model's answer to follow: the answer is the
    model's rectangle (which chained_walker, following the empty class map, cannot find); each click
    asks the model once, with the clicks so far; a click the model overlooks still holds its seed."""
    shape = (120, 160)
    rect = np.zeros(shape, bool)
    rect[40:80, 30:130] = True
    seen = []

    def model(points):
        seen.append(list(points))
        return rect.astype(np.float32)

    gray = (0.4 + np.random.default_rng(0).normal(0, 0.01, shape)).astype(np.float32)
    evidence = Evidence(gray, np.zeros(shape, np.float32), None, clicker=model)
    guided = segment(evidence, [Click(80, 60)], method="guided_walker")
    assert dice(guided, rect) > 0.8
    assert dice(segment(evidence, [Click(80, 60)], method="chained_walker"), rect) < 0.6
    two = segment(evidence, [Click(80, 60), Click(20, 20)], method="guided_walker")
    assert seen == [[(80, 60, True)], [(80, 60, True), (20, 20, True)]]  # the first answer is kept
    assert two[20, 20] and two[60, 80]
    blind = Evidence(gray, evidence.heat, None, clicker=lambda points: np.zeros(shape, np.float32))
    assert segment(blind, [Click(80, 60)], method="guided_walker")[60, 80]
    with pytest.raises(ValueError, match="needs a click model .*CLICK_MODEL"):
        segment(Evidence(gray, evidence.heat), [Click(80, 60)], method="guided_walker")


def test_click_curve_clicks_the_largest_error_first_and_repeats_the_last_dice_once_done():
    """The simulated annotator shared by the click model's validation, the benchmark and the
    backend's training jobs: the first click at the centre of the larger lesion, the next in the one
    still missed; a right answer (or ``done``) ends the clicking and its Dice fills the curve."""
    truth = np.zeros((20, 20), bool)
    truth[1:8, 1:8] = True  # 49 px
    truth[12:17, 12:17] = True  # 25 px
    seen = []

    def answer(points):
        seen.append(list(points))
        _, labels = cv2.connectedComponents(truth.view(np.uint8))
        return np.isin(labels, [labels[r, c] for r, c, positive in points if positive and truth[r, c]])

    curve = click_curve(answer, truth, 5)
    assert seen == [[(4, 4, True)], [(4, 4, True), (14, 14, True)]]
    assert curve == pytest.approx([2 * 49 / (49 + 74), 1.0, 1.0, 1.0, 1.0])
    seen.clear()
    assert click_curve(answer, truth, 3, done=lambda scores: True) == pytest.approx([2 * 49 / 123] * 3) and len(seen) == 1
