"""The pre-label pipeline shared by the backend and the command line.

images (original size) -> model input -> probabilities + class heatmaps (one compiled call per
batch) -> heatmaps resized to each ORIGINAL image -> regions (mask, polygon, box, score).

The maps that become regions come from one of three sources (``PrelabelSettings.source``):
"gradcam" (the classifier's class maps), "segmenter" (a trained segmenter's per-label
probabilities) or "fusion" (the segmenter's map confirmed by Grad-CAM: the geometric mean of the
two, so a pixel needs both). The classifier always gives the class probabilities.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

import cv2
import numpy as np

from explain.gradcam import Explanation, GradCam, Target
from explain.labeling import NEGATIVE_CLASSES
from explain.regions import Region, RegionSettings, extract_regions

SOURCES = ("gradcam", "segmenter", "fusion")
PRECISIONS = ("float32", "mixed_float16")


class InputSpec(Protocol):
    """What the pipeline needs to know about a model (``models.spec.ModelSpec`` is one)."""

    input_size: tuple[int, int]
    class_names: tuple[str, ...]
    target_layer: str | None

    def preprocess(self, images: np.ndarray) -> np.ndarray: ...


class LesionMaps(Protocol):
    """A segmenter (``models.segmentation.Segmenter`` is one): ``labels`` names its channels."""

    labels: tuple[str, ...]
    version: str

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Images (each (H, W, 3) float in [0, 1]) -> (N, h, w, labels) probabilities."""
        ...


@dataclass(frozen=True)
class PrelabelSettings:
    """Every setting that changes the pre-labels (all of it goes into the model version)."""

    method: str = "gradcam"
    layer: str | None = None
    score: str = "logit"
    target: Target = field(default_factory=Target)
    regions: RegionSettings = field(default_factory=RegionSettings)
    source: str = "gradcam"
    precision: str = "float32"  # "mixed_float16": the classifier computes in float16 (backend MIXED_PRECISION)

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def describe(self, layer_name: str | None = None, segmenter_version: str | None = None) -> str:
        """Short id such as ``gradcam@mixed10-logit-predicted-fraction0.2-min0.001-fill-v64``;
        ``segmenter:<id>-value0.5-...`` or ``fusion:<id>+gradcam@...`` for the other sources;
        ``-fp16`` at the end in mixed precision."""
        layer = layer_name or self.layer or "auto"
        cam = f"{self.method}@{layer}-{self.score}-{self.target.describe()}"
        fp16 = "-fp16" if self.precision == "mixed_float16" else ""
        if self.source == "gradcam":
            return f"{cam}-{self.regions.describe()}{fp16}"
        if self.source == "segmenter":
            return f"segmenter:{segmenter_version}-{self.regions.describe()}{fp16}"
        return f"fusion:{segmenter_version}+{cam}-{self.regions.describe()}{fp16}"


@dataclass(frozen=True)
class ModelOutput:
    """What the models said about one image: the classifier's explanation and, with a segmenter,
    its (h, w, labels) lesion probabilities at the segmenter's input size."""

    explanation: Explanation
    lesion_maps: np.ndarray | None = None


@dataclass(frozen=True)
class ClassRegions:
    """One targeted class (or, from a segmenter, one label) of one image: its low-resolution
    heatmap (h, w) in [0, 1] and its regions (masks, boxes and polygons in the original image's
    pixel frame). A segmenter label's ``probability`` is its map's maximum."""

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
    """Pre-labels images with one classifier (and, for the "segmenter" and "fusion" sources, one
    segmenter) and one set of settings; build once, call per batch."""

    def __init__(
        self, model, spec: InputSpec, settings: PrelabelSettings = PrelabelSettings(), batch_size: int = 32,
        segmenter: LesionMaps | None = None,
    ):
        if (settings.source != "gradcam") != (segmenter is not None):
            raise ValueError(f"source {settings.source!r} needs a segmenter exactly when it is not 'gradcam'")
        self.spec = spec
        self.settings = settings
        self.segmenter = segmenter
        self.cam = GradCam(model, settings.layer or spec.target_layer, settings.method, settings.score, batch_size)

    @property
    def description(self) -> str:
        """The settings with the target layer actually used (and the segmenter's weights id)."""
        return self.settings.describe(self.cam.layer_name, self.segmenter.version if self.segmenter else None)

    @property
    def region_names(self) -> tuple[str, ...]:
        """The names regions are made for: the classifier's classes or the segmenter's labels."""
        return self.segmenter.labels if self.segmenter else tuple(self.spec.class_names)

    def version(self, weights_id: str) -> str:
        """The model version Label Studio sees: the weights' id and every output-changing setting."""
        return f"{weights_id}-{self.description}"

    @property
    def recorded_settings(self) -> dict:
        """Every output-changing setting as JSON-able values, with the layer actually used."""
        segmenter = self.segmenter.version if self.segmenter else None
        return {**asdict(self.settings), "layer": self.cam.layer_name, "segmenter": segmenter}

    def __call__(self, images: Sequence[np.ndarray], rois: Sequence[np.ndarray | None] | None = None) -> list[Prelabel]:
        """Pre-labels for images (each (H, W, 3) float in [0, 1], any size).

        rois : optional region-of-interest masks, one (H, W) per image (or None), e.g. the lungs.
        """
        return self.regions(images, self.explain(images), rois)

    def explain(self, images: Sequence[np.ndarray]) -> list[ModelOutput]:
        """The model step: probabilities and low-resolution class maps, one compiled call per batch
        (and the segmenter's maps, one call per batch)."""
        if not len(images):
            return []
        explanations = self.cam.explain(model_inputs(images, self.spec), self.settings.target, self.spec.class_names)
        lesion_maps = self.segmenter(images) if self.segmenter else [None] * len(images)
        return [ModelOutput(e, m) for e, m in zip(explanations, lesion_maps)]

    def regions(self, images, outputs: list[ModelOutput], rois=None) -> list[Prelabel]:
        """The post-processing step: each map resized to its ORIGINAL image and cut into regions."""
        rois = list(rois) if rois is not None else [None] * len(images)
        if len(rois) != len(images):
            raise ValueError(f"rois must have one entry per image ({len(images)}), got {len(rois)}")
        return [self._prelabel(im, roi, out) for im, roi, out in zip(images, rois, outputs)]

    def _maps(self, output: ModelOutput) -> list[tuple[str, float, np.ndarray]]:
        """(name, probability, low-resolution map in [0, 1]) for every name that gets regions."""
        names = self.spec.class_names
        explanation = output.explanation
        cam_maps = [(names[m.class_index], m.probability, m.heatmap) for m in explanation.maps]
        if self.settings.source == "gradcam":
            return cam_maps
        lesion = output.lesion_maps
        if self.settings.source == "fusion":
            height, width = lesion.shape[:2]
            evidence = [resize_heatmap(h, width, height) for name, _, h in cam_maps if name.lower() not in NEGATIVE_CLASSES]
            cam = np.clip(np.max(evidence, axis=0), 0.0, 1.0) if evidence else np.zeros((height, width), np.float32)
            lesion = np.sqrt(np.clip(lesion, 0.0, 1.0) * cam[..., None])
        return [(label, float(lesion[..., i].max()), lesion[..., i]) for i, label in enumerate(self.segmenter.labels)]

    def _prelabel(self, image, roi, output: ModelOutput) -> Prelabel:
        height, width = image.shape[:2]
        classes = tuple(
            ClassRegions(
                class_name=name,
                probability=probability,
                heatmap=heatmap,
                regions=extract_regions(resize_heatmap(heatmap, width, height), self.settings.regions, roi),
            )
            for name, probability, heatmap in self._maps(output)
        )
        names = self.spec.class_names
        probabilities = {name: float(p) for name, p in zip(names, output.explanation.probabilities)}
        return Prelabel(width=width, height=height, probabilities=probabilities, classes=classes)
