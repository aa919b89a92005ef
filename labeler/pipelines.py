"""The pre-label pipeline of ``labeler prelabel`` and ``labeler explain``: the models loaded from
their files, as the backend loads them (the same files and settings make the same model version)."""
from __future__ import annotations

from pathlib import Path

from explain.anatomy import PriorSettings
from explain.prelabel import Prelabeler, PrelabelSettings
from explain.sources import source_named
from models.loading import LoadedModel, load_classifier, load_segmenter
from models.segmentation import Segmenter


def build_prelabeler(
    model_path: Path, settings: PrelabelSettings, batch_size: int = 16, segmenter_path: Path | None = None,
    roi_model_path: Path | None = None, prior: PriorSettings = PriorSettings(),
) -> tuple[LoadedModel, Prelabeler]:
    """The classifier and the pipeline ``labeler prelabel`` and ``labeler explain`` run (the same
    models and settings as the backend's make the same version)."""
    needs_segmenter = source_named(settings.source).needs_segmenter
    if needs_segmenter and segmenter_path is None:
        raise ValueError(f"--source {settings.source} needs --segmenter (a U-Net from `labeler train-segmenter`)")
    loaded = load_classifier(model_path)
    segmenter = Segmenter(load_segmenter(segmenter_path), batch_size) if needs_segmenter else None
    roi_model = Segmenter(_roi_model(roi_model_path), batch_size) if roi_model_path is not None else None
    return loaded, Prelabeler(loaded.model, loaded.spec, settings, batch_size, segmenter, roi_model, prior)


def _roi_model(path: Path) -> LoadedModel:
    try:
        return load_segmenter(path)
    except ValueError as exc:
        raise ValueError(f"--roi-model: {exc}") from None
