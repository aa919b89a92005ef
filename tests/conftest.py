"""Shared pytest fixtures.

`shared_data` points at ../shared/data (internal research data, never committed). Tests that
need it skip with a clear reason on a clone without it; in CI it is always present.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:  # tests/labelstudio.py is imported by name
    sys.path.insert(0, str(REPO / "tests"))
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips the test where this clone has none."""
    if not (SHARED_DATA / "cxr").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the shared research data at {SHARED_DATA}")
        pytest.skip(f"research data not found at {SHARED_DATA} (only present beside the team's checkouts)")
    return SHARED_DATA


# --- Label Studio end-to-end server (tests/labelstudio.py) -----------------------------------
# A real label-studio 1.23 in its own cached venv (.cache/label-studio-venv), started once per
# session on a free 127.0.0.1 port with a fresh data dir, admin user and legacy token. An
# install or start failure is raised, so every test using the fixture ERRORS (it never skips).
@pytest.fixture(scope="session")
def label_studio():
    """A running `labelstudio.LabelStudioServer`: .url, .token, .username, .password, .document_root."""
    from labelstudio import LabelStudioServer

    server = LabelStudioServer()
    server.start()  # raises LabelStudioError with the log's tail
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def http(label_studio):
    """A requests session with the server's legacy token, never through a proxy."""
    import requests

    with requests.Session() as session:
        session.trust_env = False
        session.headers["Authorization"] = f"Token {label_studio.token}"
        yield session


@pytest.fixture(scope="session")
def ls(label_studio):
    """The label-studio-sdk client for the test server."""
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
