"""Prometheus metrics of one backend process (GET /metrics)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest



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
            "labeler_predict_stage_seconds", "Time per /predict stage: fetch, decode, model (forward + CAM), regions, results (Label Studio JSON), database", ["stage"], registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.failures = Counter("labeler_failures", "Failures by kind", ["kind"], registry=self.registry)
        self.predictions = Counter("labeler_predictions", "Tasks pre-labelled", registry=self.registry)
        self.model = Gauge("labeler_model_info", "The model version in use (value 1)", ["version"], registry=self.registry)

    def set_model_version(self, version: str):
        self.model.clear()
        self.model.labels(version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
