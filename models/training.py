"""Training a classifier on images in memory, with augmentation, class weights and a stratified
(optionally patient-grouped) validation split."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from models.spec import ModelSpec


@dataclass(frozen=True)
class TrainingReport:
    """What a training run achieved; accuracies are those of the kept (best validation loss) epoch.

    class_weights : {class index: weight} passed to ``fit`` (None when off).
    confusion : (K, K) counts on the validation split with the kept weights, rows = true class,
    columns = predicted (None without a validation split).
    """

    epochs: int
    best_epoch: int
    train_accuracy: float
    val_accuracy: float | None
    history: dict
    class_weights: dict[int, float] | None = None
    confusion: np.ndarray | None = None

    def majority_baseline(self) -> tuple[int, float] | None:
        """(largest validation class, its share of the validation split): the accuracy of always
        guessing it; None without a validation split."""
        if self.confusion is None or self.confusion.sum() == 0:
            return None
        counts = self.confusion.sum(axis=1)
        largest = int(np.argmax(counts))
        return largest, float(counts[largest] / counts.sum())


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int, keys: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val), each class split by ``val_fraction`` (at least one val image per class
    that has two or more).

    ``keys`` (distinct ints, one per label, default the positions) are what the seeded shuffle
    orders; the returned indices are positions in ``labels`` either way.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    labels = np.asarray(labels)
    keys = np.arange(len(labels)) if keys is None else np.asarray(keys)
    position = {int(k): i for i, k in enumerate(keys)}
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(keys[labels == label])
        n_val = int(round(len(members) * val_fraction))
        if val_fraction > 0 and n_val == 0 and len(members) > 1:
            n_val = 1
        val.extend(position[int(k)] for k in members[:n_val])
        train.extend(position[int(k)] for k in members[n_val:])
    return np.array(sorted(train), dtype=int), np.array(sorted(val), dtype=int)


def patient_split(
    labels: np.ndarray, patients: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with every image of a patient on the same side.

    Each patient counts under its majority class (ties: the lower index) and each class's patients
    are split like ``stratified_split`` splits images; with one image per patient the result is
    exactly ``stratified_split``'s.
    """
    labels = np.asarray(labels)
    patients = np.asarray(patients)
    if len(patients) != len(labels):
        raise ValueError(f"need one patient per image, got {len(patients)} patients and {len(labels)} labels")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    _, first, inverse = np.unique(patients, return_index=True, return_inverse=True)
    order = np.argsort(first)  # patients numbered by their first image
    number = np.empty_like(order)
    number[order] = np.arange(len(order))
    patient_of = number[inverse.reshape(-1)]
    patient_class = np.array([np.bincount(labels[patient_of == p]).argmax() for p in range(len(order))])
    # Shuffling the patients' first-image indices makes one image per patient = stratified_split.
    _, val_patients = stratified_split(patient_class, val_fraction, seed, keys=first[order])
    in_val = np.isin(patient_of, val_patients)
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """{class index: weight} for the classes present in ``labels``: inverse frequency, scaled so
    that the weights' mean is 1 (balanced classes -> all 1)."""
    present, counts = np.unique(np.asarray(labels), return_counts=True)
    inverse = 1.0 / counts
    return {int(c): float(w) for c, w in zip(present, inverse / inverse.mean())}


def save_confusion(confusion: np.ndarray, class_names, path: Path) -> None:
    """Write a (K, K) confusion matrix as CSV: header ``true\\predicted,<names>``, one row per true class."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\predicted", *class_names])
        for name, row in zip(class_names, confusion):
            writer.writerow([name, *(int(v) for v in row)])


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
    patients: np.ndarray | None = None,
    balance_classes: bool = True,
    verbose: int = 1,
) -> TrainingReport:
    """Fit ``model`` in place.

    images : (N, H, W, 3) uint8 RGB already at ``spec.input_size``; labels : (N,) class indices.
    patients : (N,) patient ids; when given, each patient's images stay on one side of the split.
    balance_classes : weight the loss by ``class_weights`` of the training split.
    ``verbose`` is Keras' progress display (1 = progress bar, 2 = one line per epoch, 0 = silent).
    """
    images = np.asarray(images)
    labels = np.asarray(labels, dtype=np.int32)
    if images.ndim != 4 or images.shape[1:3] != spec.input_size or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, {spec.input_size[0]}, {spec.input_size[1]}, 3), got {images.shape}")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need one label per image, got {len(images)} images and {len(labels)} labels")
    keras.utils.set_random_seed(seed)
    if patients is None:
        train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    else:
        train_idx, val_idx = patient_split(labels, patients, val_fraction, seed)
    weights = class_weights(labels[train_idx]) if balance_classes else None
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
        callbacks=keep_best if validation is not None else [], class_weight=weights,
    )
    values = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    best = int(np.argmin(values["val_loss"])) if validation is not None else len(values["loss"]) - 1
    confusion = None
    if validation is not None:  # the kept epoch's weights are back in the model
        predicted = np.argmax(model.predict(validation, verbose=0), axis=-1)
        confusion = np.zeros((len(spec.class_names),) * 2, dtype=int)
        np.add.at(confusion, (labels[val_idx], predicted), 1)
    return TrainingReport(
        epochs=len(values["loss"]),
        best_epoch=best + 1,
        train_accuracy=values["accuracy"][best],
        val_accuracy=values["val_accuracy"][best] if validation is not None else None,
        history=values,
        class_weights=weights,
        confusion=confusion,
    )
