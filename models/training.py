"""Training a classifier on images in memory, with augmentation and a stratified validation split."""
from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from models.spec import ModelSpec


@dataclass(frozen=True)
class TrainingReport:
    """What a training run achieved; accuracies are those of the kept (best validation loss) epoch."""

    epochs: int
    best_epoch: int
    train_accuracy: float
    val_accuracy: float | None
    history: dict


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), each class split by ``val_fraction`` (at least one val image per class
    that has two or more)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(members) * val_fraction))
        if val_fraction > 0 and n_val == 0 and len(members) > 1:
            n_val = 1
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.array(sorted(train), dtype=int), np.array(sorted(val), dtype=int)


def augmentation(seed: int) -> keras.Sequential:
    """Mild geometric and contrast jitter for radiographs (no flips: the heart's side matters)."""
    return keras.Sequential(
        [
            keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed),
            keras.layers.RandomContrast(0.2, seed=seed),
        ],
        name="augmentation",
    )


def train_classifier(
    model: keras.Model,
    spec: ModelSpec,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 16,
    val_fraction: float = 0.2,
    learning_rate: float = 1e-3,
    seed: int = 0,
    augment: bool = True,
    verbose: int = 1,
) -> TrainingReport:
    """Fit ``model`` in place.

    images : (N, H, W, 3) uint8 RGB already at ``spec.input_size``; labels : (N,) class indices.
    ``verbose`` is Keras' progress display (1 = progress bar, 2 = one line per epoch, 0 = silent).
    """
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int32)
    if images.ndim != 4 or images.shape[1:3] != spec.input_size or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, {spec.input_size[0]}, {spec.input_size[1]}, 3), got {images.shape}")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need one label per image, got {len(images)} images and {len(labels)} labels")
    keras.utils.set_random_seed(seed)
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    jitter = augmentation(seed) if augment else None

    def dataset(indices, training):
        data = tf.data.Dataset.from_tensor_slices((images[indices], labels[indices]))
        if training:
            data = data.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
        data = data.batch(batch_size)
        to_input = lambda x: tf.numpy_function(
            lambda b: spec.preprocess(b.astype(np.float32) / 255.0), [x], tf.float32
        )
        if training and jitter is not None:
            data = data.map(lambda x, y: (jitter(tf.cast(x, tf.float32), training=True), y))
            data = data.map(lambda x, y: (tf.clip_by_value(x, 0.0, 255.0), y))
        data = data.map(lambda x, y: (tf.ensure_shape(to_input(x), (None, *spec.input_size, spec.channels)), y))
        return data.prefetch(tf.data.AUTOTUNE)

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    validation = dataset(val_idx, False) if len(val_idx) else None
    # Keep the epoch with the best validation loss: small medical sets make the last epoch noisy.
    keep_best = [keras.callbacks.EarlyStopping("val_loss", patience=epochs, restore_best_weights=True)]
    history = model.fit(
        dataset(train_idx, True), validation_data=validation, epochs=epochs, verbose=verbose,
        callbacks=keep_best if validation is not None else [],
    )
    values = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    best = int(np.argmin(values["val_loss"])) if validation is not None else len(values["loss"]) - 1
    return TrainingReport(
        epochs=len(values["loss"]),
        best_epoch=best + 1,
        train_accuracy=values["accuracy"][best],
        val_accuracy=values["val_accuracy"][best] if validation is not None else None,
        history=values,
    )
