"""Compact, self-describing storage of low-resolution heatmaps.

Layout: ``b"CAM"``, format version (1 byte), height and width (uint32 little-endian), then
zlib of the values quantised to uint8 as ``round(v * 255)`` in row-major order. The round trip
is lossy: every decoded value lies within 0.5/255 of the original.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

_MAGIC = b"CAM"
_VERSION = 1
_HEADER = struct.Struct("<3sBII")
_LEVELS = 255
_TOLERANCE = 1e-6


def encode_heatmap(heatmap: np.ndarray) -> bytes:
    """Encode a heatmap for the ``predictions.heatmap`` column.

    Parameters
    ----------
    heatmap : np.ndarray
        (H, W) float (or integer) values in [0, 1], e.g. the Grad-CAM map at the layer's
        resolution before upsampling.

    Returns
    -------
    bytes
        About 11 bytes of header plus the zlib stream (an 8x8 map takes well under 100 bytes).
    """
    array = np.asarray(heatmap)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"heatmap must be numeric, got dtype {array.dtype}")
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("heatmap must be finite, got NaN or infinity")
    low, high = float(values.min()), float(values.max())
    if low < -_TOLERANCE or high > 1 + _TOLERANCE:
        raise ValueError(f"heatmap values must lie in [0, 1], got range [{low}, {high}]")
    quantised = np.rint(np.clip(values, 0.0, 1.0) * _LEVELS).astype(np.uint8)
    height, width = array.shape
    return _HEADER.pack(_MAGIC, _VERSION, height, width) + zlib.compress(quantised.tobytes(), 9)


def decode_heatmap(data: bytes) -> np.ndarray:
    """Decode bytes from `encode_heatmap` to an (H, W) float32 array in [0, 1]."""
    if len(data) < _HEADER.size:
        raise ValueError(f"heatmap data too short: {len(data)} bytes")
    magic, version, height, width = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        raise ValueError(f"not a version {_VERSION} heatmap encoding (header {bytes(data[:4])!r})")
    raw = zlib.decompress(data[_HEADER.size:])
    if len(raw) != height * width:
        raise ValueError(f"heatmap data holds {len(raw)} values, header says {height}x{width}")
    quantised = np.frombuffer(raw, dtype=np.uint8).reshape(height, width)
    return quantised.astype(np.float32) / np.float32(_LEVELS)
