"""Click to segment: an annotator's clicks (and boxes) on one image plus the product's evidence for
that image -> one lesion mask.

Frames: clicks and boxes are in the ORIGINAL image's pixel frame, x = column, y = row, in the
pixel-corner convention of ``explain.regions`` (pixel (row, col) covers [col, col + 1] x
[row, row + 1]); arrays are indexed (row, col). Every method is deterministic and answers
(H, W) bool with nothing outside the evidence's ``roi`` except around a click placed outside it
(the annotator's click outranks the prior).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np


@dataclass(frozen=True)
class Click:
    """One click at (x, y) pixels of the original image; ``positive`` False = "not lesion here"."""

    x: float
    y: float
    positive: bool = True

    def pixel(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(row, col) of the pixel under the click, clipped into an (H, W) image."""
        height, width = shape
        return min(max(int(self.y), 0), height - 1), min(max(int(self.x), 0), width - 1)


@dataclass(frozen=True)
class Box:
    """A rectangle (x, y, width, height) in pixels of the original image; ``positive`` False = erase it."""

    x: float
    y: float
    width: float
    height: float
    positive: bool = True

    def slices(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """(rows, cols) of the pixels whose centre lies in the box, clipped into an (H, W) image."""
        height, width = shape
        r0, r1 = (int(np.clip(round(v), 0, height)) for v in (self.y, self.y + self.height))
        c0, c1 = (int(np.clip(round(v), 0, width)) for v in (self.x, self.x + self.width))
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


@dataclass(frozen=True, eq=False)
class Evidence:
    """What the product knows about one image, at the image's size.

    gray : (H, W) float32 in [0, 1], the image's brightness.
    heat : (H, W) float32 in [0, 1], the lesion map (the segmenter's map, else the class map)
        resized to the image.
    roi : (H, W) bool or None, the lungs when the anatomy prior is active.
    """

    gray: np.ndarray
    heat: np.ndarray
    roi: np.ndarray | None = None

    @classmethod
    def of(cls, image: np.ndarray, heatmap: np.ndarray, roi: np.ndarray | None = None) -> "Evidence":
        """From an image ((H, W) or (H, W, C) float in [0, 1]), a map of any size (h, w) and an
        optional (H, W) roi (nonzero inside)."""
        image = np.asarray(image, np.float32)
        if image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(f"image must be (H, W) or (H, W, C), got shape {image.shape}")
        height, width = image.shape[:2]
        gray = image if image.ndim == 2 else image.mean(axis=2)
        heat = np.asarray(heatmap, np.float32)
        if heat.ndim != 2 or heat.size == 0 or not np.isfinite(heat).all():
            raise ValueError(f"heatmap must be a finite (h, w) array, got shape {heat.shape}")
        heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
        if roi is not None:
            roi = np.asarray(roi) != 0
            if roi.shape != (height, width):
                raise ValueError(f"roi must have the image's shape {(height, width)}, got {roi.shape}")
        return cls(np.ascontiguousarray(gray), np.clip(heat, 0, 1), roi)

    @property
    def shape(self) -> tuple[int, int]:
        return self.gray.shape


Method = Callable[[Evidence, Sequence[Click], Sequence[Box]], np.ndarray]

#: A click on a pixel whose heat is under this has no map to follow: it marks a small disc.
NO_EVIDENCE = 0.05
#: Radius of that disc, as a fraction of the image's longest side.
DISC = 0.03


def segment(evidence: Evidence, clicks: Sequence[Click] = (), boxes: Sequence[Box] = (), method: str | None = None) -> np.ndarray:
    """The lesion the clicks and boxes point at: (H, W) bool (empty without a positive one)."""
    name = method or DEFAULT_METHOD
    if name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    return np.asarray(METHODS[name](evidence, tuple(clicks), tuple(boxes)), dtype=bool)


def _component(mask: np.ndarray, row: int, col: int) -> np.ndarray:
    """The 8-connected component of ``mask`` holding pixel (row, col) (empty when it is off)."""
    if not mask[row, col]:
        return np.zeros_like(mask)
    _, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)
    return labels == labels[row, col]


def _disc(shape: tuple[int, int], row: int, col: int, radius: float) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    cv2.circle(out, (col, row), max(1, round(radius)), 1, thickness=-1)
    return out > 0


def _threshold(evidence: Evidence, clicks: Sequence[Click], boxes: Sequence[Box]) -> np.ndarray:
    """Baseline: each positive click takes the connected part of the map hotter than half the
    map's value under it (a small disc where the map says nothing); a positive box, the part of
    its inside hotter than half its maximum. Negative clicks remove the part they touch,
    negative boxes their inside. Confined to the roi, except where a positive click lies outside it."""
    shape, heat, roi = evidence.shape, evidence.heat, evidence.roi
    inside = np.ones(shape, bool) if roi is None else roi
    mask = np.zeros(shape, bool)
    for box in (b for b in boxes if b.positive):
        rows, cols = box.slices(shape)
        part = heat[rows, cols]
        if part.size:
            mask[rows, cols] |= (part >= 0.5 * part.max()) & inside[rows, cols]
    for click in (c for c in clicks if c.positive):
        row, col = click.pixel(shape)
        allowed = inside if inside[row, col] else np.ones(shape, bool)
        if heat[row, col] < NO_EVIDENCE:
            mask |= _disc(shape, row, col, DISC * max(shape)) & allowed
        else:
            mask |= _component((heat >= 0.5 * heat[row, col]) & allowed, row, col)
    for box in (b for b in boxes if not b.positive):
        mask[box.slices(shape)] = False
    for click in (c for c in clicks if not c.positive):
        mask &= ~_component(mask, *click.pixel(shape))
    return mask


METHODS: dict[str, Method] = {"threshold": _threshold}
DEFAULT_METHOD = "threshold"
