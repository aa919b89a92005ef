"""The anatomy prior: where pre-label regions may lie (the lungs), from an ROI model's map.

The ROI model is a segmenter (``labeler train-segmenter`` on lung masks). Its probability map is
cut into a region-of-interest mask at the ORIGINAL image size: thresholded, its ``keep`` largest
components kept (the two lungs), holes filled and dilated by a margin, so that a lesion on the
lung border is not clipped. A map with no lungs gives an all-False mask: a prior that finds no
lungs lets no region through (the image gets no regions, not regions anywhere).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from explain.regions import fill_holes, resize_heatmap

MIN_COMPONENT = 0.01  # components under this fraction of the image area are specks, not lungs


@dataclass(frozen=True)
class PriorSettings:
    """How an ROI model's map becomes the region of interest (all of it goes into the version).

    threshold : the ROI model's probability at which a pixel is lung, in (0, 1).
    margin : dilation radius as a fraction of the image's shorter side, in [0, 0.5].
    keep : the number of largest connected components kept (2: two lungs), >= 1.
    """

    threshold: float = 0.5
    margin: float = 0.03
    keep: int = 2

    def __post_init__(self):
        if not _number(self.threshold) or not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be a number in (0, 1), got {self.threshold!r}")
        if not _number(self.margin) or not 0 <= self.margin <= 0.5:
            raise ValueError(f"margin must be a fraction in [0, 0.5], got {self.margin!r}")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ValueError(f"keep must be an int >= 1, got {self.keep!r}")

    def describe(self) -> str:
        """Short id such as ``"t0.5-k2-m0.03"`` (threshold, components kept, margin)."""
        return f"t{self.threshold:g}-k{self.keep}-m{self.margin:g}"


def _number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def roi_mask(probabilities: np.ndarray, width: int, height: int, settings: PriorSettings = PriorSettings()) -> np.ndarray:
    """The region of interest of one image of ``width`` x ``height`` pixels.

    probabilities : (h, w) ROI-model map in [0, 1] at the model's size, or (h, w, channels), of
        which the maximum over the channels is taken (e.g. separate left / right lung labels).

    Returns (height, width) bool: the map resized to the image (``resize_heatmap``), >= threshold,
    the ``keep`` largest components of at least ``MIN_COMPONENT`` of the image, holes filled, then
    dilated by ``round(margin * min(width, height))`` pixels (a disk: Euclidean distance). All
    False when no component is left.
    """
    if not isinstance(settings, PriorSettings):
        raise ValueError(f"settings must be a PriorSettings, got {settings!r}")
    maps = np.asarray(probabilities, dtype=np.float32)
    if maps.ndim == 3:
        maps = maps.max(axis=-1)
    if maps.ndim != 2 or maps.size == 0:
        raise ValueError(f"probabilities must be a non-empty (h, w) or (h, w, channels) array, got shape {np.shape(probabilities)}")
    if not np.isfinite(maps).all():
        raise ValueError("probabilities must be finite")
    mask = resize_heatmap(maps, width, height) >= settings.threshold
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = np.argsort(-areas, kind="stable")[: settings.keep]
    kept = [i + 1 for i in largest if areas[i] >= MIN_COMPONENT * width * height]
    if not kept:
        return np.zeros((height, width), bool)
    chosen = np.zeros(count, bool)
    chosen[kept] = True
    mask = fill_holes(chosen[labels])
    radius = round(settings.margin * min(width, height))
    if radius > 0:
        # Distance to the nearest ROI pixel: one pass whatever the radius (a large kernel is slow on big images).
        distance = cv2.distanceTransform((~mask).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        mask = distance <= radius
    return mask
