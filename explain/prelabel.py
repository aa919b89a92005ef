"""The pre-label pipeline shared by the backend and the command line.

images (original size) -> model input -> probabilities + class heatmaps (one compiled call per
batch) -> heatmaps resized to each ORIGINAL image -> regions (mask, polygon, box, score).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

import cv2
import numpy as np

from explain.gradcam import Explanation, GradCam, Target
from explain.regions import Region, RegionSettings, extract_regions


class InputSpec(Protocol):
    """What the pipeline needs to know about a model (``models.spec.ModelSpec`` is one)."""

    input_size: tuple[int, int]
    class_names: tuple[str, ...]
    target_layer: str | None

    def preprocess(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class PrelabelSettings:
    """Every setting that changes the pre-labels (all of it goes into the model version)."""

    method: str = "gradcam"
    layer: str | None = None
    score: str = "logit"
    target: Target = field(default_factory=Target)
    regions: RegionSettings = field(default_factory=RegionSettings)

    def describe(self, layer_name: str | None = None) -> str:
        """Short id such as ``gradcam@mixed10-logit-predicted-fraction0.2-min0.001-fill-v64``."""
        layer = layer_name or self.layer or "auto"
        return f"{self.method}@{layer}-{self.score}-{self.target.describe()}-{self.regions.describe()}"


@dataclass(frozen=True)
class ClassRegions:
    """One targeted class of one image: its low-resolution heatmap (h, w) in [0, 1] and its regions
    (masks, boxes and polygons in the original image's pixel frame)."""

    class_name: str
    probability: float
    heatmap: np.ndarray
    regions: list[Region]


@dataclass(frozen=True)
class Prelabel:
    """Everything predicted for one image of ``width`` x ``height`` pixels."""

    width: int
    height: int
    probabilities: dict[str, float]
    classes: tuple[ClassRegions, ...]

    @property
    def predicted(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)


def resize_heatmap(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """(h, w) heatmap -> (height, width) float32, bilinear with half-pixel alignment (OpenCV)."""
    return cv2.resize(np.asarray(heatmap, dtype=np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def model_inputs(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Images (each (H, W, 3) float in [0, 1], any size) -> (N, h, w, channels) model input."""
    height, width = spec.input_size
    resized = [cv2.resize(np.asarray(im, dtype=np.float32), (width, height), interpolation=cv2.INTER_AREA) for im in images]
    return spec.preprocess(np.stack(resized))


class Prelabeler:
    """Pre-labels images with one classifier and one set of settings; build once, call per batch."""

    def __init__(self, model, spec: InputSpec, settings: PrelabelSettings = PrelabelSettings(), batch_size: int = 32):
        self.spec = spec
        self.settings = settings
        self.cam = GradCam(model, settings.layer or spec.target_layer, settings.method, settings.score, batch_size)

    @property
    def description(self) -> str:
        """The settings with the target layer actually used."""
        return self.settings.describe(self.cam.layer_name)

    def version(self, weights_id: str) -> str:
        """The model version Label Studio sees: the weights' id and every output-changing setting."""
        return f"{weights_id}-{self.description}"

    @property
    def recorded_settings(self) -> dict:
        """Every output-changing setting as JSON-able values, with the layer actually used."""
        return {**asdict(self.settings), "layer": self.cam.layer_name}

    def __call__(self, images: Sequence[np.ndarray], rois: Sequence[np.ndarray | None] | None = None) -> list[Prelabel]:
        """Pre-labels for images (each (H, W, 3) float in [0, 1], any size).

        rois : optional region-of-interest masks, one (H, W) per image (or None), e.g. the lungs.
        """
        return self.regions(images, self.explain(images), rois)

    def explain(self, images: Sequence[np.ndarray]) -> list[Explanation]:
        """The model step: probabilities and low-resolution class maps, one compiled call per batch."""
        if not len(images):
            return []
        return self.cam.explain(model_inputs(images, self.spec), self.settings.target, self.spec.class_names)

    def regions(self, images, explanations: list[Explanation], rois=None) -> list[Prelabel]:
        """The post-processing step: each map resized to its ORIGINAL image and cut into regions."""
        rois = list(rois) if rois is not None else [None] * len(images)
        if len(rois) != len(images):
            raise ValueError(f"rois must have one entry per image ({len(images)}), got {len(rois)}")
        return [self._prelabel(im, roi, ex) for im, roi, ex in zip(images, rois, explanations)]

    def _prelabel(self, image, roi, explanation: Explanation) -> Prelabel:
        names = self.spec.class_names
        height, width = image.shape[:2]
        classes = tuple(
            ClassRegions(
                class_name=names[m.class_index],
                probability=m.probability,
                heatmap=m.heatmap,
                regions=extract_regions(resize_heatmap(m.heatmap, width, height), self.settings.regions, roi),
            )
            for m in explanation.maps
        )
        probabilities = {name: float(p) for name, p in zip(names, explanation.probabilities)}
        return Prelabel(width=width, height=height, probabilities=probabilities, classes=classes)
