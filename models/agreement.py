"""Agreement metrics between two masks or two sets of class choices (pure numpy / scipy).

Masks are (H, W) arrays, nonzero = on, both of the same shape; distances are in pixels of that
grid. Conventions for empty masks (a label one side did not draw):

===================  ==========  ==========  ===================================
case                 `dice`      `iou`       `hausdorff95`
===================  ==========  ==========  ===================================
both empty           1.0         1.0         0.0 (nothing to disagree about)
one of them empty    0.0         0.0         NaN (undefined: there is no surface
                                             to measure from; Dice and IoU already
                                             score the miss as 0)
===================  ==========  ==========  ===================================

Aggregates should therefore skip NaN HD95 values (and say how many they skipped).
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "accuracy",
    "boundary",
    "cohen_kappa",
    "dice",
    "fleiss_kappa",
    "hausdorff95",
    "iou",
    "pixel_changes",
    "surface_distances",
]

# 4-connectivity: a pixel is on the boundary when one of its 4 neighbours is off (or outside the
# image). This is medpy's / most segmentation toolkits' default for 2-D surface distances.
_FOUR = ndimage.generate_binary_structure(2, 1)


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a).astype(bool, copy=False)
    b = np.asarray(b).astype(bool, copy=False)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"masks must be 2-D and of the same shape, got {a.shape} and {b.shape}")
    return a, b


def dice(a, b) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two (H, W) masks, in [0, 1].

    Both empty -> 1.0 (perfect agreement on "nothing"); one empty -> 0.0.
    """
    a, b = _pair(a, b)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def iou(a, b) -> float:
    """Intersection over union |A∩B| / |A∪B| (Jaccard) of two (H, W) masks, in [0, 1].

    Both empty -> 1.0; one empty -> 0.0.
    """
    a, b = _pair(a, b)
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(a, b).sum()) / union


def edit_fraction(prelabel, truth) -> float:
    """How much an annotator paints and erases to turn ``prelabel`` into ``truth`` (both (H, W)),
    relative to drawing the truth from scratch: (false-positive + false-negative pixels) / true
    pixels. 0.0 = nothing to do, 1.0 = no gain over drawing it, above 1.0 = worse; lower is better.
    An empty truth: 0.0 when the pre-label is empty too, else 1.0 (erasing a wrong region is work
    where drawing from scratch is none)."""
    prelabel, truth = _pair(prelabel, truth)
    changed = int(np.logical_xor(prelabel, truth).sum())
    return edit_fraction_of(changed, int(truth.sum()))


def edit_fraction_of(changed_pixels: int, truth_pixels: int) -> float:
    """`edit_fraction` from counts: pixels to paint plus pixels to erase, and the truth's pixels."""
    if truth_pixels == 0:
        return 0.0 if changed_pixels == 0 else 1.0
    return changed_pixels / truth_pixels


def pixel_changes(before, after) -> tuple[int, int]:
    """(added, removed) pixel counts going from mask `before` to mask `after`, both (H, W)."""
    before, after = _pair(before, after)
    return int(np.logical_and(after, ~before).sum()), int(np.logical_and(before, ~after).sum())


def boundary(mask) -> np.ndarray:
    """(H, W) bool: the mask's pixels that have a 4-neighbour off or outside the image."""
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    return mask & ~ndimage.binary_erosion(mask, structure=_FOUR, border_value=0)


def _crop(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union plus one pixel (the distances between
    the two boundaries do not change; the distance transforms get much cheaper)."""
    rows = np.flatnonzero((a | b).any(axis=1))
    cols = np.flatnonzero((a | b).any(axis=0))
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, a.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, a.shape[1])
    return a[r0:r1, c0:c1], b[r0:r1, c0:c1]


def surface_distances(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in pixels between two non-empty (H, W) masks.

    Returns (d_ab, d_ba): for every boundary pixel of `a` the Euclidean distance to the nearest
    boundary pixel of `b` (1-D float array), and the other way round. Computed with
    `scipy.ndimage.distance_transform_edt` of the complement of the other boundary.
    """
    a, b = _pair(a, b)
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    # Cropping would turn a pixel at the crop's edge into a boundary pixel; the crop keeps a
    # one-pixel margin except at the image's own edges, where the boundary is the same anyway.
    a, b = _crop(a, b)
    edge_a, edge_b = boundary(a), boundary(b)
    return (
        ndimage.distance_transform_edt(~edge_b)[edge_a],
        ndimage.distance_transform_edt(~edge_a)[edge_b],
    )


def hausdorff95(a, b) -> float:
    """95th percentile Hausdorff distance in pixels between two (H, W) masks.

    The 95th percentile (numpy's linear interpolation) of the symmetric surface distances: the
    directed distances from `a`'s boundary to `b`'s and from `b`'s to `a`'s, pooled (medpy's
    ``hd95``). Identical masks -> 0. Both empty -> 0.0; one empty -> NaN (undefined).
    """
    a, b = _pair(a, b)
    has_a, has_b = bool(a.any()), bool(b.any())
    if not has_a and not has_b:
        return 0.0
    if not has_a or not has_b:
        return float("nan")
    d_ab, d_ba = surface_distances(a, b)
    return float(np.percentile(np.concatenate([d_ab, d_ba]), 95))


def accuracy(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> float:
    """Fraction of positions where the two label sequences agree; NaN for empty sequences."""
    a, b = list(labels_a), list(labels_b)
    if len(a) != len(b):
        raise ValueError(f"label sequences differ in length: {len(a)} and {len(b)}")
    if not a:
        return float("nan")
    return sum(x == y for x, y in zip(a, b)) / len(a)


def cohen_kappa(labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two raters' categorical labels for the same items (same order).

    kappa = (p_o - p_e) / (1 - p_e), p_o the observed agreement, p_e the agreement expected from
    each rater's own label frequencies. NaN when there are no items or when p_e == 1 (both raters
    used one and the same category throughout: kappa is undefined, as in scikit-learn).
    """
    a, b = list(labels_a), list(labels_b)
    if len(a) != len(b):
        raise ValueError(f"label sequences differ in length: {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return float("nan")
    observed = sum(x == y for x, y in zip(a, b)) / n
    categories = set(a) | set(b)
    expected = sum((a.count(c) / n) * (b.count(c) / n) for c in categories)
    if np.isclose(expected, 1.0):
        return float("nan")
    return float((observed - expected) / (1.0 - expected))


def fleiss_kappa(table) -> float:
    """Fleiss' kappa of an (items, categories) table of rating counts.

    ``table[i, j]`` is how many raters put item i in category j; every row must sum to the same
    number of raters n >= 2. kappa = (P̄ - P̄_e) / (1 - P̄_e) with P_i = (Σ_j n_ij² - n) / (n(n-1))
    and P̄_e = Σ_j p_j², p_j the share of all ratings in category j. NaN when P̄_e == 1 (every
    rating in one category).
    """
    counts = np.asarray(table, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] < 1 or counts.shape[1] < 1:
        raise ValueError(f"table must be (items, categories), got shape {counts.shape}")
    if (counts < 0).any() or not np.allclose(counts, np.round(counts)):
        raise ValueError("table must hold non-negative whole counts")
    raters = counts.sum(axis=1)
    n = raters[0]
    if not np.allclose(raters, n) or n < 2:
        raise ValueError(f"every item needs the same number (>= 2) of ratings, got {sorted(set(raters.tolist()))}")
    items = counts.shape[0]
    per_item = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    shares = counts.sum(axis=0) / (items * n)
    p_bar, p_e = per_item.mean(), float((shares**2).sum())
    if np.isclose(p_e, 1.0):
        return float("nan")
    return float((p_bar - p_e) / (1.0 - p_e))
