"""``labeler-backend``: the ML backend under gunicorn, the production WSGI server.

Each worker builds its own app after the fork (TensorFlow does not survive a fork), so the
model is loaded once per worker. `main` first checks the settings and opens (and migrates) the
database: a problem there is one ``error: ...`` line and exit code 2, before gunicorn starts.
Settings: BACKEND_HOST (127.0.0.1), BACKEND_PORT (9090), BACKEND_WORKERS (1), BACKEND_THREADS
(4), BACKEND_TIMEOUT (seconds, 300), plus those of backend.config.

``labeler-backend worker`` runs only the training job runner (``backend.jobs``), in the
foreground and without HTTP: a machine (a GPU one, say) that trains the projects' segmenters for
backends that run with TRAINING=0, all on one database.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

from gunicorn.app.base import BaseApplication


class _Gunicorn(BaseApplication):
    def __init__(self, options: dict):
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from backend.app import create_app

        return create_app()


def _worker_exited(_server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def main():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin, on every start
    from backend.config import Settings
    from backend.predictor import check_roi_model, prelabel_settings

    from db.migrating import open_database

    worker = sys.argv[1:] == ["worker"]
    if sys.argv[1:] and not worker:
        print(f"error: unknown argument {sys.argv[1]!r} (labeler-backend [worker])", file=sys.stderr)
        sys.exit(2)
    try:
        settings = Settings.from_env()
        prelabel_settings(settings)
        check_roi_model(settings)
        # Workers open the database after the fork; a bad one is one line here, not a traceback per worker.
        open_database(settings.database_url).dispose()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if worker:
        _train_forever(settings)
        return
    env = os.environ
    # Every worker writes its metrics here and /metrics adds them up (backend.metrics); set before
    # the workers import prometheus_client, emptied so that no earlier run's counts are added.
    metrics_dir = Path(env.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="labeler-metrics-"))
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):
        stale.unlink()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    _Gunicorn(
        {
            "bind": f"{env.get('BACKEND_HOST', '127.0.0.1')}:{env.get('BACKEND_PORT', '9090')}",
            "workers": int(env.get("BACKEND_WORKERS", "1")),
            "threads": int(env.get("BACKEND_THREADS", "4")),
            "worker_class": "gthread",
            "timeout": int(env.get("BACKEND_TIMEOUT", "300")),
            "preload_app": False,
            "accesslog": None,
            "child_exit": _worker_exited,
        }
    ).run()


def _train_forever(settings) -> None:
    """The training job runner alone, until Ctrl-C / SIGTERM."""
    import signal
    import threading

    stopping = threading.Event()

    def stop_while_starting(*_):
        stopping.set()
        sys.exit(0)  # nothing to finish yet; where Python swallows the exit (a weakref callback), the flag stops us

    signal.signal(signal.SIGTERM, stop_while_starting)
    from backend.app import Backend

    backend = Backend(settings)
    signal.signal(signal.SIGTERM, lambda *_: backend.runner.stop())
    if stopping.is_set():
        return
    logging.getLogger(__name__).info("training worker %s waiting for jobs", backend.runner.worker)
    try:
        backend.runner.loop()
    except KeyboardInterrupt:
        pass
