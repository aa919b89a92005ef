"""Image folders for training: one sub-folder per class (the reference article's layout)."""
from __future__ import annotations

import csv
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



def read_patients(csv_path: Path, data_dir: Path, paths: list[Path]) -> np.ndarray:
    """(N,) patient ids, one per path, from a CSV with columns ``file,patient``.

    ``file`` is the image's path relative to ``data_dir`` or its bare name (which must then name one
    image only). Images not listed are their own patient. Errors name the row, never its content.
    """
    by_relative = {p.relative_to(data_dir).as_posix(): i for i, p in enumerate(paths)}
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        by_name.setdefault(p.name, []).append(i)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = {(c or "").strip() for c in reader.fieldnames or ()}
            if not {"file", "patient"} <= columns:
                raise ValueError("--patients: the CSV needs a header with columns file,patient")
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    except FileNotFoundError:
        raise ValueError("--patients: no such file") from None
    except OSError as exc:
        raise ValueError(f"--patients: cannot read the file ({type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise ValueError("--patients: not UTF-8 text") from None
    except csv.Error as exc:
        raise ValueError(f"--patients: not a readable CSV ({exc})") from None
    patients = [f"\0image {i}" for i in range(len(paths))]  # unlisted: a patient of its own
    assigned: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        file = (row.get("file") or "").strip().replace("\\", "/").removeprefix("./")
        patient = (row.get("patient") or "").strip()
        if not file or not patient:
            raise ValueError(f"--patients line {line}: empty file or patient")
        if file in by_relative:
            index = by_relative[file]
        elif len(by_name.get(file, ())) == 1:
            index = by_name[file][0]
        elif file in by_name:
            raise ValueError(f"--patients line {line}: that name matches several images; give the path relative to DATA_DIR")
        else:
            raise ValueError(f"--patients line {line}: no image in DATA_DIR has that path or name")
        if assigned.get(index, patient) != patient:
            raise ValueError(f"--patients line {line}: the image is already listed with another patient")
        assigned[index] = patient
        patients[index] = patient
    return np.array(patients, dtype=str)
