"""The classifier and its pre-label pipeline, loaded once per process, lazily and thread-safely."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from backend.config import Settings
from explain.gradcam import Target
from explain.prelabel import Prelabeler, PrelabelSettings
from explain.regions import RegionSettings, Threshold
from models.loading import LoadedModel, load_classifier, with_mixed_precision

log = logging.getLogger(__name__)


def prelabel_settings(settings: Settings) -> PrelabelSettings:
    """The pipeline settings named by the environment (ValueError names a bad one)."""
    try:
        threshold = Threshold.parse(settings.cam_threshold)
    except ValueError as exc:
        raise ValueError(f"CAM_THRESHOLD {settings.cam_threshold!r}: {exc}") from None
    return PrelabelSettings(
        method=settings.cam_method,
        layer=settings.cam_layer,
        target=Target.parse(settings.cam_target),
        regions=RegionSettings(threshold, min_area=settings.cam_min_area, max_vertices=settings.cam_max_vertices),
    )


@dataclass(frozen=True)
class Pipeline:
    """A loaded model and its pre-labeller; ``version`` names the weights and every setting."""

    loaded: LoadedModel
    prelabeler: Prelabeler
    mixed_precision: bool = False

    @property
    def version(self) -> str:
        return self.prelabeler.version(self.loaded.version) + ("-fp16" if self.mixed_precision else "")

    @property
    def settings(self) -> dict:
        """Every output-changing setting, as JSON-able values (stored with the model version)."""
        return {**self.prelabeler.recorded_settings, "mixed_precision": self.mixed_precision}

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.loaded.spec.class_names


class ModelUnavailable(Exception):
    """The model could not be loaded; the message says why (answered as HTTP 503)."""


class Predictor:
    """Builds the ``Pipeline`` on first use (once per process: after a fork, never before)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pipeline: Pipeline | None = None
        self._lock = threading.Lock()
        self._loading = threading.Event()

    @property
    def ready(self) -> bool:
        return self._pipeline is not None

    def get(self) -> Pipeline:
        if self._pipeline is None:
            with self._lock:
                if self._pipeline is None:
                    try:
                        self._pipeline = self._load()
                    except (ValueError, OSError) as exc:
                        raise ModelUnavailable(f"model could not be loaded: {exc}") from None
        return self._pipeline

    def _load(self) -> Pipeline:
        import tensorflow as tf

        devices = tf.config.list_physical_devices("GPU")
        for gpu in devices:
            tf.config.experimental.set_memory_growth(gpu, True)
        loaded = load_classifier(self.settings.model_path)
        model = with_mixed_precision(loaded.model) if self.settings.mixed_precision else loaded.model
        prelabeler = Prelabeler(model, loaded.spec, prelabel_settings(self.settings), self.settings.batch_size)
        height, width = loaded.spec.input_size
        prelabeler([np.zeros((height, width, 3), np.float32)])  # trace the compiled graph now, not on a task
        pipeline = Pipeline(loaded, prelabeler, self.settings.mixed_precision)
        device = f"GPU ({len(devices)})" if devices else "CPU"
        precision = "mixed float16" if self.settings.mixed_precision else "float32"
        log.info("model %s loaded on %s (%s): %s", loaded.path.name, device, precision, pipeline.version)
        return pipeline

    def warm_up_in_background(self):
        """Start loading now in a daemon thread, so the first request does not wait for it."""

        def load():
            try:
                self.get()
            except ModelUnavailable as exc:  # reported again on every request until fixed
                log.error("model failed to load: %s", exc)

        threading.Thread(target=load, name="model-warmup", daemon=True).start()
