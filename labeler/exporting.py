"""``labeler export``: the project's final human annotations as a segmentation training set.

Reads our database (filled by ``labeler sync`` / the backend's webhooks), never Label Studio's
annotations: for every live task with at least one current annotation (last revision not
deleted, not cancelled) it writes the image and one index mask, plus ``labels.json``,
``manifest.csv``, ``splits.json`` and ``export.json`` (what was asked). Formats:

- ``png``: ``images/<task>.png`` (8-bit gray when the three channels are equal, else RGB),
  ``masks/<task>.png`` (8-bit index mask: 0 background, i the i-th label of ``labels.json``,
  1-based); with predictions ``predictions/<task>.png`` in the same coding;
- ``coco``: ``images/<task>.png`` and ``annotations.json`` (COCO instances: one annotation per
  (image, label) with an uncompressed RLE segmentation, column-major counts starting with a run
  of 0s, ``iscrowd`` 0); with predictions ``predictions.json`` (COCO results list);
- ``npz``: ``data.npz`` with ``images`` (N, H, W, C) uint8 (C = 1 when every image is gray,
  else 3), ``masks`` (N, H, W) uint8 index masks, ``label_masks`` (N, H, W, L) bool (labels may
  overlap), ``task_ids`` (N,), ``splits`` (N,), ``labels`` (L,) (+ ``prediction_masks`` (N, H, W));
  rows in manifest order. Needs one image size: ``--size N``, or images that all have one size.

Where labels overlap, the index mask holds the later label of the sorted list. What an annotator
placed with the config's smart controls (interactive prompts) is no region and is left out. The
labels are fixed before any image is read (`export_labels`: the labelling config's plus any other
drawn in the annotations used), and the export streams: one task's image and masks are in memory at a
time, its files written before the next task is read (npz: its rows go to scratch files in OUT,
put together into data.npz at the end). `export_project` is the whole command.
"""
from __future__ import annotations

import csv
import json
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from db.engine import safe_url
from explain.images import load_image, to_uint8
from db.corrected import Annotation, CorrectedTasks, TaskRecord, chosen_annotations, corrected_tasks
from explain.labelstudio.configs import region_labels, smart_controls
from explain.labelstudio.results import label_masks, result_choices, result_labels
from models.splits import SPLIT_NAMES, split_of, stored_patient

FORMATS = ("png", "coco", "npz")
ANNOTATOR_MODES = ("latest", "majority")
MANIFEST_COLUMNS = (
    "task_id", "image_file", "mask_file", "width", "height", "original_width", "original_height",
    "choice", "annotators", "annotation_ids", "patient", "split", "prediction_file", "model_version",
)
MARKER = "export.json"


@dataclass(frozen=True)
class ExportSettings:
    """What ``labeler export`` was asked for.

    ``size`` 0 keeps each image's original size; N stretches every image and mask to N x N
    (image: area / linear interpolation, masks: nearest, per label). ``annotators``: "latest"
    (the most recently updated annotation) or "majority" (pixel-wise vote per label across
    annotators, a tie counts as on). ``split`` holds the train / val / test fractions.
    """

    format: str = "png"
    size: int = 0
    annotators: str = "latest"
    seed: int = 0
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    predictions: bool = False

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.annotators not in ANNOTATOR_MODES:
            raise ValueError(f"--annotators must be one of {', '.join(ANNOTATOR_MODES)}, got {self.annotators!r}")
        if self.size < 0:
            raise ValueError(f"--size must be 0 (original size) or a positive number of pixels, got {self.size}")


def parse_split(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> (train, val, test); two values leave test empty. Must sum to 1."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--split must be fractions like 0.7,0.15,0.15, got {text!r}") from None
    if not 1 <= len(values) <= 3 or any(not np.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"--split must be 1 to 3 non-negative fractions (train,val,test), got {text!r}")
    if abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"--split fractions must add up to 1, got {text!r} (sum {sum(values):g})")
    values += [0.0] * (3 - len(values))
    return tuple(values)  # type: ignore[return-value]


# --- masks --------------------------------------------------------------------------------------


def export_labels(tasks: Iterable[TaskRecord], config: str | None, settings: ExportSettings) -> list[str]:
    """The sorted labels of the export (index i + 1 in the masks): those of the labelling config
    ``config`` (the project's, as stored), and any other drawn in an annotation the export uses
    (or, with predictions, in a task's prediction); the config's smart controls count for neither.
    Known before any image is read, so that each task's files can be written as soon as it is done
    (a first pass over the tasks; one task's results in memory at a time)."""
    labels, smart = region_labels(config), smart_controls(config)
    for record in tasks:
        for annotation in chosen_annotations(record.annotations, settings.annotators):
            labels |= result_labels(annotation.result, smart)
        if settings.predictions:
            labels |= result_labels(record.prediction, smart)
    if len(labels) > 255:
        raise ValueError(f"{len(labels)} labels do not fit an 8-bit index mask (at most 255)")
    return sorted(labels)


def combine(
    annotations: list[Annotation], mode: str, height: int, width: int, fallback, smart: Collection[str] = ()
) -> tuple[dict[str, np.ndarray], str, list[Annotation]]:
    """(masks per label, class choice, annotations used) of a task's annotations; the results of
    the smart controls ``smart`` are no regions (`explain.labelstudio.results.drawn_results`).

    latest: the most recently updated annotation alone. majority: each annotator's latest
    annotation votes; a pixel is on for a label where at least half of them drew it; the choice
    is the most frequent one (a tie goes to the most recent annotation's choice).
    """
    used = chosen_annotations(annotations, mode)
    all_masks = [label_masks(a.result, height, width, fallback, smart) for a in used]
    if len(used) == 1:
        masks = all_masks[0]
    else:
        labels = sorted({label for m in all_masks for label in m})
        masks = {}
        for label in labels:
            votes = sum(m[label].astype(np.int32) for m in all_masks if label in m)
            masks[label] = 2 * votes >= len(used)
    choices = [(result_choices(a.result) or [""])[0] for a in used]
    counts = Counter(c for c in choices if c)
    if not counts:
        choice = ""
    else:
        best = max(counts.values())
        choice = next(c for c in reversed(choices) if counts.get(c) == best)
    return masks, choice, used


def index_mask(masks: dict[str, np.ndarray], labels: list[str], height: int, width: int) -> np.ndarray:
    """(H, W) uint8: 0 background, i + 1 for labels[i]; a later label wins where labels overlap."""
    out = np.zeros((height, width), np.uint8)
    for i, label in enumerate(labels):
        if label in masks:
            out[masks[label]] = i + 1
    return out


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    if not size or image.shape[:2] == (size, size):
        return image
    shrink = size < max(image.shape[:2])
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_masks(masks: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    if not size:
        return masks
    return {
        label: cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0
        for label, m in masks.items()
    }


def rle_encode(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: column-major run lengths, the first one a run of 0s (maybe 0)."""
    flat = np.asarray(mask, bool).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def rle_decode(rle: dict) -> np.ndarray:
    """The (H, W) bool mask of a COCO uncompressed RLE."""
    height, width = rle["size"]
    values = np.zeros(len(rle["counts"]), bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    if flat.size != height * width:
        raise ValueError(f"RLE counts add up to {flat.size}, not {height} x {width}")
    return flat.reshape((height, width), order="F")


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"{path}: could not write")


# --- one task -----------------------------------------------------------------------------------


@dataclass
class ManifestItem:
    """One exported task: a row of manifest.csv (files relative to OUT, "" when there is none)."""

    task_id: int
    width: int  # exported size, pixels
    height: int
    original_width: int  # the image's own size, pixels
    original_height: int
    choice: str
    annotators: str  # completed_by of the annotations used, ";"-separated
    annotation_ids: str
    patient: str
    split: str
    model_version: str = ""  # of the exported prediction
    image_file: str = ""
    mask_file: str = ""
    prediction_file: str = ""

    def row(self) -> dict[str, Any]:
        return {column: getattr(self, column) for column in MANIFEST_COLUMNS}


class ManifestItems:
    """The exported tasks' manifest rows, in export order, kept in a scratch file (JSON lines)
    rather than in memory; iterating reads them back one by one."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = open(path, "w")
        self.count = 0

    def append(self, item: ManifestItem) -> None:
        self.handle.write(json.dumps(item.__dict__) + "\n")
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        self.handle.flush()
        with open(self.path) as lines:
            for line in lines:
                yield ManifestItem(**json.loads(line))

    def close(self) -> None:
        self.handle.close()


@dataclass
class TaskArrays:
    """One task's pixels and masks at the export size: in memory only while its files are written."""

    pixels: np.ndarray  # (H, W) uint8 when gray, else (H, W, 3) RGB
    masks: dict[str, np.ndarray]  # label -> (H, W) bool
    index: np.ndarray  # (H, W) uint8 index mask (see `index_mask`)
    prediction: dict[str, np.ndarray] | None = None  # label -> (H, W) bool, when exported
    prediction_index: np.ndarray | None = None

    @property
    def gray(self) -> bool:
        return self.pixels.ndim == 2


def prepare_task(
    record: TaskRecord, image: np.ndarray, labels: list[str], settings: ExportSettings, patient: str,
    smart: Collection[str] = (),
) -> tuple[ManifestItem, TaskArrays]:
    """The manifest row and the arrays of one task whose image is `image` ((H, W[, C]), any dtype)
    and whose patient (see `models.splits.stored_patient`) is `patient`; ``smart``: the smart
    controls' names (`explain.labelstudio.configs.smart_controls`), whose results are no regions."""
    height, width = image.shape[:2]
    fallback = (record.width, record.height)
    masks, choice, used = combine(record.annotations, settings.annotators, height, width, fallback, smart)
    prediction = None
    if settings.predictions and record.prediction is not None:
        prediction = resize_masks(label_masks(record.prediction, height, width, fallback, smart), settings.size)
    pixels = to_uint8(resize_image(image, settings.size))
    gray = bool(np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]))
    pixels = pixels[..., 0] if gray else pixels
    h, w = pixels.shape[:2]
    masks = resize_masks(masks, settings.size)
    item = ManifestItem(
        task_id=record.ls_task_id,
        width=w,
        height=h,
        original_width=width,
        original_height=height,
        choice=choice,
        annotators=";".join("" if a.completed_by is None else str(a.completed_by) for a in used),
        annotation_ids=";".join(str(a.ls_annotation_id) for a in used),
        patient=patient,
        split=split_of(patient, settings.seed, settings.split),
        model_version=record.model_version if prediction is not None else "",
    )
    arrays = TaskArrays(
        pixels=pixels,
        masks=masks,
        index=index_mask(masks, labels, h, w),
        prediction=prediction,
        prediction_index=None if prediction is None else index_mask(prediction, labels, h, w),
    )
    return item, arrays


# --- the formats: each writes a task's files as soon as it is given them -------------------------


class PngWriter:
    """images/<task>.png, masks/<task>.png (+ predictions/<task>.png)."""

    def __init__(self, out: Path, scratch: Path, labels: list[str], settings: ExportSettings):
        self.out = out
        (out / "images").mkdir(exist_ok=True)
        (out / "masks").mkdir(exist_ok=True)

    def add(self, item: ManifestItem, arrays: TaskArrays) -> None:
        item.image_file = f"images/{item.task_id}.png"
        _write_png(self.out / item.image_file, arrays.pixels)
        item.mask_file = f"masks/{item.task_id}.png"
        _write_png(self.out / item.mask_file, arrays.index)
        if arrays.prediction_index is not None:
            (self.out / "predictions").mkdir(exist_ok=True)
            item.prediction_file = f"predictions/{item.task_id}.png"
            _write_png(self.out / item.prediction_file, arrays.prediction_index)

    def finish(self, items: ManifestItems) -> None:
        pass


class _JsonListFile:
    """The entries of a JSON list, written one by one to a scratch file as ``json.dumps`` would
    separate them; `copy_to` pours them into the final file."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = open(path, "w")
        self.count = 0

    def append(self, entry: dict) -> None:
        self.handle.write((", " if self.count else "") + json.dumps(entry))
        self.count += 1

    def copy_to(self, target) -> None:
        self.handle.close()
        target.write("[")
        with open(self.path) as source:
            shutil.copyfileobj(source, target)
        target.write("]")


class CocoWriter:
    """images/<task>.png and annotations.json (+ predictions.json): the RLE entries go to scratch
    files task by task, the JSON documents are put together at the end."""

    def __init__(self, out: Path, scratch: Path, labels: list[str], settings: ExportSettings):
        self.out, self.labels, self.settings = out, labels, settings
        (out / "images").mkdir(exist_ok=True)
        self.annotations = _JsonListFile(scratch / "annotations.part")
        self.predictions = _JsonListFile(scratch / "predictions.part")

    def _entries(self, task_id: int, masks: dict[str, np.ndarray]):
        for i, label in enumerate(self.labels):
            mask = masks.get(label)
            if mask is not None and mask.any():
                yield {
                    "image_id": task_id,
                    "category_id": i + 1,
                    "segmentation": rle_encode(mask),
                    "area": int(mask.sum()),
                    "bbox": _bbox(mask),
                }

    def add(self, item: ManifestItem, arrays: TaskArrays) -> None:
        item.image_file = f"images/{item.task_id}.png"
        _write_png(self.out / item.image_file, arrays.pixels)
        item.mask_file = "annotations.json"
        for entry in self._entries(item.task_id, arrays.masks):
            entry.update(id=self.annotations.count + 1, iscrowd=0)
            self.annotations.append(entry)
        if arrays.prediction is not None:
            item.prediction_file = "predictions.json"
            for entry in self._entries(item.task_id, arrays.prediction):
                entry["score"] = 1.0
                self.predictions.append(entry)

    def finish(self, items: ManifestItems) -> None:
        categories = [{"id": i + 1, "name": label, "supercategory": "region"} for i, label in enumerate(self.labels)]
        info = {"description": "labeler export", "date_created": _now()}
        # the same text as json.dumps of {"info", "licenses", "images", "annotations", "categories"}
        with open(self.out / "annotations.json", "w") as handle:
            handle.write(f'{{"info": {json.dumps(info)}, "licenses": [], "images": [')
            for n, i in enumerate(items):
                image = {"id": i.task_id, "file_name": i.image_file, "width": i.width, "height": i.height,
                         "split": i.split, "choice": i.choice}
                handle.write((", " if n else "") + json.dumps(image))
            handle.write('], "annotations": ')
            self.annotations.copy_to(handle)
            handle.write(f', "categories": {json.dumps(categories)}}}')
        if self.settings.predictions:
            with open(self.out / "predictions.json", "w") as handle:
                self.predictions.copy_to(handle)


class NpzWriter:
    """data.npz, written member by member (no array of every task in memory): each task's rows go
    to raw scratch files as it is done; at the end each member is an .npy header (the final
    shape) followed by those bytes, deflated into the zip as ``np.savez_compressed`` does."""

    def __init__(self, out: Path, scratch: Path, labels: list[str], settings: ExportSettings):
        self.out, self.scratch, self.labels, self.settings = out, scratch, labels, settings
        self.shape: tuple[int, int] | None = None
        self.first_task: int | None = None
        self.gray: list[bool] = []
        names = ["images", "masks", "label_masks"] + (["prediction_masks"] if settings.predictions else [])
        self.files = {name: open(scratch / f"{name}.raw", "wb") for name in names}

    def add(self, item: ManifestItem, arrays: TaskArrays) -> None:
        shape = arrays.pixels.shape[:2]
        if self.shape is None:
            self.shape, self.first_task = shape, item.task_id
        elif shape != self.shape:
            raise ValueError(
                f"--format npz stacks the images but they have more than one size (task {self.first_task}: "
                f"{self.shape[1]} x {self.shape[0]}, task {item.task_id}: {shape[1]} x {shape[0]}); pass --size N"
            )
        self.gray.append(arrays.gray)
        self.files["images"].write(np.ascontiguousarray(arrays.pixels).tobytes())
        self.files["masks"].write(arrays.index.tobytes())
        per_label = np.zeros((*shape, len(self.labels)), bool)
        for i, label in enumerate(self.labels):
            if label in arrays.masks:
                per_label[..., i] = arrays.masks[label]
        self.files["label_masks"].write(per_label.tobytes())
        if self.settings.predictions:
            empty = np.zeros(shape, np.uint8)
            self.files["prediction_masks"].write((arrays.prediction_index if arrays.prediction_index is not None else empty).tobytes())
        item.image_file = item.mask_file = "data.npz"
        if arrays.prediction is not None:
            item.prediction_file = "data.npz"

    def finish(self, items: ManifestItems) -> None:
        for handle in self.files.values():
            handle.close()
        n = len(items)
        h, w = self.shape or (self.settings.size, self.settings.size)
        all_gray = all(self.gray)
        with zipfile.ZipFile(self.out / "data.npz", "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            with self._member(archive, "images", np.uint8, (n, h, w, 1 if all_gray else 3)) as member:
                with open(self.scratch / "images.raw", "rb") as source:
                    for gray in self.gray:
                        if all_gray or not gray:
                            member.write(source.read(h * w * (1 if gray else 3)))
                        else:  # a gray image among RGB ones: its value in all three channels
                            pixels = np.frombuffer(source.read(h * w), np.uint8)
                            member.write(np.repeat(pixels, 3).tobytes())
            self._copy(archive, "masks", np.uint8, (n, h, w))
            self._copy(archive, "label_masks", np.bool_, (n, h, w, len(self.labels)))
            small = {
                "task_ids": np.fromiter((i.task_id for i in items), np.int64, n),
                "splits": np.fromiter((i.split for i in items), "<U5", n),
                "labels": np.array(self.labels, dtype=str) if self.labels else np.zeros(0, "<U1"),
            }
            for name, array in small.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
            if self.settings.predictions:
                self._copy(archive, "prediction_masks", np.uint8, (n, h, w))

    @staticmethod
    def _member(archive: zipfile.ZipFile, name: str, dtype, shape: tuple[int, ...]):
        member = archive.open(f"{name}.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(member, header)
        return member

    def _copy(self, archive: zipfile.ZipFile, name: str, dtype, shape: tuple[int, ...]) -> None:
        with self._member(archive, name, dtype, shape) as member, open(self.scratch / f"{name}.raw", "rb") as source:
            shutil.copyfileobj(source, member, 1 << 20)


WRITERS = {"png": PngWriter, "coco": CocoWriter, "npz": NpzWriter}


# --- the export ---------------------------------------------------------------------------------


@dataclass
class ExportReport:
    out: Path
    exported: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    own_patient: int = 0  # exported tasks without a patient key: each is its own patient
    connected: bool = False  # Label Studio was given: it was asked for the keys our database lacked
    backfilled: int = 0  # patient keys read from Label Studio (and stored) for rows that had none
    unasked: str = ""  # why Label Studio could not be asked for them, when it could not


@dataclass
class ExportHooks:
    """What the caller hears while the export runs (a progress bar, error lines)."""

    start: Callable[[int], None] = lambda total: None  # the number of tasks to go through
    advance: Callable[[], None] = lambda: None  # one task done (exported or skipped)
    skip: Callable[[int, str], None] = lambda task_id, message: None  # a task left out, and why


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty OUT unless `overwrite`; then only a previous export (with its
    export.json) is emptied, never an unrelated folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out}: folder is not empty; pass --overwrite to replace a previous export")
        if not (out / MARKER).is_file():
            raise ValueError(f"{out}: not empty and not a previous export (no {MARKER}); refusing to empty it")
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def export_dataset(
    tasks: Iterable[TaskRecord],
    labels: list[str],
    out: Path,
    settings: ExportSettings,
    fetch: Callable[[str, int], bytes],
    hooks: ExportHooks = ExportHooks(),
    project_id: int | None = None,
    patients: Mapping[int, str] = {},
    smart: Collection[str] = (),
) -> ExportReport:
    """Write the export of `tasks` into `out` (already prepared), one task at a time: a task's
    image and masks are in memory only until its files are written, its manifest row goes to a
    scratch file. `labels` from `export_labels`; ``smart`` the smart controls' names (see `prepare_task`).

    `fetch(uri, task_id)` returns image bytes. A task's patient is its stored ``patient_key``,
    else ``patients[task id]`` (keys read from Label Studio), else the task itself. A task whose
    image cannot be fetched or decoded is reported through ``hooks.skip`` and left out.
    """
    report = ExportReport(out, labels=list(labels))
    with tempfile.TemporaryDirectory(dir=out, prefix=".partial-") as scratch:
        writer = WRITERS[settings.format](out, Path(scratch), report.labels, settings)
        items = ManifestItems(Path(scratch) / "manifest.jsonl")
        for record in tasks:
            try:
                image = load_image(fetch(record.image_uri, record.ls_task_id), name="image")
            except Exception as exc:  # FetchError, ImageError: reported, the export goes on
                message = " ".join(str(exc).split()) or type(exc).__name__
                report.skipped.append((record.ls_task_id, message))
                hooks.skip(record.ls_task_id, message)
                hooks.advance()
                continue
            key = record.patient_key or patients.get(record.ls_task_id)
            item, arrays = prepare_task(record, image, report.labels, settings, stored_patient(key, record.ls_task_id), smart)
            del image
            writer.add(item, arrays)
            del arrays
            items.append(item)
            report.exported.append(record.ls_task_id)
            report.own_patient += not key
            hooks.advance()
        writer.finish(items)
        _write_common(out, items, settings, report, project_id)
        items.close()
    return report


def _write_common(out: Path, items: ManifestItems, settings: ExportSettings, report: ExportReport, project_id) -> None:
    (out / "labels.json").write_text(json.dumps({"background": 0, "labels": report.labels}, indent=1) + "\n")
    members: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    patients: dict[str, set[str]] = {name: set() for name in SPLIT_NAMES}
    with open(out / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, MANIFEST_COLUMNS)
        writer.writeheader()
        for item in items:
            writer.writerow(item.row())
            members[item.split].append(item.task_id)
            patients[item.split].add(item.patient)
    splits: dict[str, Any] = {
        "seed": settings.seed,
        "fractions": dict(zip(SPLIT_NAMES, settings.split)),
        "method": "sha256('<seed>:<patient>') -> [0, 1) against the cumulative fractions",
    }
    for name in SPLIT_NAMES:
        splits[name] = members[name]
        report.splits[name] = len(members[name])
    splits["patients"] = {name: len(patients[name]) for name in SPLIT_NAMES}
    (out / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    marker = {
        "project": project_id,
        "format": settings.format,
        "size": settings.size,
        "annotators": settings.annotators,
        "seed": settings.seed,
        "split": list(settings.split),
        "predictions": settings.predictions,
        "tasks": len(items),
        "skipped": [task_id for task_id, _ in report.skipped],
        "created_at": _now(),
    }
    (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def export_project(
    ws, out: Path, settings: ExportSettings, overwrite: bool = False, document_root: Path | None = None,
    hooks: ExportHooks = ExportHooks(),
) -> ExportReport:
    """``labeler export``: read the workspace project's tasks from our database, prepare `out` and
    write the export. Images come from `document_root` or Label Studio. The patient keys come from
    our database; with Label Studio set, the tasks whose rows have none are asked of it in a few
    filtered listings (`labeler.patients.backfill_patient_keys`, which also stores them), else
    each such task is its own patient."""
    from explain.labelstudio.fetch import FetchError, ImageFetcher
    from labeler.patients import backfill_patient_keys

    project_id = ws.require_project()
    tasks, config = read_workspace_tasks(ws, settings.predictions)
    if not len(tasks):
        raise ValueError(f"project {project_id} has no task with a current annotation in {safe_url(ws.database_url)}")
    labels = export_labels(tasks, config, settings)
    prepare_out(out, overwrite)
    connected = bool(ws.label_studio_url and ws.api_key)
    fetcher = ImageFetcher(ws.label_studio_url, ws.auth if connected else None, document_root=document_root)
    missing = tasks.missing_patient_keys()
    patients, unasked = {}, ""
    if connected and missing:
        try:
            patients = backfill_patient_keys(ws, missing)
        except Exception as exc:  # Label Studio unreachable or refusing: those tasks are their own patients
            unasked = f"Label Studio could not be asked for the patient keys of {len(missing)} older task(s) ({type(exc).__name__})"

    def fetch(uri: str, task_id: int) -> bytes:
        try:
            return fetcher.fetch(uri, task_id)
        except FetchError as exc:
            if exc.kind == "config" and document_root is not None:
                raise FetchError(exc.kind, f"image file not found under --document-root, and {exc}") from None
            raise

    hooks.start(len(tasks))
    report = export_dataset(tasks, labels, out, settings, fetch, hooks, project_id, patients, smart_controls(config))
    report.connected = connected
    report.backfilled, report.unasked = len(patients), unasked
    return report


# --- from the workspace -------------------------------------------------------------------------


@contextmanager
def _reading(ws):
    """A session of the workspace's database in one DEFERRED (non-blocking) read transaction."""
    with ws.sessions() as session:
        session.connection(execution_options={"sqlite_begin": "DEFERRED"})
        yield session


def read_workspace_tasks(ws, predictions: bool) -> tuple[CorrectedTasks, str | None]:
    """`corrected_tasks` of the workspace's project (and its stored labelling config): the ids
    read in one read transaction, the records later a chunk at a time, each chunk in a short read
    transaction of its own."""
    with _reading(ws) as session:
        return corrected_tasks(session, lambda: _reading(ws), ws.require_project(), predictions, ws.label_studio)
