"""Classifier builders: the reference article's InceptionV3 and a small CNN for demos and tests.

Nothing is downloaded: backbone weights are random (``weights=None``) or read from a local file.
"""
from __future__ import annotations

from pathlib import Path

import keras

from models.spec import ModelSpec

ARTICLE_CLASSES = ("covid", "normal", "pneumonia")


def build_inception_classifier(
    class_names=ARTICLE_CLASSES,
    input_size: tuple[int, int] = (256, 256),
    weights: str | Path | None = None,
    dropout: float = 0.3,
) -> tuple[keras.Model, ModelSpec]:
    """The article's classifier: InceptionV3 backbone (nested model) -> global average pool -> softmax.

    Input (N, H, W, 3) RGB scaled to [0, 1] (pixels / 255). ``weights`` is None (random) or a local
    InceptionV3 no-top weights file; "imagenet" is refused because it would download.
    """
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"weights must be None or a local weights file, got {str(weights)!r}")
    height, width = input_size
    backbone = keras.applications.InceptionV3(
        include_top=False, weights=None if weights is None else str(weights), input_shape=(height, width, 3)
    )
    inputs = keras.Input((height, width, 3), name="image")
    features = backbone(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    pooled = keras.layers.Dropout(dropout, name="dropout")(pooled)
    outputs = keras.layers.Dense(len(class_names), activation="softmax", name="predictions")(pooled)
    model = keras.Model(inputs, outputs, name="inception_classifier")
    spec = ModelSpec(input_size=(height, width), class_names=tuple(class_names), target_layer="mixed10")
    return model, spec


def build_small_cnn(
    class_names=ARTICLE_CLASSES,
    input_size: tuple[int, int] = (128, 128),
    channels: int = 3,
    filters: tuple[int, ...] = (16, 32, 64),
) -> tuple[keras.Model, ModelSpec]:
    """A small conv net (conv-batchnorm-relu blocks, the last one "features" -> global average pool -> softmax).

    Trains in minutes on a CPU; the Grad-CAM target is the 4-D ``features`` layer.
    """
    height, width = input_size
    inputs = keras.Input((height, width, channels), name="image")
    x = inputs
    for i, n in enumerate(filters):
        last = i == len(filters) - 1
        x = keras.layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"norm{i + 1}")(x)
        x = keras.layers.Activation("relu", name="features" if last else f"relu{i + 1}")(x)
        if not last:
            x = keras.layers.MaxPooling2D(name=f"pool{i + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(len(class_names), activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="small_cnn")
    spec = ModelSpec(
        input_size=(height, width), class_names=tuple(class_names), channels=channels, target_layer="features"
    )
    return model, spec


ARCHITECTURES = {"inception": build_inception_classifier, "small-cnn": build_small_cnn}
