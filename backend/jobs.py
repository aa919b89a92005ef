"""The training job runner: a daemon thread per backend process (TRAINING=1, the default) or the
foreground loop of ``labeler-backend worker``, taking queued jobs from the database.

The queue is the ``training_jobs`` table (``db.jobs``): on SQLite the default single process
needs no other server; with several workers or machines on PostgreSQL, each claims a job with
``SELECT ... FOR UPDATE SKIP LOCKED`` and a conditional update, so that no job runs twice and a
project never trains twice at once. A running job's heartbeat is renewed every few seconds by
a second thread; a job whose worker died (killed, restarted, machine gone) stops beating, and after
TRAIN_STALE_AFTER seconds the next claim puts it back in the queue (up to 3 attempts, then it is
marked failed with the reason): never silently lost.
"""
from __future__ import annotations

import logging
import os
import socket
import threading

from backend.metrics import Metrics
from backend.training import Cancelled, Outcome, ProjectTrainer
from db import jobs

log = logging.getLogger(__name__)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobRunner:
    """Claims and runs training jobs one at a time; ``wake()`` makes it look at the queue now."""

    def __init__(
        self, trainer: ProjectTrainer, sessions, metrics: Metrics, stale_after: float, poll: float = 5.0,
        after_promotion=None,
    ):
        self.trainer = trainer
        self.after_promotion = after_promotion  # called with the project's row id once a model is promoted
        self.sessions = sessions
        self.metrics = metrics
        self.stale_after = stale_after
        self.poll = poll
        self.worker = worker_name()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "JobRunner":
        self._thread = threading.Thread(target=self.loop, name="training-jobs", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_next()
            except Exception as exc:  # the database was away: try again later, never die
                log.error("training queue unavailable: %s", type(exc).__name__)
                ran = False
            if not ran:
                self._wake.wait(self.poll)
                self._wake.clear()

    def run_next(self) -> bool:
        """Claim one queued job and run it; False when there was none."""
        with self.sessions.begin() as session:
            for job in jobs.requeue_stale(session, self.stale_after):
                log.warning("training job %d of project %d: %s", job.id, job.project.ls_project_id, job.message)
            job = jobs.claim_job(session, self.worker, self.stale_after)
            if job is None:
                return False
            job_id, project_id, trigger, ls_project = job.id, job.project_id, job.trigger, job.project.ls_project_id
        log.info("training job %d started (project %d, asked by %s)", job_id, ls_project, trigger)
        self.metrics.training_running.inc()
        try:
            outcome = self._run(job_id, project_id)
        finally:
            self.metrics.training_running.dec()
        self.metrics.training_jobs.labels(outcome=outcome.kind).inc()
        if outcome.clicks is not None:
            self.metrics.click_models.labels(outcome=outcome.clicks).inc()
        if outcome.kind == "promoted" and self.after_promotion is not None:
            self.after_promotion(project_id)
        return True

    def _run(self, job_id: int, project_id: int) -> Outcome:
        lost = threading.Event()
        progress_text = {"text": None}
        beating = threading.Event()

        def beat():
            while not beating.wait(max(0.5, self.stale_after / 6)):
                with self.sessions.begin() as session:
                    if not jobs.heartbeat(session, job_id, self.worker, progress_text["text"]):
                        lost.set()
                        return

        def progress(text: str) -> None:
            progress_text["text"] = text[:200]
            log.info("training job %d: %s", job_id, text)
            if lost.is_set():
                raise Cancelled()

        heart = threading.Thread(target=beat, name=f"training-job-{job_id}-heartbeat", daemon=True)
        heart.start()
        try:
            outcome = self.trainer.run(project_id, job_id, progress)
            state = "done"
        except Cancelled:
            log.warning("training job %d was taken over by another worker; its result is dropped", job_id)
            return Outcome("failed", "taken over")
        except Exception as exc:  # a bad project must not stop the runner; the reason is stored
            reason = str(exc) if isinstance(exc, ValueError) else f"unexpected {type(exc).__name__}"
            outcome, state = Outcome("failed", f"failed: {reason}"[:500]), "failed"
        finally:
            beating.set()
            heart.join()
        with self.sessions.begin() as session:
            jobs.finish_job(session, job_id, self.worker, state, outcome.message, outcome.segmenter_id)
        log.info("training job %d %s: %s", job_id, state, outcome.message)
        return outcome
