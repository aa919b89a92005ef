"""Image folders for training: one sub-folder per class (the reference article's layout)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from rich.progress import Progress

from explain.images import ImageError, load_image, to_uint8

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


def scan_class_folders(data_dir: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Image paths, their class indices and the class names (sorted sub-folder names)."""
    if not data_dir.is_dir():
        raise ValueError(f"{data_dir}: not a folder")
    classes = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (data_dir / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        paths += files
        labels += [index] * len(files)
    found = {name: labels.count(i) for i, name in enumerate(classes)}
    if len([n for n in found.values() if n]) < 2:
        raise ValueError(f"{data_dir}: need at least two class folders with images, found {found or 'none'}")
    return paths, np.array(labels, dtype=np.int32), tuple(classes)


def load_resized(paths: list[Path], size: tuple[int, int]) -> tuple[np.ndarray, list[int], list[str]]:
    """Images resized to ``size`` (height, width) as (N, h, w, 3) uint8 RGB, with a progress bar.

    Unreadable files are skipped; returns the images, the indices of the paths that loaded and
    one error line per skipped file.
    """
    height, width = size
    images, kept, errors = [], [], []
    with Progress(transient=True) as progress:
        task = progress.add_task("loading images", total=len(paths))
        for i, path in enumerate(paths):
            try:
                image = load_image(path)
            except ImageError as exc:
                errors.append(str(exc))
            else:
                images.append(to_uint8(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)))
                kept.append(i)
            progress.advance(task)
    stacked = np.stack(images) if images else np.zeros((0, height, width, 3), np.uint8)
    return stacked, kept, errors
