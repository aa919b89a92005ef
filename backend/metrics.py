"""Prometheus metrics of the backend (GET /metrics): of this process, or of every gunicorn worker
when PROMETHEUS_MULTIPROC_DIR is set (``labeler-backend`` sets it; prometheus_client's
multiprocess mode keeps each worker's values in a file there and /metrics adds them up)."""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess



class Metrics:
    """Requests, latencies, per-stage time, failures by kind and the model version, in one registry."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "labeler_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "labeler_request_seconds", "Request latency by route", ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.stage = Histogram(
            "labeler_predict_stage_seconds", "Time per /predict stage: read (wall time of reading the batch's images on several threads; fetch and decode add up every thread's time), model (forward + CAM), regions, clicks (interactive masks), results (Label Studio JSON), database", ["stage"], registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.failures = Counter("labeler_failures", "Failures by kind", ["kind"], registry=self.registry)
        self.predictions = Counter("labeler_predictions", "Tasks pre-labelled", registry=self.registry)
        self.interactive = Counter(
            "labeler_interactive_answers", "Interactive answers (an annotator's clicks, never stored), by whether the "
            "image's evidence was cached (hit) or computed (miss)", ["cache"], registry=self.registry,
        )
        self.model = Gauge(
            "labeler_model_info", "The model version in use (value 1)", ["version"], registry=self.registry,
            multiprocess_mode="max",
        )
        self.training_jobs = Counter(
            "labeler_training_jobs", "Finished training jobs by outcome: promoted, kept (the current pre-labeller "
            "did as well or better), not_trained (too few corrected masks), failed", ["outcome"], registry=self.registry,
        )
        self.click_models = Counter(
            "labeler_click_models", "Click models trained by training jobs, by outcome: promoted (for the project's "
            "clicks), kept (the current answer clicked as well or better), not_trained", ["outcome"], registry=self.registry,
        )
        self.training_running = Gauge(
            "labeler_training_running", "Training jobs running now", registry=self.registry, multiprocess_mode="livesum"
        )
        self._versions: set[str] = set()

    def set_model_version(self, version: str):
        """1 for ``version``, 0 for every other version this process served (a 0, not a removal:
        in multiprocess mode another worker's file would still show it)."""
        for served in self._versions - {version}:
            self.model.labels(version=served).set(0)
        self._versions.add(version)
        self.model.labels(version=version).set(1)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
