"""``labeler stats``: how far the annotators moved the pre-labels, and how far they agree.

Read from our database only (no Label Studio call):

- **pre-label vs final**, for every current (last revision, not deleted, not cancelled)
  annotation on a live task. Label Studio's ``parent_prediction`` is its own prediction id, which
  we do not store; the pre-label taken is the task's newest stored prediction (of
  ``model_version`` when given) made before the annotation's first revision reached us (the
  earlier of that revision's ``ls_created_at`` and ``received_at``), else the task's newest
  prediction (``prediction_source`` = ``before`` / ``latest``; ``none`` when there is none).
  Regions are rasterised per label at the original size (`explain.labelstudio.results_to_masks`,
  the union of every brush / polygon / box of a label) and compared with `labeler.agreement`:
  Dice, IoU, HD95 per label; a task's value is the mean over the labels drawn on either side
  (HD95: over the labels where it is defined); no label on either side = agreement (1, 1, 0).
  The class choice is the first ``choices`` value (the prediction's ``predicted_class`` when its
  results hold none). "Untouched" = the same labels with pixel-identical masks and the same
  choices.
- **between annotators**, on tasks with current annotations by >= 2 different ``completed_by``
  (an annotator's newest one counts): Dice / IoU / HD95 per label for every pair, Cohen's kappa of
  the class choices per annotator pair over their shared tasks, Fleiss' kappa over the tasks
  that have the same number (>= 2) of raters who chose a class.

Written to OUT: per_task.csv (one row per annotation, worst Dice first), per_annotator.csv,
per_class.csv, per_model_version.csv, pairs.csv, summary.csv and report.html (self-contained).
"""
from __future__ import annotations

import base64
import csv
import html
import io
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from explain.labelstudio import REGION_TYPES, result_choices, results_to_masks
from labeler import agreement

NAN = float("nan")
THUMB_SIZE = 160
WORST_SHOWN = 10
PRED_COLOUR = (255, 140, 0)  # orange: the pre-label
FINAL_COLOUR = (0, 200, 255)  # cyan: the final annotation


@dataclass
class LabelScore:
    """One label of one comparison (pre-label vs final, or annotator vs annotator)."""

    label: str
    dice: float
    iou: float
    hd95: float
    pixels_a: int  # pre-label / first annotator
    pixels_b: int  # final / second annotator
    added: int  # pixels in b, not in a
    removed: int  # pixels in a, not in b


@dataclass
class AnnotationStats:
    """A current annotation compared with the pre-label it most likely started from."""

    ls_task_id: int
    ls_annotation_id: int
    annotator: str
    revisions: int
    lead_time: float | None
    model_version: str | None
    prediction_id: int | None
    prediction_source: str  # before / latest / none
    labels: list[LabelScore]
    dice: float
    iou: float
    hd95: float
    pred_choice: str | None
    final_choice: str | None
    class_match: bool | None
    untouched: bool | None
    pixels_added: int | None
    pixels_removed: int | None
    pred_pixels: int | None
    final_pixels: int | None
    # kept to draw the thumbnails
    size: tuple[int, int] | None = field(default=None, repr=False)
    pred_results: list[dict] | None = field(default=None, repr=False)
    final_results: list[dict] | None = field(default=None, repr=False)


@dataclass
class PairStats:
    """Two annotators' current annotations of one task."""

    ls_task_id: int
    annotator_a: str
    annotator_b: str
    labels: list[LabelScore]
    choice_a: str | None
    choice_b: str | None


@dataclass
class Stats:
    ls_project_id: int
    title: str | None
    model_version: str | None
    annotations: list[AnnotationStats]  # worst Dice first
    pairs: list[PairStats]
    kappas: list[dict[str, Any]]  # {"annotator_a", "annotator_b", "kappa", "n"}
    fleiss: list[dict[str, Any]]  # {"raters", "kappa", "n"}
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # name -> CSV rows


# --- reading -------------------------------------------------------------------------------------


def check_database(url: str) -> None:
    """A SQLite file that does not exist is an error (rather than an empty database made for it)."""
    from db.engine import database_errors

    with database_errors(url):
        parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise ValueError(f"no database at {parsed.database}")


def _size_of(task, *result_lists: Sequence[dict] | None) -> tuple[int, int] | None:
    """(width, height): the task's, else the first region result's original size."""
    if task.width and task.height:
        return int(task.width), int(task.height)
    for results in result_lists:
        for r in results or []:
            if r.get("type") in REGION_TYPES and r.get("original_width") and r.get("original_height"):
                return int(r["original_width"]), int(r["original_height"])
    return None


def _masks(results: Sequence[dict] | None, size: tuple[int, int] | None) -> dict[str, np.ndarray]:
    if size is None:
        return {}
    return {k: v for k, v in results_to_masks(list(results or []), *size).items()}


def compare_masks(a: dict[str, np.ndarray], b: dict[str, np.ndarray], size: tuple[int, int] | None) -> list[LabelScore]:
    """Per-label scores of two {label: (H, W) bool} dicts; a label missing on one side is empty there."""
    scores = []
    for label in sorted(set(a) | set(b)):
        shape = (size[1], size[0]) if size else next(iter((a | b).values())).shape
        ma = a.get(label, np.zeros(shape, bool))
        mb = b.get(label, np.zeros(shape, bool))
        added, removed = agreement.pixel_changes(ma, mb)
        scores.append(
            LabelScore(
                label, agreement.dice(ma, mb), agreement.iou(ma, mb), agreement.hausdorff95(ma, mb),
                int(ma.sum()), int(mb.sum()), added, removed,
            )
        )
    return scores


def _mean(values: Iterable[float | None]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else NAN


def _median(values: Iterable[float | None]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.median(kept)) if kept else NAN


def _task_scores(labels: list[LabelScore]) -> tuple[float, float, float]:
    if not labels:
        return 1.0, 1.0, 0.0
    return _mean(s.dice for s in labels), _mean(s.iou for s in labels), _mean(s.hd95 for s in labels)


def _first_choice(results: Sequence[dict] | None) -> str | None:
    choices = result_choices(list(results or []))
    return choices[0] if choices else None


def _annotator(completed_by: int | None) -> str:
    return "unknown" if completed_by is None else str(completed_by)


def pick_prediction(predictions: list, started: datetime | None):
    """(prediction, source) among a task's predictions (oldest first): the newest made before
    `started`, else the newest of all; (None, "none") when there are none."""
    if not predictions:
        return None, "none"
    if started is not None:
        before = [p for p in predictions if p.created_at is not None and p.created_at < started]
        if before:
            return before[-1], "before"
    return predictions[-1], "latest"


def collect(
    session: Session, ls_project_id: int, model_version: str | None = None, label_studio: str | None = None
) -> Stats:
    """Every comparison for the project (of Label Studio ``label_studio``, see
    `db.repository.get_project`), read from the database (see the module's docstring)."""
    from db import repository as repo

    project = repo.get_project(session, ls_project_id, label_studio)
    if project is None:
        raise ValueError(f"project {ls_project_id} is not in the database (no task of it was ever pre-labelled or annotated)")
    if model_version is not None and repo.get_model_version(session, model_version) is None:
        raise ValueError(f"model version {model_version!r} is not in the database")
    current = [a for a in repo.current_annotations(session, project) if not a.was_cancelled]
    if not current:
        raise ValueError(f"project {ls_project_id} has no annotations yet")

    history: dict[int, list] = defaultdict(list)
    for revision in repo.revisions(session, project):
        history[revision.ls_annotation_id].append(revision)

    by_task: dict[int, list] = defaultdict(list)
    for revision in current:
        by_task[revision.task.ls_task_id].append(revision)

    annotations: list[AnnotationStats] = []
    pairs: list[PairStats] = []
    for ls_task_id in sorted(by_task):
        task_revisions = by_task[ls_task_id]
        task = task_revisions[0].task
        predictions = repo.predictions_for(session, project, ls_task_id)
        if model_version is not None:
            predictions = [p for p in predictions if p.model_version.name == model_version]
        for revision in task_revisions:
            first = history[revision.ls_annotation_id][0]
            starts = [t for t in (first.ls_created_at, first.received_at) if t is not None]
            prediction, source = pick_prediction(predictions, min(starts) if starts else None)
            annotations.append(_compare_with_prediction(task, revision, prediction, source, len(history[revision.ls_annotation_id])))
        pairs.extend(_compare_annotators(task, task_revisions))

    annotations.sort(key=lambda s: (math.isnan(s.dice), s.dice, s.ls_task_id, s.ls_annotation_id))
    kappas, fleiss = _class_agreement(pairs, by_task)
    stats = Stats(ls_project_id, project.title, model_version, annotations, pairs, kappas, fleiss)
    stats.tables = build_tables(stats)
    return stats


def _compare_with_prediction(task, revision, prediction, source: str, n_revisions: int) -> AnnotationStats:
    final = revision.result or []
    base = dict(
        ls_task_id=task.ls_task_id,
        ls_annotation_id=revision.ls_annotation_id,
        annotator=_annotator(revision.completed_by),
        revisions=n_revisions,
        lead_time=revision.lead_time,
        final_choice=_first_choice(final),
        final_results=final,
    )
    if prediction is None:
        return AnnotationStats(
            **base, model_version=None, prediction_id=None, prediction_source="none", labels=[],
            dice=NAN, iou=NAN, hd95=NAN, pred_choice=None, class_match=None, untouched=None,
            pixels_added=None, pixels_removed=None, pred_pixels=None, final_pixels=None,
        )
    predicted = prediction.results or []
    size = _size_of(task, final, predicted)
    pred_masks, final_masks = _masks(predicted, size), _masks(final, size)
    labels = compare_masks(pred_masks, final_masks, size)
    dice, iou, hd95 = _task_scores(labels)
    pred_choice = _first_choice(predicted) or prediction.predicted_class
    final_choice = base["final_choice"]
    same_regions = {k for k, m in pred_masks.items() if m.any()} == {k for k, m in final_masks.items() if m.any()} and all(
        np.array_equal(pred_masks.get(s.label), final_masks.get(s.label)) for s in labels if s.pixels_a or s.pixels_b
    )
    untouched = same_regions and result_choices(predicted) == result_choices(final)
    return AnnotationStats(
        **base,
        model_version=prediction.model_version.name,
        prediction_id=prediction.id,
        prediction_source=source,
        labels=labels,
        dice=dice,
        iou=iou,
        hd95=hd95,
        pred_choice=pred_choice,
        class_match=None if final_choice is None else pred_choice == final_choice,
        untouched=untouched,
        pixels_added=sum(s.added for s in labels),
        pixels_removed=sum(s.removed for s in labels),
        pred_pixels=sum(s.pixels_a for s in labels),
        final_pixels=sum(s.pixels_b for s in labels),
        size=size,
        pred_results=predicted,
    )


def _latest_per_annotator(revisions: list) -> dict[str, Any]:
    """{annotator: newest current revision}; annotations without ``completed_by`` are left out."""
    chosen: dict[str, Any] = {}
    for revision in sorted(revisions, key=lambda r: r.id):
        if revision.completed_by is not None:
            chosen[_annotator(revision.completed_by)] = revision
    return chosen


def _annotator_key(name: str):
    return (0, int(name)) if name.isdigit() else (1, name)


def _compare_annotators(task, revisions: list) -> list[PairStats]:
    chosen = _latest_per_annotator(revisions)
    if len(chosen) < 2:
        return []
    names = sorted(chosen, key=_annotator_key)
    size = _size_of(task, *(chosen[n].result for n in names))
    masks = {n: _masks(chosen[n].result, size) for n in names}
    return [
        PairStats(
            task.ls_task_id, a, b, compare_masks(masks[a], masks[b], size),
            _first_choice(chosen[a].result), _first_choice(chosen[b].result),
        )
        for a, b in itertools.combinations(names, 2)
    ]


def _class_agreement(pairs: list[PairStats], by_task: dict[int, list]) -> tuple[list[dict], list[dict]]:
    """Cohen's kappa per annotator pair (shared tasks where both chose); Fleiss' kappa per rater count."""
    shared: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for pair in pairs:
        if pair.choice_a is not None and pair.choice_b is not None:
            shared[(pair.annotator_a, pair.annotator_b)].append((pair.choice_a, pair.choice_b))
    kappas = [
        {"annotator_a": a, "annotator_b": b, "kappa": agreement.cohen_kappa([x for x, _ in v], [y for _, y in v]), "n": len(v)}
        for (a, b), v in sorted(shared.items(), key=lambda kv: (_annotator_key(kv[0][0]), _annotator_key(kv[0][1])))
    ]
    by_raters: dict[int, list[list[str]]] = defaultdict(list)
    for ls_task_id in sorted(by_task):
        choices = [_first_choice(r.result) for r in _latest_per_annotator(by_task[ls_task_id]).values()]
        choices = [c for c in choices if c is not None]
        if len(choices) >= 2:
            by_raters[len(choices)].append(choices)
    fleiss = []
    for raters, items in sorted(by_raters.items()):
        categories = sorted({c for item in items for c in item})
        table = [[item.count(c) for c in categories] for item in items]
        fleiss.append({"raters": raters, "kappa": agreement.fleiss_kappa(table), "n": len(items)})
    return kappas, fleiss


# --- tables --------------------------------------------------------------------------------------


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
        "dice_mean": _mean(s.dice for s in scored),
        "dice_median": _median(s.dice for s in scored),
        "iou_mean": _mean(s.iou for s in scored),
        "hd95_median": _median(s.hd95 for s in scored),
        "class_accuracy": accuracy,
        "class_n": class_n,
        "untouched": sum(bool(s.untouched) for s in scored),
        "untouched_rate": untouched_rate,
        "pixels_added": sum(s.pixels_added or 0 for s in scored),
        "pixels_removed": sum(s.pixels_removed or 0 for s in scored),
    }


def build_tables(stats: Stats) -> dict[str, list[dict[str, Any]]]:
    """The CSV tables: name -> list of rows (dicts with the same keys, in column order)."""
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
            "lead_time_mean": _mean(s.lead_time for s in items),
            "pair_dice_mean": _mean(pair_dice.get(name, [])),
            "pair_n": len(pair_dice.get(name, [])),
        }
        for name, items in sorted(by_annotator.items(), key=lambda kv: _annotator_key(kv[0]))
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
            "dice_mean": _mean(x.dice for x in label_scores.get(label, [])),
            "dice_median": _median(x.dice for x in label_scores.get(label, [])),
            "iou_mean": _mean(x.iou for x in label_scores.get(label, [])),
            "hd95_median": _median(x.hd95 for x in label_scores.get(label, [])),
            "hd95_undefined": sum(math.isnan(x.hd95) for x in label_scores.get(label, [])),
            "predicted": sum(x.pixels_a > 0 for x in label_scores.get(label, [])),
            "final": sum(x.pixels_b > 0 for x in label_scores.get(label, [])),
            "pixels_added": sum(x.added for x in label_scores.get(label, [])),
            "pixels_removed": sum(x.removed for x in label_scores.get(label, [])),
            "pair_n": len(label_pairs.get(label, [])),
            "pair_dice_mean": _mean(r["dice"] for r in label_pairs.get(label, [])),
            "pair_iou_mean": _mean(r["iou"] for r in label_pairs.get(label, [])),
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
    for metric in ("dice_mean", "dice_median", "iou_mean", "hd95_median"):
        summary.append({"metric": metric, "scope": "pre-label vs final", "value": overall[metric], "n": n})
    summary += [
        {"metric": "class_accuracy", "scope": "pre-label vs final", "value": overall["class_accuracy"], "n": overall["class_n"]},
        {"metric": "untouched_rate", "scope": "pre-label vs final", "value": overall["untouched_rate"], "n": n},
        {"metric": "pixels_added", "scope": "pre-label vs final", "value": overall["pixels_added"], "n": n},
        {"metric": "pixels_removed", "scope": "pre-label vs final", "value": overall["pixels_removed"], "n": n},
        {"metric": "pair_dice_mean", "scope": "between annotators", "value": _mean(r["dice"] for r in pair_rows), "n": len(pair_rows)},
        {"metric": "pair_iou_mean", "scope": "between annotators", "value": _mean(r["iou"] for r in pair_rows), "n": len(pair_rows)},
    ]
    summary += [
        {"metric": "cohen_kappa", "scope": f"annotators {k['annotator_a']} vs {k['annotator_b']}", "value": k["kappa"], "n": k["n"]}
        for k in stats.kappas
    ]
    summary += [
        {"metric": "fleiss_kappa", "scope": f"tasks with {f['raters']} raters", "value": f["kappa"], "n": f["n"]}
        for f in stats.fleiss
    ]
    return {
        "summary": summary,
        "per_task": per_task,
        "per_annotator": per_annotator,
        "per_class": per_class,
        "per_model_version": per_version,
        "pairs": pair_rows,
    }


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
_EMPTY_COLUMNS = {
    "pairs": ["ls_task_id", "annotator_a", "annotator_b", "label", "dice", "iou", "hd95", "pixels_a", "pixels_b",
              "choice_a", "choice_b", "choice_match"],
    "per_class": ["label", "n", "dice_mean", "dice_median", "iou_mean", "hd95_median"],
    "per_model_version": ["model_version", "annotations", "with_prediction", "dice_mean"],
}


# --- pictures ------------------------------------------------------------------------------------


def _outline(mask: np.ndarray) -> np.ndarray:
    return agreement.boundary(mask)


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
        masks = _masks(results, size) if results else {}
        union = np.zeros((height, width), bool)
        for mask in masks.values():
            union |= mask
        small = np.asarray(Image.fromarray(union.astype(np.uint8) * 255).resize((out_w, out_h), Image.NEAREST)) > 0
        canvas[small] = 0.75 * canvas[small] + 0.25 * np.array(colour, np.float32)
        edge = _outline(small)
        canvas[edge] = colour
    buffer = io.BytesIO()
    Image.fromarray(canvas.round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def svg_histogram(values: Sequence[float], title: str, bins: int = 10, width: int = 420, height: int = 200) -> str:
    """Inline SVG histogram of values in [0, 1]."""
    kept = [v for v in values if not math.isnan(v)]
    counts, edges = np.histogram(kept, bins=bins, range=(0.0, 1.0))
    top = max(int(counts.max()) if len(kept) else 0, 1)
    left, bottom, plot_w, plot_h = 36, 28, width - 48, height - 56
    bar_w = plot_w / bins
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" class="t">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{left + plot_w}" y2="{height - bottom}" stroke="#444"/>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{left}" y2="{height - bottom - plot_h}" stroke="#444"/>',
        f'<text x="{left - 4}" y="{height - bottom - plot_h + 4}" text-anchor="end" class="a">{top}</text>',
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end" class="a">0</text>',
    ]
    for i, count in enumerate(counts):
        h = plot_h * count / top
        x = left + i * bar_w
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{height - bottom - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="#3b7dd8">'
            f"<title>{edges[i]:.1f}-{edges[i + 1]:.1f}: {count}</title></rect>"
        )
    for i in range(0, bins + 1, 2):
        x = left + i * bar_w
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle" class="a">{edges[i]:.1f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(items: Sequence[tuple[str, float]], title: str, width: int = 420) -> str:
    """Inline SVG horizontal bars of values in [0, 1], one per (name, value)."""
    row, left, right = 22, 130, 50
    height = 28 + row * max(len(items), 1)
    plot_w = width - left - right
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" class="t">{html.escape(title)}</text>',
    ]
    for i, (name, value) in enumerate(items):
        y = 22 + i * row
        shown = 0.0 if math.isnan(value) else max(0.0, min(1.0, value))
        label = name if len(name) <= 18 else name[:17] + "…"
        parts.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" class="a">{html.escape(label)}<title>{html.escape(name)}</title></text>')
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{plot_w}" height="{row - 6}" fill="#eee"/>')
        parts.append(f'<rect x="{left}" y="{y + 2}" width="{plot_w * shown:.1f}" height="{row - 6}" fill="#3b7dd8"/>')
        parts.append(f'<text x="{left + plot_w + 4}" y="{y + 13}" class="a">{"n/a" if math.isnan(value) else f"{value:.3f}"}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- report --------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.s,th.s{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:16px}
.t{font-size:13px;font-weight:600}.a{font-size:11px;fill:#333}
.thumbs{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;font-size:12px}figure img{display:block;image-rendering:pixelated;border:1px solid #ccc}
.key span{display:inline-block;width:12px;height:12px;margin:0 4px -2px 10px}
"""


def _html_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p>none</p>"
    columns = list(columns or rows[0].keys())
    head = "".join(f'<th class="s">{html.escape(c)}</th>' if i == 0 else f"<th>{html.escape(c)}</th>" for i, c in enumerate(columns))
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(columns):
            value = row.get(c)
            text = cell(value)
            if isinstance(value, float) and not math.isnan(value) and not math.isinf(value):
                text = f"{value:.3f}" if abs(value) < 1e6 else f"{value:.0f}"
            cells.append(f'<td class="s">{html.escape(text)}</td>' if i == 0 or isinstance(value, str) else f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(stats: Stats) -> str:
    """The self-contained report (inline CSS and SVG, thumbnails as PNG data URIs)."""
    t = stats.tables
    scored = [s for s in stats.annotations if s.prediction_id is not None]
    plots = [svg_histogram([s.dice for s in scored], "Dice, pre-label vs final (per annotation)")]
    plots.append(svg_bars([(r["annotator"], r["dice_mean"]) for r in t["per_annotator"]], "Mean Dice per annotator"))
    if t["per_model_version"]:
        plots.append(svg_bars([(r["model_version"], r["dice_mean"]) for r in t["per_model_version"]], "Mean Dice per model version"))
    if stats.pairs:
        plots.append(svg_histogram([r["dice"] for r in t["pairs"]], "Dice between annotators (per task, pair, label)"))

    thumbs = []
    for s in scored[:WORST_SHOWN]:
        png = thumbnail_png(s.pred_results, s.final_results, s.size)
        caption = f"task {s.ls_task_id} · annotation {s.ls_annotation_id} · annotator {s.annotator}<br>Dice {cell(s.dice)[:5] or 'n/a'}"
        thumbs.append(
            f'<figure><img src="{data_uri(png)}" alt="task {s.ls_task_id}" '
            f'title="task {s.ls_task_id}"><figcaption>{caption}</figcaption></figure>'
        )
    worst_columns = ["ls_task_id", "ls_annotation_id", "annotator", "model_version", "dice", "iou", "hd95",
                     "pred_choice", "final_choice", "untouched", "pixels_added", "pixels_removed"]
    title = f"Label statistics, project {stats.ls_project_id}" + (f" ({stats.title})" if stats.title else "")
    scope = f"model version {stats.model_version}" if stats.model_version else "any model version"
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Pre-labels of {html.escape(scope)}. Masks compared per label at the original image size; "
        "HD95 in pixels (empty on one side: undefined, left out of medians).</p>",
        "<h2>Summary</h2>", _html_table(t["summary"]),
        '<h2>Plots</h2><div class="plots">' + "".join(plots) + "</div>",
        f"<h2>Worst {len(thumbs)} annotations (lowest Dice)</h2>",
        '<p class="key">outlines:<span style="background:rgb%s"></span>pre-label<span style="background:rgb%s"></span>final</p>'
        % (PRED_COLOUR, FINAL_COLOUR),
        '<div class="thumbs">' + "".join(thumbs) + "</div>",
        _html_table(t["per_task"][:WORST_SHOWN], worst_columns),
        "<h2>Per annotator</h2>", _html_table(t["per_annotator"]),
        "<h2>Per class (label)</h2>", _html_table(t["per_class"]),
        "<h2>Per model version</h2>", _html_table(t["per_model_version"]),
        "<h2>Between annotators</h2>", _html_table(t["pairs"]),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )


def write_report(stats: Stats, out: Path) -> list[Path]:
    """Write the CSV files and report.html into `out` (created); returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("summary", "per_task", "per_annotator", "per_class", "per_model_version", "pairs"):
        path = out / f"{name}.csv"
        write_csv(path, stats.tables[name], None if stats.tables[name] else _EMPTY_COLUMNS.get(name))
        written.append(path)
    report = out / "report.html"
    report.write_text(render_html(stats), encoding="utf-8")
    written.append(report)
    return written


def run(
    database_url: str, ls_project_id: int, out: Path, model_version: str | None = None, label_studio: str | None = None
) -> Stats:
    """Read the project's statistics from the database and write them to `out`."""
    from labeler.workspace import Workspace

    check_database(database_url)
    sessions = Workspace(database_url=database_url, project_id=ls_project_id, writes=False).sessions
    engine = sessions.kw["bind"]
    if engine.dialect.name == "sqlite":  # a long read: neither block the backend's writes nor wait for them
        engine = engine.execution_options(sqlite_begin="DEFERRED")
    with sessions(bind=engine) as session:
        stats = collect(session, ls_project_id, model_version, label_studio)
    write_report(stats, out)
    return stats


def terminal_tables(stats: Stats, worst: int = WORST_SHOWN):
    """(summary, worst annotations) as rich Tables."""
    from rich.table import Table

    summary = Table("metric", "scope", "value", "n", title=f"project {stats.ls_project_id}")
    for row in stats.tables["summary"]:
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
