"""Read one project's annotations and predictions from our database into typed `Stats`:
every current annotation against the pre-label it most likely started from, and every pair of
annotators on a task (see `labeler.stats` for the rules)."""
from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from explain.labelstudio.configs import smart_controls
from explain.labelstudio.results import REGION_TYPES, drawn_results, result_choices, results_to_masks
from models import agreement
from models.agreement import edit_fraction_of
from labeler.stats.reading import annotated_tasks, results_of
from labeler.stats.window import Window

NAN = float("nan")
WORST_SHOWN = 10  # the report's worst annotations, drawn as thumbnails


@dataclass(slots=True)
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


@dataclass(slots=True)
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
    revision_id: int | None = field(default=None, repr=False)  # our id of the current revision
    # to draw the thumbnails: the size always, the results only for the `WORST_SHOWN` worst
    size: tuple[int, int] | None = field(default=None, repr=False)
    pred_results: list[dict] | None = field(default=None, repr=False)
    final_results: list[dict] | None = field(default=None, repr=False)

    @property
    def edit_fraction(self) -> float | None:
        """(pixels added + pixels removed) from pre-label to final over the final's pixels
        (`models.agreement.edit_fraction`); None without a pre-label."""
        if self.pixels_added is None or self.pixels_removed is None or self.final_pixels is None:
            return None
        return edit_fraction_of(self.pixels_added + self.pixels_removed, self.final_pixels)


@dataclass(slots=True)
class PairStats:
    """Two annotators' current annotations of one task."""

    ls_task_id: int
    annotator_a: str
    annotator_b: str
    labels: list[LabelScore]
    choice_a: str | None
    choice_b: str | None


@dataclass
class CohenKappa:
    """Two annotators' agreement on the class choice over the `n` tasks where both chose one."""

    annotator_a: str
    annotator_b: str
    kappa: float
    n: int


@dataclass
class FleissKappa:
    """Agreement on the class choice over the `n` tasks with exactly `raters` raters who chose one."""

    raters: int
    kappa: float
    n: int


@dataclass
class Stats:
    """Every comparison of one project (see `collect`)."""

    ls_project_id: int
    title: str | None
    model_version: str | None  # the pre-labels compared were of this version; None: any
    annotations: list[AnnotationStats]  # worst Dice first
    pairs: list[PairStats]
    kappas: list[CohenKappa]
    fleiss: list[FleissKappa]
    window: Window = field(default_factory=Window)  # the annotations compared were updated in it


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


def region_masks(
    results: Sequence[dict] | None, size: tuple[int, int] | None, smart: Collection[str] = ()
) -> dict[str, np.ndarray]:
    """{label: (H, W) bool} of a result list at `size` (width, height); the smart controls'
    results (``smart``) are no regions."""
    if size is None:
        return {}
    return results_to_masks(list(results or []), *size, smart=smart)


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


def mean_of(values: Iterable[float | None]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else NAN


def median_of(values: Iterable[float | None]) -> float:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.median(kept)) if kept else NAN


def _task_scores(labels: list[LabelScore]) -> tuple[float, float, float]:
    if not labels:
        return 1.0, 1.0, 0.0
    return mean_of(s.dice for s in labels), mean_of(s.iou for s in labels), mean_of(s.hd95 for s in labels)


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
    session: Session,
    ls_project_id: int,
    model_version: str | None = None,
    label_studio: str | None = None,
    window: Window = Window(),
    *,
    chunk: int | None = None,
) -> Stats:
    """Every comparison for the project (of Label Studio ``label_studio``, see
    `db.repository.get_project`) among its annotations in `window`, read from the database in
    chunks of tasks (`labeler.stats.reading`); each chunk's results and masks are dropped once
    scored, and only the `WORST_SHOWN` worst annotations get theirs back for the thumbnails."""
    from db import repository as repo

    project = repo.get_project(session, ls_project_id, label_studio)
    if project is None:
        raise ValueError(f"project {ls_project_id} is not in the database (no task of it was ever pre-labelled or annotated)")
    smart = smart_controls(project.label_config)  # what annotators placed with these is no region
    version_id = None
    if model_version is not None:
        version = repo.get_model_version(session, model_version)
        if version is None:
            raise ValueError(f"model version {model_version!r} is not in the database")
        version_id = version.id

    annotations: list[AnnotationStats] = []
    pairs: list[PairStats] = []
    rated: list[list[str]] = []  # per task with >= 2 raters who chose a class: their choices
    for tasks in annotated_tasks(session, project, pick_prediction, model_version_id=version_id, window=window, chunk=chunk):
        for item in tasks:
            for revision in item.annotations:
                annotations.append(
                    _compare_with_prediction(item.task, revision, revision.prediction, revision.source, revision.revisions, smart)
                )
            pairs.extend(_compare_annotators(item.task, item.annotations, smart))
            choices = [_first_choice(r.result) for r in _latest_per_annotator(item.annotations).values()]
            choices = [c for c in choices if c is not None]
            if len(choices) >= 2:
                rated.append(choices)
    if not annotations:
        if window.is_open:
            raise ValueError(f"project {ls_project_id} has no annotations yet")
        raise ValueError(f"project {ls_project_id} has no {window.describe()}")

    annotations.sort(key=lambda s: (math.isnan(s.dice), s.dice, s.ls_task_id, s.ls_annotation_id))
    _attach_results(session, [s for s in annotations if s.prediction_id is not None][:WORST_SHOWN], smart)
    kappas, fleiss = _class_agreement(pairs, rated)
    return Stats(ls_project_id, project.title, model_version, annotations, pairs, kappas, fleiss, window)


def _attach_results(session: Session, shown: list[AnnotationStats], smart: Collection[str]) -> None:
    """Read back the results of the annotations whose thumbnails the report draws (without the
    smart controls' ones)."""
    revisions, predictions = results_of(
        session, [s.revision_id for s in shown if s.revision_id is not None],
        [s.prediction_id for s in shown if s.prediction_id is not None],
    )
    for s in shown:
        s.final_results = drawn_results(revisions.get(s.revision_id), smart)
        s.pred_results = drawn_results(predictions.get(s.prediction_id), smart)


def _compare_with_prediction(task, revision, prediction, source: str, n_revisions: int, smart: Collection[str]) -> AnnotationStats:
    final = revision.result or []
    base = dict(
        ls_task_id=task.ls_task_id,
        ls_annotation_id=revision.ls_annotation_id,
        annotator=_annotator(revision.completed_by),
        revisions=n_revisions,
        lead_time=revision.lead_time,
        final_choice=_first_choice(final),
        revision_id=revision.id,
    )
    if prediction is None:
        return AnnotationStats(
            **base, model_version=None, prediction_id=None, prediction_source="none", labels=[],
            dice=NAN, iou=NAN, hd95=NAN, pred_choice=None, class_match=None, untouched=None,
            pixels_added=None, pixels_removed=None, pred_pixels=None, final_pixels=None,
        )
    predicted = prediction.results or []
    size = _size_of(task, final, predicted)
    pred_masks, final_masks = region_masks(predicted, size, smart), region_masks(final, size, smart)
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
        model_version=prediction.model_version,
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
    )


def _latest_per_annotator(revisions: list) -> dict[str, Any]:
    """{annotator: newest current revision}; annotations without ``completed_by`` are left out."""
    chosen: dict[str, Any] = {}
    for revision in sorted(revisions, key=lambda r: r.id):
        if revision.completed_by is not None:
            chosen[_annotator(revision.completed_by)] = revision
    return chosen


def annotator_key(name: str):
    return (0, int(name)) if name.isdigit() else (1, name)


def _compare_annotators(task, revisions: list, smart: Collection[str]) -> list[PairStats]:
    chosen = _latest_per_annotator(revisions)
    if len(chosen) < 2:
        return []
    names = sorted(chosen, key=annotator_key)
    size = _size_of(task, *(chosen[n].result for n in names))
    masks = {n: region_masks(chosen[n].result, size, smart) for n in names}
    return [
        PairStats(
            task.ls_task_id, a, b, compare_masks(masks[a], masks[b], size),
            _first_choice(chosen[a].result), _first_choice(chosen[b].result),
        )
        for a, b in itertools.combinations(names, 2)
    ]


def _class_agreement(pairs: list[PairStats], rated: list[list[str]]) -> tuple[list[CohenKappa], list[FleissKappa]]:
    """Cohen's kappa per annotator pair (shared tasks where both chose); Fleiss' kappa per rater
    count over `rated` (each task's choices, by task id)."""
    shared: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for pair in pairs:
        if pair.choice_a is not None and pair.choice_b is not None:
            shared[(pair.annotator_a, pair.annotator_b)].append((pair.choice_a, pair.choice_b))
    kappas = [
        CohenKappa(a, b, agreement.cohen_kappa([x for x, _ in v], [y for _, y in v]), len(v))
        for (a, b), v in sorted(shared.items(), key=lambda kv: (annotator_key(kv[0][0]), annotator_key(kv[0][1])))
    ]
    by_raters: dict[int, list[list[str]]] = defaultdict(list)
    for choices in rated:
        by_raters[len(choices)].append(choices)
    fleiss = []
    for raters, items in sorted(by_raters.items()):
        categories = sorted({c for item in items for c in item})
        table = [[item.count(c) for c in categories] for item in items]
        fleiss.append(FleissKappa(raters, agreement.fleiss_kappa(table), len(items)))
    return kappas, fleiss
