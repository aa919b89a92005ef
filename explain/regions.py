"""Heatmap -> binary mask -> connected regions with boxes and polygons.

Coordinates: arrays are indexed (row, col); boxes and polygons are (x, y) with
x = column, in the pixel-corner frame where pixel (row, col) covers
[col, col + 1] x [row, row + 1], so a polygon scales to any image size as is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.filters import threshold_otsu

from explain.shapes import SHAPES, apply_shape

_METHODS = ("fraction", "otsu", "percentile", "value")


@dataclass(frozen=True)
class Threshold:
    """How a heatmap becomes a mask.

    ``"fraction"``: on where heat >= value * max, value in (0, 1] (CAM used 0.20,
    Grad-CAM 0.15). ``"percentile"``: on where heat >= the value-th percentile,
    value in [0, 100]. ``"otsu"``: on where heat > Otsu's threshold; value ignored.
    ``"value"``: on where heat >= value, value in (0, 1]: for maps that are probabilities
    (a segmenter's), not relative evidence.
    """

    method: str
    value: float = 0.2

    def __post_init__(self):
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise ValueError(f"value must be a finite number, got {self.value!r}")
        if self.method == "fraction" and not 0 < self.value <= 1:
            raise ValueError(f"value must be in (0, 1] for method 'fraction', got {self.value!r}")
        if self.method == "value" and not 0 < self.value <= 1:
            raise ValueError(f"value must be in (0, 1] for method 'value', got {self.value!r}")
        if self.method == "percentile" and not 0 <= self.value <= 100:
            raise ValueError(f"value must be in [0, 100] for method 'percentile', got {self.value!r}")

    @classmethod
    def parse(cls, text: str) -> "Threshold":
        """``"fraction:0.2"``, ``"percentile:90"``, ``"value:0.5"`` or ``"otsu"`` (the form of ``describe`` with a colon)."""
        method, _, value = text.partition(":")
        if not value:
            return cls(method)
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"value must be a number, got {value!r}") from None
        return cls(method, number)

    def describe(self) -> str:
        """Short id such as ``"fraction0.2"``, ``"percentile90"`` or ``"otsu"``."""
        return self.method if self.method == "otsu" else f"{self.method}{self.value:g}"


@dataclass(frozen=True)
class RegionSettings:
    """Post-processing knobs for :func:`extract_regions`.

    min_area is a fraction of the image area; smaller regions are dropped.
    max_vertices is the polygon vertex budget (>= 3).
    shape names the method of ``explain.shapes.SHAPES`` that outlines the thresholded map from the
    image ("map": the thresholded map itself).
    """

    threshold: Threshold = Threshold("fraction", 0.2)
    min_area: float = 0.001
    fill_holes: bool = True
    max_vertices: int = 64
    shape: str = "map"

    def __post_init__(self):
        if not isinstance(self.threshold, Threshold):
            raise ValueError(f"threshold must be a Threshold, got {self.threshold!r}")
        if isinstance(self.min_area, bool) or not isinstance(self.min_area, (int, float)) or not 0 <= self.min_area < 1:
            raise ValueError(f"min_area must be a fraction in [0, 1), got {self.min_area!r}")
        if not isinstance(self.fill_holes, bool):
            raise ValueError(f"fill_holes must be a bool, got {self.fill_holes!r}")
        if isinstance(self.max_vertices, bool) or not isinstance(self.max_vertices, int) or self.max_vertices < 3:
            raise ValueError(f"max_vertices must be an int >= 3, got {self.max_vertices!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")

    def describe(self) -> str:
        """Short id such as ``"fraction0.2-min0.001-fill-v64"`` (``-shape:<name>`` appended unless
        the shape is "map", so that older ids stay as they were)."""
        holes = "fill" if self.fill_holes else "holes"
        shape = "" if self.shape == "map" else f"-shape:{self.shape}"
        return f"{self.threshold.describe()}-min{self.min_area:g}-{holes}-v{self.max_vertices}{shape}"


@dataclass(eq=False)
class Region:
    """One connected region of a thresholded heatmap.

    Attributes
    ----------
    mask : (H, W) bool, the original image frame.
    area : pixels in ``mask``.
    score : mean heat inside the region (0..1 for a 0..1 heatmap).
    peak : max heat inside the region.
    box : (x, y, width, height) in pixels, x = column; covers the mask exactly.
    polygon : (N, 2) float64 (x, y) pixel-corner coordinates of the outer
        contour, 3 <= N <= max_vertices; pixel (row, col) is inside when its
        centre (col + 0.5, row + 0.5) is.
    """

    mask: np.ndarray
    area: int
    score: float
    peak: float
    box: tuple[int, int, int, int]
    polygon: np.ndarray


def resize_heatmap(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """(h, w) heatmap -> (height, width) float32, bilinear with half-pixel alignment (OpenCV)."""
    return cv2.resize(np.asarray(heatmap, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def threshold_mask(heatmap: np.ndarray, threshold: Threshold, roi: np.ndarray | None = None) -> np.ndarray:
    """Binary mask of the hot pixels.

    Parameters
    ----------
    heatmap : (H, W) float, finite, expected in [0, 1].
    threshold : Threshold
    roi : (H, W) bool or uint8, optional
        Region of interest (nonzero = inside). The threshold's statistics are
        taken over ROI pixels only and the mask is cleared outside it.

    Returns
    -------
    (H, W) bool; empty when the heat (inside the ROI) is flat.
    """
    heat = _check_heatmap(heatmap)
    if not isinstance(threshold, Threshold):
        raise ValueError(f"threshold must be a Threshold, got {threshold!r}")
    return _threshold(heat, threshold, _check_roi(roi, heat.shape))


def extract_regions(
    heatmap: np.ndarray, settings: RegionSettings = RegionSettings(), roi: np.ndarray | None = None,
    image: np.ndarray | None = None,
) -> list[Region]:
    """Threshold a heatmap, outline it with ``settings.shape`` and split it into 8-connected regions.

    Parameters
    ----------
    heatmap : (H, W) float, finite, expected in [0, 1].
    settings : RegionSettings
    roi : (H, W) bool or uint8, optional; see :func:`threshold_mask`.
    image : (H, W) float gray image in [0, 1]; required unless ``settings.shape`` is "map".

    Returns
    -------
    list[Region], highest score first.
    """
    if not isinstance(settings, RegionSettings):
        raise ValueError(f"settings must be a RegionSettings, got {settings!r}")
    heat = _check_heatmap(heatmap)
    inside = _check_roi(roi, heat.shape)
    mask = _threshold(heat, settings.threshold, inside)
    if settings.shape != "map":
        gray = None if image is None else np.asarray(image)
        if gray is None or gray.shape != heat.shape:
            got = "none" if gray is None else f"shape {gray.shape}"
            raise ValueError(f"shape {settings.shape!r} needs the gray image, (H, W) = {heat.shape}; got {got}")
        mask = apply_shape(settings.shape, mask, heat, gray, inside)
    if settings.fill_holes:
        mask = fill_holes(mask)
        if inside is not None:
            mask &= inside
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    min_pixels = settings.min_area * heat.size
    regions = [
        _region(heat, labels, i, stats[i], settings.max_vertices)
        for i in range(1, count)
        if stats[i, cv2.CC_STAT_AREA] >= min_pixels
    ]
    return sorted(regions, key=lambda r: r.score, reverse=True)


def _threshold(heat: np.ndarray, threshold: Threshold, inside: np.ndarray | None) -> np.ndarray:
    values = heat if inside is None else heat[inside]
    if threshold.method == "value":
        mask = heat >= threshold.value
        return mask if inside is None else mask & inside
    if values.size == 0 or values.min() == values.max():
        return np.zeros(heat.shape, dtype=bool)
    if threshold.method == "fraction":
        mask = heat >= threshold.value * values.max()
    elif threshold.method == "percentile":
        mask = heat >= np.percentile(values, threshold.value)
    else:
        mask = heat > threshold_otsu(values)
    return mask if inside is None else mask & inside


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    heat = np.asarray(heatmap)
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D (H, W) array, got shape {heat.shape}")
    if not (np.issubdtype(heat.dtype, np.floating) or np.issubdtype(heat.dtype, np.integer)):
        raise ValueError(f"heatmap must be numeric, got dtype {heat.dtype}")
    if not np.isfinite(heat).all():
        raise ValueError(f"heatmap must be finite, got {np.count_nonzero(~np.isfinite(heat))} NaN/inf values")
    return heat


def _check_roi(roi: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if roi is None:
        return None
    roi = np.asarray(roi)
    if roi.shape != shape:
        raise ValueError(f"roi must have the heatmap's shape {shape}, got {roi.shape}")
    if roi.dtype not in (np.bool_, np.uint8):
        raise ValueError(f"roi must be bool or uint8, got dtype {roi.dtype}")
    return roi != 0


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Set background not 4-connected to the border (as scipy's binaryfill_holes)."""
    padded = np.pad(mask.view(np.uint8), 1)
    cv2.floodFill(padded, None, (0, 0), 2, flags=4)
    return padded[1:-1, 1:-1] != 2


def _region(heat: np.ndarray, labels: np.ndarray, label: int, stat: np.ndarray, max_vertices: int) -> Region:
    x, y, w, h, area = (int(v) for v in stat[:5])
    crop = labels[y : y + h, x : x + w] == label
    values = heat[y : y + h, x : x + w][crop]
    mask = np.zeros(heat.shape, dtype=bool)
    mask[y : y + h, x : x + w] = crop
    return Region(
        mask=mask,
        area=area,
        score=float(values.mean()),
        peak=float(values.max()),
        box=(x, y, w, h),
        polygon=_polygon(crop, x, y, max_vertices),
    )


def _polygon(crop: np.ndarray, x: int, y: int, max_vertices: int) -> np.ndarray:
    """Outer outline of one component in the pixel-corner frame, <= max_vertices points."""
    # Corner (i, j) of the crop is on when any of its four pixels is; tracing the
    # centres of that (h + 1, w + 1) grid follows the pixel edges, not the centres.
    p = np.pad(crop, 1)
    corners = (p[:-1, :-1] | p[:-1, 1:] | p[1:, :-1] | p[1:, 1:]).view(np.uint8)
    contours, _ = cv2.findContours(corners, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
    contour = max(contours, key=cv2.contourArea)
    epsilon, approx = 0.5, cv2.approxPolyDP(contour, 0.5, closed=True)
    while len(approx) > max_vertices:
        epsilon *= 1.5
        approx = cv2.approxPolyDP(contour, epsilon, closed=True)
    if len(approx) >= 3:
        return approx.reshape(-1, 2).astype(np.float64)
    if max_vertices == 3:
        return cv2.minEnclosingTriangle(contour.astype(np.float32))[1].reshape(3, 2).astype(np.float64)
    h, w = crop.shape
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float64)
