"""The report's pictures: PNG thumbnails of pre-label vs final masks, and charts as SVG shapes
(numbers already formatted) that the report's template draws, escaping every text."""
from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models import agreement
from labeler.stats.collect import region_masks

THUMB_SIZE = 160
PRED_COLOUR = (255, 140, 0)  # orange: the pre-label
FINAL_COLOUR = (0, 200, 255)  # cyan: the final annotation
BAR_COLOUR = "#3b7dd8"


def thumbnail_png(pred_results, final_results, size: tuple[int, int] | None, side: int = THUMB_SIZE) -> bytes:
    """PNG bytes: a gray canvas with the pre-label (orange) and the final annotation (cyan), every
    label merged, as lightly filled regions with outlines, scaled to fit `side` x `side` pixels.
    Where the two agree exactly only the final (cyan) outline shows."""
    from PIL import Image

    if size is None:
        size = (side, side)
    width, height = size
    scale = min(side / width, side / height)  # small images are blown up (nearest), big ones shrunk
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = np.full((out_h, out_w, 3), 64, np.float32)
    for results, colour in ((pred_results, PRED_COLOUR), (final_results, FINAL_COLOUR)):
        masks = region_masks(results, size) if results else {}
        union = np.zeros((height, width), bool)
        for mask in masks.values():
            union |= mask
        small = np.asarray(Image.fromarray(union.astype(np.uint8) * 255).resize((out_w, out_h), Image.NEAREST)) > 0
        canvas[small] = 0.75 * canvas[small] + 0.25 * np.array(colour, np.float32)
        canvas[agreement.boundary(small)] = colour
    buffer = io.BytesIO()
    Image.fromarray(canvas.round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@dataclass
class Line:
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass
class Rect:
    x: str
    y: str
    width: str
    height: str
    fill: str
    tip: str = ""  # shown on hover


@dataclass
class Text:
    x: str
    y: str
    text: str
    anchor: str = "start"
    tip: str = ""


@dataclass
class Chart:
    """An SVG picture of `width` x `height` px: a title over lines, rectangles and small texts."""

    title: str
    width: int
    height: int
    lines: list[Line] = field(default_factory=list)
    rects: list[Rect] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)


def histogram(values: Sequence[float], title: str, bins: int = 10, width: int = 420, height: int = 200) -> Chart:
    """Histogram of values in [0, 1] (NaN left out)."""
    kept = [v for v in values if not math.isnan(v)]
    counts, edges = np.histogram(kept, bins=bins, range=(0.0, 1.0))
    top = max(int(counts.max()) if len(kept) else 0, 1)
    left, bottom, plot_w, plot_h = 36, 28, width - 48, height - 56
    base = height - bottom
    bar_w = plot_w / bins
    chart = Chart(title, width, height)
    chart.lines += [Line(left, base, left + plot_w, base), Line(left, base, left, base - plot_h)]
    chart.texts += [Text(f"{left - 4}", f"{base - plot_h + 4}", str(top), "end"), Text(f"{left - 4}", f"{base}", "0", "end")]
    for i, count in enumerate(counts):
        h = plot_h * count / top
        x = left + i * bar_w
        chart.rects.append(
            Rect(f"{x + 1:.1f}", f"{base - h:.1f}", f"{bar_w - 2:.1f}", f"{h:.1f}", BAR_COLOUR,
                 f"{edges[i]:.1f}-{edges[i + 1]:.1f}: {count}")
        )
    for i in range(0, bins + 1, 2):
        chart.texts.append(Text(f"{left + i * bar_w:.1f}", f"{base + 14}", f"{edges[i]:.1f}", "middle"))
    return chart


def bars(items: Sequence[tuple[str, float]], title: str, width: int = 420) -> Chart:
    """Horizontal bars of values in [0, 1], one per (name, value); NaN shows as n/a."""
    row, left, right = 22, 130, 50
    plot_w = width - left - right
    chart = Chart(title, width, 28 + row * max(len(items), 1))
    for i, (name, value) in enumerate(items):
        y = 22 + i * row
        shown = 0.0 if math.isnan(value) else max(0.0, min(1.0, value))
        label = name if len(name) <= 18 else name[:17] + "…"
        chart.texts.append(Text(f"{left - 6}", f"{y + 13}", label, "end", tip=name))
        chart.rects.append(Rect(f"{left}", f"{y + 2}", f"{plot_w}", f"{row - 6}", "#eee"))
        chart.rects.append(Rect(f"{left}", f"{y + 2}", f"{plot_w * shown:.1f}", f"{row - 6}", BAR_COLOUR))
        chart.texts.append(Text(f"{left + plot_w + 4}", f"{y + 13}", "n/a" if math.isnan(value) else f"{value:.3f}"))
    return chart
