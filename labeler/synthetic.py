"""Synthetic chest-radiograph-like images for the demo and the tests (no patient data, no download).

A bright body with two dark lung fields; images of class "opacity" carry one or two bright soft
blobs inside the lungs, whose masks are the ground truth. Deterministic for a given seed.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

CLASSES = ("clear", "opacity")


def _ellipse(shape, center, axes):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return ((cols - center[0]) / axes[0]) ** 2 + ((rows - center[1]) / axes[1]) ** 2 <= 1.0


def synthetic_radiograph(size: int, opacity: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image (size, size) uint8 and its lesion mask (size, size) bool (empty when clear)."""
    image, lesion, _ = synthetic_case(size, opacity, rng)
    return image, lesion


def synthetic_case(size: int, opacity: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``synthetic_radiograph``'s image and lesion mask, and its lung mask (size, size) bool."""
    shape = (size, size)
    image = np.full(shape, 0.15, np.float32)
    image[_ellipse(shape, (size * 0.5, size * 0.55), (size * 0.45, size * 0.48))] = 0.7
    lungs = np.zeros(shape, bool)
    for side in (-1, 1):
        center = (size * (0.5 + side * 0.2 + rng.uniform(-0.02, 0.02)), size * rng.uniform(0.48, 0.55))
        lungs |= _ellipse(shape, center, (size * rng.uniform(0.13, 0.16), size * rng.uniform(0.28, 0.33)))
    image[lungs] = 0.3
    lesion = np.zeros(shape, bool)
    if opacity:
        candidates = np.argwhere(lungs)
        for _ in range(rng.integers(1, 3)):
            row, col = candidates[rng.integers(len(candidates))]
            radius = size * rng.uniform(0.06, 0.10)
            blob = _ellipse(shape, (col, row), (radius, radius * rng.uniform(0.8, 1.2))) & lungs
            lesion |= blob
    image = cv2.GaussianBlur(image, (0, 0), size / 64)
    image[lesion] += 0.45
    image = cv2.GaussianBlur(image, (0, 0), size / 128) + rng.normal(0, 0.03, shape).astype(np.float32)
    return np.uint8(np.clip(image, 0, 1) * 255), lesion, lungs


def write_dataset(out: Path, per_class: int, size: int = 128, seed: int = 0) -> Path:
    """OUT/images/<class>/<name>.png (one folder per class, ready for train-classifier),
    OUT/masks/<name>.png (0/255 lesion masks of the opacity images) and OUT/lungs/<name>.png (0/255
    lung masks of every image, for the anatomy prior's ROI model)."""
    rng = np.random.default_rng(seed)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "lungs").mkdir(parents=True, exist_ok=True)
    for name in CLASSES:
        (out / "images" / name).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            image, lesion, lungs = synthetic_case(size, name == "opacity", rng)
            cv2.imwrite(str(out / "images" / name / f"{name}{n:04d}.png"), image)
            cv2.imwrite(str(out / "lungs" / f"{name}{n:04d}.png"), np.uint8(lungs) * 255)
            if lesion.any():
                cv2.imwrite(str(out / "masks" / f"{name}{n:04d}.png"), np.uint8(lesion) * 255)
    return out
