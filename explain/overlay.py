"""Pictures of a heatmap: colourised map, overlay on the image, and the article's three-panel figure."""
from __future__ import annotations

import cv2
import numpy as np

from explain.images import to_uint8

COLORMAPS = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "hot": cv2.COLORMAP_HOT,
    "bone": cv2.COLORMAP_BONE,
}


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """(H, W) float heatmap in [0, 1] -> (H, W, 3) uint8 RGB."""
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap must be one of {sorted(COLORMAPS)}, got {colormap!r}")
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {heatmap.shape}")
    return cv2.cvtColor(cv2.applyColorMap(to_uint8(heatmap), COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) float in [0, 1] -> (H, W, 3) uint8."""
    image = to_uint8(image)
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def overlay(image: np.ndarray, heatmap: np.ndarray, colormap: str = "jet", alpha: float = 0.4) -> np.ndarray:
    """Heatmap blended over the image: (H, W, 3) uint8 RGB, heatmap resized to the image if needed."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    base = to_rgb8(image)
    height, width = base.shape[:2]
    if heatmap.shape != (height, width):
        heatmap = cv2.resize(heatmap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(colorize(heatmap, colormap), alpha, base, 1.0 - alpha, 0.0)


def panel(image: np.ndarray, heatmap: np.ndarray, colormap: str = "jet", alpha: float = 0.4) -> np.ndarray:
    """original | heatmap | overlay side by side, (H, 3W, 3) uint8 RGB at the image's size."""
    base = to_rgb8(image)
    height, width = base.shape[:2]
    full = cv2.resize(heatmap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.concatenate([base, colorize(full, colormap), overlay(image, full, colormap, alpha)], axis=1)
