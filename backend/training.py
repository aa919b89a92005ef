"""One training job: a U-Net on a project's corrected masks, scored against the project's current
pre-labeller on held-out masks, registered, and promoted only when it does better.

The data are what ``labeler export`` reads (``db.corrected``: every live task's latest current,
not cancelled annotation), split by patient exactly as the export splits them (the task's stored
``patient_key``, else the task is its own patient; ``models.splits``, seed 0, 70 / 15 / 15), so
one patient's images are never on both sides: the U-Net trains on train, keeps its best epoch on
val (or on 15 % of train when val is empty), and never sees test. Both models then pre-label the test
tasks through the backend's own pipeline (classifier, anatomy prior, region shape, labelling
plan: exactly what an annotator would get), and the answers are rasterised and compared with the
corrected masks. The candidate is promoted when its mean edit fraction (pixels to paint + pixels
to erase, over the true lesion's pixels) is lower than the incumbent's; a tie or a regression keeps
the incumbent, and the verdict says so.

Where the project answers clicks (TRAIN_CLICKS: "auto", when its labelling config has smart tools),
the job then trains a click model (``models.clicking``) on the same split, the union of the labels
as one lesion mask, and scores it against the project's current one (its promoted click model, else
CLICK_MODEL, else none) on the same test tasks as an annotator would feel it: the simulated
annotator (``models.clicking.click_curve``) clicks each lesion through the backend's own click
answer (``explain.clicks``, CLICK_METHOD or its default), and the mean Dice over the first
``CLICKS_SCORED`` clicks decides; it is promoted (role "clicks") only when higher.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backend.config import Settings
from backend.predictor import Pipeline, Predictor
from db import registry
from db.corrected import chosen_annotations, read_tasks
from db.schema import Project
from explain.clicks import NEEDS_CLICKER, Click, segment
from explain.images import to_uint8
from explain.labelstudio.configs import click_targets, plan_for, region_labels, smart_controls
from explain.labelstudio.fetch import ImageFetcher
from explain.labelstudio.results import drawn_results, label_masks, result_labels
from explain.service import PrelabelService
from models.agreement import dice, edit_fraction
from models.clicking import Clicker, click_curve, fit_clicker
from models.loading import load_model, load_segmenter, model_file_bytes, unpack_clicker, unpack_segmenter, weights_version
from models.segmentation import Segmenter, fit_unet
from models.splits import carve_validation, split_of, stored_patient

log = logging.getLogger(__name__)

SPLIT = (0.7, 0.15, 0.15)
SEED = 0
BATCH = 8  # images read and pre-labelled at a time: memory stays that of a few images
CLICKS_SCORED = 5  # a click model's score: the mean Dice after 1 .. this many simulated clicks


class Cancelled(Exception):
    """The job was taken from this worker (its heartbeat was too late); stop without storing."""


@dataclass(frozen=True)
class Example:
    """One corrected task: its Label Studio id, image URI, patient key, size from the database
    (None where unknown) and its latest annotation's results, without those of the config's smart
    controls (`explain.labelstudio.results.drawn_results`: prompts, not lesions)."""

    task_id: int
    uri: str
    patient: str
    size: tuple[int | None, int | None]
    results: list[dict]


@dataclass(frozen=True)
class Outcome:
    """What a job ends with: ``message`` (one line) and the registered segmenter's id, when one was
    trained; ``kind`` is "promoted", "kept" or "not_trained", and ``clicks`` the same for the click
    model (None: the job trains none) (the metrics count them)."""

    kind: str
    message: str
    segmenter_id: int | None = None
    clicks: str | None = None


def corrected_examples(session, project) -> tuple[list[Example], list[str]]:
    """The project's corrected tasks and the sorted region labels (the config's and any drawn;
    the config's smart controls count for neither)."""
    records, config = read_tasks(session, project.ls_project_id, label_studio=project.label_studio)
    examples, labels, smart = [], region_labels(config), smart_controls(config)
    for record in records:
        results = drawn_results(chosen_annotations(record.annotations, "latest")[0].result, smart)
        labels |= result_labels(results)
        examples.append(Example(
            record.ls_task_id, record.image_uri, stored_patient(record.patient_key, record.ls_task_id),
            (record.width, record.height), results,
        ))
    return examples, sorted(labels)


def split_examples(examples: list[Example]) -> dict[str, list[Example]]:
    """{"train", "val", "test"} -> examples, by patient (as ``labeler export`` splits)."""
    splits: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for example in examples:
        splits[split_of(example.patient, SEED, SPLIT)].append(example)
    return splits


def _tasks(examples: list[Example], data_key: str) -> list[dict]:
    return [{"id": e.task_id, "data": {data_key: e.uri}} for e in examples]


def _truth(example: Example, height: int, width: int, labels: list[str]) -> dict[str, np.ndarray]:
    masks = label_masks(example.results, height, width, example.size)
    return {label: masks.get(label, np.zeros((height, width), bool)) for label in labels}


class ProjectTrainer:
    """Runs jobs for one backend process: ``predictor`` builds the candidate's pipeline (the
    classifier, the prior, the shape step), ``current_pipeline(ls_project_id, label_studio)`` is
    the project's pre-labeller now, ``fetcher_for(project)`` an image fetcher for the project's
    Label Studio, ``sessions`` the database; ``current_clicker(ls_project_id, label_studio)`` the
    click model that answers the project's clicks now (``models.clicking.Clicker``, or None)."""

    def __init__(
        self, settings: Settings, predictor: Predictor, sessions, fetcher_for: Callable[[object], ImageFetcher],
        current_pipeline: Callable[[int, str], Pipeline], current_clicker: Callable[[int, str], Clicker | None],
    ):
        self.settings = settings
        self.predictor = predictor
        self.sessions = sessions
        self.fetcher_for = fetcher_for
        self.current_pipeline = current_pipeline
        self.current_clicker = current_clicker

    def run(self, project_row_id: int, job_id: int | None, progress: Callable[[str], None]) -> Outcome:
        """Train, score and maybe promote for the project with database id ``project_row_id``;
        ``progress(text)`` is told what happens and raises Cancelled when the job was lost."""
        settings = self.settings
        with self.sessions() as session:
            project = session.get(Project, project_row_id)
            examples, labels = corrected_examples(session, project)
            config, ls_project_id, label_studio = project.label_config, project.ls_project_id, project.label_studio
            incumbent = registry.current_segmenter(session, project)
            current_name = f"segmenter #{incumbent.id}" if incumbent else settings.source_for(ls_project_id)
        if not config:
            raise ValueError("no labelling config is stored for this project: connect the backend to it first")
        if len(examples) < settings.train_min_tasks:
            return Outcome("not_trained", f"not trained: {len(examples)} corrected task(s), TRAIN_MIN_TASKS is {settings.train_min_tasks}")
        splits = split_examples(examples)
        if not splits["test"] or not splits["train"]:
            return Outcome("not_trained", f"not trained: no held-out patients yet ({len(splits['train'])} train, {len(splits['test'])} test tasks)")
        if not labels:
            return Outcome("not_trained", "not trained: the labelling config has no region labels and none are drawn")
        fetcher = self.fetcher_for(project)
        current = self.current_pipeline(ls_project_id, label_studio)
        plan = plan_for(config, current.class_names, settings.label_map)

        progress(f"reading {len(splits['train']) + len(splits['val'])} images")
        train = self._arrays(splits["train"], labels, plan, fetcher, current)
        val = self._arrays(splits["val"], labels, plan, fetcher, current) if splits["val"] else None
        model, spec, report = self._fit(train, val, labels, progress)

        weights = model_file_bytes(model)
        weights_id = weights_version(model)
        path = unpack_segmenter(weights, spec.to_json(), weights_id, settings.model_cache_dir)
        candidate = self.predictor.build("segmenter", Segmenter(load_segmenter(path), settings.batch_size))
        progress(f"scoring on {len(splits['test'])} held-out tasks")
        scores = self._score(splits["test"], labels, config, fetcher, {"candidate": candidate, "incumbent": current})
        new, old = scores["candidate"], scores["incumbent"]
        if not new["n"]:
            raise ValueError("no held-out image could be read")
        better = new["edit"] < old["edit"] - 1e-9
        verdict = (
            f"{'promoted' if better else 'kept ' + current_name}: edit fraction {new['edit']:.3f} "
            f"{'<' if better else 'is not below'} {old['edit']:.3f} of {current_name} on {new['n']} held-out task(s) "
            f"(Dice {_text(new['dice'])} vs {_text(old['dice'])})"
        )
        training = {"size": settings.train_size, "epochs": settings.train_epochs, "best_epoch": report.best_epoch,
                    "val_dice": report.val_dice, "labels": labels}
        segmenter_id = self._register(project_row_id, job_id, splits, (weights, weights_id, spec), training,
                                      {**scores, "incumbent_name": current_name}, verdict, better)
        outcome = Outcome("promoted" if better else "kept", f"model #{segmenter_id} {verdict}", segmenter_id)
        if not self._trains_clicks(config):
            return outcome
        clicks, message = self._clicker_round(project_row_id, job_id, config, plan, splits, labels, train, val, fetcher, current, progress)
        return dataclasses.replace(outcome, message=f"{outcome.message}; {message}", clicks=clicks)

    def _trains_clicks(self, config: str) -> bool:
        """TRAIN_CLICKS: 1, or auto and the labelling config has smart tools (its annotators click);
        never when CLICK_METHOD names a method that uses no click model."""
        settings = self.settings
        if settings.click_method is not None and settings.click_method not in NEEDS_CLICKER:
            return False
        return settings.train_clicks == "1" or (settings.train_clicks == "auto" and bool(smart_controls(config)))

    def _clicker_round(self, project_row_id, job_id, config, plan, splits, labels, train, val, fetcher, current, progress) -> tuple[str, str]:
        """Train a click model on the job's arrays, score it and the project's current one on the test
        tasks (``_click_scores``), register it and promote it (role "clicks") when its score is higher;
        returns ("promoted" | "kept" | "not_trained", one line saying what happened)."""
        settings = self.settings
        try:
            wanted = click_targets(config, plan).wanted(None)
        except ValueError as exc:
            return "not_trained", f"click model not trained: {exc}"
        if not any(result_labels(e.results) for e in splits["test"]):
            return "not_trained", "click model not trained: no held-out task has a lesion yet"
        with self.sessions() as session:
            project = session.get(Project, project_row_id)
            row = registry.current_segmenter(session, project, "clicks")
            incumbent_name = f"click model #{row.id}" if row is not None else None
            ls_project_id, label_studio = project.ls_project_id, project.label_studio
        incumbent = self.current_clicker(ls_project_id, label_studio)
        incumbent_name = incumbent_name or ("CLICK_MODEL" if incumbent is not None else "no click model")

        images, masks, val_images, val_masks = _with_validation(train, val)
        epochs = math.ceil(settings.train_click_steps / math.ceil(len(images) / 8))
        progress(f"training a click model on {len(images)} images ({epochs} epochs), validating on {len(val_images)}")
        union = lambda m: m.max(axis=-1, keepdims=True)  # noqa: E731
        model, spec, report = fit_clicker(
            images, union(masks), val_images if len(val_images) else None, union(val_masks) if len(val_images) else None,
            size=settings.train_size, epochs=epochs, seed=SEED, verbose=0,
        )
        weights, weights_id = model_file_bytes(model), weights_version(model)
        path = unpack_clicker(weights, spec.to_json(), weights_id, settings.model_cache_dir)
        candidate = Clicker(load_model(path, kind="clicker"))
        progress(f"scoring the click model on {len(splits['test'])} held-out tasks")
        scores = self._click_scores(splits["test"], labels, plan, wanted, fetcher, current, {"candidate": candidate, "incumbent": incumbent})
        new, old = scores["candidate"], scores["incumbent"]
        if not new["n"]:
            raise ValueError("no held-out image with a lesion could be read")
        better = new["dice"] > old["dice"] + 1e-9
        verdict = (
            f"{'promoted' if better else 'kept ' + incumbent_name} for clicks: mean Dice over {CLICKS_SCORED} simulated clicks "
            f"{new['dice']:.3f} {'>' if better else 'is not above'} {old['dice']:.3f} of {incumbent_name} on {new['n']} "
            f"held-out lesion(s) (after {CLICKS_SCORED} clicks {new['last']:.3f} vs {old['last']:.3f})"
        )
        training = {"size": settings.train_size, "steps": settings.train_click_steps, "epochs": epochs,
                    "best_epoch": report.best_epoch, "val_dice": report.val_dice, "labels": labels}
        row_id = self._register(project_row_id, job_id, splits, (weights, weights_id, spec), training,
                                {**scores, "incumbent_name": incumbent_name, "clicks": CLICKS_SCORED}, verdict, better)
        return "promoted" if better else "kept", f"click model #{row_id} {verdict}"

    def _register(self, project_row_id, job_id, splits, model, training: dict, metrics: dict, verdict: str, better: bool) -> int:
        """Store a trained model ((.keras bytes, weights id, spec)) with its settings, the task ids
        of each split, its scores and verdict; promote it (for its own role) when ``better``. Its id."""
        weights, weights_id, spec = model
        data = {name: [e.task_id for e in part] for name, part in splits.items()}
        with self.sessions.begin() as session:
            project = session.get(Project, project_row_id)
            row = registry.add_segmenter(
                session, project, weights, weights_id, json.loads(spec.to_json()),
                {**training, "split": list(SPLIT), "seed": SEED}, data, metrics, verdict, job_id=job_id,
            )
            if better:
                registry.promote(session, project, row.id, "trained", note=verdict)
            return row.id

    def _arrays(self, examples, labels, plan, fetcher, pipeline: Pipeline) -> tuple[np.ndarray, np.ndarray]:
        """(N, size, size, 3) uint8 images and (N, size, size, labels) 0/1 masks; a task whose image
        cannot be read is left out (its failure is logged without the path)."""
        import cv2

        size = self.settings.train_size
        images, masks = [], []
        service = PrelabelService(pipeline.prelabeler, pipeline.loaded.version, plan, fetcher)
        for start in range(0, len(examples), BATCH):
            part = examples[start:start + BATCH]
            for example, outcome in zip(part, service.read(_tasks(part, plan.data_key))):
                if outcome.failure:
                    log.warning("training: %s left out (%s)", f"task {example.task_id}", outcome.failure[0])
                    continue
                image = to_uint8(outcome.image)
                height, width = image.shape[:2]
                truth = _truth(example, height, width, labels)
                images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
                masks.append(np.stack(
                    [cv2.resize(truth[label].astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) for label in labels],
                    axis=-1,
                ))
        if not images:
            raise ValueError("no training image could be read")
        return np.stack(images), np.stack(masks)

    def _fit(self, train, val, labels, progress):
        import keras

        epochs = self.settings.train_epochs
        images, masks, *val = _with_validation(train, val)

        class Report(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                progress(f"epoch {epoch + 1}/{epochs}, val loss {float((logs or {}).get('val_loss', float('nan'))):.3f}")

        progress(f"training on {len(images)} images, validating on {len(val[0])}")
        return fit_unet(
            labels, images, masks, val[0] if len(val[0]) else None, val[1] if len(val[0]) else None,
            size=self.settings.train_size, epochs=epochs, seed=SEED, verbose=0, callbacks=[Report()],
        )

    def _click_scores(self, examples, labels, plan, wanted, fetcher, pipeline: Pipeline, clickers: dict) -> dict[str, dict]:
        """Per click model (None: none): ``dice``, the mean over the held-out tasks with a lesion of
        the mean Dice after 1 .. CLICKS_SCORED clicks of the simulated annotator on the union of the
        labels, each click answered as the backend answers it (``pipeline``'s evidence for the
        ``wanted`` classes, the method of CLICK_METHOD or its default); ``last``, the mean Dice
        after the last; ``n`` tasks."""
        curves: dict[str, list[list[float]]] = {name: [] for name in clickers}
        service = PrelabelService(pipeline.prelabeler, pipeline.loaded.version, plan, fetcher)
        for start in range(0, len(examples), BATCH):
            part = [e for e in examples[start:start + BATCH] if result_labels(e.results)]
            for example, outcome in zip(part, service.read(_tasks(part, plan.data_key))):
                if outcome.failure:
                    continue
                image = np.asarray(outcome.image, np.float32)
                truth = np.logical_or.reduce(list(_truth(example, *image.shape[:2], labels).values()))
                if not truth.any():
                    continue
                output = pipeline.prelabeler.explain([outcome.image])[0]
                _, evidence = pipeline.prelabeler.click_evidence(image, output, wanted)
                for name, clicker in clickers.items():
                    bound = dataclasses.replace(evidence, clicker=clicker.on(evidence.gray) if clicker is not None else None)
                    method = self.settings.method_for_clicks(clicker is not None)
                    answer = lambda points: segment(bound, [Click.at_pixel(*p) for p in points], method=method)  # noqa: E731
                    curves[name].append(click_curve(answer, truth, CLICKS_SCORED))
        return {
            name: {"dice": _mean([float(np.mean(c)) for c in found]), "last": _mean([c[-1] for c in found]), "n": len(found)}
            for name, found in curves.items()
        }

    def _score(self, examples, labels, config, fetcher, pipelines: dict[str, Pipeline]) -> dict[str, dict]:
        """Per pipeline: mean edit fraction over the tasks, mean Dice over tasks with a lesion, and
        the mean predicted area on tasks without one (fraction of the image); ``n`` tasks scored."""
        per = {name: {"edit": [], "dice": [], "fp": []} for name in pipelines}
        services = {
            name: PrelabelService(p.prelabeler, p.loaded.version, plan_for(config, p.class_names, self.settings.label_map), fetcher)
            for name, p in pipelines.items()
        }
        for start in range(0, len(examples), BATCH):
            part = examples[start:start + BATCH]
            first = next(iter(services.values()))
            read = first.read(_tasks(part, first.plan.data_key))
            images = {o.task_id: o.image for o in read}
            for name, service in services.items():
                for o in read:
                    o.image = images[o.task_id]
                outcomes = service.label([o for o in read])
                for example, outcome in zip(part, outcomes):
                    if outcome.failure:
                        continue
                    height, width = outcome.prelabel.height, outcome.prelabel.width
                    truth = _truth(example, height, width, labels)
                    drawn = label_masks(outcome.answer["result"], height, width, (width, height))
                    predicted = {label: drawn.get(label, np.zeros((height, width), bool)) for label in labels}
                    _add_scores(per[name], truth, predicted, height * width)
        return {
            name: {
                "edit": _mean(values["edit"]), "dice": _mean(values["dice"]), "fp": _mean(values["fp"]),
                "n": len(values["edit"]),
            }
            for name, values in per.items()
        }


def _with_validation(train, val) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images, masks, val images, val masks): the val split's arrays, or as train-segmenter does
    when it is empty, 15 % of train (seeded) carved out of it."""
    images, masks = train
    if val is not None and len(val[0]):
        return images, masks, *val
    fit, held = carve_validation(len(images), 0.15, SEED)
    return images[fit], masks[fit], images[held], masks[held]


def _add_scores(into: dict, truth: dict, predicted: dict, pixels: int) -> None:
    shown = [label for label in truth if truth[label].any() or predicted[label].any()]
    into["edit"].append(float(np.mean([edit_fraction(predicted[l], truth[l]) for l in shown])) if shown else 0.0)
    lesions = [label for label in truth if truth[label].any()]
    if lesions:
        into["dice"].append(float(np.mean([dice(predicted[l], truth[l]) for l in lesions])))
    else:
        into["fp"].append(float(np.logical_or.reduce(list(predicted.values())).sum()) / pixels)


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
