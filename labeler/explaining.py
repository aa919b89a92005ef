"""``labeler explain``: pictures, masks and Label Studio pre-labels for image files."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from explain.images import ImageError, load_image
from explain.labelstudio.results import Controls, prelabel_results
from explain.overlay import colorize, overlay, panel
from explain.anatomy import PriorSettings
from explain.prelabel import Prelabel, PrelabelSettings
from explain.regions import resize_heatmap
from labeler.pipelines import build_prelabeler


@dataclass(frozen=True)
class Outcome:
    """One input file: its pre-label, or the one-line reason it failed."""

    path: Path
    prelabel: Prelabel | None = None
    error: str | None = None


def explain_files(
    paths: list[Path],
    model_path: Path,
    out: Path,
    settings: PrelabelSettings,
    colormap: str = "jet",
    batch_size: int = 16,
    controls: Controls = Controls(),
    roi_model_path: Path | None = None,
    prior: PriorSettings = PriorSettings(),
) -> list[Outcome]:
    """Pre-label ``paths`` in batches and write, per image and targeted class, into ``out``:
    ``<stem>.<class>.panel.png`` (original | heatmap | overlay), ``.heatmap.png``, ``.overlay.png``,
    ``.mask.png`` (0/255, original size), and ``<stem>.json``: a Label Studio task with the
    pre-labels as its prediction. A file that cannot be read fails alone. With ``roi_model_path``
    (a lung segmenter) the regions are confined to its lungs.
    """
    loaded, prelabeler = build_prelabeler(model_path, settings, batch_size, roi_model_path=roi_model_path, prior=prior)
    version = prelabeler.version(loaded.version)
    out.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        images, readable = [], []
        for path in batch:
            try:
                images.append(load_image(path))
                readable.append(path)
            except ImageError as exc:
                outcomes.append(Outcome(path, error=str(exc)))
        for path, image, prelabel in zip(readable, images, prelabeler(images)):
            write_outputs(out, path, image, prelabel, colormap, version, controls)
            outcomes.append(Outcome(path, prelabel))
    order = {path: i for i, path in enumerate(paths)}
    return sorted(outcomes, key=lambda o: order[o.path])


def write_outputs(out: Path, path: Path, image: np.ndarray, prelabel: Prelabel, colormap: str, version: str, controls: Controls):
    for cls in prelabel.classes:
        stem = out / f"{path.stem}.{cls.class_name}"
        heat = resize_heatmap(cls.heatmap, prelabel.width, prelabel.height)
        mask = np.zeros((prelabel.height, prelabel.width), np.uint8)
        for region in cls.regions:
            mask[region.mask] = 255
        _write_png(stem.with_name(stem.name + ".panel.png"), panel(image, heat, colormap))
        _write_png(stem.with_name(stem.name + ".heatmap.png"), colorize(heat, colormap))
        _write_png(stem.with_name(stem.name + ".overlay.png"), overlay(image, heat, colormap))
        _write_png(stem.with_name(stem.name + ".mask.png"), mask)
    task = {
        "data": {"image": path.name},
        "predictions": [
            {
                "model_version": version,
                "score": prelabel.confidence,
                "result": prelabel_results(prelabel, controls),
            }
        ],
    }
    (out / f"{path.stem}.json").write_text(json.dumps(task) + "\n")


def _write_png(path: Path, picture: np.ndarray):
    if picture.ndim == 3:
        picture = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), picture):
        raise OSError(f"{path}: could not write the picture")
