"""Training a segmenter (e.g. ``models.unet``) on images and masks in memory, and running it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import keras
import numpy as np
import tensorflow as tf

from models.loading import LoadedModel
from models.spec import ModelSpec


@dataclass(frozen=True)
class SegmenterReport:
    """What a training run achieved; the Dice values (threshold 0.5, mean over images and labels)
    are those of the kept epoch (best validation loss, or the last one without validation)."""

    epochs: int
    best_epoch: int
    train_dice: float
    val_dice: float | None
    history: dict


def dice_loss(truth, predicted, smooth: float = 1.0):
    """1 - soft Dice per image and label, averaged; truth and predicted (N, H, W, L) in [0, 1]."""
    truth = tf.cast(truth, predicted.dtype)
    overlap = tf.reduce_sum(truth * predicted, axis=(1, 2))
    total = tf.reduce_sum(truth, axis=(1, 2)) + tf.reduce_sum(predicted, axis=(1, 2))
    return 1.0 - tf.reduce_mean((2.0 * overlap + smooth) / (total + smooth))


def bce_dice_loss(truth, predicted):
    """Binary cross-entropy (pixel-wise, stable on small lesions' imbalance with the Dice term) + Dice loss."""
    truth = tf.cast(truth, predicted.dtype)
    return tf.reduce_mean(keras.losses.binary_crossentropy(truth, predicted)) + dice_loss(truth, predicted)


def hard_dice(truth, predicted):
    """Dice of ``predicted >= 0.5`` per image and label (both empty counts 1), averaged."""
    truth = tf.cast(truth > 0.5, tf.float32)
    hard = tf.cast(predicted >= 0.5, tf.float32)
    overlap = tf.reduce_sum(truth * hard, axis=(1, 2))
    total = tf.reduce_sum(truth, axis=(1, 2)) + tf.reduce_sum(hard, axis=(1, 2))
    return tf.reduce_mean(tf.where(total > 0, 2.0 * overlap / tf.maximum(total, 1.0), 1.0))


def joint_augmentation(seed: int) -> keras.Sequential:
    """The same random rotation, zoom and shift for an image and its masks (stacked as channels)."""
    return keras.Sequential(
        [
            keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed),
        ],
        name="joint_augmentation",
    )


def train_segmenter(
    model: keras.Model,
    spec: ModelSpec,
    images: np.ndarray,
    masks: np.ndarray,
    val_images: np.ndarray | None = None,
    val_masks: np.ndarray | None = None,
    *,
    epochs: int = 30,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    seed: int = 0,
    augment: bool = True,
    verbose: int = 1,
    callbacks=(),
) -> SegmenterReport:
    """Fit ``model`` in place with BCE + Dice loss, keeping the epoch with the best validation loss.

    images : (N, H, W, 3) uint8 RGB at ``spec.input_size``; masks : (N, H, W, L) 0/1 with L =
    ``len(spec.class_names)``. The validation pair, when given, has the same layout; ``callbacks``
    are more Keras callbacks (e.g. progress reports).
    """
    images, masks = _check_pair(spec, images, masks, "")
    validation = None
    if val_images is not None and len(val_images):
        validation = _check_pair(spec, val_images, val_masks, "val_")
    keras.utils.set_random_seed(seed)
    jitter = joint_augmentation(seed) if augment else None
    contrast = keras.layers.RandomContrast(0.2, seed=seed) if augment else None
    labels = masks.shape[-1]

    def to_input(batch):
        return tf.ensure_shape(
            tf.numpy_function(lambda b: spec.preprocess(b.astype(np.float32) / 255.0), [batch], tf.float32),
            (None, *spec.input_size, spec.channels),
        )

    def augmented(x, y):
        stacked = jitter(tf.concat([tf.cast(x, tf.float32), tf.cast(y, tf.float32) * 255.0], -1), training=True)
        x, y = stacked[..., :3], tf.cast(stacked[..., 3:] > 127.5, tf.float32)
        return tf.clip_by_value(contrast(x, training=True), 0.0, 255.0), y

    def dataset(x, y, training):
        data = tf.data.Dataset.from_tensor_slices((x, y.astype(np.float32)))
        if training:
            data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        data = data.batch(batch_size)
        if training and augment:
            data = data.map(augmented)
        data = data.map(lambda a, b: (to_input(a), tf.ensure_shape(b, (None, *spec.input_size, labels))))
        return data.prefetch(tf.data.AUTOTUNE)

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=bce_dice_loss, metrics=[hard_dice])
    keep_best = [keras.callbacks.EarlyStopping("val_loss", patience=epochs, restore_best_weights=True)]
    history = model.fit(
        dataset(images, masks, True),
        validation_data=dataset(*validation, False) if validation else None,
        epochs=epochs, verbose=verbose, callbacks=(keep_best if validation else []) + list(callbacks),
    )
    values = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    best = int(np.argmin(values["val_loss"])) if validation else len(values["loss"]) - 1
    return SegmenterReport(
        epochs=len(values["loss"]),
        best_epoch=best + 1,
        train_dice=values["hard_dice"][best],
        val_dice=values["val_hard_dice"][best] if validation else None,
        history=values,
    )


def fit_unet(
    labels, images: np.ndarray, masks: np.ndarray, val_images: np.ndarray | None, val_masks: np.ndarray | None, *,
    size: int = 128, filters: tuple[int, ...] = (16, 32, 64, 128), epochs: int = 30, batch_size: int = 8,
    learning_rate: float = 1e-3, seed: int = 0, augment: bool = True, verbose: int = 2, callbacks=(),
) -> tuple[keras.Model, ModelSpec, SegmenterReport]:
    """A new U-Net (``models.unet``) for ``labels`` at ``size`` x ``size``, trained by
    ``train_segmenter`` on the (N, size, size, 3) uint8 images and (N, size, size, len(labels)) 0/1
    masks; ``seed`` fixes the initial weights too, so that a run is reproduced. What ``labeler
    train-segmenter`` and the backend's training jobs both call."""
    from models.unet import build_unet

    keras.utils.set_random_seed(seed)
    model, spec = build_unet(tuple(labels), (size, size), filters=tuple(filters))
    report = train_segmenter(
        model, spec, images, masks, val_images, val_masks, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, seed=seed, augment=augment, verbose=verbose, callbacks=callbacks,
    )
    return model, spec, report


def _check_pair(spec: ModelSpec, images, masks, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images, masks = np.asarray(images), np.asarray(masks)
    expected = (*spec.input_size, 3)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"{prefix}images must be (N, {expected[0]}, {expected[1]}, 3), got {images.shape}")
    if masks.shape != (*images.shape[:3], len(spec.class_names)):
        raise ValueError(
            f"{prefix}masks must be (N, {expected[0]}, {expected[1]}, {len(spec.class_names)}) for "
            f"{len(images)} images, got {masks.shape}"
        )
    if not len(images):
        raise ValueError(f"{prefix}images: need at least one image")
    return images, masks


class Segmenter:
    """A loaded segmenter as a source of lesion maps (``explain.prelabel.LesionMaps``).

    ``labels`` names the output channels; ``version`` is the weights' id.
    """

    def __init__(self, loaded: LoadedModel, batch_size: int = 16):
        if loaded.spec.kind != "segmenter":
            raise ValueError(f"{loaded.path.name}: this is a {loaded.spec.kind}, not a segmenter")
        self.model, self.spec, self.version = loaded.model, loaded.spec, loaded.version
        self.labels = loaded.spec.class_names
        self.batch_size = batch_size
        shape = (None, *self.spec.input_size, self.spec.channels)
        self._forward = tf.function(
            lambda x: self.model(x, training=False), input_signature=[tf.TensorSpec(shape, tf.float32)]
        )

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Images (each (H, W, 3) float in [0, 1], any size) -> (N, h, w, labels) float32
        probabilities at the model's ``input_size`` (h, w)."""
        height, width = self.spec.input_size
        if not len(images):
            return np.zeros((0, height, width, len(self.labels)), np.float32)
        resized = [cv2.resize(np.asarray(im, np.float32), (width, height), interpolation=cv2.INTER_AREA) for im in images]
        batch = self.spec.preprocess(np.stack(resized))
        parts = [self._forward(batch[i : i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        return np.concatenate([np.asarray(p, np.float32) for p in parts])
