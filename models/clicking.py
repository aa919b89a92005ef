"""A click-conditioned U-Net ("clicker", as DeepEdit in MONAI Label or RITM): an image, an
annotator's clicks and the answer to the clicks before the last -> a lesion mask.

Trained on corrected masks by simulating the annotator: each click at the centre of the largest
error of the model's own previous answer (``error_click``), so that it learns to answer the clicks
an annotator gives. Frames: a ``Point`` is (row, col, positive) in the model's input frame
(``spec.input_size``); ``Clicker.on`` takes clicks in an image's pixel frame (x = column, y = row).
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import keras
import numpy as np
import tensorflow as tf

from models.agreement import dice
from models.loading import LoadedModel
from models.segmentation import bce_dice_loss, joint_augmentation
from models.spec import ModelSpec

Point = tuple[int, int, bool]  # (row, col, positive) in the model's input frame

CLICK_RADIUS = 3 / 128  # a click's disc in the input, fraction of the input's longest side
# training: up to CHAIN clicks answered by the model before the one it learns from. Real val (benchmarks/
# clicks.py, 3-fold cross-validation on 30 images, 600 steps): CHAIN 4 / 10 -> NoC@0.85 8.50 / 8.97.
# Also tried there (NoC@0.85 of click_model / guided_walker): 300 / 600 / 1200 training steps -> 13.83 / 8.50
# / 13.30 and 8.57 / 7.27 / 7.83; the lung ROI, the class map or both as extra input channels (600 steps)
# -> 8.40 / 9.97 / 9.73 and 7.27 / 7.83 / 7.63: the image alone kept (and no classifier ties it). Neither
# started from the lesion bench's click model (fine-tuned 600 steps at 1e-3 / 300 at 3e-4: 9.13 / 10.40 and
# 7.77 / 7.87; the bench model alone 16.83 / 9.53) nor more augmentation (horizontal flips: 9.43 / 8.03; flips
# and twice the rotation, zoom and shift: 9.27 / 8.03) did better, nor averaging each answer with that of the
# mirrored input at inference (8.27 / 7.40), nor starting from a click model trained on the 40 train patients'
# LUNG masks (120 epochs; fine-tuned 600 steps at 1e-3 / 3e-4: 8.87 / 8.47 and 7.13 / 7.30): kept as is.
CHAIN = 4
JITTER = 0.3  # training: this share of clicks lands anywhere in the error's inner half, not its centre
VAL_CLICKS = 5  # validation: mean Dice after 1 .. VAL_CLICKS simulated clicks
KEEP = 32  # answers kept per image (click sequences: an image's clicks are a handful)


def brightness(gray: np.ndarray) -> np.ndarray:
    """(h, w) float in [0, 1] -> (h, w) float32: the brightness in robust units (median 0, 4 MADs
    = 1, clipped to [-3, 3]), so that exposure and contrast differences between films matter less."""
    gray = np.asarray(gray, np.float32)
    median = float(np.median(gray))
    mad = max(1e-3, float(np.median(np.abs(gray - median))) * 1.4826)
    return np.clip((gray - median) / (4 * mad), -3, 3).astype(np.float32)


def click_input(image: np.ndarray, points: Sequence[Point], previous: np.ndarray | None) -> np.ndarray:
    """The model's input (h, w, 4) float32: ``brightness`` of the (h, w) image, a disc per positive
    and per negative point, the previous answer (h, w) bool (None: nothing yet)."""
    height, width = image.shape
    radius = max(1, round(CLICK_RADIUS * max(height, width)))
    maps = np.zeros((2, height, width), np.uint8)
    for row, col, positive in points:
        cv2.circle(maps[0 if positive else 1], (int(col), int(row)), radius, 1, thickness=-1)
    before = np.zeros((height, width), np.float32) if previous is None else np.asarray(previous, np.float32)
    return np.stack([image, maps[0], maps[1], before], axis=-1).astype(np.float32)


def error_click(answer: np.ndarray, truth: np.ndarray, rng: np.random.Generator | None = None, jitter: float = 0.0) -> Point | None:
    """The simulated annotator's next click on (h, w) bool ``answer`` against ``truth``: at the centre
    (the pixel farthest from its border) of the largest connected error, positive in a miss, negative in
    a false area; with ``rng``, a share ``jitter`` of clicks lands anywhere in the error's inner half.
    None when the answer is right."""
    best = None
    for positive, error in ((True, truth & ~answer), (False, answer & ~truth)):
        if not error.any():
            continue
        _, labels, stats, _ = cv2.connectedComponentsWithStats(error.view(np.uint8), connectivity=8)
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if best is None or stats[largest, cv2.CC_STAT_AREA] > best[0]:
            best = (stats[largest, cv2.CC_STAT_AREA], positive, labels == largest)
    if best is None:
        return None
    _, positive, region = best
    # padded, so that the image's edge is not taken for the error's border
    depth = cv2.distanceTransform(np.pad(region, 1).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    if rng is not None and rng.random() < jitter:
        inner = np.argwhere(depth >= 0.5 * depth.max())
        row, col = inner[rng.integers(len(inner))]
    else:
        row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(row), int(col), positive


@dataclass(frozen=True)
class ClickerReport:
    """A training run: ``val_dice`` is the kept weights' mean Dice over 1 .. VAL_CLICKS simulated
    clicks on the validation images (None without them); the kept epoch is the best one by it."""

    epochs: int
    best_epoch: int
    train_loss: float
    val_dice: float | None
    history: dict


def train_clicker(
    model: keras.Model, spec: ModelSpec, images: np.ndarray, masks: np.ndarray,
    val_images: np.ndarray | None = None, val_masks: np.ndarray | None = None, *,
    epochs: int = 30, batch_size: int = 8, learning_rate: float = 1e-3, seed: int = 0, augment: bool = True,
    verbose: int = 1,
) -> ClickerReport:
    """Fit a clicker in place: each step simulates, per image, a first click and up to ``CHAIN`` more,
    each answered by the model as it is, then learns (BCE + Dice) from the last clicks with the answer
    before them. images : (N, h, w, 3) uint8 RGB at ``spec.input_size``; masks : (N, h, w, 1) 0/1.
    An epoch is ``ceil(N / batch_size)`` steps; a few dozen images want a few hundred epochs."""
    if spec.kind != "clicker":
        raise ValueError(f"a clicker is trained here, not a {spec.kind}")
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or images.shape[1:] != (*spec.input_size, 3) or masks.shape != (*images.shape[:3], 1) or not len(images):
        raise ValueError(f"images must be (N, {spec.input_size[0]}, {spec.input_size[1]}, 3) with masks (N, ..., 1), "
                         f"got {images.shape} and {masks.shape}")
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    augmentation = joint_augmentation(seed) if augment else None
    optimizer = keras.optimizers.Adam(learning_rate)
    forward = tf.function(lambda x: model(x, training=False))

    @tf.function
    def learn(x, y):
        with tf.GradientTape() as tape:
            loss = bce_dice_loss(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    def batch(indices):
        x = images[indices].astype(np.float32)
        y = masks[indices].astype(np.float32)
        if augmentation is not None:
            stacked = np.asarray(augmentation(np.concatenate([x, y * 255.0], -1), training=True))
            x, y = stacked[..., :3], (stacked[..., 3:] > 127.5).astype(np.float32)
        return [_gray(im) for im in x], y

    steps = math.ceil(len(images) / batch_size)
    val_gray = [_gray(im) for im in np.asarray(val_images, np.float32)] if val_images is not None and len(val_images) else []
    history: dict[str, list[float]] = {"loss": [], "val_dice": []}
    best_weights = None
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        losses = []
        for step in range(steps):
            grays, truths = batch(order[step * batch_size : (step + 1) * batch_size])
            truth = [t[..., 0] > 0.5 for t in truths]
            x = _simulated_inputs(forward, grays, truth, int(rng.integers(0, CHAIN + 1)), rng)
            losses.append(float(learn(x, truths)))
        history["loss"].append(float(np.mean(losses)))
        if val_gray:
            score = float(np.mean([np.mean(simulate(lambda x: np.asarray(forward(x)), g, m[..., 0] > 0.5, VAL_CLICKS))
                                   for g, m in zip(val_gray, val_masks)]))
            if score > max(history["val_dice"], default=-1.0):
                best_weights = model.get_weights()
            history["val_dice"].append(score)
        if verbose:
            shown = f", val Dice over {VAL_CLICKS} clicks {history['val_dice'][-1]:.3f}" if val_gray else ""
            print(f"epoch {epoch + 1}/{epochs}: loss {history['loss'][-1]:.4f}{shown}", flush=True)
    if best_weights is not None:
        model.set_weights(best_weights)
        kept = int(np.argmax(history["val_dice"]))
    else:
        kept = epochs - 1
    return ClickerReport(epochs, kept + 1, history["loss"][kept], history["val_dice"][kept] if val_gray else None, history)


def _gray(image: np.ndarray) -> np.ndarray:
    """(h, w, 3) 0-255 RGB -> the model's (h, w) ``brightness`` channel."""
    return brightness(np.asarray(image, np.float32).mean(axis=-1) / 255.0)


def _simulated_inputs(forward, grays, truths, chain: int, rng) -> np.ndarray:
    """(n, h, w, 4): per image a first click, then ``chain`` times the model's answer and the next click."""
    points: list[list[Point]] = [[] for _ in grays]
    previous = [np.zeros_like(t) for t in truths]
    for round_ in range(chain + 1):
        for i, truth in enumerate(truths):
            point = error_click(previous[i], truth, rng, JITTER)
            if point is not None:
                points[i].append(point)
        x = np.stack([click_input(g, p, b) for g, p, b in zip(grays, points, previous)])
        if round_ < chain:
            previous = list(np.asarray(forward(x))[..., 0] >= 0.5)
    return x


def click_curve(
    answer: Callable[[list[Point]], np.ndarray], truth: np.ndarray, clicks: int,
    done: Callable[[list[float]], bool] | None = None,
) -> list[float]:
    """The simulated annotator: Dice after each of ``clicks`` clicks on (h, w) bool ``truth``, each
    at the centre of the largest error of the answer so far (``error_click``, no jitter).
    ``answer(points)`` maps the clicks so far ((row, col, positive) in truth's frame) to an (h, w)
    bool mask; once ``done(scores)`` says so, or the answer is right, the last Dice repeats."""
    points: list[Point] = []
    mask = np.zeros(truth.shape, bool)
    scores: list[float] = []
    while len(scores) < clicks and not (scores and done is not None and done(scores)):
        point = error_click(mask, truth)
        if point is None:
            break
        points.append(point)
        mask = np.asarray(answer(points), bool)
        scores.append(dice(mask, truth))
    last = scores[-1] if scores else 1.0
    return scores + [last] * (clicks - len(scores))


def simulate(predict, image: np.ndarray, truth: np.ndarray, clicks: int) -> list[float]:
    """``click_curve`` of the model on one (h, w) input image (``brightness``) with its (h, w) bool
    truth; ``predict`` maps (1, h, w, 4) to probabilities (each click sees the previous answer)."""
    previous = [np.zeros_like(truth)]

    def answer(points):
        previous[0] = np.asarray(predict(click_input(image, points, previous[0])[None]))[0, ..., 0] >= 0.5
        return previous[0]

    return click_curve(answer, truth, clicks)


def fit_clicker(
    images: np.ndarray, masks: np.ndarray, val_images: np.ndarray | None, val_masks: np.ndarray | None, *,
    label: str = "lesion", size: int = 128, filters: tuple[int, ...] = (16, 32, 64, 128), epochs: int = 30,
    batch_size: int = 8, learning_rate: float = 1e-3, seed: int = 0, augment: bool = True, verbose: int = 1,
) -> tuple[keras.Model, ModelSpec, ClickerReport]:
    """A new clicker (``models.unet``, kind "clicker", one gray channel) for ``label`` at ``size`` x
    ``size``, trained by ``train_clicker``; ``seed`` fixes the initial weights too."""
    from models.unet import build_unet

    keras.utils.set_random_seed(seed)
    model, spec = build_unet((label,), (size, size), channels=1, filters=tuple(filters), kind="clicker")
    report = train_clicker(model, spec, images, masks, val_images, val_masks, epochs=epochs, batch_size=batch_size,
                           learning_rate=learning_rate, seed=seed, augment=augment, verbose=verbose)
    return model, spec, report


class Clicker:
    """A loaded clicker; ``on(gray)`` binds it to one image."""

    def __init__(self, loaded: LoadedModel):
        if loaded.spec.kind != "clicker":
            raise ValueError(f"{loaded.path.name}: this is a {loaded.spec.kind}, not a clicker")
        self.model, self.spec, self.version = loaded.model, loaded.spec, loaded.version
        shape = (None, *self.spec.input_size, self.spec.input_channels)
        self._forward = tf.function(lambda x: self.model(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)])

    def on(self, gray: np.ndarray) -> "ImageClicks":
        """The clicker bound to one (H, W) float image in [0, 1]."""
        return ImageClicks(self, gray)


class ImageClicks:
    """One image's answers: ``self(clicks)``, clicks as (x, y, positive) in the image's pixel frame ->
    (H, W) float32 probability. The answer to each click sequence is kept (``KEEP``), so that a new
    click costs one forward pass: its previous answer is that of the clicks before it."""

    def __init__(self, clicker: Clicker, gray: np.ndarray):
        self.clicker = clicker
        self.shape = np.asarray(gray).shape[:2]
        height, width = clicker.spec.input_size
        self.image = brightness(cv2.resize(np.asarray(gray, np.float32), (width, height), interpolation=cv2.INTER_AREA))
        self._answers: OrderedDict[tuple[Point, ...], np.ndarray] = OrderedDict()
        self._lock = threading.RLock()  # two requests on one image (the recursion re-enters)

    def __call__(self, clicks: Sequence[tuple[float, float, bool]]) -> np.ndarray:
        if not clicks:
            return np.zeros(self.shape, np.float32)
        small = self.small(tuple(self.point(*c) for c in clicks))
        return cv2.resize(small, self.shape[::-1], interpolation=cv2.INTER_LINEAR)

    def point(self, x: float, y: float, positive: bool) -> Point:
        (height, width), (h, w) = self.shape, self.clicker.spec.input_size
        return min(max(int(y * h / height), 0), h - 1), min(max(int(x * w / width), 0), w - 1), bool(positive)

    def small(self, points: tuple[Point, ...]) -> np.ndarray:
        """(h, w) float32 probability at the input size for ``points`` (in the order given)."""
        with self._lock:
            if points not in self._answers:
                previous = self.small(points[:-1]) >= 0.5 if len(points) > 1 else None
                x = click_input(self.image, points, previous)[None]
                self._answers[points] = np.asarray(self.clicker._forward(x), np.float32)[0, ..., 0]
                while len(self._answers) > KEEP:
                    self._answers.popitem(last=False)
            self._answers.move_to_end(points)
            return self._answers[points]

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self.image.nbytes + sum(a.nbytes for a in self._answers.values())
