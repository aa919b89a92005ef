"""``labeler train-segmenter`` and ``labeler evaluate-segmenter``: a U-Net trained on the corrected
masks of a ``labeler export --format png`` folder (or on a folder of image / mask pairs, e.g.
public lung masks for the anatomy prior's ROI model), and scored on one of its splits against the
corrected masks and, where the export has them, the pre-labels they were corrected from.

The pre-label masks are made exactly as the backend makes them (``explain.regions``: threshold,
hole filling, small regions dropped), so the scores are those an annotator would start from.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from explain.images import load_image, to_uint8
from explain.regions import resize_heatmap
from explain.regions import RegionSettings, Threshold, extract_regions
from models.agreement import dice, edit_fraction, iou
from models.datasets import export_labels, export_rows
from models.splits import carve_validation


@dataclass
class ExportSplit:
    """One split of a png export at the export's image size.

    images: each (H, W, 3) float32 RGB in [0, 1]; masks: each (H, W, L) bool, one channel per
    label of ``labels``; predictions: the exported pre-labels in the same layout, or None per task
    without one.
    """

    rows: list[dict]
    labels: list[str]
    images: list[np.ndarray]
    masks: list[np.ndarray]
    predictions: list[np.ndarray | None]


def read_split(export_dir: Path, split: str | None) -> ExportSplit:
    """The tasks of ``split`` (None: all) of a ``labeler export --format png`` folder."""
    export_dir = Path(export_dir)
    rows = export_rows(export_dir, split)
    labels = export_labels(export_dir)
    images, masks, predictions = [], [], []
    for row in rows:
        images.append(load_image(export_dir / row["image_file"]))
        masks.append(_label_masks(export_dir / row["mask_file"], len(labels)))
        prediction = row.get("prediction_file")
        predictions.append(_label_masks(export_dir / prediction, len(labels)) if prediction else None)
    return ExportSplit(rows, labels, images, masks, predictions)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_export(folder: Path) -> bool:
    """A ``labeler export`` folder has a manifest."""
    return (Path(folder) / "manifest.csv").is_file()


def read_pairs(folder: Path, label: str, size: int) -> ExportSplit:
    """A folder of image / mask pairs, ``images/<name>.png|jpg`` and ``masks/<name>.png`` (0/255 or
    0/1, same stem), as one split of one label, each pair resized to (size, size) as it is read (a
    public set's full-size images would not fit in memory). Masks without an image are ignored."""
    folder = Path(folder)
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise ValueError(
            f"{folder}: neither a `labeler export --format png` folder (manifest.csv) nor a folder of "
            "image / mask pairs (images/ and masks/)"
        )
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"{folder}: images/ holds no .png or .jpg image")
    unmatched = [p.name for p in paths if not (masks_dir / f"{p.stem}.png").is_file()]
    if unmatched:
        raise ValueError(f"{folder}: {len(unmatched)} image(s) have no mask in masks/ (same name, .png), e.g. {unmatched[0]}")
    split = ExportSplit([], [label], [], [], [])
    for path in paths:
        image = load_image(path)
        mask = cv2.imread(str(masks_dir / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE)
        if mask is None or mask.shape != image.shape[:2]:
            raise ValueError(f"masks/{path.stem}.png: not a readable mask of its image's size {image.shape[1]}x{image.shape[0]}")
        split.rows.append({"task_id": path.stem, "image_file": f"images/{path.name}"})
        split.images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))
        split.masks.append(cv2.resize(np.uint8(mask > 0), (size, size), interpolation=cv2.INTER_NEAREST)[..., None] > 0)
        split.predictions.append(None)
    return split


def _label_masks(path: Path, count: int) -> np.ndarray:
    """An index mask PNG (0 background, i the i-th label) -> (H, W, count) bool."""
    index = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if index is None or index.ndim != 2:
        raise ValueError(f"{path.name}: not a single-channel index mask PNG")
    return np.stack([index == i + 1 for i in range(count)], axis=-1)


def resized_pairs(split: ExportSplit, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(N, h, w, 3) uint8 images (area interpolation) and (N, h, w, L) uint8 0/1 masks (nearest)
    at ``size`` (height, width): what ``models.segmentation.train_segmenter`` takes."""
    height, width = size
    images = np.stack([to_uint8(cv2.resize(im, (width, height), interpolation=cv2.INTER_AREA)) for im in split.images])
    masks = np.stack([
        np.stack([cv2.resize(m[..., i].view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
                  for i in range(m.shape[-1])], axis=-1)
        for m in split.masks
    ])
    return images, masks


@dataclass(frozen=True)
class LabelScores:
    """Scores of one label over a split. Dice / IoU are means over the tasks whose corrected mask
    has the label (an empty prediction scores 0); fp is the mean fraction of pixels predicted on
    tasks without it, fp_any the share of those with any pixel predicted; edit is the mean edit
    fraction (`models.agreement.edit_fraction`) over every task, with or without the label."""

    label: str
    tasks: int
    dice: float | None
    iou: float | None
    fp: float | None
    fp_any: float | None
    prelabel_dice: float | None
    prelabel_iou: float | None
    edit: float | None = None
    prelabel_edit: float | None = None


def predicted_masks(maps: np.ndarray, size: tuple[int, int], regions: RegionSettings) -> np.ndarray:
    """(h, w, L) probabilities -> (H, W, L) bool pre-label masks at ``size`` (height, width): the
    union of the regions the backend would send for each label."""
    height, width = size
    out = np.zeros((height, width, maps.shape[-1]), bool)
    for i in range(maps.shape[-1]):
        for region in extract_regions(resize_heatmap(maps[..., i], width, height), regions):
            out[..., i] |= region.mask
    return out


def score_labels(labels, truths, predictions, prelabels=None) -> tuple[list[LabelScores], list[dict]]:
    """Per-label summaries and per-(task, label) rows for masks (each (H, W, L) bool) in task order.
    ``prelabels``: the exported pre-label masks in the same layout (None entries are skipped)."""
    prelabels = prelabels if prelabels is not None else [None] * len(truths)
    rows = []
    for n, (truth, predicted, prelabel) in enumerate(zip(truths, predictions, prelabels)):
        for i, label in enumerate(labels):
            present = bool(truth[..., i].any())
            row = {"task": n, "label": label, "present": present, "predicted_fraction": float(predicted[..., i].mean()),
                   "edit_fraction": edit_fraction(predicted[..., i], truth[..., i])}
            if prelabel is not None:
                row["prelabel_edit_fraction"] = edit_fraction(prelabel[..., i], truth[..., i])
            if present:
                row["dice"], row["iou"] = _overlap(truth[..., i], predicted[..., i])
                if prelabel is not None:
                    row["prelabel_dice"], row["prelabel_iou"] = _overlap(truth[..., i], prelabel[..., i])
            rows.append(row)
    summaries = []
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        present = [r for r in mine if r["present"]]
        absent = [r for r in mine if not r["present"]]
        with_prelabel = [r for r in present if "prelabel_dice" in r]
        summaries.append(LabelScores(
            label=label, tasks=len(present),
            dice=_mean(r["dice"] for r in present), iou=_mean(r["iou"] for r in present),
            fp=_mean(r["predicted_fraction"] for r in absent),
            fp_any=_mean(float(r["predicted_fraction"] > 0) for r in absent),
            prelabel_dice=_mean(r["prelabel_dice"] for r in with_prelabel),
            prelabel_iou=_mean(r["prelabel_iou"] for r in with_prelabel),
            edit=_mean(r["edit_fraction"] for r in mine),
            prelabel_edit=_mean(r["prelabel_edit_fraction"] for r in mine if "prelabel_edit_fraction" in r),
        ))
    return summaries, rows


def _overlap(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of one present label; an empty prediction scores 0 (never the both-empty 1)."""
    if not predicted.any():
        return 0.0, 0.0
    return dice(truth, predicted), iou(truth, predicted)


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def evaluate_segmenter(model_path: Path, export_dir: Path, split: str, threshold: str = "value:0.5",
                       min_area: float = 0.001, batch_size: int = 16):
    """Score a segmenter on one split of a png export: (per-label summaries, per-task rows)."""
    from models.loading import load_segmenter
    from models.segmentation import Segmenter

    segmenter = Segmenter(load_segmenter(model_path), batch_size)
    data = read_split(export_dir, split)
    if not data.rows:
        raise ValueError(f"{export_dir}: split {split!r} has no tasks")
    missing = [label for label in segmenter.labels if label not in data.labels]
    if missing:
        raise ValueError(f"the segmenter's labels {missing} are not in the export's labels {data.labels}")
    regions = RegionSettings(Threshold.parse(threshold), min_area=min_area)
    channels = [data.labels.index(label) for label in segmenter.labels]
    predictions = []
    for start in range(0, len(data.images), batch_size):
        images = data.images[start : start + batch_size]
        for image, maps in zip(images, segmenter(images)):
            predictions.append(predicted_masks(maps, image.shape[:2], regions))
    truths = [m[..., channels] for m in data.masks]
    prelabels = [p[..., channels] if p is not None else None for p in data.predictions]
    summaries, rows = score_labels(segmenter.labels, truths, predictions, prelabels)
    for row in rows:
        row["task_id"] = data.rows[row.pop("task")]["task_id"]
    return summaries, rows


def write_rows(rows: list[dict], path: Path):
    """Per-(task, label) scores as CSV."""
    columns = ["task_id", "label", "present", "predicted_fraction", "dice", "iou", "edit_fraction",
               "prelabel_dice", "prelabel_iou", "prelabel_edit_fraction"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


@dataclass(frozen=True)
class SegmenterTraining:
    """What ``train_on_export`` did: the report, the saved weights' id and the task counts."""

    report: object
    version: str
    train_tasks: int
    val_tasks: int
    labels: list[str]


def train_on_export(
    export_dir: Path, out: Path, *, size: int = 128, epochs: int = 30, batch_size: int = 8,
    learning_rate: float = 1e-3, filters: tuple[int, ...] = (16, 32, 64, 128), seed: int = 0,
    augment: bool = True, val_fraction: float | None = None, max_tasks: int | None = None, verbose: int = 2,
    label: str = "Lungs", clicks: bool = False,
) -> SegmenterTraining:
    """Train a U-Net on the export's train split and save it (with its spec) to ``out``; with
    ``clicks``, a clicker (``models.clicking``) on the union of the export's labels, which answers
    an annotator's clicks.

    Validation uses the export's val split, or, when it is empty, ``val_fraction`` (default 0.15)
    of the train tasks; the test split is never read. ``max_tasks`` trains on a seeded subset of
    that many train tasks (for learning curves). A folder of image / mask pairs (``read_pairs``)
    is read as one train split of the one label ``label``, of which ``val_fraction`` (default 0.2)
    of the images, seeded, validate.
    """
    from models.loading import save_model, weights_version
    from models.segmentation import fit_unet

    if out.suffix not in (".keras", ".h5"):
        raise ValueError(f"--out must end in .keras or .h5, got {out.name!r}")
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction!r}")
    export = is_export(export_dir)
    if export:
        train = read_split(export_dir, "train")
    else:
        train = read_pairs(export_dir, label, size)
    if not train.rows:
        raise ValueError(f"{export_dir}: the train split has no tasks")
    images, masks = resized_pairs(train, (size, size))
    if max_tasks is not None:
        if max_tasks < 1:
            raise ValueError(f"--max-tasks must be at least 1, got {max_tasks}")
        keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:max_tasks])
        images, masks = images[keep], masks[keep]
    val = read_split(export_dir, "val") if export else None
    if val is not None and val.rows:
        val_images, val_masks = resized_pairs(val, (size, size))
    elif val_fraction == 0:
        val_images, val_masks = images[:0], masks[:0]
    else:
        default = 0.15 if export else 0.2
        fit, held = carve_validation(len(images), default if val_fraction is None else val_fraction, seed)
        images, masks, val_images, val_masks = images[fit], masks[fit], images[held], masks[held]
    options = dict(size=size, filters=filters, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                   seed=seed, augment=augment, verbose=verbose)
    if clicks:
        from models.clicking import fit_clicker

        labels = [train.labels[0] if len(train.labels) == 1 else "lesion"]
        union = lambda m: m.max(axis=-1, keepdims=True)  # noqa: E731
        model, spec, report = fit_clicker(images, union(masks), val_images, union(val_masks), label=labels[0], **options)
    else:
        labels = list(train.labels)
        model, spec, report = fit_unet(labels, images, masks, val_images, val_masks, **options)
    save_model(model, spec, out)
    return SegmenterTraining(report, weights_version(model), len(images), len(val_images), labels)
