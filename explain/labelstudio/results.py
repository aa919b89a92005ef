"""Label Studio prediction result dicts (format of Label Studio 1.23).

Pixel inputs are in the ORIGINAL image frame: boxes (x, y, width, height) and
polygons (x, y) in the pixel-corner frame of :mod:`explain.regions`; Label
Studio stores them as percentages of the original width and height.
"""
from __future__ import annotations

import math
import secrets
from collections.abc import Collection
from dataclasses import dataclass

import cv2
import numpy as np

import skimage.draw

from explain.labelstudio.rle import mask_to_rle, rle_to_mask
from explain.regions import RegionSettings, Threshold, extract_regions

REGION_TYPES = ("brushlabels", "polygonlabels", "rectanglelabels")


def region_id() -> str:
    """Random 10-hex-digit result id."""
    return secrets.token_hex(5)


def brush_result(
    mask: np.ndarray, label: str, from_name: str, to_name: str, score: float | None = None
) -> dict:
    """``brushlabels`` result for a (H, W) bool/uint8 mask (nonzero = on), H x W the original size."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    height, width = mask.shape
    value = {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [_label(label)]}
    return _result("brushlabels", value, from_name, to_name, score, width, height)


def polygon_result(
    polygon_xy: np.ndarray,
    width: int,
    height: int,
    label: str,
    from_name: str,
    to_name: str,
    score: float | None = None,
) -> dict:
    """``polygonlabels`` result for (N >= 3, 2) (x, y) pixel points of a width x height image."""
    _check_size(width, height)
    points = np.asarray(polygon_xy, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3 or not np.isfinite(points).all():
        raise ValueError(f"polygon_xy must be finite (N >= 3, 2) (x, y) points, got shape {points.shape}")
    percent = np.clip(points / [width, height] * 100, 0, 100).round(4)
    value = {"points": percent.tolist(), "closed": True, "polygonlabels": [_label(label)]}
    return _result("polygonlabels", value, from_name, to_name, score, width, height)


def rectangle_result(
    box: tuple[float, float, float, float],
    width: int,
    height: int,
    label: str,
    from_name: str,
    to_name: str,
    score: float | None = None,
) -> dict:
    """``rectanglelabels`` result for a (x, y, width, height) pixel box, x, y top-left, clipped to the image."""
    _check_size(width, height)
    b = np.asarray(box, dtype=np.float64)
    if b.shape != (4,) or not np.isfinite(b).all() or b[2] < 0 or b[3] < 0:
        raise ValueError(f"box must be finite (x, y, width, height) with width, height >= 0, got {box!r}")
    x0, y0 = np.clip(b[:2], 0, [width, height])
    x1, y1 = np.clip(b[:2] + b[2:], 0, [width, height])
    value = {
        "x": _percent(x0, width),
        "y": _percent(y0, height),
        "width": _percent(x1 - x0, width),
        "height": _percent(y1 - y0, height),
        "rotation": 0,
        "rectanglelabels": [_label(label)],
    }
    return _result("rectanglelabels", value, from_name, to_name, score, width, height)


def choices_result(choices: list[str], from_name: str, to_name: str, score: float | None = None) -> dict:
    """``choices`` result (image-level classification)."""
    if isinstance(choices, str) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError(f"choices must be a non-empty list of non-empty strings, got {choices!r}")
    return _result("choices", {"choices": list(choices)}, from_name, to_name, score)


@dataclass(frozen=True)
class Controls:
    """Names of the labelling config's tags to answer with; None leaves that kind of result out.

    ``labels`` maps a model class to its label value in these tags (the region label, or the
    choice); classes it does not name get no result. None keeps every class under its own name.
    """

    to_name: str = "image"
    brush: str | None = "mask"
    polygon: str | None = "outline"
    rectangle: str | None = None
    choices: str | None = "diagnosis"
    labels: dict[str, str] | None = None

    def label(self, class_name: str) -> str | None:
        return class_name if self.labels is None else self.labels.get(class_name)


def prelabel_results(prelabel, controls: Controls = Controls()) -> list[dict]:
    """Label Studio results for one ``explain.prelabel.Prelabel``.

    One choice (the predicted class, scored by its probability) and, per region of each targeted
    class, a brush mask, a polygon and / or a box, scored by class probability x mean heat.
    """
    results = []
    predicted = prelabel.predicted
    if controls.choices and (choice := controls.label(predicted)):
        results.append(choices_result([choice], controls.choices, controls.to_name, prelabel.probabilities[predicted]))
    size = (prelabel.width, prelabel.height)
    for cls in prelabel.classes:
        label = controls.label(cls.class_name)
        if label is None:
            continue
        for region in cls.regions:
            score = cls.probability * region.score
            if controls.brush:
                results.append(brush_result(region.mask, label, controls.brush, controls.to_name, score))
            if controls.polygon:
                results.append(polygon_result(region.polygon, *size, label, controls.polygon, controls.to_name, score))
            if controls.rectangle:
                results.append(rectangle_result(region.box, *size, label, controls.rectangle, controls.to_name, score))
    return results


def region_mask(result: dict, width: int | None = None, height: int | None = None) -> np.ndarray:
    """(H, W) bool mask of one brush / polygon / rectangle result, at the original image size
    (``original_width`` / ``original_height`` of the result unless given)."""
    kind = result.get("type")
    if kind not in REGION_TYPES:
        raise ValueError(f"result type must be one of {REGION_TYPES}, got {kind!r}")
    width = int(width or result.get("original_width") or 0)
    height = int(height or result.get("original_height") or 0)
    _check_size(width, height)
    value = result.get("value") or {}
    if kind == "brushlabels":
        return rle_to_mask(value["rle"], height, width) > 0
    mask = np.zeros((height, width), np.uint8)
    if kind == "rectanglelabels":
        keys = (("x", width), ("y", height), ("width", width), ("height", height))
        x, y, w, h = (float(value[k]) / 100 * size for k, size in keys)
        angle = np.deg2rad(float(value.get("rotation") or 0))
        if angle == 0:
            mask[round(y) : round(y + h), round(x) : round(x + w)] = 1
            return mask.astype(bool)
        # Label Studio rotates a box about its top-left corner.
        offsets = np.array([[0, 0], [w, 0], [w, h], [0, h]])
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        corners = offsets @ rotation.T + [x, y]
    else:
        corners = np.asarray(value["points"], dtype=np.float64) / 100 * [width, height]
    # Points are pixel corners; a pixel is inside when its centre (at +0.5 in that frame) is.
    rows, cols = skimage.draw.polygon(corners[:, 1] - 0.5, corners[:, 0] - 0.5, shape=(height, width))
    mask[rows, cols] = 1
    return mask.astype(bool)


def drawn_results(results: list[dict] | None, smart: Collection[str] = ()) -> list[dict]:
    """A ``result`` list without the results of the controls named in ``smart`` (their
    ``from_name``; ``configs.smart_controls`` of the project's config). Label Studio saves the
    keypoints and boxes an annotator placed with smart tools in the annotation, beside the regions
    they drew; those are prompts for interactive answers, not lesions. The region readers below
    (``results_to_masks``, ``label_masks``, ``result_labels``) take ``smart`` and go through here."""
    return [r for r in results or [] if not (isinstance(name := r.get("from_name"), str) and name in smart)]


def results_to_masks(
    results: list[dict], width: int | None = None, height: int | None = None, smart: Collection[str] = ()
) -> dict[str, np.ndarray]:
    """Union of the region masks per label: {label: (H, W) bool}, from an annotation's or a
    prediction's ``result`` list (other result types, and the results of the smart controls
    ``smart``, see `drawn_results`, are skipped)."""
    masks: dict[str, np.ndarray] = {}
    for result in drawn_results(results, smart):
        kind = result.get("type")
        if kind not in REGION_TYPES:
            continue
        mask = region_mask(result, width, height)
        for label in result["value"].get(kind, []):
            masks[label] = masks[label] | mask if label in masks else mask
    return masks


def result_choices(results: list[dict]) -> list[str]:
    """Every choice selected in a ``result`` list, in order."""
    return [c for r in results or [] if r.get("type") == "choices" for c in r["value"].get("choices", [])]


def _result(kind, value, from_name, to_name, score, width=None, height=None) -> dict:
    for name, tag in (("from_name", from_name), ("to_name", to_name)):
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"{name} must be a non-empty string, got {tag!r}")
    result = {"id": region_id(), "from_name": from_name, "to_name": to_name, "type": kind}
    if width is not None:
        result.update(original_width=int(width), original_height=int(height), image_rotation=0)
    result["value"] = value
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float, np.number)) or not math.isfinite(score):
            raise ValueError(f"score must be a finite number or None, got {score!r}")
        result["score"] = float(score)
    return result


def _label(label: str) -> str:
    if not isinstance(label, str) or not label:
        raise ValueError(f"label must be a non-empty string, got {label!r}")
    return label


def _check_size(width: int, height: int) -> None:
    for name, size in (("width", width), ("height", height)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{name} must be a positive int, got {size!r}")


def _percent(pixels: float, size: int) -> float:
    return round(float(pixels) / size * 100, 4)


def label_masks(
    results: list[dict], height: int, width: int, fallback: tuple[int | None, int | None], smart: Collection[str] = ()
) -> dict[str, np.ndarray]:
    """{label: (height, width) bool} of a result list: each region at its own original size
    (``original_width/height``, else `fallback` (the task row's), else the image's), resized
    (nearest) to the image where that differs. The smart controls' results are left out (`drawn_results`)."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for result in drawn_results(results, smart):
        if result.get("type") not in REGION_TYPES:
            continue
        w = int(result.get("original_width") or fallback[0] or width)
        h = int(result.get("original_height") or fallback[1] or height)
        groups.setdefault((w, h), []).append(result)
    masks: dict[str, np.ndarray] = {}
    for (w, h), group in groups.items():
        for label, mask in results_to_masks(group, w, h).items():
            if mask.shape != (height, width):
                mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
            masks[label] = masks[label] | mask if label in masks else mask
    return masks


def result_labels(results: list[dict] | None, smart: Collection[str] = ()) -> set[str]:
    """The labels of a result list's regions: the keys `label_masks` gives, without drawing them."""
    return {
        label
        for result in drawn_results(results, smart)
        if result.get("type") in REGION_TYPES
        for label in (result.get("value") or {}).get(result["type"], [])
    }


def mask_results(
    mask: np.ndarray, label: str, to_name: str, brush: str, polygon: str | None = None,
    score: float | None = None, max_vertices: int = 64,
) -> list[dict]:
    """One ``brushlabels`` result of a whole (H, W) mask and, with ``polygon`` (a PolygonLabels
    control name), one ``polygonlabels`` result per 8-connected part; [] for an empty mask."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return []
    results = [brush_result(mask, label, brush, to_name, score)]
    if polygon:
        height, width = mask.shape
        parts = extract_regions(
            mask.astype(np.float32), RegionSettings(Threshold("value", 0.5), min_area=0, fill_holes=False, max_vertices=max_vertices)
        )
        results += [polygon_result(part.polygon, width, height, label, polygon, to_name, score) for part in parts]
    return results
