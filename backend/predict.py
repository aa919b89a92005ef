"""/predict: Label Studio tasks -> one result per task, in task order, each stored in the database.

A task whose image cannot be fetched or decoded gets an empty result of its own and a failure
row; the other tasks of the batch are pre-labelled as usual.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from backend.metrics import Metrics
from backend.predictor import Pipeline
from db import repository
from db.timestamps import parse_ls_time
from explain.images import MAX_PIXELS
from explain.labelstudio.fetch import ImageFetcher
from explain.labelstudio.configs import LabelingPlan
from explain.service import PrelabelService, TaskOutcome

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """The request body is malformed; the message names the problem (answered as HTTP ``status``)."""

    status = 400


class TooManyTasks(BadRequest):
    """More tasks in one /predict body than MAX_TASKS_PER_REQUEST (answered as HTTP 413)."""

    status = 413


class StorageUnavailable(Exception):
    """The database refused a batch; nothing of it is answered (HTTP 503, Label Studio retries)."""


def parse_id(value, name: str) -> int:
    """``value`` as a Label Studio id (`db.repository.check_id`), else BadRequest naming ``name``."""
    try:
        repository.check_id(value, name)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return value


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def parse_project_id(value) -> int | None:
    """Label Studio sends ``"<project id>.<created epoch>"``; older versions a bare id."""
    if value is None:
        return None
    text = str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
    head = text.split(".", 1)[0].strip()
    if head.isascii() and head.isdigit() and len(head) <= 100:
        return parse_id(int(head), "project")
    raise BadRequest(f"project must look like '<id>.<timestamp>', got {text[:40] or _kind(value)!r}")


def project_key(value) -> str | None:
    """Label Studio's key of a project, ``"<id>.<created epoch>"`` (unique across Label Studios in
    practice), or None when ``value`` carries no creation time."""
    if not isinstance(value, str) or "." not in value:
        return None
    project_id = parse_project_id(value)
    epoch = value.split(".", 1)[1]
    return f"{project_id}.{int(epoch)}" if epoch.isdigit() and len(epoch) <= 12 else None


def webhook_project_key(body: dict) -> str | None:
    """The project key of a webhook payload, from its project's id and ``created_at``."""
    project = body.get("project")
    if not isinstance(project, dict) or not isinstance(project.get("id"), int) or isinstance(project.get("id"), bool):
        return None
    try:
        created = parse_ls_time(project.get("created_at"))
    except ValueError:
        return None
    return f"{project['id']}.{int(created.timestamp())}" if created else None


def parse_config(value, name: str) -> str | None:
    """A labelling config as sent in field ``name``: a string or None, else BadRequest."""
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string (the labelling config XML), got {_kind(value)}")
    return value


def validate_tasks(body: dict, max_tasks: int | None = None) -> list[dict]:
    """The body's tasks, checked: at most ``max_tasks`` of them (else TooManyTasks), each an object
    with a ``data`` object and an ``id``; ``label_config``, when given, a string (else BadRequest)."""
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise BadRequest("tasks must be a non-empty list of task objects")
    if max_tasks is not None and len(tasks) > max_tasks:
        raise TooManyTasks(
            f"{len(tasks)} tasks in one request, over MAX_TASKS_PER_REQUEST={max_tasks}; "
            "send fewer per request, or pre-label in bulk with `labeler prelabel`"
        )
    parse_config(body.get("label_config"), "label_config")
    for n, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise BadRequest(f"tasks[{n}] must be an object with a 'data' object")
        parse_id(task.get("id"), f"tasks[{n}].id")
    return tasks


class Stopwatch:
    """Adds the time spent in each stage to the metrics (thread-safe: images are read on several
    threads)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage.labels(stage=name).observe(time.perf_counter() - start)


def predict_tasks(
    tasks: list[dict],
    project_id: int | None,
    plan: LabelingPlan,
    pipeline: Pipeline,
    fetcher: ImageFetcher,
    sessions,
    metrics: Metrics,
    label_studio: str = "",
    max_pixels: int = MAX_PIXELS,
) -> list[dict]:
    """One Label Studio prediction per task, in order (see the module docstring); stored under
    the project of Label Studio ``label_studio`` (a `db.identity` string, "" when unknown); images
    over ``max_pixels`` (width x height) fail alone."""
    watch = Stopwatch(metrics)
    service = PrelabelService(
        pipeline.prelabeler, pipeline.loaded.version, plan, fetcher, stage=watch.stage, max_pixels=max_pixels
    )
    outcomes = service.read(tasks)
    _log_failures(outcomes)
    service.label(outcomes)
    with watch.stage("database"):
        try:
            if project_id is not None:
                with sessions.begin() as session:
                    repository.store_outcomes(
                        session, project_id, service.version, pipeline.loaded.version, service.recorded_settings,
                        outcomes, label_studio=label_studio,
                    )
        except Exception as exc:
            # Database first: what we could not store is not answered either, so Label Studio stores
            # nothing and asks again later instead of holding predictions our database lacks.
            metrics.failures.labels(kind="database").inc()
            reason = str(exc) if isinstance(exc, ValueError) else type(exc).__name__
            log.error("storing %d predictions failed: %s", len(outcomes), reason[:300])
            raise StorageUnavailable(f"the predictions could not be stored: {reason[:300]}") from None
    for outcome in outcomes:
        if outcome.failure:
            metrics.failures.labels(kind=outcome.failure[0]).inc()
    metrics.predictions.inc(sum(o.prelabel is not None for o in outcomes))
    return [outcome.answer for outcome in outcomes]


def _log_failures(outcomes: list[TaskOutcome], shown: int = 20):
    """One warning per failure kind of a batch: how many tasks, the first ``shown`` task ids and
    the first message (a batch of thousands of bad tasks must not write thousands of lines)."""
    by_kind: dict[str, list[TaskOutcome]] = {}
    for outcome in outcomes:
        if outcome.failure:
            by_kind.setdefault(outcome.failure[0], []).append(outcome)
    for kind, failed in by_kind.items():
        ids = ", ".join(str(o.task_id) for o in failed[:shown])
        more = f" and {len(failed) - shown} more" if len(failed) > shown else ""
        first = failed[0].failure[1][:200].encode("utf-8", "backslashreplace").decode()  # no lone surrogates
        log.warning("%d task(s) failed (%s): tasks %s%s; first: %s", len(failed), kind, ids, more, first)
