"""A small U-Net for lesion masks, trained on the corrected masks of a ``labeler export``."""
from __future__ import annotations

import keras

from models.spec import ModelSpec


def _conv_block(x, filters: int, name: str):
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_norm{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_unet(
    labels=("lesion",),
    input_size: tuple[int, int] = (128, 128),
    channels: int = 1,
    filters: tuple[int, ...] = (16, 32, 64, 128),
    dropout: float = 0.1,
    kind: str = "segmenter",
) -> tuple[keras.Model, ModelSpec]:
    """U-Net (Ronneberger et al. 2015) with batch norm: ``len(filters) - 1`` down/up levels.

    Input (N, H, W, channels) scaled to [0, 1]; output (N, H, W, len(labels)) sigmoid
    probabilities, one independent channel per label (labels may overlap). H and W must be
    divisible by 2 ** (len(filters) - 1). ``kind`` "clicker": the input carries the click channels
    after the image's (``ModelSpec.input_channels``: ``models.clicking``).
    """
    height, width = input_size
    levels = len(filters) - 1
    if levels < 1 or height % 2**levels or width % 2**levels:
        raise ValueError(f"input_size {input_size} must be divisible by {2 ** max(levels, 1)} for {len(filters)} filter levels")
    spec = ModelSpec(input_size=(height, width), class_names=tuple(labels), channels=channels, kind=kind)
    inputs = keras.Input((height, width, spec.input_channels), name="image")
    skips, x = [], inputs
    for level, n in enumerate(filters[:-1]):
        x = _conv_block(x, n, f"down{level + 1}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(name=f"pool{level + 1}")(x)
    x = _conv_block(x, filters[-1], "bottom")
    x = keras.layers.Dropout(dropout, name="bottom_dropout")(x)
    for level in reversed(range(levels)):
        x = keras.layers.Conv2DTranspose(filters[level], 2, strides=2, name=f"up{level + 1}_transpose")(x)
        x = keras.layers.Concatenate(name=f"up{level + 1}_concat")([x, skips[level]])
        x = _conv_block(x, filters[level], f"up{level + 1}")
    # Start from "almost nothing is lesion" (bias = logit of 1 %): lesions are a few percent of the
    # pixels, and a 0.5 start spends the first epochs unlearning false positives.
    prior = keras.initializers.Constant(-4.6)
    outputs = keras.layers.Conv2D(len(labels), 1, activation="sigmoid", bias_initializer=prior, name="masks")(x)
    model = keras.Model(inputs, outputs, name="unet")
    return model, spec
