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


# --- Label Studio end-to-end server (labeler/studio.py) -----------------------------------
# A real label-studio 1.23 in its own cached venv (.cache/label-studio-venv), started once per
# session on a free 127.0.0.1 port with a fresh data dir, admin user and legacy token. An
# install or start failure is raised, so every test using the fixture ERRORS (it never skips).
@pytest.fixture(scope="session")
def label_studio():
    """A running `labelstudio.LabelStudioServer`: .url, .token, .username, .password, .document_root."""
    from labeler.studio import LabelStudioServer

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


# --- PostgreSQL test server (tests/postgres.py) ----------------------------------------------
# A throwaway cluster started once per session on a free 127.0.0.1 port (initdb into a temp
# folder, trust auth, durability off) and deleted at the end. Without the binaries the tests
# that need it skip locally; under CI=true they FAIL (.ci/run installs PostgreSQL). A start
# failure is raised, so those tests error, never skip.
@pytest.fixture(scope="session")
def postgres_server():
    """A running `postgres.PostgresServer`: .url, .url_for(name), .create_database(), .drop_database(name)."""
    from postgres import PostgresServer, find_bin_dir

    if find_bin_dir() is None:
        message = "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); .ci/run installs it"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer()
    server.start()  # raises PostgresError with the server log's tail
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """SQLAlchemy URL (``postgresql+psycopg://labeler@127.0.0.1:PORT/labeler``) of the session's database."""
    return postgres_server.url


@pytest.fixture
def postgres_database(postgres_server):
    """URL of a fresh, empty database of its own for one test; dropped afterwards."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url_for(name)
    finally:
        postgres_server.drop_database(name)
