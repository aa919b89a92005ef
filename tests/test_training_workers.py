"""Two `labeler-backend worker` processes on one real PostgreSQL (tests/postgres.py) share the
training queue: every job of every project runs exactly once, and the database's outcome is
each job's own."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from db import jobs, repository
from db.engine import make_engine, session_factory
from db.migrating import migrate
from db.schema import TrainingJob
from test_backend import model_path  # noqa: F401  (the tiny classifier fixture)
from test_training_loop import CONFIG

pytestmark = pytest.mark.postgres

PROJECTS = 8


def test_two_workers_run_every_job_once(postgres_database, model_path):  # noqa: F811
    migrate(postgres_database)
    sessions = session_factory(make_engine(postgres_database))
    with sessions.begin() as session:
        for n in range(PROJECTS):
            project = repository.upsert_project(session, 50 + n, label_config=CONFIG)
            jobs.enqueue_training(session, project, "command")
    env = {**os.environ, "MODEL_PATH": str(model_path), "DATABASE_URL": postgres_database, "WARMUP": "0",
           "TRAIN_MIN_TASKS": "5"}
    workers = [
        subprocess.Popen([str(Path(sys.executable).parent / "labeler-backend"), "worker"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 120
        while True:
            with sessions() as session:
                rows = list(session.scalars(select(TrainingJob)))
            if all(r.state == "done" for r in rows):
                break
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers), [r.state for r in rows]
            time.sleep(0.5)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        outputs = [worker.communicate(timeout=30)[0] for worker in workers]
    assert len(rows) == PROJECTS
    assert all(r.attempts == 1 and r.message == "not trained: 0 corrected task(s), TRAIN_MIN_TASKS is 5" for r in rows)
    assert {r.worker.rsplit(":", 1)[1] for r in rows} <= {str(w.pid) for w in workers}
    started = sum(o.count(" started (project ") for o in outputs)
    assert started == PROJECTS, outputs  # each job started once, in one of the two
    codes = [w.returncode for w in workers]
    assert codes == [0, 0] and not any("Traceback" in o for o in outputs), (codes, outputs)
