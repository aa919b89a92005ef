"""Reading a ``labeler export --format png`` folder as a tf.data pipeline for a segmentation
model (e.g. a U-Net). Imports nothing else of the project.

The export holds ``manifest.csv`` (one row per task, with its split), ``images/<task>.png``,
``masks/<task>.png`` (index masks: 0 background, i the i-th label of ``labels.json``).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import tensorflow as tf

SPLITS = ("train", "val", "test")


def export_labels(export_dir: str | Path) -> list[str]:
    """The labels of an export: index i + 1 in the masks is ``labels[i]``."""
    return list(json.loads((Path(export_dir) / "labels.json").read_text())["labels"])


def export_rows(export_dir: str | Path, split: str | None = "train") -> list[dict[str, str]]:
    """The manifest rows of one split (None: every row), in manifest order."""
    export_dir = Path(export_dir)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    manifest = export_dir / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: not found; is {export_dir} a `labeler export` folder?")
    with open(manifest, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if split is None or row["split"] == split]
    for row in rows:
        if not row["image_file"].endswith(".png") or not row["mask_file"].endswith(".png"):
            raise ValueError(f"{export_dir}: not a --format png export (mask file {row['mask_file']!r})")
    return rows


def segmentation_dataset(
    export_dir: str | Path,
    split: str | None = "train",
    size: tuple[int, int] = (256, 256),
    batch_size: int = 8,
    shuffle: bool = True,
    seed: int = 0,
    label: str | None = None,
) -> tf.data.Dataset:
    """Batches of (image, mask) from a png export.

    image: (B, H, W, 1) float32 in [0, 1] (RGB exports are converted to gray), resized
    bilinearly to `size` (height, width); mask: (B, H, W, 1) int32 index mask (0 background,
    i the i-th label of labels.json), resized nearest, or with `label` a float32 0/1 mask of
    that label alone. `shuffle` reshuffles the order every epoch from `seed`; the last batch
    may be smaller.
    """
    export_dir = Path(export_dir)
    rows = export_rows(export_dir, split)
    if not rows:
        raise ValueError(f"{export_dir}: split {split!r} has no tasks")
    height, width = (int(s) for s in size)
    label_index = None
    if label is not None:
        labels = export_labels(export_dir)
        if label not in labels:
            raise ValueError(f"label {label!r} is not in the export's labels {labels}")
        label_index = labels.index(label) + 1
    images = [str(export_dir / row["image_file"]) for row in rows]
    masks = [str(export_dir / row["mask_file"]) for row in rows]
    dataset = tf.data.Dataset.from_tensor_slices((images, masks))
    if shuffle:
        dataset = dataset.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)

    def load(image_path, mask_path):
        image = tf.io.decode_png(tf.io.read_file(image_path), channels=1)
        image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (height, width), method="bilinear")
        image = tf.clip_by_value(image, 0.0, 1.0)
        mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
        mask = tf.cast(tf.image.resize(mask, (height, width), method="nearest"), tf.int32)
        if label_index is not None:
            mask = tf.cast(tf.equal(mask, label_index), tf.float32)
        return image, mask

    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
