"""report.html: the self-contained page (inline CSS and SVG, thumbnails as PNG data URIs), rendered
from the ``templates/report.html`` Jinja2 template with autoescaping on: every text that comes
from the database (project title, labels, annotators, choices) is escaped there, in one place."""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

from labeler.stats.collect import Stats
from labeler.stats.pictures import FINAL_COLOUR, PRED_COLOUR, Chart, bars, data_uri, histogram, thumbnail_png
from labeler.stats.tables import WORST_SHOWN, Row, Tables, cell

WORST_COLUMNS = ["ls_task_id", "ls_annotation_id", "annotator", "model_version", "dice", "iou", "hd95",
                 "pred_choice", "final_choice", "untouched", "pixels_added", "pixels_removed"]


@dataclass
class HtmlTable:
    """A table as the page shows it: column names, and rows of (text, left-aligned) cells."""

    columns: list[str]
    rows: list[list[tuple[str, bool]]]


@dataclass
class Thumbnail:
    ls_task_id: int
    ls_annotation_id: int
    annotator: str
    dice: str
    src: str  # PNG data URI


def html_table(rows: list[Row], columns: Sequence[str] | None = None) -> HtmlTable:
    """The first column and text values left-aligned; finite floats with 3 decimals (0 from 1e6)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    shown = []
    for row in rows:
        cells = []
        for i, column in enumerate(columns):
            value = row.get(column)
            text = cell(value)
            if isinstance(value, float) and not math.isnan(value) and not math.isinf(value):
                text = f"{value:.3f}" if abs(value) < 1e6 else f"{value:.0f}"
            cells.append((text, i == 0 or isinstance(value, str)))
        shown.append(cells)
    return HtmlTable(columns, shown)


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("labeler.stats", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def charts(stats: Stats, tables: Tables) -> list[Chart]:
    scored = [s for s in stats.annotations if s.prediction_id is not None]
    shown = [histogram([s.dice for s in scored], "Dice, pre-label vs final (per annotation)")]
    shown.append(bars([(r["annotator"], r["dice_mean"]) for r in tables.per_annotator], "Mean Dice per annotator"))
    if tables.per_model_version:
        shown.append(bars([(r["model_version"], r["dice_mean"]) for r in tables.per_model_version], "Mean Dice per model version"))
    if stats.pairs:
        shown.append(histogram([r["dice"] for r in tables.pairs], "Dice between annotators (per task, pair, label)"))
    return shown


def render_html(stats: Stats, tables: Tables) -> str:
    """The report page (see the module docstring)."""
    scored = [s for s in stats.annotations if s.prediction_id is not None]
    thumbnails = [
        Thumbnail(s.ls_task_id, s.ls_annotation_id, s.annotator, cell(s.dice)[:5] or "n/a",
                  data_uri(thumbnail_png(s.pred_results, s.final_results, s.size)))
        for s in scored[:WORST_SHOWN]
    ]
    title = f"Label statistics, project {stats.ls_project_id}" + (f" ({stats.title})" if stats.title else "")
    context: dict[str, Any] = {
        "title": title,
        "scope": ("model version " + stats.model_version if stats.model_version else "any model version")
        + ("" if stats.window.is_open else "; " + stats.window.describe()),
        "charts": charts(stats, tables),
        "thumbnails": thumbnails,
        "pred_colour": "rgb{}".format(PRED_COLOUR),
        "final_colour": "rgb{}".format(FINAL_COLOUR),
        "summary": html_table(tables.summary),
        "worst": html_table(tables.per_task[:WORST_SHOWN], WORST_COLUMNS),
        "per_annotator": html_table(tables.per_annotator),
        "per_class": html_table(tables.per_class),
        "per_model_version": html_table(tables.per_model_version),
        "pairs": html_table(tables.pairs),
    }
    return _environment().get_template("report.html").render(context)
