"""Where the maps that become regions come from: one small class per pre-label source, all
registered in ``SOURCES`` (the only list of them; settings, the command line and the docs read it).

A source turns what the models said about one image (``ModelOutput``: the classifier's
probabilities and class maps, and a segmenter's per-label maps when the source needs one) into
``(name, probability, low-resolution map in [0, 1])`` for every name that gets regions, and names
itself in the model version.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

Maps = list[tuple[str, float, np.ndarray]]


class Source:
    """A pre-label source. ``describe`` is its part of the model version; ``maps`` its maps."""

    name: ClassVar[str]
    needs_segmenter: ClassVar[bool] = False
    summary: ClassVar[str]

    def describe(self, cam: str, regions: str, segmenter_version: str | None) -> str:
        """The version text from the CAM settings' text ``cam`` (``method@layer-score-target``) and
        the region settings' text ``regions``."""
        raise NotImplementedError

    def maps(self, cam_maps: Maps, lesion_maps: np.ndarray | None, labels: tuple[str, ...]) -> Maps:
        """``cam_maps``: the classifier's (class, probability, (h, w) map) of the targeted classes;
        ``lesion_maps``: the segmenter's (h, w, len(labels)) probabilities, or None."""
        raise NotImplementedError


class GradCamSource(Source):
    name = "gradcam"
    summary = "the classifier's class maps (Grad-CAM family)"

    def describe(self, cam, regions, segmenter_version):
        return f"{cam}-{regions}"

    def maps(self, cam_maps, lesion_maps, labels):
        return cam_maps


class SegmenterSource(Source):
    name = "segmenter"
    needs_segmenter = True
    summary = "a trained segmenter's per-label probabilities"

    def describe(self, cam, regions, segmenter_version):
        return f"segmenter:{segmenter_version}-{regions}"

    def maps(self, cam_maps, lesion_maps, labels):
        return [(label, float(lesion_maps[..., i].max()), lesion_maps[..., i]) for i, label in enumerate(labels)]


class FusionSource(Source):
    name = "fusion"
    needs_segmenter = True
    summary = "the segmenter's map confirmed by Grad-CAM (their geometric mean: a pixel needs both)"

    def describe(self, cam, regions, segmenter_version):
        return f"fusion:{segmenter_version}+{cam}-{regions}"

    def maps(self, cam_maps, lesion_maps, labels):
        from explain.labelstudio.configs import NEGATIVE_CLASSES  # here: the command line reads SOURCES without these
        from explain.regions import resize_heatmap

        height, width = lesion_maps.shape[:2]
        evidence = [resize_heatmap(h, width, height) for name, _, h in cam_maps if name.lower() not in NEGATIVE_CLASSES]
        cam = np.clip(np.max(evidence, axis=0), 0.0, 1.0) if evidence else np.zeros((height, width), np.float32)
        fused = np.sqrt(np.clip(lesion_maps, 0.0, 1.0) * cam[..., None])
        return SegmenterSource().maps(cam_maps, fused, labels)


SOURCES: dict[str, Source] = {source.name: source() for source in (GradCamSource, SegmenterSource, FusionSource)}


def source_named(name: str) -> Source:
    """The registered source called ``name``; ValueError listing them otherwise."""
    if name not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {name!r}")
    return SOURCES[name]
