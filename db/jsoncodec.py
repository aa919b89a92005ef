"""JSON text for database columns and fingerprints; numpy scalars and arrays become plain numbers."""
from __future__ import annotations

import json
from typing import Any

import numpy as np


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> str:
    """JSON text as stored in JSON columns (NaN and infinities are refused)."""
    return json.dumps(value, default=_default, allow_nan=False)


def canonical(value: Any) -> str:
    """Deterministic JSON text (sorted keys, no spaces) for hashing."""
    return json.dumps(value, default=_default, allow_nan=False, sort_keys=True, separators=(",", ":"))
