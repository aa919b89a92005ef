"""Grad-CAM engine on tiny Keras models built here, checked against closed forms and direct code."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from explain.gradcam import GradCam, Target
from explain.layers import layer_path
from explain.methods import METHODS

SIZE = (20, 24)
CLASSES = 3


def cam_model(seed=0, activation="softmax"):
    """conv -> global average pool -> dense: the architecture where Grad-CAM equals CAM."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv0")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(CLASSES, activation=activation, name="dense")(x)
    return keras.Model(inputs, outputs)


def images(n=4, seed=1):
    return np.random.default_rng(seed).random((n, *SIZE, 3), dtype=np.float32)


def minmax(maps):
    low = maps.min(axis=(-2, -1), keepdims=True)
    high = maps.max(axis=(-2, -1), keepdims=True)
    return (maps - low) / np.maximum(high - low, 1e-7)


def test_gradcam_equals_class_activation_map_up_to_positive_scale():
    model = cam_model()
    x = images()
    features = keras.Model(model.input, model.get_layer("conv").output)(x).numpy()
    kernel = model.get_layer("dense").get_weights()[0]  # (channels, classes)
    engine = GradCam(model, layer="conv", method="gradcam")
    for c in range(CLASSES):
        _, chosen, heat = engine.compute(x, np.full(len(x), c))
        cam = np.maximum(np.einsum("nhwk,k->nhw", features, kernel[:, c]), 0)
        assert (chosen == c).all()
        assert cam.max() > 0
        np.testing.assert_allclose(heat, minmax(cam), atol=1e-4)


def test_guided_matches_direct_per_image_article_formula():
    model = cam_model(seed=3)
    x = images(3, seed=4)
    engine = GradCam(model, layer="conv", method="guided", score="probability")
    probabilities, chosen, heat = engine.compute(x)
    grad_model = keras.Model(model.input, [model.get_layer("conv").output, model.output])
    for n in range(len(x)):
        with tf.GradientTape() as tape:
            conv, predictions = grad_model(x[n : n + 1])
            index = int(np.argmax(predictions[0]))
            loss = predictions[:, index]
        output, grads = conv[0].numpy(), tape.gradient(loss, conv)[0].numpy()
        guided_grads = (output > 0) * (grads > 0) * grads
        weights = guided_grads.mean(axis=(0, 1))
        cam = np.maximum(np.tensordot(output, weights, axes=([2], [0])), 0)
        assert chosen[n] == index
        np.testing.assert_allclose(probabilities[n], predictions[0].numpy(), atol=1e-6)
        np.testing.assert_allclose(heat[n], minmax(cam), atol=1e-4)


def test_hirescam_equals_gradcam_on_a_pooled_dense_head():
    model, x = cam_model(seed=5), images(seed=6)
    np.testing.assert_allclose(
        GradCam(model, method="hirescam").compute(x)[2], GradCam(model, method="gradcam").compute(x)[2], atol=1e-5
    )


def test_layercam_keeps_only_positive_class_weights():
    model, x = cam_model(seed=7), images(seed=8)
    features = keras.Model(model.input, model.get_layer("conv").output)(x).numpy()
    kernel = model.get_layer("dense").get_weights()[0]
    _, chosen, heat = GradCam(model, method="layercam").compute(x)
    expected = np.einsum("nhwk,nk->nhw", features, np.maximum(kernel[:, chosen].T, 0))
    np.testing.assert_allclose(heat, minmax(expected), atol=1e-4)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_gives_finite_maps_in_unit_range(method):
    _, _, heat = GradCam(cam_model(), method=method).compute(images())
    assert heat.shape == (4, *SIZE)
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1 + 1e-6


@pytest.mark.parametrize("method", sorted(METHODS))
def test_flat_activations_give_zero_map_not_nan(method):
    model = cam_model()
    layer = model.get_layer("conv")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), np.full_like(bias, 0.5)])
    heat = GradCam(model, layer="conv", method=method).compute(images())[2]
    assert np.isfinite(heat).all() and (heat == 0).all()


def test_batch_gives_the_same_maps_as_one_image_at_a_time():
    model, x = cam_model(), images(7)
    engine = GradCam(model, method="gradcam++", batch_size=3)
    probabilities, chosen, heat = engine.compute(x)
    for n in range(len(x)):
        p, c, h = engine.compute(x[n : n + 1])
        np.testing.assert_allclose(p[0], probabilities[n], atol=1e-6)
        assert c[0] == chosen[n]
        np.testing.assert_allclose(h[0], heat[n], atol=1e-5)


def test_probabilities_are_the_model_predictions():
    model, x = cam_model(), images()
    probabilities, chosen, _ = GradCam(model).compute(x)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert (chosen == expected.argmax(axis=1)).all()


def nested_models():
    """The same weights as ``cam_model()``, with the conv part as a nested backbone."""
    flat = cam_model()
    backbone = keras.Model(flat.inputs, flat.get_layer("conv").output, name="backbone")
    gap, dense = flat.get_layer("gap"), flat.get_layer("dense")
    sequential = keras.Sequential([keras.Input((*SIZE, 3)), backbone, gap, dense], name="seq")
    inputs = keras.Input((*SIZE, 3))
    functional = keras.Model(inputs, dense(gap(backbone(inputs))), name="func")
    unbuilt = keras.Sequential([backbone, gap, dense], name="unbuilt")
    return flat, [sequential, functional, unbuilt]


def test_nested_backbone_in_sequential_and_functional_gives_the_flat_maps():
    flat, nested = nested_models()
    x = images()
    expected = GradCam(flat, method="gradcam").compute(x)
    for model in nested:
        engine = GradCam(model, method="gradcam")
        assert [layer.name for layer in engine.forward.path] == ["backbone", "conv"]
        for got, want in zip(engine.compute(x), expected):
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_target_layer_found_automatically_or_by_name():
    assert [layer.name for layer in layer_path(cam_model())] == ["conv"]
    assert [layer.name for layer in layer_path(cam_model(), "conv0")] == ["conv0"]
    with pytest.raises(ValueError, match="'nope' not found"):
        GradCam(cam_model(), layer="nope")
    with pytest.raises(ValueError, match="'dense'.*not 4-D"):
        GradCam(cam_model(), layer="dense")
    with pytest.raises(ValueError, match="method must be one of"):
        GradCam(cam_model(), method="magic")


def test_logit_score_differs_from_probability_score_and_is_used_by_default():
    model, x = cam_model(seed=11), images(seed=12)
    assert GradCam(model).forward.score == "logit"
    logit = GradCam(model, method="gradcam").compute(x)[2]
    probability = GradCam(model, method="gradcam", score="probability").compute(x)[2]
    assert np.abs(logit - probability).max() > 1e-3
    linear = cam_model(activation=None)
    assert GradCam(linear).forward.score == "output"


def test_targets_predicted_named_and_above_probability():
    model, x = cam_model(), images(5)
    engine = GradCam(model)
    names = ["covid", "normal", "pneumonia"]
    probabilities = model.predict(x, verbose=0)
    predicted = engine.explain(x, Target.parse("predicted"), names)
    assert [e.maps[0].class_index for e in predicted] == list(probabilities.argmax(axis=1))
    named = engine.explain(x, Target.parse("normal"), names)
    assert all(len(e.maps) == 1 and e.maps[0].class_index == 1 for e in named)
    for threshold in (0.0, 0.3, 1.0):
        above = engine.explain(x, Target.parse(f"above:{threshold}"), names)
        for n, (explanation, p) in enumerate(zip(above, probabilities)):
            wanted = sorted(np.flatnonzero(p >= threshold), key=lambda c: -p[c])
            assert [m.class_index for m in explanation.maps] == wanted
            for m in explanation.maps:
                single = engine.compute(x[n : n + 1], [m.class_index])[2][0]
                np.testing.assert_allclose(m.heatmap, single, atol=1e-5)
    with pytest.raises(ValueError, match="'lungs' is not one of the model's classes"):
        engine.explain(x, Target.parse("lungs"), names)
    with pytest.raises(ValueError, match="above:<probability"):
        Target.parse("above:x")


def gradcam_plus_plus_reference(head, activations: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM++ of one image from the paper's definition (Chattopadhay et al. 2018, eq. 19 with
    Y = exp(S)), the derivatives taken by autodiff, not from a closed form.

    ``head`` maps target-layer activations (M, h, w, K) to class scores S (M, classes);
    ``activations`` is one image's (h, w, K). For every activation A_ij^k, the first three
    derivatives of Y = exp(S_c) along A_ij^k alone come from nested GradientTapes on a scalar
    offset t per element (row m of the batch moves element m only, so each row's derivative
    is its own); then alpha = Y'' / (2 Y'' + sum_ab A_ab^k Y'''), w_k = sum_ij alpha * relu(Y'),
    map = relu(sum_k w_k A^k) (the exp(S) factor of Y' only scales the map).
    """
    shape = activations.shape
    size = activations.size
    basis = tf.reshape(tf.eye(size, dtype=tf.float32), (size, *shape))  # row m: the unit step of element m
    base = tf.constant(activations[None], tf.float32)
    t = tf.Variable(tf.zeros(size, tf.float32))
    with tf.GradientTape() as tape3:
        with tf.GradientTape() as tape2:
            with tf.GradientTape() as tape1:
                moved = base + t[:, None, None, None] * basis
                y = tf.exp(head(moved)[:, class_index])  # (M,): row m depends on t[m] only
            d1 = tape1.gradient(y, t)
        d2 = tape2.gradient(d1, t)
    d3 = tape3.gradient(d2, t)
    d1, d2, d3 = (tf.reshape(d, shape).numpy().astype(np.float64) for d in (d1, d2, d3))
    sums = activations.astype(np.float64).sum(axis=(0, 1))  # sum_ab A_ab^k, (K,)
    denominator = 2 * d2 + sums * d3
    alpha = np.divide(d2, denominator, out=np.zeros_like(d2), where=denominator != 0)
    weights = (alpha * np.maximum(d1, 0)).sum(axis=(0, 1))
    return np.maximum(np.tensordot(activations, weights, axes=([2], [0])), 0)


def test_gradcam_plus_plus_matches_the_papers_definition():
    """On a model whose head after the target layer is a ReLU conv (so gradients vary over the
    map and some are negative), the engine's Grad-CAM++ equals the reference of the paper."""
    keras.utils.set_random_seed(21)
    inputs = keras.Input((12, 10, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="target")(inputs)
    x = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="after")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="dense")(x)
    model = keras.Model(inputs, outputs)
    kernel, bias = model.get_layer("dense").get_weights()

    def head(activations):  # target activations -> pre-softmax scores, the engine's default "logit"
        pooled = model.get_layer("gap")(model.get_layer("after")(activations))
        return tf.matmul(pooled, kernel) + bias

    x = np.random.default_rng(22).random((3, 12, 10, 3), dtype=np.float32)
    features = keras.Model(model.input, model.get_layer("target").output)(x).numpy()
    engine = GradCam(model, layer="target", method="gradcam++")
    _, chosen, heat = engine.compute(x)
    gradcam = GradCam(model, layer="target", method="gradcam").compute(x)[2]
    # 1e-3, not 1e-4: explain/methods.py replaces a denominator below 1e-7 by 1, so a positive
    # gradient under ~2e-4 gets alpha = grad^2 (about 0) instead of 1 / (2 + sum(A) grad) (about
    # 1/2); on these images that moves the normalised map by up to 2e-4. Grad-CAM is 0.4 away.
    for n in range(len(x)):
        expected = minmax(gradcam_plus_plus_reference(head, features[n], int(chosen[n])))
        assert expected.max() > 0
        np.testing.assert_allclose(heat[n], expected, atol=1e-3)
        assert np.abs(gradcam[n] - expected).max() > 1e-2, "Grad-CAM would pass this test too"
    # the three classes, not only the predicted one
    for c in range(CLASSES):
        heat_c = engine.compute(x[:1], [c])[2][0]
        np.testing.assert_allclose(heat_c, minmax(gradcam_plus_plus_reference(head, features[0], c)), atol=1e-3)
