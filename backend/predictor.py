"""The classifier (and segmenter, and the anatomy prior's ROI model) and their pre-label pipelines,
loaded once per process, lazily and thread-safely; one pipeline per pre-label source ("gradcam",
"segmenter", "fusion"), all sharing the ROI model when ROI_MODEL_PATH is set."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.config import Settings
from explain.anatomy import PriorSettings
from explain.prelabel import Prelabeler, PrelabelSettings
from explain.prelabel import prelabel_settings as shared_prelabel_settings
from explain.sources import source_named
from models.loading import LoadedModel, load_classifier, load_model, load_segmenter, unpack_clicker, unpack_segmenter, with_mixed_precision
from models.segmentation import Segmenter
from models.spec import load_spec

log = logging.getLogger(__name__)


def prelabel_settings(settings: Settings, source: str = "gradcam") -> PrelabelSettings:
    """The pipeline settings of one source named by the environment (ValueError names a bad one)."""
    return shared_prelabel_settings(
        method=settings.cam_method,
        layer=settings.cam_layer,
        target=settings.cam_target,
        cam_threshold=settings.cam_threshold,
        segmenter_threshold=settings.segmenter_threshold,
        min_area=settings.cam_min_area,
        max_vertices=settings.cam_max_vertices,
        shape=settings.cam_shape,
        source=source,
        precision="mixed_float16" if settings.mixed_precision else "float32",
        min_probability=settings.min_probability,
        option_names=("CAM_THRESHOLD", "SEGMENTER_THRESHOLD"),
    )


NO_PRIOR = "no anatomy prior (ROI_MODEL_PATH unset): regions may land outside the lungs"


def prior_settings(settings: Settings) -> PriorSettings:
    """The anatomy prior's settings (ValueError naming ROI_MARGIN when it is out of range)."""
    try:
        return PriorSettings(margin=settings.roi_margin)
    except ValueError as exc:
        raise ValueError(f"ROI_MARGIN: {exc}") from None


def check_roi_model(settings: Settings):
    """At start: ROI_MODEL_PATH, when set, must be a segmenter (its spec says; the weights load later)."""
    prior_settings(settings)
    check_model_kind(settings.roi_model_path, "ROI_MODEL_PATH", "segmenter", "train one on lung masks with `labeler train-segmenter`")


def check_click_model(settings: Settings):
    """At start: CLICK_MODEL, when set, must be a clicker (its spec says; the weights load on the first click)."""
    check_model_kind(settings.click_model_path, "CLICK_MODEL", "clicker", "train one with `labeler train-segmenter --clicks`")


def check_model_kind(path: Path | None, setting: str, kind: str, hint: str):
    """ValueError naming ``setting`` when ``path`` is set but missing, unreadable or not a ``kind``."""
    if path is None:
        return
    if not path.exists():
        raise ValueError(f"{setting}: {path.name}: no such model file or folder")
    try:
        found = load_spec(path).kind
    except (ValueError, OSError) as exc:
        raise ValueError(f"{setting}: {exc}") from None
    if found != kind:
        raise ValueError(f"{setting}: {path.name} is a {found}, not a {kind} ({hint})")


@dataclass(frozen=True)
class Pipeline:
    """A loaded model and its pre-labeller; ``version`` names the weights and every setting, the
    same name and settings as ``labeler prelabel`` records for the same model and settings."""

    loaded: LoadedModel
    prelabeler: Prelabeler

    @property
    def version(self) -> str:
        return self.prelabeler.version(self.loaded.version)

    @property
    def class_names(self) -> tuple[str, ...]:
        """What a labelling config's labels are matched against (``Prelabeler.label_names``)."""
        return self.prelabeler.label_names


class ModelUnavailable(Exception):
    """The model could not be loaded; the message says why (answered as HTTP 503)."""


class Predictor:
    """Builds each source's ``Pipeline`` on first use (once per process: after a fork, never before);
    the classifier and the segmenter are loaded once and shared by the pipelines."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pipelines: dict[str, object] = {}  # the pipelines, and the click models (``clicker``), by key
        self._models: dict[str, object] = {}
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.settings.prelabel_source in self._pipelines

    def get(self, source: str | None = None) -> Pipeline:
        """The pipeline of ``source`` (default: PRELABEL_SOURCE; a segmenter source uses SEGMENTER_PATH)."""
        source = source or self.settings.prelabel_source
        return self._cached(source, lambda: self.build(source))

    def promoted(self, weights_id: str, stored) -> Pipeline:
        """The "segmenter" pipeline of a registry model (``db.registry``), loaded once per process:
        ``stored()`` gives its (``.keras`` bytes, spec JSON) and is called only the first time."""

        def build():
            weights, spec_json = stored()
            path = unpack_segmenter(weights, spec_json, weights_id, self.settings.model_cache_dir)
            segmenter = self._model(f"segmenter:{weights_id}", lambda: Segmenter(load_segmenter(path), self.settings.batch_size))
            return self.build("segmenter", segmenter)

        return self._cached(f"segmenter:{weights_id}", build)

    def clicker(self, weights_id: str | None = None, stored=None):
        """A click model (``models.clicking.Clicker``) loaded once per process: a registry model's
        (``weights_id``; ``stored()`` gives its (``.keras`` bytes, spec JSON), called only the first
        time), else CLICK_MODEL's; None when neither is given."""
        if weights_id is None and self.settings.click_model_path is None:
            return None

        def load():
            from models.clicking import Clicker

            if weights_id is None:
                path = self.settings.click_model_path
            else:
                path = unpack_clicker(*stored(), weights_id, self.settings.model_cache_dir)
            return Clicker(load_model(path, kind="clicker"))

        return self._cached(f"clicker:{weights_id or 'CLICK_MODEL'}", load)

    def _cached(self, key: str, build):
        if key not in self._pipelines:
            with self._lock:
                if key not in self._pipelines:
                    try:
                        self._pipelines[key] = build()
                    except (ValueError, OSError) as exc:
                        raise ModelUnavailable(f"model could not be loaded: {exc}") from None
        return self._pipelines[key]

    def _model(self, name: str, load):
        if name not in self._models:
            self._models[name] = load()
        return self._models[name]

    @staticmethod
    def _gpus() -> list:
        """The GPUs, set to grow their memory as needed (once, before the first model is built)."""
        import tensorflow as tf

        devices = tf.config.list_physical_devices("GPU")
        for gpu in devices:
            tf.config.experimental.set_memory_growth(gpu, True)
        return devices

    def build(self, source: str, segmenter: Segmenter | None = None) -> Pipeline:
        """A new pipeline of ``source``; a segmenter source uses ``segmenter`` or else SEGMENTER_PATH's."""
        devices = self._model("gpus", self._gpus)
        loaded = self._model("classifier", lambda: load_classifier(self.settings.model_path))
        model = loaded.model
        if self.settings.mixed_precision:
            model = self._model("classifier-fp16", lambda: with_mixed_precision(loaded.model))
        if segmenter is None and source_named(source).needs_segmenter:
            segmenter = self._model(
                "segmenter", lambda: Segmenter(load_segmenter(self.settings.segmenter_path), self.settings.batch_size)
            )
        roi_model = None
        if self.settings.roi_model_path is not None:
            roi_model = self._model(
                "roi", lambda: Segmenter(load_segmenter(self.settings.roi_model_path), self.settings.batch_size)
            )
        prelabeler = Prelabeler(
            model, loaded.spec, prelabel_settings(self.settings, source), self.settings.batch_size, segmenter,
            roi_model, prior_settings(self.settings),
        )
        height, width = loaded.spec.input_size
        prelabeler([np.zeros((height, width, 3), np.float32)])  # trace the compiled graph now, not on a task
        pipeline = Pipeline(loaded, prelabeler)
        device = f"GPU ({len(devices)})" if devices else "CPU"
        precision = "mixed float16" if self.settings.mixed_precision else "float32"
        prior = f"anatomy prior: ROI model {roi_model.version} ({prior_settings(self.settings).describe()})" if roi_model else NO_PRIOR
        log.info(
            "model %s loaded on %s (%s), %s pre-labels: %s; %s", loaded.path.name, device, precision, source,
            pipeline.version, prior,
        )
        return pipeline

    def anatomy_prior(self) -> dict:
        """What /health says about the prior: active or not and why; the ROI model's weights id once loaded."""
        if self.settings.roi_model_path is None:
            return {"active": False, "reason": NO_PRIOR}
        roi_model = self._models.get("roi")
        return {"active": True, "model": roi_model.version if roi_model else None, "margin": self.settings.roi_margin}

    def warm_up_in_background(self):
        """Start loading every source in use now, in a daemon thread, so that no request waits for it."""

        def load():
            try:
                for source in sorted(self.settings.sources, key=lambda s: s != self.settings.prelabel_source):
                    self.get(source)
            except ModelUnavailable as exc:  # reported again on every request until fixed
                log.error("model failed to load: %s", exc)

        threading.Thread(target=load, name="model-warmup", daemon=True).start()
