"""Batched, compiled Grad-CAM for any Keras image classifier.

The gradient computation is built once per (model, layer, method) and traced once by
``tf.function`` (any batch size reuses the same graph); one call handles a whole batch and also
returns the class probabilities, so no separate ``predict`` is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from explain.layers import FeatureForward
from explain.methods import EPS, METHODS


@dataclass(frozen=True)
class Target:
    """Which classes get a map: the predicted one, one named class, or every class above a probability."""

    kind: str = "predicted"
    class_name: str | None = None
    probability: float | None = None

    @classmethod
    def parse(cls, text: str) -> "Target":
        """``"predicted"``, ``"above:0.3"`` or a class name."""
        if text == "predicted":
            return cls()
        if text.startswith("above:"):
            try:
                probability = float(text.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"target {text!r}: expected above:<probability between 0 and 1>") from None
            if not 0.0 <= probability <= 1.0:
                raise ValueError(f"target {text!r}: probability must be between 0 and 1")
            return cls("above", probability=probability)
        return cls("class", class_name=text)

    def describe(self) -> str:
        if self.kind == "class":
            return f"class:{self.class_name}"
        if self.kind == "above":
            return f"above:{self.probability:g}"
        return "predicted"


@dataclass(frozen=True)
class ClassMap:
    """One class's heatmap for one image: (h, w) float32 in [0, 1] at the target layer's resolution."""

    class_index: int
    probability: float
    heatmap: np.ndarray


@dataclass(frozen=True)
class Explanation:
    """Probabilities (C,) and the maps of the targeted classes, most probable first, for one image."""

    probabilities: np.ndarray
    maps: tuple[ClassMap, ...]


class GradCam:
    """Class activation maps for a Keras classifier.

    Parameters
    ----------
    model : a Keras classifier with one image input (N, H, W, C) and one (N, classes) output.
    layer : target layer name; None takes the last layer with a 4-D output (inside nested models too).
    method : one of ``METHODS`` ("gradcam", "guided", "gradcam++", "hirescam", "layercam").
    score : "logit" differentiates the pre-softmax score (the Grad-CAM paper's choice) when the model
        ends in softmax / sigmoid; "probability" differentiates the output probability.
    batch_size : images per compiled call; larger inputs are processed in chunks.
    """

    def __init__(self, model, layer: str | None = None, method: str = "gradcam", score: str = "logit", batch_size: int = 32):
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.forward = FeatureForward(model, layer, score)
        self.layer_name = self.forward.layer_name
        self.method = method
        self.batch_size = batch_size
        self.input_shape = tuple(model.inputs[0].shape[1:])
        self._combine = METHODS[method]
        self._compiled = tf.function(
            self._maps,
            input_signature=[
                tf.TensorSpec((None, *self.input_shape), tf.float32),
                tf.TensorSpec((None,), tf.int32),
            ],
        )

    def _maps(self, inputs, class_indices):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            activations, scores = self.forward(inputs)
            probabilities = self.forward.probabilities(scores)
            predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            chosen = tf.where(class_indices < 0, predicted, class_indices)
            # Images are independent, so the gradient of the summed scores gives each image its own.
            total = tf.reduce_sum(tf.gather(scores, chosen, batch_dims=1))
        gradients = tape.gradient(total, activations)
        cams = self._combine(tf.cast(activations, tf.float32), tf.cast(gradients, tf.float32))
        low = tf.reduce_min(cams, axis=(1, 2), keepdims=True)
        high = tf.reduce_max(cams, axis=(1, 2), keepdims=True)
        heatmaps = (cams - low) / tf.maximum(high - low, EPS)
        return tf.cast(probabilities, tf.float32), chosen, heatmaps

    def compute(self, inputs: np.ndarray, class_indices=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Maps for one class per image.

        inputs : (N, H, W, C) float32, already preprocessed for the model.
        class_indices : (N,) ints, -1 (or None for all) meaning the predicted class.
        Returns probabilities (N, classes), the class index used (N,) and heatmaps (N, h, w) in [0, 1].
        """
        inputs = np.asarray(inputs, dtype=np.float32)
        if inputs.ndim != 4 or any(e is not None and e != a for e, a in zip(self.input_shape, inputs.shape[1:])):
            raise ValueError(f"inputs must have shape (N, {', '.join(map(str, self.input_shape))}), got {inputs.shape}")
        if class_indices is None:
            class_indices = np.full(len(inputs), -1, dtype=np.int32)
        class_indices = np.asarray(class_indices, dtype=np.int32)
        if class_indices.shape != (len(inputs),):
            raise ValueError(f"class_indices must have shape ({len(inputs)},), got {class_indices.shape}")
        parts = [
            self._compiled(tf.constant(inputs[i : i + self.batch_size]), tf.constant(class_indices[i : i + self.batch_size]))
            for i in range(0, len(inputs), self.batch_size)
        ]
        return tuple(np.concatenate([p[k].numpy() for p in parts]) for k in range(3))

    def explain(self, inputs: np.ndarray, target: Target = Target(), class_names=None) -> list[Explanation]:
        """Maps for the targeted classes of every image (see ``Target``).

        ``class_names`` (one per output) resolves ``Target.class_name``.
        """
        if target.kind == "class":
            names = list(class_names or [])
            if target.class_name not in names:
                raise ValueError(f"target class {target.class_name!r} is not one of the model's classes {names}")
            indices = np.full(len(inputs), names.index(target.class_name), dtype=np.int32)
            probabilities, chosen, heatmaps = self.compute(inputs, indices)
        else:
            probabilities, chosen, heatmaps = self.compute(inputs)
        maps = [[ClassMap(int(c), float(p[c]), h)] for p, c, h in zip(probabilities, chosen, heatmaps)]
        if target.kind == "above":
            maps = self._above(inputs, probabilities, maps, target.probability)
        return [Explanation(p, tuple(m)) for p, m in zip(probabilities, maps)]

    def _above(self, inputs, probabilities, maps, threshold):
        """Keep classes with probability >= threshold; compute the extra ones in one batched call."""
        pairs = [
            (n, c)
            for n, p in enumerate(probabilities)
            for c in np.flatnonzero(p >= threshold)
            if c != maps[n][0].class_index
        ]
        kept = [[m for m in image_maps if m.probability >= threshold] for image_maps in maps]
        if pairs:
            rows, classes = (np.array(v) for v in zip(*pairs))
            _, _, extra = self.compute(np.asarray(inputs)[rows], classes)
            for n, c, heatmap in zip(rows, classes, extra):
                kept[n].append(ClassMap(int(c), float(probabilities[n, c]), heatmap))
        return [sorted(m, key=lambda m: -m.probability) for m in kept]
