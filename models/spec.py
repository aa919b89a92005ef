"""The preprocessing spec stored beside every model (``<model>.spec.json``).

It says how an image becomes the model's input and what the outputs mean, so that a model file
can be used without the code that trained it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SCALINGS = ("unit", "symmetric", "raw")
KINDS = ("classifier", "segmenter", "clicker")
#: A clicker's inputs beyond the image's channels: positive clicks, negative clicks, previous answer.
CLICK_CHANNELS = 3


@dataclass(frozen=True)
class ModelSpec:
    """How to feed a model (a classifier or a segmenter) and read its output.

    Attributes
    ----------
    input_size : (height, width) in pixels the model sees; images are resized (stretched) to it.
    channels : 1 (gray) or 3 (RGB).
    scaling : pixel scaling of 8-bit values v: "unit" v / 255 (the article's), "symmetric"
        v / 127.5 - 1 (Keras' InceptionV3 preprocess_input), "raw" v unchanged.
    class_names : one name per output unit (a segmenter: per output channel, its label), in order.
    target_layer : layer used for Grad-CAM; None finds the last layer with a 4-D output.
    kind : "classifier" (output (N, classes) probabilities), "segmenter" (output (N, H, W, labels)
        per-pixel probabilities at ``input_size``) or "clicker" (a segmenter whose input carries
        ``CLICK_CHANNELS`` more channels after the image's: ``models.clicking``).
    """

    input_size: tuple[int, int]
    class_names: tuple[str, ...]
    channels: int = 3
    scaling: str = "unit"
    target_layer: str | None = None
    kind: str = "classifier"

    def __post_init__(self):
        size = tuple(int(v) for v in self.input_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"input_size must be (height, width) > 0, got {self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be unique and non-empty, got {self.class_names!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def input_channels(self) -> int:
        """Channels of the model's input: the image's, plus the click channels of a clicker."""
        return self.channels + (CLICK_CHANNELS if self.kind == "clicker" else 0)

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """Model input from images already resized to ``input_size``.

        images: (N, H, W, 3) or (H, W, 3) float in [0, 1], RGB. Returns float32
        (N, H, W, channels) scaled as ``scaling`` says.
        """
        batch = np.asarray(images, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"images must be (N, H, W, 3) RGB, got shape {batch.shape}")
        if self.channels == 1:
            batch = batch @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            batch = batch[..., None]
        if self.scaling == "unit":
            return batch
        if self.scaling == "symmetric":
            return batch * 2.0 - 1.0
        return batch * 255.0

    def to_json(self) -> str:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["class_names"] = list(self.class_names)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        data = json.loads(text)
        return cls(**data)


def spec_path(model_path: str | Path) -> Path:
    """The spec file beside a model: ``model.keras`` -> ``model.spec.json``, ``dir/`` -> ``dir/spec.json``."""
    path = Path(model_path)
    if path.is_dir():
        return path / "spec.json"
    return path.with_name(path.stem + ".spec.json")


def save_spec(spec: ModelSpec, model_path: str | Path) -> Path:
    target = spec_path(model_path)
    target.write_text(spec.to_json() + "\n")
    return target


def load_spec(model_path: str | Path) -> ModelSpec:
    path = spec_path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"{Path(model_path).name}: no model spec found (expected {path.name} beside it)")
    try:
        return ModelSpec.from_json(path.read_text())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path.name}: invalid model spec: {exc}") from None
