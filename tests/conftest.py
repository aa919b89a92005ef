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

# Fixture -> marker: a test that uses one of these fixtures (directly or through another
# fixture) gets the marker, so `make test-fast` (-m "not labelstudio and not postgres ...")
# never starts those servers. Tests that start servers or processes themselves carry a
# `pytestmark` at the top of their module.
SERVER_FIXTURES = {"label_studio": "labelstudio", "demo_run": "labelstudio", "postgres_server": "postgres"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for fixture, marker in SERVER_FIXTURES.items():
            if fixture in used:
                item.add_marker(marker)
        # `url` fixtures parametrized ["sqlite", "postgresql"] reach the server through
        # request.getfixturevalue, which the fixture closure above cannot see.
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(isinstance(value, str) and value == "postgresql" for value in params.values()):
            item.add_marker("postgres")


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


# --- The demo (labeler/demo.py) --------------------------------------------------------------
# `labeler demo`'s set-up started once per session in a temporary folder, shared by
# tests/test_demo.py and tests/test_browser.py. Instead of training the demo classifier (about
# a minute) the folder gets a tiny untrained one whose bias makes it always say "opacity", so
# every task is pre-labelled with regions. A start failure is raised (the tests error).
class DemoRun:
    """The session's running demo: ``demo`` (a `labeler.demo.Demo`), ``folder``, ``database_url``."""

    def __init__(self, folder: Path):
        from labeler.demo import start_demo

        self.folder = folder
        self.database_url = f"sqlite:///{folder / 'labeler.db'}"  # where labeler/demo.py puts it
        self.demo = start_demo(folder, log=lambda line: None)

    def restart(self):
        """Stop the demo and start it again in the same folder (a rerun of ``labeler demo``)."""
        from labeler.demo import start_demo

        self.demo.stop()
        self.demo = start_demo(self.folder, log=lambda line: None)
        return self.demo


def prepare_demo_folder(folder: Path) -> Path:
    """A demo folder with its data and a tiny model that always says "opacity" (so ``labeler demo``
    trains nothing): 5 opacity + 5 clear images, of which the demo imports 5 + 2."""
    import keras
    import numpy as np

    from labeler.synthetic import write_dataset
    from models.classifiers import build_small_cnn
    from models.loading import save_classifier

    write_dataset(folder / "data", per_class=5, size=96, seed=2)
    keras.utils.set_random_seed(0)
    model, spec = build_small_cnn(("clear", "opacity"), input_size=(64, 64), filters=(8, 16))
    kernel, _ = model.get_layer("predictions").get_weights()
    model.get_layer("predictions").set_weights([kernel, np.array([-5.0, 5.0], np.float32)])  # says "opacity"
    save_classifier(model, spec, folder / "model.keras")  # the demo trains one only when missing
    return folder


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The running demo (`DemoRun`): 7 tasks (5 opacity + 2 clear), all pre-labelled by the backend."""
    run = DemoRun(prepare_demo_folder(tmp_path_factory.mktemp("demo")))
    try:
        yield run
    finally:
        run.demo.stop()
