"""How sure a pre-label is: the score sent to Label Studio with every prediction, in [0, 1].

Label Studio sorts the Data Manager by it and its "Uncertainty sampling" hands annotators the
task with the LOWEST score next, so a low score means "the model is unsure here" (whether that
order trains a better segmenter than random order is measured by benchmarks/learning_curve.py:
on our data it does not):

- a segmenter's maps (sources "segmenter" and "fusion"): 1 - the mean binary entropy (bits) of its
  per-pixel lesion probabilities, over the region of interest (the lungs, when an anatomy prior is
  active) and every label: 1 where it is sure of every pixel, 0 where every pixel is a coin toss;
- the classifier alone (source "gradcam"): the predicted class's probability.
"""
from __future__ import annotations

import cv2
import numpy as np

_EPS = 1e-6


def class_confidence(probabilities: np.ndarray) -> float:
    """The largest of the (C,) class probabilities."""
    return float(np.max(probabilities))


def map_confidence(maps: np.ndarray, roi_map: np.ndarray | None = None) -> float:
    """1 - mean binary entropy of ``maps`` ((h, w, labels) or (h, w) probabilities), over the
    pixels where ``roi_map`` (any (h', w') probability map, resized to (h, w)) is >= 0.5; over
    every pixel without one, or when the region of interest is empty."""
    p = np.clip(np.asarray(maps, np.float32), _EPS, 1 - _EPS)
    p = p.reshape(p.shape[0], p.shape[1], -1)
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p)).mean(axis=2)
    if roi_map is not None:
        inside = cv2.resize(np.asarray(roi_map, np.float32), (p.shape[1], p.shape[0]), interpolation=cv2.INTER_LINEAR) >= 0.5
        if inside.any():
            entropy = entropy[inside]
    return float(np.clip(1.0 - entropy.mean(), 0.0, 1.0))
