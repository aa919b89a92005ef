"""Shape methods: the map says where a lesion is, the image says what its outline is.

Every method is ``(mask, heat, gray, roi) -> mask`` on one image's frame:

mask : (H, W) bool, the thresholded map (already cleared outside ``roi``).
heat : (H, W) float in [0, 1], the map resized to the image.
gray : (H, W) float in [0, 1], the image's brightness (opacities are brighter than the lung).
roi : (H, W) bool or None; the lungs when a prior is active, None = the whole image.

The result is (H, W) bool and never holds a pixel outside ``roi``. Methods work on the image
shrunk to at most ``WORK_SIZE`` pixels a side and scale their answer back up (bilinear, cut at
0.5), so a 1024 x 1024 image costs what a 256 x 256 one does; each is deterministic.
"""
from __future__ import annotations

import warnings
from typing import Callable

import cv2
import numpy as np

WORK_SIZE = 256  # longest side, in pixels, that a method works at
BRIGHT_MADS = 1.0  # "intensity": brighter than the lung's median + this many MADs
REACH = 0.04  # "intensity": how far (fraction of the longest side) outside the map a lesion may reach
REFERENCE = 0.15  # without a roi, the lung's statistics come from this far (fraction of the side) around the map
MIN_MAD = 0.02  # the smallest brightness spread (of 1) taken as the lung's
SUPERPIXELS = 300  # "slic": about this many superpixels per image

ShapeMethod = Callable[[np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


def apply_shape(name: str, mask: np.ndarray, heat: np.ndarray, gray: np.ndarray, roi: np.ndarray | None) -> np.ndarray:
    """Run the shape method ``name`` (a key of ``SHAPES``): (H, W) bool, nothing outside ``roi``."""
    method = shape_named(name)
    mask = np.asarray(mask, dtype=bool)
    shape = mask.shape
    heat = np.asarray(heat, dtype=np.float32)
    gray = np.asarray(gray, dtype=np.float32)
    if heat.shape != shape or gray.shape != shape:
        raise ValueError(f"heat {heat.shape} and gray {gray.shape} must have the mask's shape {shape}")
    if not np.isfinite(gray).all():
        raise ValueError("gray must be finite")
    inside = None if roi is None else np.asarray(roi, dtype=bool)
    if inside is not None and inside.shape != shape:
        raise ValueError(f"roi {inside.shape} must have the mask's shape {shape}")
    if inside is not None:
        mask = mask & inside
    if name == "map" or not mask.any():
        return mask
    out = np.asarray(method(mask, heat, gray, inside), dtype=bool)
    return out if inside is None else out & inside


def shape_named(name: str) -> ShapeMethod:
    """The method registered as ``name``; ValueError listing the names otherwise."""
    if name not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {name!r}")
    return SHAPES[name]


# ---------------------------------------------------------------- shared steps


class _Work:
    """One image at the working size: mask, heat, gray (smoothed), inside (bool), all (h, w)."""

    def __init__(self, mask, heat, gray, roi, size: int = WORK_SIZE):
        height, width = mask.shape
        self.full = (width, height)
        scale = min(1.0, size / max(height, width))
        self.size = (max(1, round(width * scale)), max(1, round(height * scale)))
        self.mask = self._bool(mask)
        self.heat = self._shrink(heat)
        self.gray = cv2.GaussianBlur(self._shrink(gray), (0, 0), 1.0)
        self.inside = np.ones(self.mask.shape, bool) if roi is None else self._bool(roi)
        self.mask &= self.inside
        # The lung's statistics: inside the roi, or without one, in a wide ring around the map
        # (the whole image would mix in the mediastinum, bones and the background).
        reference = self.inside if roi is not None else dilate(self.mask, REFERENCE * max(self.mask.shape))
        lung = self.gray[reference] if reference.any() else self.gray.ravel()
        self.median = float(np.median(lung))
        # ~ one standard deviation; floored so that a noise-free image's blurred edges are not "bright"
        self.mad = max(MIN_MAD, float(np.median(np.abs(lung - self.median))) * 1.4826)
        self.cut = float(heat[mask].min())  # the map's threshold, as applied

    def _shrink(self, a: np.ndarray) -> np.ndarray:
        return cv2.resize(a.astype(np.float32), self.size, interpolation=cv2.INTER_AREA)

    def _bool(self, a: np.ndarray) -> np.ndarray:
        return self._shrink(a.astype(np.float32)) >= 0.5

    def grow(self, small: np.ndarray) -> np.ndarray:
        """(h, w) bool at the working size -> (H, W) bool at the image's size."""
        return cv2.resize(small.astype(np.float32), self.full, interpolation=cv2.INTER_LINEAR) >= 0.5

    def bright(self, mads: float = 0.0) -> np.ndarray:
        return self.gray > self.median + mads * self.mad

    def seeds(self) -> tuple[np.ndarray, np.ndarray]:
        """(sure lesion, sure background) at the working size: lesion = the hotter half of the
        mask where it is bright (opened by a 3-pixel disc; its hot half alone when nothing is);
        background = heat under half the map's threshold where it is not bright, farther than
        ``REFERENCE`` from the map, or outside the roi. Bright: above the lung's median + ``BRIGHT_MADS`` MADs."""
        hot = self.mask & (self.heat >= np.median(self.heat[self.mask])) if self.mask.any() else self.mask
        lesion = cv2.morphologyEx((hot & self.bright(BRIGHT_MADS)).view(np.uint8), cv2.MORPH_OPEN, _DISC3) > 0
        if not lesion.any():  # nothing clearly bright: the map's hot core alone
            lesion = hot
        far = ~dilate(self.mask, REFERENCE * max(self.mask.shape))
        background = ((self.heat < 0.5 * self.cut) & ~self.bright(BRIGHT_MADS) | far | ~self.inside) & ~lesion
        return lesion, background

    def markers(self) -> np.ndarray | None:
        """``seeds`` as one int32 label image (lesion 1, background 2, unknown 0); None when
        either seed is empty (nothing to grow from or against)."""
        lesion, background = self.seeds()
        if not (lesion.any() and background.any()):
            return None
        markers = np.zeros(self.mask.shape, np.int32)
        markers[background] = 2
        markers[lesion] = 1
        return markers


_DISC3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """``mask`` grown by a disc of ``radius`` pixels (at least 1)."""
    r = max(1, round(radius))
    return cv2.dilate(mask.view(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)) > 0


def seeded(candidates: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``candidates`` that touch ``seeds``."""
    count, labels = cv2.connectedComponents(candidates.view(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[np.unique(labels[seeds & candidates])] = True
    keep[0] = False
    return keep[labels]


# ---------------------------------------------------------------- the methods


def _map(mask, heat, gray, roi):
    """Today's outline: the thresholded map itself."""
    return mask


def _intensity(mask, heat, gray, roi):
    """Pixels near the map (within ``REACH``) brighter than the lung's median + ``BRIGHT_MADS``
    MADs, in components that touch the map, closed by a 3-pixel disc."""
    w = _Work(mask, heat, gray, roi)
    near = dilate(w.mask, REACH * max(w.mask.shape))
    candidates = near & w.inside & w.bright(BRIGHT_MADS)
    candidates = cv2.morphologyEx(candidates.view(np.uint8), cv2.MORPH_CLOSE, _DISC3) > 0
    return w.grow(seeded(candidates & w.inside, w.mask))


def _random_walker(mask, heat, gray, roi):
    """skimage's random walker on the gray image from ``_Work.seeds`` (lesion 1, background 2)."""
    from skimage.segmentation import random_walker

    w = _Work(mask, heat, gray, roi, WORK_SIZE // 2)  # a sparse solve per image: at half the working size
    labels = w.markers()
    if labels is None:
        return mask
    labels[~w.inside] = -1  # outside the roi: not part of the graph
    spread = float(w.gray[w.inside].std())
    if spread == 0 or w.gray.std() == 0:  # a flat image has no edges to follow
        return mask
    with warnings.catch_warnings():  # loose tolerances are enough for a label per pixel
        warnings.simplefilter("ignore")
        result = random_walker(w.gray / spread, labels, beta=130, mode="cg_j", tol=1e-3)
    return w.grow((result == 1) & w.inside)


def _watershed(mask, heat, gray, roi):
    """Watershed of the gray image's gradient (Sobel) flooded from ``_Work.seeds``."""
    from skimage.filters import sobel
    from skimage.segmentation import watershed

    w = _Work(mask, heat, gray, roi)
    markers = w.markers()
    if markers is None:
        return mask
    labels = watershed(sobel(w.gray), markers, mask=w.inside)
    return w.grow(labels == 1)


def _grabcut(mask, heat, gray, roi):
    """OpenCV's GrabCut (3 iterations) started from the map: sure lesion / background from
    ``_Work.seeds``, the rest of the mask probably lesion, the rest of the image probably not."""
    w = _Work(mask, heat, gray, roi)
    lesion, background = w.seeds()
    init = np.full(w.mask.shape, cv2.GC_PR_BGD, np.uint8)
    init[w.mask] = cv2.GC_PR_FGD
    init[background] = cv2.GC_BGD
    init[lesion] = cv2.GC_FGD
    if not lesion.any() or not ((init == cv2.GC_BGD) | (init == cv2.GC_PR_BGD)).any():
        return mask
    picture = cv2.cvtColor(np.clip(w.gray * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)
    cv2.setRNGSeed(0)  # GrabCut's k-means starts from OpenCV's global generator
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(picture, init, None, bgd, fgd, 3, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # too few distinct pixels on one side to fit its colour model (a flat image)
        return mask
    return w.grow(((init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)) & w.inside)


def _slic(mask, heat, gray, roi):
    """SLIC superpixels of the gray image (inside the roi) kept where their mean heat is at least
    half the map's threshold and their mean brightness is bright (see ``_Work.seeds``), in
    connected groups that touch the map."""
    from skimage.segmentation import slic

    w = _Work(mask, heat, gray, roi)
    segments = slic(w.gray, n_segments=SUPERPIXELS, compactness=0.1, channel_axis=None, mask=w.inside,
                    start_label=1, enforce_connectivity=True)
    count = int(segments.max()) + 1
    pixels = np.maximum(np.bincount(segments.ravel(), minlength=count), 1)
    heat = np.bincount(segments.ravel(), weights=w.heat.ravel(), minlength=count) / pixels
    brightness = np.bincount(segments.ravel(), weights=w.gray.ravel(), minlength=count) / pixels
    keep = (heat >= 0.5 * w.cut) & (brightness > w.median + BRIGHT_MADS * w.mad)
    keep[0] = False  # label 0: outside the roi
    return w.grow(seeded(keep[segments], w.mask))


SHAPES: dict[str, ShapeMethod] = {
    "map": _map,
    "intensity": _intensity,
    "random_walker": _random_walker,
    "watershed": _watershed,
    "grabcut": _grabcut,
    "slic": _slic,
}
