"""Click to segment: an annotator's clicks (and boxes) on one image plus the product's evidence for
that image -> one lesion mask.

Frames: clicks and boxes are in the ORIGINAL image's pixel frame, x = column, y = row, in the
pixel-corner convention of ``explain.regions`` (pixel (row, col) covers [col, col + 1] x
[row, row + 1]); arrays are indexed (row, col). Every method is deterministic and answers
(H, W) bool with nothing outside the evidence's ``roi`` except around a click placed outside it
(the annotator's click outranks the prior).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence

import cv2
import numpy as np

from explain.shapes import MIN_MAD, dilate, seeded


@dataclass(frozen=True)
class Click:
    """One click at (x, y) pixels of the original image; ``positive`` False = "not lesion here"."""

    x: float
    y: float
    positive: bool = True

    @classmethod
    def at_pixel(cls, row: int, col: int, positive: bool = True) -> "Click":
        """A click at the centre of pixel (row, col)."""
        return cls(col + 0.5, row + 0.5, positive)

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
    clicker : None, or a click model bound to this image (``models.clicking.ImageClicks``): clicks
        as (x, y, positive) in the image's pixel frame -> (H, W) float lesion probability.
    """

    gray: np.ndarray
    heat: np.ndarray
    roi: np.ndarray | None = None
    clicker: Callable[[Sequence[tuple[float, float, bool]]], np.ndarray] | None = None

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

    @property
    def nbytes(self) -> int:
        """Bytes held now: the arrays, the working-size caches (``work``: the shrunk arrays and the
        answers kept) and the bound click model's (its ``nbytes``, when it says)."""
        arrays = self.gray.nbytes + self.heat.nbytes + (0 if self.roi is None else self.roi.nbytes)
        # list(...) copies in one step: another request may be adding answers meanwhile
        return arrays + sum(small.nbytes for small in list(self._works.values())) + getattr(self.clicker, "nbytes", 0)

    @cached_property
    def _works(self) -> dict:
        return {}

    def work(self, size: int) -> "_Small":
        """The image, map and roi shrunk to at most ``size`` pixels a side, built on the first
        call for that size and kept: an image's later clicks reuse it (the Evidence lives as long
        as the task's cache entry)."""
        if size not in self._works:
            self._works[size] = _Small(self, size)
        return self._works[size]


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


# ---------------------------------------------------------------- seeded methods (working size)

#: Working size (longest side, pixels) of the seeded methods: a 1024 x 1024 image costs what this does.
WORK = {"region_growing": 256, "random_walker": 128, "grabcut": 160, "geodesic": 192, "scaled_walker": 128,
        "chained_walker": 128}
SEED = 0.012  # radius of a click's seed disc, fraction of the longest side
FAR = 0.25  # farther than this (fraction of the longest side) from every positive seed: background
OUTSIDE = 0.08  # a positive click outside the roi opens a disc of this radius (fraction) around it
LOW_HEAT = 0.25  # where the map is under this fraction of its value at the clicks (and not near one): background
NEAR = 0.08  # ... "near": within this fraction of the longest side of a positive seed
HEAT_WEIGHT = 1.0  # the map's weight beside the image's brightness (in lung MADs per unit of heat / 4)
TOLERANCE = 1.5  # region growing: brightness + heat within this many lung MADs of the seed's
RW_BETA = 90.0  # random walker's edge sharpness (brightness in lung MADs)
# scaled_walker: a click's seed disc reaches HALF_WAY of the way to the nearest click of the other
# sign (so that two seeds never meet) and, for a positive click, at most DEPTH times its depth
# inside the lungs (the roi shrunk by LUNG_MARGIN, roi_mask's default dilation: about the lungs).
# Chosen on the real val split (30 images; differences under ~0.5 click are noise): DEPTH 0.75 / 1.0 /
# 1.5 / 2.0 -> NoC@0.85 8.93 / 9.77 / 10.57 / 10.67 (HALF_WAY 0.5); HALF_WAY 0.4 / 0.5 -> 8.30 / 8.93
# (at 0.4: SCALED_BETA 15 / 30 / 60 -> 8.20 / 8.30 / 8.00; working size 96 / 128 / 192 -> 8.50 / 8.30 / 8.47)
# (ALIKE 3 and 6 change nothing there: the lung field is within 3 MADs; ALIKE keeps a seed inside a small bright lesion).
HALF_WAY = 0.4
DEPTH = 0.75
LUNG_MARGIN = 0.03  # fraction of the image's shorter side
SCALED_BETA = 30.0
ALIKE = 3.0  # > 0: a seed keeps only its pixels within this many lung MADs of the click's feature
# chained_walker: a click's seed reaches at most CHAIN_CAP x its distance to the previous answer's part of
# its sign. Real val (30 images): CHAIN_CAP 0.35 / 0.5 / 0.7 / 0.85 / 1.0 / 1.5 / 2.0 -> NoC@0.85 8.20 / 7.87 /
# 7.53 / 7.67 / 8.17 / 8.27 / 8.30 (scaled_walker 8.30; at 0.7 14 images need fewer clicks, 2 more).
CHAIN_CAP = 0.7
CHAIN_KEEP = 64  # working-size answers kept per image (click sequences; 16 KiB each at 128 px)


class _Small:
    """One image's evidence at a working size: gray (smoothed), heat, inside (the roi, all True
    without one), each (h, w); ``feature`` = gray / lung MAD + heat-weighted term; scale = h / H."""

    def __init__(self, evidence: Evidence, size: int):
        height, width = evidence.shape
        self.scale = min(1.0, size / max(height, width))
        self.size = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
        shrink = lambda a: cv2.resize(np.asarray(a, np.float32), self.size, interpolation=cv2.INTER_AREA)  # noqa: E731
        self.gray = cv2.GaussianBlur(shrink(evidence.gray), (0, 0), 1.0)
        self.heat = shrink(evidence.heat)
        self.inside = np.ones(self.gray.shape, bool) if evidence.roi is None else shrink(evidence.roi) >= 0.5
        lung = self.gray[self.inside] if self.inside.any() else self.gray.ravel()
        self.mad = max(MIN_MAD, float(np.median(np.abs(lung - np.median(lung)))) * 1.4826)
        self.feature = self._feature(self.heat)
        self.side = max(self.gray.shape)
        self._margin = LUNG_MARGIN * min(evidence.shape) * self.scale
        self._clicker = evidence.clicker

    def _feature(self, heat: np.ndarray) -> np.ndarray:
        # brightness in lung MADs plus the map, so that a seed grows over what is as bright AND as hot
        return (self.gray / self.mad + HEAT_WEIGHT * 4 * heat).astype(np.float32)

    def guided(self, clicks: Sequence[Click], boxes: Sequence[Box]) -> "_Small":
        """This evidence with the click model's answer to ``clicks`` and ``boxes`` (``_clicker_points``)
        as its map, in place of the class map; shares everything else (and nothing is cached on it)."""
        answer = np.asarray(self._clicker(_clicker_points(clicks, boxes)), np.float32)
        self.depth  # built once here and shared
        other = object.__new__(_Small)
        other.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("chain", "guided_chain")})
        other.heat = np.clip(cv2.resize(answer, self.size, interpolation=cv2.INTER_AREA), 0, 1)
        other.feature = other._feature(other.heat)
        return other

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays and of the answers kept."""
        answers = [a for name in ("chain", "guided_chain") for a in list(self.__dict__.get(name, {}).values()) if a is not None]
        return sum(a.nbytes for a in [*answers, *(v for v in list(self.__dict__.values()) if isinstance(v, np.ndarray))])

    @cached_property
    def chain(self) -> dict:
        """chained_walker's answers, by (clicks, boxes)."""
        return {}

    @cached_property
    def guided_chain(self) -> dict:
        """guided_walker's answers, by (clicks, boxes)."""
        return {}

    @cached_property
    def depth(self) -> np.ndarray:
        """(h, w) float32: working-size pixels from each pixel to the nearest pixel outside the
        lungs (the inside shrunk by ``LUNG_MARGIN``) or the image's edge; 0 outside the lungs."""
        r = max(1, round(self._margin))
        core = cv2.erode(self.inside.view(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        return cv2.distanceTransform(np.pad(core, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]

    def point(self, click: Click) -> tuple[int, int]:
        h, w = self.gray.shape
        return min(max(int(click.y * self.scale), 0), h - 1), min(max(int(click.x * self.scale), 0), w - 1)

    def box(self, box: Box) -> tuple[slice, slice]:
        return box.slices(self.gray.shape) if self.scale == 1 else Box(
            box.x * self.scale, box.y * self.scale, box.width * self.scale, box.height * self.scale).slices(self.gray.shape)


@dataclass
class _Seeds:
    """At the working size: lesion (sure), background (sure), allowed (where the answer may lie:
    the roi, plus a disc around each positive click outside it), likely (probably lesion)."""

    lesion: np.ndarray
    background: np.ndarray
    allowed: np.ndarray
    likely: np.ndarray


def _seeds(small: _Small, clicks: Sequence[Click], boxes: Sequence[Box]) -> _Seeds | None:
    """The clicks and boxes as seeds; None without a positive click or box. Background: negative
    clicks and boxes, outside ``allowed``, outside every positive box, farther than ``FAR`` from
    every positive seed, and (not within ``NEAR`` of one) where the map is cold."""
    shape, side = small.gray.shape, small.side
    lesion, background = np.zeros(shape, bool), np.zeros(shape, bool)
    allowed = small.inside.copy()
    outside = np.zeros(shape, np.uint8)
    radius = max(1, round(SEED * side))
    for click in clicks:
        row, col = small.point(click)
        target = lesion if click.positive else background
        target |= _disc(shape, row, col, radius)
        if click.positive and not small.inside[row, col]:
            cv2.circle(outside, (col, row), max(1, round(OUTSIDE * side)), 1, thickness=-1)
    allowed |= outside > 0
    positive_boxes = [small.box(b) for b in boxes if b.positive]
    in_boxes = np.zeros(shape, bool)
    for rows, cols in positive_boxes:
        in_boxes[rows, cols] = True
        h, w = rows.stop - rows.start, cols.stop - cols.start
        core = (slice(rows.start + h // 3, rows.stop - h // 3), slice(cols.start + w // 3, cols.stop - w // 3))
        lesion[core] |= allowed[core]
    for box in (b for b in boxes if not b.positive):
        background[small.box(box)] = True
    lesion &= ~background
    if not lesion.any():
        return None
    if positive_boxes:
        background |= ~in_boxes
    background |= ~dilate(lesion, FAR * side)
    hot = float(np.median(small.heat[lesion]))
    if hot > NO_EVIDENCE:
        background |= (small.heat < LOW_HEAT * hot) & ~dilate(lesion, NEAR * side)
    background = (background | ~allowed) & ~lesion
    likely = dilate(lesion, NEAR * side) & ~background
    return _Seeds(lesion, background, allowed, likely)


def _answer(evidence: Evidence, small: _Small, mask: np.ndarray, seeds: _Seeds, clicks) -> np.ndarray:
    """A working-size answer -> (H, W) bool: the parts touching a positive seed, scaled up,
    outside the roi only around positive clicks placed outside it; negative clicks' pixels off."""
    return _upscale(evidence, small, _kept(mask, seeds), clicks)


def _kept(mask: np.ndarray, seeds: _Seeds) -> np.ndarray:
    """The parts of a working-size answer inside ``allowed`` that touch a positive seed."""
    return seeded(mask & seeds.allowed, seeds.lesion)


def _upscale(evidence: Evidence, small: _Small, mask: np.ndarray, clicks) -> np.ndarray:
    """A working-size answer -> (H, W) bool, outside the roi only around positive clicks placed outside it."""
    if small.scale < 1:
        mask = cv2.resize(mask.astype(np.float32), evidence.shape[::-1], interpolation=cv2.INTER_LINEAR) >= 0.5
    return _confined(evidence, mask, clicks)


def _confined(evidence: Evidence, mask: np.ndarray, clicks) -> np.ndarray:
    """(H, W) bool ``mask`` inside the roi, and outside it only around positive clicks placed outside it."""
    full = evidence.shape
    allowed = np.ones(full, bool) if evidence.roi is None else evidence.roi.copy()
    for click in clicks:
        row, col = click.pixel(full)
        if click.positive and not allowed[row, col]:
            allowed |= _disc(full, row, col, OUTSIDE * max(full))
    return mask & allowed


def _method(size_key: str, seeder=None):
    """Wrap ``solve(small, seeds) -> (h, w) bool`` into a Method at the working size WORK[size_key],
    its seeds from ``seeder(small, clicks, boxes)`` (default ``_seeds``)."""
    def wrap(solve):
        def method(evidence: Evidence, clicks: Sequence[Click], boxes: Sequence[Box]) -> np.ndarray:
            small = evidence.work(WORK[size_key])
            seeds = (seeder or _seeds)(small, clicks, boxes)
            if seeds is None:
                return np.zeros(evidence.shape, bool)
            mask = np.asarray(solve(small, seeds), bool)
            return _answer(evidence, small, (mask | seeds.lesion) & ~_negatives(small, clicks, boxes), seeds, clicks)
        method.__doc__ = solve.__doc__
        return method
    return wrap


def _negatives(small: _Small, clicks, boxes) -> np.ndarray:
    out = np.zeros(small.gray.shape, bool)
    radius = max(1, round(SEED * small.side))
    for click in (c for c in clicks if not c.positive):
        out |= _disc(out.shape, *small.point(click), radius)
    for box in (b for b in boxes if not b.positive):
        out[small.box(box)] = True
    return out


@_method("region_growing")
def _region_growing(small: _Small, seeds: _Seeds) -> np.ndarray:
    """Seeded region growing: from each positive seed, the connected pixels whose feature
    (brightness + map) is within ``TOLERANCE`` lung MADs of the seed's mean, never through a
    background seed; where a negative click's own region overlaps, the nearer click wins."""
    feature, shape = small.feature, small.gray.shape
    barrier = seeds.background | ~seeds.allowed

    def grow(seed: np.ndarray) -> np.ndarray:
        count, labels = cv2.connectedComponents(seed.view(np.uint8), connectivity=8)
        out = np.zeros(shape, bool)
        for label in range(1, count):
            part = labels == label
            mean = float(feature[part].mean())
            candidates = (np.abs(feature - mean) <= TOLERANCE) & ~barrier | part
            out |= seeded(candidates, part)
        return out

    grown = grow(seeds.lesion)
    return grown


@_method("random_walker")
def _random_walker(small: _Small, seeds: _Seeds) -> np.ndarray:
    """skimage's random walker on (brightness, map) from the seeds (outside ``allowed``: no graph)."""
    from skimage.segmentation import random_walker

    labels = np.zeros(small.gray.shape, np.int32)
    labels[seeds.background] = 2
    labels[seeds.lesion] = 1
    labels[~seeds.allowed] = -1
    if not (labels == 2).any():
        return seeds.allowed
    data = np.stack([small.gray / small.mad, HEAT_WEIGHT * 4 * small.heat], axis=-1)
    with warnings.catch_warnings():  # loose tolerances are enough for a label per pixel
        warnings.simplefilter("ignore")
        result = random_walker(data, labels, beta=RW_BETA, mode="cg_j", tol=1e-3, channel_axis=-1)
    return result == 1


@_method("grabcut")
def _grabcut(small: _Small, seeds: _Seeds) -> np.ndarray:
    """OpenCV's GrabCut (3 iterations) on (brightness, map, brightness): sure lesion / background
    from the seeds, probably lesion near the positive seeds, probably background elsewhere."""
    init = np.full(small.gray.shape, cv2.GC_PR_BGD, np.uint8)
    init[seeds.likely] = cv2.GC_PR_FGD
    init[seeds.background] = cv2.GC_BGD
    init[seeds.lesion] = cv2.GC_FGD
    g = np.clip(small.gray * 255 + 0.5, 0, 255).astype(np.uint8)
    h = np.clip(small.heat * 255 + 0.5, 0, 255).astype(np.uint8)
    picture = np.ascontiguousarray(np.stack([g, h, g], axis=-1))
    cv2.setRNGSeed(0)  # GrabCut's k-means starts from OpenCV's global generator
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(picture, init, None, bgd, fgd, 3, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # too few distinct pixels on one side to fit its colour model (a flat image)
        return seeds.likely
    return (init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)


@_method("geodesic")
def _geodesic(small: _Small, seeds: _Seeds) -> np.ndarray:
    """Geodesic voting: each pixel goes to the nearer of the lesion and background seeds, the
    distance summing the feature's (brightness + map) gradient along the path plus a small step cost."""
    from skimage.graph import MCP_Geometric

    gy, gx = np.gradient(small.feature)
    cost = np.hypot(gx, gy) + 0.05
    cost[~seeds.allowed] = np.inf
    distances = []
    for seed in (seeds.lesion, seeds.background & seeds.allowed):
        if not seed.any():
            return seeds.allowed if seed is not seeds.lesion else seed
        mcp = MCP_Geometric(cost, fully_connected=True)
        d, _ = mcp.find_costs(np.argwhere(seed))
        distances.append(d)
    return distances[0] < distances[1]


def _scaled_seeds(small: _Small, clicks: Sequence[Click], boxes: Sequence[Box], caps: Sequence[float] | None = None) -> _Seeds | None:
    """Seeds scaled to the situation: the annotator clicks in the middle of what is wrong, so a
    click far from every click of the other sign (and, when positive, deep inside the lungs) speaks
    for a wide disc: radius ``HALF_WAY`` x the distance to the nearest click of the other sign,
    for a positive click at most ``DEPTH`` x its depth in the lungs, never under ``SEED``. Boxes as
    in ``_seeds``. Background: the negative seeds and boxes, outside the roi (widened around
    positive clicks placed outside it), outside every positive box (when nothing else is: farther than
    ``FAR`` from every positive seed); no map rule. None without a positive click or box.
    ``caps``: per click (in ``clicks``' order), a further limit on its radius in working-size pixels."""
    shape, side = small.gray.shape, small.side
    points = {sign: [small.point(c) for c in clicks if c.positive == sign] for sign in (True, False)}
    limits = {sign: [np.inf if caps is None else caps[i] for i, c in enumerate(clicks) if c.positive == sign] for sign in (True, False)}

    def distance_to(pts):  # (h, w) working-size pixels to the nearest of pts (huge when none)
        if not pts:
            return np.full(shape, np.float32(4 * side))
        free = np.ones(shape, np.uint8)
        for row, col in pts:
            free[row, col] = 0
        return cv2.distanceTransform(free, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)

    lesion, background = np.zeros(shape, bool), np.zeros(shape, bool)
    allowed, depth = small.inside.copy(), small.depth
    for sign, target in ((False, background), (True, lesion)):
        other = distance_to(points[not sign])
        for (row, col), limit in zip(points[sign], limits[sign]):
            reach = min(HALF_WAY * float(other[row, col]), limit)
            if sign:
                reach = min(reach, DEPTH * float(depth[row, col]))
                if not small.inside[row, col]:
                    allowed |= _disc(shape, row, col, OUTSIDE * side)
            disc = _disc(shape, row, col, max(SEED * side, reach))
            if ALIKE:  # only what looks like the clicked pixel (the feature within ALIKE lung MADs)
                alike = disc & (np.abs(small.feature - small.feature[row, col]) <= ALIKE)
                alike[row, col] = True
                disc = _component(alike, row, col) | _disc(shape, row, col, SEED * side)
            target |= disc
    in_boxes = np.zeros(shape, bool)
    for box in boxes:
        rows, cols = small.box(box)
        if box.positive:
            in_boxes[rows, cols] = True
            h, w = rows.stop - rows.start, cols.stop - cols.start
            core = (slice(rows.start + h // 3, rows.stop - h // 3), slice(cols.start + w // 3, cols.stop - w // 3))
            lesion[core] |= allowed[core]
        else:
            background[rows, cols] = True
    lesion &= allowed & ~background
    if not lesion.any():
        return None
    if in_boxes.any():
        background |= ~in_boxes
    background = (background | ~allowed) & ~lesion
    if not background.any():  # no roi and no negative: as _seeds, farther than FAR from every positive seed
        background = ~dilate(lesion, FAR * side)
    return _Seeds(lesion, background, allowed, lesion)


def _walk_scaled(small: _Small, seeds: _Seeds) -> np.ndarray:
    """skimage's random walker on (brightness, map) from click-scaled seeds (``_scaled_seeds``)
    over the whole working image, the outside of the roi a background seed: the lungs' dark field
    against the bright ribs, heart and diaphragm gives the outer border, the seeds the rest."""
    from skimage.segmentation import random_walker

    labels = np.zeros(small.gray.shape, np.int32)
    labels[seeds.background] = 2
    labels[seeds.lesion] = 1
    data = np.stack([small.gray / small.mad, HEAT_WEIGHT * 4 * small.heat], axis=-1)
    with warnings.catch_warnings():  # loose tolerances are enough for a label per pixel
        warnings.simplefilter("ignore")
        result = random_walker(data, labels, beta=SCALED_BETA, mode="cg_j", tol=1e-3, channel_axis=-1)
    return result == 1


_scaled_walker = _method("scaled_walker", _scaled_seeds)(_walk_scaled)


def _cap(small: _Small, previous: np.ndarray | None, click: Click) -> float:
    """``CHAIN_CAP`` x the working-size distance from ``click`` to the nearest pixel that the previous
    answer already gives the click's sign; inf without a previous answer or when it agrees with the click."""
    row, col = small.point(click)
    if previous is None or previous[row, col] == click.positive:
        return np.inf
    same = np.argwhere(previous if click.positive else ~previous)
    if not len(same):
        return np.inf
    return CHAIN_CAP * float(np.sqrt(((same - (row, col)) ** 2).sum(axis=1).min()))


def _chained_mask(small: _Small, clicks: tuple, boxes: tuple, guided: bool = False) -> np.ndarray | None:
    """The working-size answer of ``chained_walker`` (``guided``: of ``guided_walker``; None without a
    positive seed), kept per click sequence on the working-size evidence: each click costs one walk once
    the ones before it are answered (the prefixes are asked for shortest first, so recursion stays shallow).
    Each click's seed radius is capped by ``_cap`` against the answer to the clicks before it."""
    answers = small.guided_chain if guided else small.chain
    key = (clicks, boxes)
    if key not in answers:
        caps = [_cap(small, _chained_mask(small, clicks[:k], boxes, guided) if k else None, click) for k, click in enumerate(clicks)]
        positive = any(c.positive for c in clicks) or any(b.positive for b in boxes)
        on = small.guided(clicks, boxes) if guided and positive else small
        seeds = _scaled_seeds(on, clicks, boxes, caps)
        mask = None if seeds is None else _kept((_walk_scaled(on, seeds) | seeds.lesion) & ~_negatives(small, clicks, boxes), seeds)
        if len(answers) >= CHAIN_KEEP:  # an image's clicks are a few dozen; never grow without bound
            answers.clear()
        answers[key] = mask
    return answers[key]


def _chained_walker(evidence: Evidence, clicks: Sequence[Click], boxes: Sequence[Box], guided: bool = False) -> np.ndarray:
    """``scaled_walker`` whose clicks also remember the answer they corrected: the annotator clicks in the
    middle of an error of the answer before, so the click's seed reaches at most ``CHAIN_CAP`` x its
    distance to where that answer already had the click's sign (a thin sliver of error gets a thin seed,
    which no longer overshoots the far side of the sliver). Clicks are taken in the order given."""
    small = evidence.work(WORK["chained_walker"])
    mask = _chained_mask(small, tuple(clicks), tuple(boxes), guided)
    if mask is None:
        return np.zeros(evidence.shape, bool)
    return _upscale(evidence, small, mask, clicks)


def _guided_walker(evidence: Evidence, clicks: Sequence[Click], boxes: Sequence[Box]) -> np.ndarray:
    """``chained_walker`` following the click model's answer to the clicks so far (``Evidence.clicker``)
    in place of the class map: the model says roughly where the lesion is, the walk fits it to the image
    and the clicks, and every click keeps its seed (a click the model overlooks still counts)."""
    _needs_clicker(evidence)
    return _chained_walker(evidence, clicks, boxes, guided=True)


def _needs_clicker(evidence: Evidence) -> None:
    if evidence.clicker is None:
        raise ValueError("this method needs a click model (CLICK_MODEL: `labeler train-segmenter --clicks`)")


def _clicker_points(clicks: Sequence[Click], boxes: Sequence[Box]) -> list[tuple[float, float, bool]]:
    """Clicks and boxes as a click model takes them, (x, y, positive): a box counts as a click at its centre."""
    return [(c.x, c.y, c.positive) for c in clicks] + [(b.x + b.width / 2, b.y + b.height / 2, b.positive) for b in boxes]


def _click_model(evidence: Evidence, clicks: Sequence[Click], boxes: Sequence[Box]) -> np.ndarray:
    """The click model's answer (``Evidence.clicker``, trained on corrected masks by ``labeler
    train-segmenter --clicks``) where its probability is at least 0.5, confined to the roi as the other
    methods are. A box counts as a click at its centre, and a positive box also bounds the answer."""
    _needs_clicker(evidence)
    points = _clicker_points(clicks, boxes)
    if not any(positive for _, _, positive in points):
        return np.zeros(evidence.shape, bool)
    mask = np.asarray(evidence.clicker(points)) >= 0.5
    positive_boxes = [b.slices(evidence.shape) for b in boxes if b.positive]
    if positive_boxes:
        inside = np.zeros(evidence.shape, bool)
        for rows, cols in positive_boxes:
            inside[rows, cols] = True
        mask &= inside
    return _confined(evidence, mask, clicks)


METHODS: dict[str, Method] = {
    "threshold": _threshold,
    "region_growing": _region_growing,
    "random_walker": _random_walker,
    "grabcut": _grabcut,
    "geodesic": _geodesic,
    "scaled_walker": _scaled_walker,
    "chained_walker": _chained_walker,
    "click_model": _click_model,
    "guided_walker": _guided_walker,
}
#: The methods that answer with a click model (``Evidence.clicker``), which must then be bound.
NEEDS_CLICKER = frozenset({"click_model", "guided_walker"})
# Chosen by benchmarks/clicks.py on the REAL lesion masks' VALIDATION split: the lowest NoC@0.85
# (tie: Dice@3) of the methods above (BENCHMARKS.md, "Click to segment"); test never chose.
# chained_walker 7.53 (NoC@0.80 5.17, Dice@3 0.711, Dice@5 0.797) against scaled_walker 8.30 (5.63, 0.699,
# 0.786), random_walker 14.40 and geodesic 14.47, on the evidence the backend builds (click_evidence's
# lesion-class map); per image 14 of 30 need fewer clicks than with scaled_walker, 2 more. Tried there and
# not kept (helper F): walkers on SLIC superpixels 9.1-14.9, a geodesic Voronoi of the lung 17.2, editing the
# previous answer with discs or signed-distance bumps 10.7-15.9, GrabCut from scaled seeds 9.3-10.1.
# Rerun 2026-12-01 on an Intel Xeon (numerics differ): chained_walker 8.33 against click_model 8.50 (3-fold
# cross-validated on the val patients; also tried: its answer with the click discs forced 8.9 / 12.3, only
# the parts a positive click touches 8.43, trained with up to 10 chained clicks 8.97), scaled_walker 8.70.
DEFAULT_METHOD = "chained_walker"
# With a click model (the backend's CLICK_MODEL), the lowest real val NoC@0.85 of the methods that use it
# (3-fold cross-validated click models, 600 steps): guided_walker 7.27 against click_model 8.50 (chained_walker
# 8.33); test 9.00 / 10.54 / 9.96. Tried on val with guided_walker: SCALED_BETA 15 / 60 / 90 / 130 -> 7.77 / 6.77 /
# 7.40 / 7.40 (within noise of 7.27: the shared 30 kept), CHAIN_CAP 0.5 / 0.85 / 1.0 -> 7.33 / 7.37 / 7.40,
# HALF_WAY 0.3 / 0.5 -> 7.47 / 7.33, DEPTH 0.5 / 1.0 -> 8.33 / 7.53; walking every earlier click on the latest
# map (a click costs as many walks as clicks) 7.43, with HEAT_WEIGHT 0.5 / 1.5 7.67 / 7.60, the class map and the
# model's answer averaged 7.50; the model's previous-answer input given guided_walker's previous answer
# (where the annotator's clicks go) instead of its own 7.63 (test 8.86). Click models trained with seeds 0 / 1 / 2:
# guided_walker 7.27 / 7.13 / 7.77, click_model 8.50 / 10.27 / 10.13; the three averaged 7.27 / 8.20.
# The walk's lesion probability cut at 0.4 / 0.3 / 0.2 instead of 0.5 (after 5 clicks the answer misses more than
# it adds: FN 0.22, FP 0.15 of the lesion on val, nearly all within 3 % of the image side of its border):
# 6.93 / 7.10 / 8.20 (chained_walker 8.50 / 8.63 / 9.43): kept at 0.5.
CLICKER_DEFAULT_METHOD = "guided_walker"


def method_for(clicker: bool, chosen: str | None = None) -> str:
    """The method that answers clicks: ``chosen`` when given, else the default with a click model
    at hand (``CLICKER_DEFAULT_METHOD``) or without one (``DEFAULT_METHOD``)."""
    return chosen or (CLICKER_DEFAULT_METHOD if clicker else DEFAULT_METHOD)
