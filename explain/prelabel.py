"""The pre-label pipeline shared by the backend and the command line.

images (original size) -> model input -> probabilities + class heatmaps (one compiled call per
batch) -> heatmaps resized to each ORIGINAL image -> regions (mask, polygon, box, score).

The maps that become regions come from one of the sources registered in ``explain.sources``
(``PrelabelSettings.source``): "gradcam" (the classifier's class maps), "segmenter" (a trained
segmenter's per-label probabilities) or "fusion" (the segmenter's map confirmed by Grad-CAM). The
classifier always gives the class probabilities.

With an ROI model (a segmenter trained on lung masks, ``explain.anatomy``), regions are confined
to its region of interest: the maps are thresholded with statistics taken inside it and cleared
outside it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

import cv2
import numpy as np

from explain.anatomy import PriorSettings, roi_mask
from explain.clicks import Evidence
from explain.confidence import class_confidence, map_confidence
from explain.gradcam import Explanation, GradCam, Target
from explain.images import gray_as_rgb, is_gray_view
from explain.regions import Region, RegionSettings, Threshold, extract_regions, resize_heatmap
from explain.sources import source_named

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
    min_probability: float = 0.0  # a class (or segmenter label) less probable than this gets no regions

    def __post_init__(self):
        source_named(self.source)
        p = self.min_probability
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"min_probability must be a probability in [0, 1), got {p!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def describe(self, layer_name: str | None = None, segmenter_version: str | None = None) -> str:
        """Short id such as ``gradcam@mixed10-logit-predicted-fraction0.2-min0.001-fill-v64``;
        ``segmenter:<id>-value0.5-...`` or ``fusion:<id>+gradcam@...`` for the other sources;
        ``-p0.5`` when regions need a minimum probability, ``-fp16`` at the end in mixed precision."""
        layer = layer_name or self.layer or "auto"
        cam = f"{self.method}@{layer}-{self.score}-{self.target.describe()}"
        gate = f"-p{self.min_probability:g}" if self.min_probability else ""
        fp16 = "-fp16" if self.precision == "mixed_float16" else ""
        return source_named(self.source).describe(cam, self.regions.describe(), segmenter_version) + gate + fp16


def prelabel_settings(
    *,
    method: str = "layercam",
    layer: str | None = None,
    target: str = "predicted",
    cam_threshold: str = "fraction:0.2",
    segmenter_threshold: str = "value:0.5",
    min_area: float = 0.001,
    max_vertices: int = 64,
    source: str = "gradcam",
    precision: str = "float32",
    min_probability: float = 0.0,
    shape: str = "grabcut",
    option_names: tuple[str, str] = ("--threshold", "--segmenter-threshold"),
) -> PrelabelSettings:
    """The one settings factory of both faces (the backend passes its variable names as
    ``option_names``, which a ValueError names). Grad-CAM maps are cut at ``cam_threshold``,
    segmenter and fusion maps at ``segmenter_threshold``."""
    name, text = (option_names[0], cam_threshold)
    if source_named(source).needs_segmenter:
        name, text = (option_names[1], segmenter_threshold)
    try:
        threshold = Threshold.parse(text)
    except ValueError as exc:
        raise ValueError(f"{name} {text!r}: {exc}") from None
    return PrelabelSettings(
        method=method,
        layer=layer,
        target=Target.parse(target),
        regions=RegionSettings(threshold, min_area=min_area, max_vertices=max_vertices, shape=shape),
        source=source,
        precision=precision,
        min_probability=min_probability,
    )


@dataclass(frozen=True)
class ModelOutput:
    """What the models said about one image: the classifier's explanation and, with a segmenter,
    its (h, w, labels) lesion probabilities at the segmenter's input size; with an ROI model, its
    (h, w) map (the maximum over its channels) at its input size."""

    explanation: Explanation
    lesion_maps: np.ndarray | None = None
    roi_map: np.ndarray | None = None


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
    confidence: float = 1.0  # the prediction's score for Label Studio (explain.confidence)

    @property
    def predicted(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)


def model_inputs(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Images (each (H, W, 3) float in [0, 1], any size) -> (N, h, w, channels) model input."""
    height, width = spec.input_size
    return spec.preprocess(np.stack([_resized(np.asarray(im, dtype=np.float32), (width, height)) for im in images]))


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size`` (width, height) by area; a gray view one channel at a time."""
    if is_gray_view(image):
        return gray_as_rgb(cv2.resize(image[..., 0], size, interpolation=cv2.INTER_AREA))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


class Prelabeler:
    """Pre-labels images with one classifier (and, for the "segmenter" and "fusion" sources, one
    segmenter) and one set of settings; build once, call per batch. ``roi_model`` (a segmenter of
    the lungs) confines the regions to its region of interest, made as ``prior`` says."""

    def __init__(
        self, model, spec: InputSpec, settings: PrelabelSettings = PrelabelSettings(), batch_size: int = 32,
        segmenter: LesionMaps | None = None, roi_model: LesionMaps | None = None, prior: PriorSettings = PriorSettings(),
    ):
        self.source = source_named(settings.source)
        if self.source.needs_segmenter != (segmenter is not None):
            raise ValueError(f"source {settings.source!r} needs a segmenter exactly when it is not 'gradcam'")
        self.spec = spec
        self.settings = settings
        self.segmenter = segmenter
        self.roi_model, self.prior = roi_model, prior
        self.cam = GradCam(model, settings.layer or spec.target_layer, settings.method, settings.score, batch_size)

    @property
    def description(self) -> str:
        """The settings with the target layer actually used (and the segmenter's weights id); with an
        ROI model ``+roi:<its weights id>-<prior settings>`` at the end."""
        text = self.settings.describe(self.cam.layer_name, self.segmenter.version if self.segmenter else None)
        return f"{text}+roi:{self.roi_model.version}-{self.prior.describe()}" if self.roi_model else text

    @property
    def label_names(self) -> tuple[str, ...]:
        """The classifier's classes, then the segmenter's labels it does not share (what a
        labelling config's labels are matched against)."""
        classes = tuple(self.spec.class_names)
        return classes + tuple(n for n in self.region_names if n not in classes)

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
        recorded = {**asdict(self.settings), "layer": self.cam.layer_name, "segmenter": segmenter}
        if self.roi_model:  # only then: versions without a prior keep the settings they were recorded with
            recorded.update(roi=self.roi_model.version, prior=asdict(self.prior))
        return recorded

    def __call__(self, images: Sequence[np.ndarray], rois: Sequence[np.ndarray | None] | None = None) -> list[Prelabel]:
        """Pre-labels for images (each (H, W, 3) float in [0, 1], any size).

        rois : optional region-of-interest masks, one (H, W) per image (or None), e.g. the lungs.
        """
        return self.regions(images, self.explain(images), rois)

    def explain(self, images: Sequence[np.ndarray], inputs: np.ndarray | None = None) -> list[ModelOutput]:
        """The model step: probabilities and low-resolution class maps, one compiled call per batch
        (and the segmenter's and the ROI model's maps, one call each per batch). ``inputs``:
        the classifier's input for these images when already made (``model_inputs``)."""
        if not len(images):
            return []
        inputs = model_inputs(images, self.spec) if inputs is None else inputs
        if len(inputs) != len(images):
            raise ValueError(f"inputs must have one row per image ({len(images)}), got {len(inputs)}")
        explanations = self.cam.explain(inputs, self.settings.target, self.spec.class_names)
        lesion_maps = self.segmenter(images) if self.segmenter else [None] * len(images)
        roi_maps = self.roi_model(images).max(axis=-1) if self.roi_model else [None] * len(images)
        return [ModelOutput(e, m, r) for e, m, r in zip(explanations, lesion_maps, roi_maps)]

    def regions(self, images, outputs: list[ModelOutput], rois=None) -> list[Prelabel]:
        """The post-processing step: each map resized to its ORIGINAL image and cut into regions
        (inside the ROI model's region of interest, AND-ed with the image's roi when both exist)."""
        rois = list(rois) if rois is not None else [None] * len(images)
        if len(rois) != len(images):
            raise ValueError(f"rois must have one entry per image ({len(images)}), got {len(rois)}")
        return [self._prelabel(im, roi, out) for im, roi, out in zip(images, rois, outputs)]

    def click_evidence(self, image: np.ndarray, output: ModelOutput, wanted: Sequence[str] | None = None) -> tuple[str, Evidence]:
        """What clicks on one image follow (``explain.clicks``): (the name whose map it is, the
        Evidence at the image's size), from this image's ``explain`` output.

        The map is the source's map (the segmenter's label map for the segmenter sources, else the
        Grad-CAM map) of the most probable name of ``wanted`` (default: every region name) that
        has one; when the Grad-CAM target mapped none of them (e.g. the image was predicted
        "normal"), the most probable wanted class's map is computed (one more classifier call).
        The roi is the anatomy prior's mask when an ROI model is set, else None."""
        height, width = image.shape[:2]
        names = [n for n in (wanted or ()) if n in self.region_names] or list(self.region_names)
        candidates = [m for m in self._maps(output) if m[0] in names]
        if candidates:
            name, _, heatmap = max(candidates, key=lambda m: m[1])
        elif self.segmenter is None:
            classes = list(self.spec.class_names)
            index = max((classes.index(n) for n in names), key=lambda i: output.explanation.probabilities[i])
            name, heatmap = classes[index], self.cam.compute(model_inputs([image], self.spec), [index])[2][0]
        else:
            name, _, heatmap = max(self._maps(output), key=lambda m: m[1])
        roi = None if output.roi_map is None else roi_mask(output.roi_map, width, height, self.prior)
        return name, Evidence.of(image, heatmap, roi)

    def _maps(self, output: ModelOutput) -> list[tuple[str, float, np.ndarray]]:
        """(name, probability, low-resolution map in [0, 1]) for every name that gets regions."""
        names = self.spec.class_names
        cam_maps = [(names[m.class_index], m.probability, m.heatmap) for m in output.explanation.maps]
        labels = self.segmenter.labels if self.segmenter else ()
        return self.source.maps(cam_maps, output.lesion_maps, labels)

    def _prelabel(self, image, roi, output: ModelOutput) -> Prelabel:
        height, width = image.shape[:2]
        roi = roi if output.roi_map is None else _and(roi, roi_mask(output.roi_map, width, height, self.prior))
        # the image's brightness, only where a shape step follows it
        gray = None if self.settings.regions.shape == "map" else np.asarray(image, np.float32).reshape(height, width, -1).mean(axis=2)
        classes = tuple(
            ClassRegions(
                class_name=name,
                probability=probability,
                heatmap=heatmap,
                regions=self._regions(heatmap, width, height, roi, gray) if probability >= self.settings.min_probability else [],
            )
            for name, probability, heatmap in self._maps(output)
        )
        names = self.spec.class_names
        probabilities = {name: float(p) for name, p in zip(names, output.explanation.probabilities)}
        if output.lesion_maps is not None:
            confidence = map_confidence(output.lesion_maps, output.roi_map)
        else:
            confidence = class_confidence(output.explanation.probabilities)
        return Prelabel(width=width, height=height, probabilities=probabilities, classes=classes, confidence=confidence)

    def _regions(self, heatmap, width: int, height: int, roi, gray) -> list[Region]:
        """One map's regions in the original image's frame (``gray``: the (H, W) image for the shape step)."""
        return extract_regions(resize_heatmap(heatmap, width, height), self.settings.regions, roi, gray)


def _and(roi: np.ndarray | None, prior: np.ndarray) -> np.ndarray:
    """An explicit (H, W) roi (bool or uint8, nonzero inside) AND-ed with the prior's mask."""
    if roi is None:
        return prior
    if np.shape(roi) != prior.shape:
        raise ValueError(f"roi must have the image's shape {prior.shape}, got {np.shape(roi)}")
    return (np.asarray(roi) != 0) & prior
