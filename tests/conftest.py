"""Shared pytest fixtures.

`shared_data` points at ../shared/data (internal research data, never committed). Tests that
need it skip with a clear reason on a clone without it; in CI it is always present.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test where this clone has none."""
    if not (SHARED_DATA / "cxr").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the shared research data at {SHARED_DATA}")
        pytest.skip(f"research data not found at {SHARED_DATA} (only present beside the team's checkouts)")
    return SHARED_DATA
