"""Class activation map methods: each turns activations and gradients into one map per image.

Every method takes ``activations`` and ``gradients`` of shape (N, h, w, K) (the target layer's
output and the gradient of the class score with respect to it) and returns (N, h, w), before
normalisation. Only the channel weighting differs, as in jacobgil/pytorch-grad-cam.
"""
from __future__ import annotations

import tensorflow as tf

EPS = 1e-7


def _weighted_sum(activations, weights):
    """ReLU(sum_k weights[n, k] * activations[n, :, :, k]) -> (N, h, w)."""
    return tf.nn.relu(tf.einsum("nhwk,nk->nhw", activations, weights))


def gradcam(activations, gradients):
    """Grad-CAM (Selvaraju et al. 2017): channel weights are the spatially averaged gradients."""
    return _weighted_sum(activations, tf.reduce_mean(gradients, axis=(1, 2)))


def guided(activations, gradients):
    """The reference article's "guided" Grad-CAM: weights average the gradients only where both
    the activation and the gradient are positive."""
    gate = tf.cast(activations > 0, gradients.dtype) * tf.cast(gradients > 0, gradients.dtype)
    return _weighted_sum(activations, tf.reduce_mean(gate * gradients, axis=(1, 2)))


def gradcam_plus_plus(activations, gradients):
    """Grad-CAM++ (Chattopadhay et al. 2018), with the exponential-score closed form of alpha."""
    grads2 = tf.square(gradients)
    grads3 = grads2 * gradients
    sum_activations = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
    denominator = 2 * grads2 + sum_activations * grads3
    alpha = tf.math.divide_no_nan(grads2, tf.where(tf.abs(denominator) < EPS, tf.ones_like(denominator), denominator))
    weights = tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=(1, 2))
    return _weighted_sum(activations, weights)


def hirescam(activations, gradients):
    """HiResCAM (Draelos & Carin 2020): element-wise gradient x activation, summed over channels."""
    return tf.nn.relu(tf.reduce_sum(gradients * activations, axis=-1))


def layercam(activations, gradients):
    """LayerCAM (Jiang et al. 2021): positive gradients weight each location, summed over channels."""
    return tf.nn.relu(tf.reduce_sum(tf.nn.relu(gradients) * activations, axis=-1))


METHODS = {
    "gradcam": gradcam,
    "guided": guided,
    "gradcam++": gradcam_plus_plus,
    "hirescam": hirescam,
    "layercam": layercam,
}
