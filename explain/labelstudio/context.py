"""Label Studio's interactive context (format of Label Studio 1.23): an annotator's smart keypoints
and rectangles -> ``explain.clicks`` clicks and boxes.

Label Studio sends ``params.context = {"result": [region, ...]}`` with /predict when a smart tool
(``KeyPointLabels`` / ``RectangleLabels`` with ``smart="true"``) is used in auto-annotation mode.
Each region looks like an ordinary result::

    {"type": "keypointlabels", "value": {"x": %, "y": %, "width": .., "keypointlabels": ["Opacity"]},
     "is_positive": true, "original_width": W, "original_height": H, "from_name", "to_name", "id", ...}

(rectangles: ``"type": "rectanglelabels"``, ``value`` with ``x, y, width, height``). Positions are
percent of the original image; ``is_positive`` missing (or null) means positive. Regions of other
types (e.g. a brush region) are ignored; keys other than ``result`` (Label Studio may add project
credentials to the context) are ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from explain.clicks import Box, Click

MAX_REGIONS = 100  # an annotator places a handful; far more is a script or an attack
POINT_TYPES = ("keypointlabels", "keypoint")
BOX_TYPES = ("rectanglelabels", "rectangle")
EPSILON = 1e-6  # percentages a rounding error past 0 or 100 are clipped, not refused


class ContextError(ValueError):
    """The context is malformed; the message names the field (e.g. ``params.context.result[2].value.x``)."""


@dataclass(frozen=True)
class Prompt:
    """The usable regions of one context, in percent of the original image.

    points : (x, y, positive) per keypoint.
    rectangles : (x, y, width, height, positive) per rectangle.
    label : the label of the first positive region that names one (the tool's selected label), or None.
    """

    points: tuple[tuple[float, float, bool], ...] = ()
    rectangles: tuple[tuple[float, float, float, float, bool], ...] = ()
    label: str | None = None

    def __bool__(self) -> bool:
        return bool(self.points or self.rectangles)

    def clicks(self, width: int, height: int) -> tuple[Click, ...]:
        """The keypoints as clicks in pixels of a ``width`` x ``height`` image (the pixel-corner frame)."""
        return tuple(Click(x / 100 * width, y / 100 * height, positive) for x, y, positive in self.points)

    def boxes(self, width: int, height: int) -> tuple[Box, ...]:
        """The rectangles as boxes in pixels of a ``width`` x ``height`` image."""
        return tuple(
            Box(x / 100 * width, y / 100 * height, w / 100 * width, h / 100 * height, positive)
            for x, y, w, h, positive in self.rectangles
        )


def parse_context(context, name: str = "params.context") -> Prompt | None:
    """The prompt of a context; None when ``context`` is None (an ordinary, non-interactive request).

    A context without ``result`` (or with an empty one, or with no keypoint or rectangle in it)
    gives an empty Prompt. Raises ContextError naming the problem: a context that is not an
    object, a result that is not a list or holds more than MAX_REGIONS regions, a region that is
    not an object, a keypoint or rectangle without numeric x / y (width / height) in [0, 100],
    a rectangle reaching past 100 %, an ``is_positive`` that is not a boolean.
    """
    if context is None:
        return None
    if not isinstance(context, dict):
        raise ContextError(f"{name} must be an object, got {_kind(context)}")
    result = context.get("result")
    if result is None:
        return Prompt()
    if not isinstance(result, list):
        raise ContextError(f"{name}.result must be a list of regions, got {_kind(result)}")
    if len(result) > MAX_REGIONS:
        raise ContextError(f"{name}.result has {len(result)} regions, over the {MAX_REGIONS} an interactive request may carry")
    points, rectangles, label = [], [], None
    for n, region in enumerate(result):
        where = f"{name}.result[{n}]"
        if not isinstance(region, dict):
            raise ContextError(f"{where} must be an object, got {_kind(region)}")
        kind = region.get("type")
        if kind not in POINT_TYPES + BOX_TYPES:
            continue
        value = region.get("value")
        if not isinstance(value, dict):
            raise ContextError(f"{where}.value must be an object, got {_kind(value)}")
        positive = region.get("is_positive")
        if positive is None:
            positive = True
        elif not isinstance(positive, bool):
            raise ContextError(f"{where}.is_positive must be true or false, got {_kind(positive)}")
        x, y = (_percent(value, key, f"{where}.value") for key in ("x", "y"))
        if kind in POINT_TYPES:
            points.append((x, y, positive))
        else:
            w, h = (_percent(value, key, f"{where}.value") for key in ("width", "height"))
            if x + w > 100 + EPSILON or y + h > 100 + EPSILON:
                raise ContextError(f"{where}.value: the rectangle reaches past the image (x + width or y + height over 100 %)")
            rectangles.append((x, y, min(w, 100 - x), min(h, 100 - y), positive))
        labels = value.get(kind) if kind.endswith("labels") else None
        if label is None and positive and isinstance(labels, list) and labels and isinstance(labels[0], str) and labels[0]:
            label = labels[0]
    return Prompt(tuple(points), tuple(rectangles), label)


def _percent(value: dict, key: str, where: str) -> float:
    number = value.get(key)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ContextError(f"{where}.{key} must be a number (percent of the image), got {_kind(number)}")
    if not -EPSILON <= number <= 100 + EPSILON:
        raise ContextError(f"{where}.{key} must be a percentage in [0, 100], got {number:g}")
    return min(max(float(number), 0.0), 100.0)


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__
