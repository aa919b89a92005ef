"""The tables of `Stats`: rows for the CSV files (and the report), CSV writing, terminal tables."""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from labeler.stats.collect import (
    NAN, WORST_SHOWN, AnnotationStats, LabelScore, Stats, annotator_key, mean_of, median_of,
)

__all__ = ["WORST_SHOWN", "Tables", "build_tables", "cell", "terminal_tables", "write_csv", "write_tables"]
Row = dict[str, Any]


@dataclass
class Tables:
    """One list of rows per CSV file (``<field>.csv``); a row's keys are its columns, in order."""

    summary: list[Row]
    per_task: list[Row]  # one row per annotation, worst Dice first
    per_annotator: list[Row]
    per_class: list[Row]
    per_model_version: list[Row]
    pairs: list[Row]  # one row per (task, annotator pair, label)

    def named(self) -> dict[str, list[Row]]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _rate(flags: Iterable[bool | None]) -> tuple[float, int]:
    kept = [bool(f) for f in flags if f is not None]
    return (sum(kept) / len(kept) if kept else NAN), len(kept)


def _group_row(items: list[AnnotationStats]) -> dict[str, Any]:
    scored = [s for s in items if s.prediction_id is not None]
    accuracy, class_n = _rate(s.class_match for s in scored)
    untouched_rate, _ = _rate(s.untouched for s in scored)
    return {
        "annotations": len(items),
        "with_prediction": len(scored),
        "dice_mean": mean_of(s.dice for s in scored),
        "dice_median": median_of(s.dice for s in scored),
        "iou_mean": mean_of(s.iou for s in scored),
        "hd95_median": median_of(s.hd95 for s in scored),
        "class_accuracy": accuracy,
        "class_n": class_n,
        "untouched": sum(bool(s.untouched) for s in scored),
        "untouched_rate": untouched_rate,
        "pixels_added": sum(s.pixels_added or 0 for s in scored),
        "pixels_removed": sum(s.pixels_removed or 0 for s in scored),
        "edit_fraction_mean": mean_of(s.edit_fraction for s in scored),
        "edit_fraction_median": median_of(s.edit_fraction for s in scored),
    }


def build_tables(stats: Stats) -> Tables:
    """The CSV tables of `stats`."""
    per_task = [
        {
            "ls_task_id": s.ls_task_id,
            "ls_annotation_id": s.ls_annotation_id,
            "annotator": s.annotator,
            "model_version": s.model_version or "",
            "prediction_id": "" if s.prediction_id is None else s.prediction_id,
            "prediction_source": s.prediction_source,
            "labels": " ".join(x.label for x in s.labels),
            "dice": s.dice,
            "iou": s.iou,
            "hd95": s.hd95,
            "pred_choice": s.pred_choice or "",
            "final_choice": s.final_choice or "",
            "class_match": s.class_match,
            "untouched": s.untouched,
            "pixels_added": s.pixels_added,
            "pixels_removed": s.pixels_removed,
            "edit_fraction": s.edit_fraction,
            "pred_pixels": s.pred_pixels,
            "final_pixels": s.final_pixels,
            "revisions": s.revisions,
            "lead_time": s.lead_time,
        }
        for s in stats.annotations
    ]

    pair_rows = [
        {
            "ls_task_id": p.ls_task_id,
            "annotator_a": p.annotator_a,
            "annotator_b": p.annotator_b,
            "label": x.label,
            "dice": x.dice,
            "iou": x.iou,
            "hd95": x.hd95,
            "pixels_a": x.pixels_a,
            "pixels_b": x.pixels_b,
            "choice_a": p.choice_a or "",
            "choice_b": p.choice_b or "",
            "choice_match": None if p.choice_a is None or p.choice_b is None else p.choice_a == p.choice_b,
        }
        for p in stats.pairs
        for x in p.labels
    ]

    by_annotator: dict[str, list[AnnotationStats]] = defaultdict(list)
    by_version: dict[str, list[AnnotationStats]] = defaultdict(list)
    for s in stats.annotations:
        by_annotator[s.annotator].append(s)
        if s.model_version is not None:
            by_version[s.model_version].append(s)
    pair_dice: dict[str, list[float]] = defaultdict(list)
    for row in pair_rows:
        pair_dice[row["annotator_a"]].append(row["dice"])
        pair_dice[row["annotator_b"]].append(row["dice"])
    per_annotator = [
        {
            "annotator": name,
            **_group_row(items),
            "lead_time_mean": mean_of(s.lead_time for s in items),
            "pair_dice_mean": mean_of(pair_dice.get(name, [])),
            "pair_n": len(pair_dice.get(name, [])),
        }
        for name, items in sorted(by_annotator.items(), key=lambda kv: annotator_key(kv[0]))
    ]
    per_version = [{"model_version": name, **_group_row(items)} for name, items in sorted(by_version.items())]

    label_scores: dict[str, list[LabelScore]] = defaultdict(list)
    for s in stats.annotations:
        for x in s.labels:
            label_scores[x.label].append(x)
    label_pairs: dict[str, list[dict]] = defaultdict(list)
    for row in pair_rows:
        label_pairs[row["label"]].append(row)
    per_class = [
        {
            "label": label,
            "n": len(label_scores.get(label, [])),
            "dice_mean": mean_of(x.dice for x in label_scores.get(label, [])),
            "dice_median": median_of(x.dice for x in label_scores.get(label, [])),
            "iou_mean": mean_of(x.iou for x in label_scores.get(label, [])),
            "hd95_median": median_of(x.hd95 for x in label_scores.get(label, [])),
            "hd95_undefined": sum(math.isnan(x.hd95) for x in label_scores.get(label, [])),
            "predicted": sum(x.pixels_a > 0 for x in label_scores.get(label, [])),
            "final": sum(x.pixels_b > 0 for x in label_scores.get(label, [])),
            "pixels_added": sum(x.added for x in label_scores.get(label, [])),
            "pixels_removed": sum(x.removed for x in label_scores.get(label, [])),
            "pair_n": len(label_pairs.get(label, [])),
            "pair_dice_mean": mean_of(r["dice"] for r in label_pairs.get(label, [])),
            "pair_iou_mean": mean_of(r["iou"] for r in label_pairs.get(label, [])),
        }
        for label in sorted(set(label_scores) | set(label_pairs))
    ]

    overall = _group_row(stats.annotations)
    summary = [
        {"metric": "annotations", "scope": "all", "value": overall["annotations"], "n": overall["annotations"]},
        {"metric": "tasks", "scope": "all", "value": len({s.ls_task_id for s in stats.annotations}), "n": ""},
        {"metric": "annotators", "scope": "all", "value": len(by_annotator), "n": ""},
        {"metric": "with_prediction", "scope": "all", "value": overall["with_prediction"], "n": overall["annotations"]},
    ]
    n = overall["with_prediction"]
    for metric in ("dice_mean", "dice_median", "iou_mean", "hd95_median", "edit_fraction_mean", "edit_fraction_median"):
        summary.append({"metric": metric, "scope": "pre-label vs final", "value": overall[metric], "n": n})
    summary += [
        {"metric": "class_accuracy", "scope": "pre-label vs final", "value": overall["class_accuracy"], "n": overall["class_n"]},
        {"metric": "untouched_rate", "scope": "pre-label vs final", "value": overall["untouched_rate"], "n": n},
        {"metric": "pixels_added", "scope": "pre-label vs final", "value": overall["pixels_added"], "n": n},
        {"metric": "pixels_removed", "scope": "pre-label vs final", "value": overall["pixels_removed"], "n": n},
        {"metric": "pair_dice_mean", "scope": "between annotators", "value": mean_of(r["dice"] for r in pair_rows), "n": len(pair_rows)},
        {"metric": "pair_iou_mean", "scope": "between annotators", "value": mean_of(r["iou"] for r in pair_rows), "n": len(pair_rows)},
    ]
    summary += [
        {"metric": "cohen_kappa", "scope": f"annotators {k.annotator_a} vs {k.annotator_b}", "value": k.kappa, "n": k.n}
        for k in stats.kappas
    ]
    summary += [
        {"metric": "fleiss_kappa", "scope": f"tasks with {f.raters} raters", "value": f.kappa, "n": f.n}
        for f in stats.fleiss
    ]
    return Tables(summary, per_task, per_annotator, per_class, per_version, pair_rows)


def cell(value: Any) -> str:
    """A value as CSV text: floats with 6 decimals, NaN / None empty, booleans 1 / 0."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.6f}"
    return str(value)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([cell(row.get(c)) for c in columns])


# Column lists so that an empty table still gets its header.
EMPTY_COLUMNS = {
    "pairs": ["ls_task_id", "annotator_a", "annotator_b", "label", "dice", "iou", "hd95", "pixels_a", "pixels_b",
              "choice_a", "choice_b", "choice_match"],
    "per_class": ["label", "n", "dice_mean", "dice_median", "iou_mean", "hd95_median"],
    "per_model_version": ["model_version", "annotations", "with_prediction", "dice_mean"],
}


def write_tables(tables: Tables, out: Path) -> list[Path]:
    """``<name>.csv`` per table in `out` (which exists); returns the paths written."""
    written = []
    for name, rows in tables.named().items():
        path = out / f"{name}.csv"
        write_csv(path, rows, None if rows else EMPTY_COLUMNS.get(name))
        written.append(path)
    return written


def terminal_tables(stats: Stats, tables: Tables, worst: int = WORST_SHOWN):
    """(summary, worst annotations) as rich Tables."""
    from rich.table import Table

    summary = Table("metric", "scope", "value", "n", title=f"project {stats.ls_project_id}")
    for row in tables.summary:
        value = row["value"]
        text = f"{value:.3f}" if isinstance(value, float) and not math.isnan(value) else (cell(value) or "n/a")
        summary.add_row(row["metric"], row["scope"], text, cell(row["n"]))
    worst_table = Table("task", "annotation", "annotator", "model version", "Dice", "IoU", "HD95", "class", "untouched",
                        "+px", "-px", title=f"worst {worst} (lowest Dice)")
    for s in [s for s in stats.annotations if s.prediction_id is not None][:worst]:
        def num(v):
            return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

        cls = "" if s.class_match is None else f"{s.pred_choice} -> {s.final_choice}"
        worst_table.add_row(
            str(s.ls_task_id), str(s.ls_annotation_id), s.annotator, s.model_version or "", num(s.dice), num(s.iou),
            num(s.hd95), cls, "yes" if s.untouched else "no", str(s.pixels_added), str(s.pixels_removed),
        )
    return summary, worst_table
