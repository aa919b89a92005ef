"""Reaching a Grad-CAM target layer inside any Keras classifier, nested backbones included.

``FeatureForward(model, layer)`` runs the model once and returns both the target layer's
activations and the class scores (logits when the model ends in softmax / sigmoid), so that
gradients of the scores with respect to the activations come from the same forward pass.
"""
from __future__ import annotations

import keras

SQUASHING = ("softmax", "sigmoid")


def layer_path(model: keras.Model, name: str | None = None) -> list[keras.layers.Layer]:
    """Containers from ``model`` down to the target layer, target last.

    ``name`` None finds the last layer with a 4-D output (batch, rows, cols, channels),
    looking inside nested models. Raises ValueError naming the layer when there is none.
    """
    path = _find(model, name)
    if path is None:
        if name is None:
            raise ValueError(f"model {model.name!r} has no layer with a 4-D output to explain")
        raise ValueError(f"layer {name!r} not found in model {model.name!r} (nested models searched too)")
    if len(path[-1].output.shape) != 4:
        raise ValueError(f"layer {name!r} has output shape {tuple(path[-1].output.shape)}, not 4-D")
    return path


def _find(model, name):
    for layer in reversed(model.layers):
        if isinstance(layer, keras.Model):
            inner = _find(layer, name)
            if inner is not None:
                return [layer, *inner]
        if (layer.name == name) if name else _is_feature_map(layer):
            return [layer]
    return None


def _is_feature_map(layer) -> bool:
    if isinstance(layer, keras.layers.InputLayer):
        return False
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):
        return False


def _final_layer(model: keras.Model):
    """The operation that produces the model's (single) output."""
    if isinstance(model, keras.Sequential):
        return model.layers[-1]
    return model.outputs[0]._keras_history.operation


def _squashing(layer) -> str | None:
    """Name of the output squashing of ``layer`` ("softmax", "sigmoid", ...) or None."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    return getattr(getattr(layer, "activation", None), "__name__", None)


def _linear_twin(layer):
    """A callable computing ``layer`` without its squashing (weights copied once)."""
    if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
        return lambda inputs, **kwargs: inputs
    twin = layer.__class__.from_config({**layer.get_config(), "activation": "linear", "name": layer.name + "_logits"})
    twin.build(layer.input.shape)
    twin.set_weights(layer.get_weights())
    return twin


class FeatureForward:
    """Callable ``images -> (activations, scores)`` for one (model, target layer).

    activations: (N, h, w, K) output of the target layer; scores: (N, C), the model's logits
    when its last layer squashes with softmax / sigmoid (``score="logit"``), else its outputs.
    Built once; call it inside a ``tf.GradientTape``.
    """

    def __init__(self, model: keras.Model, layer: str | None = None, score: str = "logit"):
        if score not in ("logit", "probability"):
            raise ValueError(f"score must be 'logit' or 'probability', got {score!r}")
        self.model = model
        self.path = layer_path(model, layer)
        self.layer_name = self.path[-1].name
        final = _final_layer(model)
        self.squashing = _squashing(final)
        self._replacements = {}
        if self.squashing not in SQUASHING:
            self.score = "output"
        elif score == "logit":
            self._replacements[id(final)] = _linear_twin(final)
            self.score = "logit"
        else:
            self.score = "probability"

    def __call__(self, images):
        captured = []
        scores = self._run(self.model, images, self.path, captured)
        return captured[0], scores

    def probabilities(self, scores):
        """Class probabilities (N, C) from the scores this forward returned."""
        if self.score != "logit":
            return scores
        return keras.ops.softmax(scores) if self.squashing == "softmax" else keras.ops.sigmoid(scores)

    def _run(self, model, x, path, captured):
        head, rest = path[0], path[1:]

        def substitute(op):
            if op is head and not rest:
                return lambda *args, **kwargs: _keep(captured, op(*args, **kwargs))
            if op is head:
                return lambda inputs, **kwargs: self._run(op, inputs, rest, captured)
            return self._replacements.get(id(op), op)

        if isinstance(model, keras.Sequential):
            if model._functional is None:
                for layer in model.layers:
                    x = substitute(layer)(x)
                return x
            model = model._functional
        # Keras 3 has no public hook to read an inner layer's output during a call; running the
        # graph with one operation swapped reaches nested backbones without rebuilding the model.
        outputs = model._run_through_graph(x, operation_fn=substitute)
        return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def _keep(captured: list, tensor):
    captured.append(tensor)
    return tensor
