"""Backend settings, read from environment variables (documented in the README)."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from db.identity import label_studio_identity
from explain.clicks import METHODS as CLICK_METHODS, NEEDS_CLICKER, method_for
from explain.images import MAX_PIXELS
from explain.shapes import shape_named
from explain.sources import SOURCES


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())



def _pairs(text: str, name: str = "LABEL_MAP", form: str = "class=Label") -> dict[str, str]:
    """``"covid=Opacity,pneumonia=Opacity"`` -> {"covid": "Opacity", "pneumonia": "Opacity"}."""
    pairs = {}
    for part in _split(text):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{name} entry {part!r}: expected {form}")
        pairs[key.strip()] = value.strip()
    return pairs


def _project_sources(text: str) -> dict[int, str]:
    """``"3=segmenter,7=fusion"`` -> {3: "segmenter", 7: "fusion"}."""
    sources = {}
    for project, source in _pairs(text, "PROJECT_PRELABEL_SOURCES", "project_id=source").items():
        if not project.isdigit():
            raise ValueError(f"PROJECT_PRELABEL_SOURCES: project id must be a number, got {project!r}")
        sources[int(project)] = _source(source, "PROJECT_PRELABEL_SOURCES")
    return sources


def _shape(value: str) -> str:
    try:
        shape_named(value)
    except ValueError as exc:
        raise ValueError(f"CAM_SHAPE: {exc}") from None
    return value


def _click_method(value: str) -> str:
    if value not in CLICK_METHODS:
        raise ValueError(f"CLICK_METHOD must be one of {', '.join(CLICK_METHODS)}, got {value!r}")
    return value


def _source(value: str, name: str) -> str:
    if value not in SOURCES:
        raise ValueError(f"{name}: source must be one of {', '.join(SOURCES)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the backend reads from its environment."""

    model_path: Path
    database_url: str = "sqlite:///data/labeler.db"
    cam_method: str = "layercam"  # chosen on the lesion benchmark's validation split (README)
    cam_layer: str | None = None
    cam_target: str = "predicted"
    cam_threshold: str = "fraction:0.2"
    cam_min_area: float = 0.001
    cam_max_vertices: int = 64
    min_probability: float = 0.0  # regions only for a class at least this probable (0: always)
    cam_shape: str = "grabcut"  # how a region is outlined: explain.shapes.SHAPES
    batch_size: int = 16
    # Label Studio gives up on /predict after ML_TIMEOUT_PREDICT (100 s by default): one request
    # must finish well within that, so bulk pre-labelling belongs to `labeler prelabel`.
    max_tasks_per_request: int = 1000
    max_request_bytes: int = 64 * 1024 * 1024  # a request body, in bytes
    label_map: dict[str, str] = field(default_factory=dict)
    label_studio_url: str | None = None
    label_studio_api_key: str | None = None
    local_files_document_root: Path | None = None
    allowed_image_hosts: tuple[str, ...] = ()
    max_image_bytes: int = 50_000_000
    max_image_pixels: int = MAX_PIXELS
    fetch_timeout: float = 10.0
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    warmup: bool = True
    mixed_precision: bool = False
    segmenter_path: Path | None = None
    segmenter_threshold: str = "value:0.5"
    prelabel_source: str = "gradcam"
    project_sources: dict[int, str] = field(default_factory=dict)
    roi_model_path: Path | None = None  # the anatomy prior's ROI model (a lung segmenter); None: no prior
    roi_margin: float = 0.03  # explain.anatomy.PriorSettings.margin
    # how interactive clicks become a mask (explain.clicks.METHODS); None: chosen by whether a click model
    # answers the project (its promoted one, else CLICK_MODEL): explain.clicks.method_for
    click_method: str | None = None
    click_model_path: Path | None = None  # a click model (`labeler train-segmenter --clicks`): explain.clicks.NEEDS_CLICKER
    # Training on the corrected masks (backend.training): whether this process runs queued jobs,
    # train after every N new corrected annotations (0: only when asked), what a job needs and does.
    training: bool = False  # from_env: TRAINING, default 1 (Settings built in code, as tests do, run no jobs unless asked)
    train_every: int = 0
    train_min_tasks: int = 10
    train_epochs: int = 30
    train_size: int = 128
    # whether a job also trains a click model ("auto": when the labelling config has smart tools) and its length
    train_clicks: str = "auto"
    train_click_steps: int = 600
    train_stale_after: float = 60.0  # seconds without a heartbeat before a running job is taken over
    # = models.loading.MODEL_CACHE, not imported here: no Keras before gunicorn forks
    model_cache_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "labeler-models")

    def method_for_clicks(self, clicker: bool) -> str:
        """CLICK_METHOD, else the default with or without a click model (``explain.clicks.method_for``)."""
        return method_for(clicker, self.click_method)

    def source_for(self, project_id: int | None) -> str:
        """Where a project's regions come from: its PROJECT_PRELABEL_SOURCES entry, else PRELABEL_SOURCE."""
        return self.project_sources.get(project_id, self.prelabel_source)

    @property
    def sources(self) -> set[str]:
        """Every source some project uses."""
        return {self.prelabel_source, *self.project_sources.values()}

    @classmethod
    def from_env(cls, env=os.environ) -> "Settings":
        """Settings from ``env``; a missing MODEL_PATH or a malformed value raises ValueError naming it."""
        if not env.get("MODEL_PATH"):
            raise ValueError("MODEL_PATH is not set: point it at a .keras/.h5 model or SavedModel folder with its spec")
        root = env.get("LOCAL_FILES_DOCUMENT_ROOT")
        segmenter = env.get("SEGMENTER_PATH")
        roi_model = env.get("ROI_MODEL_PATH")
        click_model = env.get("CLICK_MODEL")
        settings = cls(
            model_path=Path(env["MODEL_PATH"]),
            database_url=env.get("DATABASE_URL", cls.database_url),
            cam_method=env.get("CAM_METHOD", cls.cam_method),
            cam_layer=env.get("CAM_LAYER") or None,
            cam_target=env.get("CAM_TARGET", cls.cam_target),
            cam_threshold=env.get("CAM_THRESHOLD", cls.cam_threshold),
            cam_min_area=_number(env, "CAM_MIN_AREA", cls.cam_min_area, float),
            cam_max_vertices=_number(env, "CAM_MAX_VERTICES", cls.cam_max_vertices, int),
            min_probability=_probability(env, "MIN_PROBABILITY", cls.min_probability),
            cam_shape=_shape(env.get("CAM_SHAPE", cls.cam_shape)),
            batch_size=_number(env, "BATCH_SIZE", cls.batch_size, int),
            max_tasks_per_request=_number(env, "MAX_TASKS_PER_REQUEST", cls.max_tasks_per_request, int),
            max_request_bytes=_number(env, "MAX_REQUEST_BYTES", cls.max_request_bytes, int),
            label_map=_pairs(env.get("LABEL_MAP", "")),
            label_studio_url=_label_studio_url(env.get("LABEL_STUDIO_URL")),
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or None,
            local_files_document_root=Path(root) if root else None,
            allowed_image_hosts=_split(env.get("ALLOWED_IMAGE_HOSTS", "")),
            max_image_bytes=_number(env, "MAX_IMAGE_BYTES", cls.max_image_bytes, int),
            max_image_pixels=_number(env, "MAX_IMAGE_PIXELS", cls.max_image_pixels, int),
            fetch_timeout=_number(env, "FETCH_TIMEOUT", cls.fetch_timeout, float),
            basic_auth_user=env.get("BASIC_AUTH_USER") or None,
            basic_auth_pass=env.get("BASIC_AUTH_PASS") or None,
            warmup=_flag(env, "WARMUP", True),
            mixed_precision=_flag(env, "MIXED_PRECISION", False),
            segmenter_path=Path(segmenter) if segmenter else None,
            segmenter_threshold=env.get("SEGMENTER_THRESHOLD", cls.segmenter_threshold),
            prelabel_source=_source(env.get("PRELABEL_SOURCE", cls.prelabel_source), "PRELABEL_SOURCE"),
            project_sources=_project_sources(env.get("PROJECT_PRELABEL_SOURCES", "")),
            roi_model_path=Path(roi_model) if roi_model else None,
            roi_margin=_fraction(env, "ROI_MARGIN", cls.roi_margin),
            click_method=_click_method(env["CLICK_METHOD"]) if env.get("CLICK_METHOD") else None,
            click_model_path=Path(click_model) if click_model else None,
            training=_flag(env, "TRAINING", True),
            train_every=_count(env, "TRAIN_EVERY", cls.train_every),
            train_min_tasks=_number(env, "TRAIN_MIN_TASKS", cls.train_min_tasks, int),
            train_epochs=_number(env, "TRAIN_EPOCHS", cls.train_epochs, int),
            train_size=_number(env, "TRAIN_SIZE", cls.train_size, int),
            train_clicks=_choice(env, "TRAIN_CLICKS", ("auto", "1", "0"), cls.train_clicks),
            train_click_steps=_number(env, "TRAIN_CLICK_STEPS", cls.train_click_steps, int),
            train_stale_after=_number(env, "TRAIN_STALE_AFTER", cls.train_stale_after, float),
            **({"model_cache_dir": Path(env["MODEL_CACHE_DIR"])} if env.get("MODEL_CACHE_DIR") else {}),
        )
        if any(SOURCES[source].needs_segmenter for source in settings.sources) and settings.segmenter_path is None:
            raise ValueError("SEGMENTER_PATH is not set, but a project pre-labels from the segmenter")
        if settings.click_method in NEEDS_CLICKER and settings.click_model_path is None:
            raise ValueError(f"CLICK_METHOD is {settings.click_method}, but CLICK_MODEL is not set (train one with `labeler train-segmenter --clicks`)")
        return settings


def _label_studio_url(value: str | None) -> str | None:
    """LABEL_STUDIO_URL without its trailing slash; ValueError naming it when it is no base URL."""
    if not value:
        return None
    try:
        label_studio_identity(value)
    except ValueError as exc:
        raise ValueError(f"LABEL_STUDIO_URL: {exc}") from None
    return value.strip().rstrip("/")


def _choice(env, name, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {env[name]!r}")
    return value


def _flag(env, name, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError(f"{name} must be 1/true/yes or 0/false/no, got {env[name]!r}")
    return value in ("1", "true", "yes")


def _count(env, name, default: int) -> int:
    """A whole number >= 0 (``_number`` wants it positive)."""
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit():
        raise ValueError(f"{name} must be a whole number >= 0, got {env[name]!r}")
    return int(text)


def _fraction(env, name, default: float) -> float:
    """A number that may be 0 (``_number`` wants it positive); its range is checked where it is used."""
    if not env.get(name, "").strip():
        return default
    try:
        return float(env[name])
    except ValueError:
        raise ValueError(f"{name} must be a float, got {env[name]!r}") from None


def _probability(env, name, default: float) -> float:
    """A probability in [0, 1)."""
    value = _fraction(env, name, default)
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {env[name]!r}")
    return value


def _number(env, name, default, kind):
    if name not in env or env[name] == "":
        return default
    try:
        value = kind(env[name])
    except ValueError:
        raise ValueError(f"{name} must be a {kind.__name__}, got {env[name]!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {env[name]!r}")
    return value
