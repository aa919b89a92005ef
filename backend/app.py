"""The Label Studio ML backend: a Flask application factory.

Routes: GET /health, POST /setup, POST /predict (with ``params.context``: an annotator's clicks,
see ``backend.interactive``), POST /webhook, GET /metrics. Every answer is
JSON (Prometheus text for /metrics); errors are ``{"error": "..."}`` with a 4xx status for bad
input and never carry a traceback.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import requests
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from backend.config import Settings
from explain.labelstudio.fetch import FetchError, ImageFetcher, LabelStudioAuth
from explain.labelstudio.configs import plan_for
from backend.metrics import Metrics
from backend.predict import (
    BadRequest, StorageUnavailable, parse_config, parse_project_id, predict_tasks, project_key, validate_tasks,
    webhook_project_key,
)
from backend.predictor import (
    NO_PRIOR, ModelUnavailable, Pipeline, Predictor, check_click_model, check_roi_model, prelabel_settings,
)
from backend.interactive import ClickAnswers, request_prompt
from backend.jobs import JobRunner
from backend.refresh import refresh_predictions
from backend.training import ProjectTrainer
from backend.webhooks import ANNOTATION_ACTIONS, handle_event, webhook_project_id
from db import jobs, registry, repository
from db.schema import Project
from db.identity import label_studio_identity
from db.engine import session_factory
from db.migrating import open_database

log = logging.getLogger("backend")
PLAN_CACHE = 64  # labelling configs kept parsed (one per project is the usual need)
MAX_JSON_DEPTH = 64  # Label Studio's bodies nest about 6 deep; far deeper is an attack or a bug


@dataclass(frozen=True)
class Connection:
    """Where one Label Studio project lives: its identity (the database key, see
    `db.identity`), base URL and access token (None where unknown)."""

    identity: str
    url: str | None
    token: str | None


class Backend:
    """Per-process state: settings, database sessions, the lazily loaded model and metrics.

    Which Label Studio a request comes from: LABEL_STUDIO_URL when set (the only one then; a
    /setup may only add the token LABEL_STUDIO_API_KEY does not give), else what an
    authenticated /setup told for that project, kept in the database for every worker.
    """

    def __init__(self, settings: Settings):
        for source in settings.sources:  # fail at start on a bad setting, not on the first task
            prelabel_settings(settings, source)
        check_roi_model(settings)
        check_click_model(settings)
        self.settings = settings
        self.sessions = session_factory(open_database(settings.database_url))
        self.predictor = Predictor(settings)
        self.metrics = Metrics()
        self.clicks = ClickAnswers(self.metrics, settings.max_image_pixels, method=settings.click_method)
        self.trainer = ProjectTrainer(
            settings, self.predictor, self.sessions, self.project_fetcher, self.pipeline_for, self.clicker_for
        )
        self.runner = JobRunner(
            self.trainer, self.sessions, self.metrics, settings.train_stale_after, after_promotion=self.refresh_label_studio
        )
        self._plans: OrderedDict[tuple, object] = OrderedDict()  # the newest PLAN_CACHE configs
        self._auths: dict[tuple[str, str], LabelStudioAuth] = {}
        self.configured = label_studio_identity(settings.label_studio_url)
        if settings.roi_model_path is None:
            log.warning(NO_PRIOR)
        if not settings.label_studio_url and not settings.basic_auth_user:
            log.warning(
                "LABEL_STUDIO_URL is not set and /setup is unauthenticated: /setup cannot choose where "
                "tokens go, so images stored in Label Studio are read only from LOCAL_FILES_DOCUMENT_ROOT"
            )

    def learn_label_studio(self, project_key: str | None, hostname, token):
        """Record what /setup told for one project (see the class docstring); anything else is ignored."""
        token = token if isinstance(token, str) and token else None
        if project_key is None or token is None:
            return
        if self.settings.label_studio_url:
            if self.settings.label_studio_api_key:
                return
            identity, url = self.configured, self.settings.label_studio_url  # tokens only go to the configured one
        elif self.settings.basic_auth_user and isinstance(hostname, str):
            try:
                identity = label_studio_identity(hostname)
            except ValueError as exc:
                raise BadRequest(f"hostname: {exc}") from None
            url = hostname.strip().rstrip("/")
        else:
            return
        with self.sessions.begin() as session:
            repository.save_link(session, project_key, identity, url, token)

    def connection(self, project_key: str | None) -> Connection:
        """The Label Studio of a project key ("<id>.<epoch>", None when unknown)."""
        settings = self.settings
        if settings.label_studio_url and settings.label_studio_api_key:
            return Connection(self.configured, settings.label_studio_url, settings.label_studio_api_key)
        link = None
        if project_key is not None:
            with self.sessions() as session:
                link = repository.get_link(session, project_key)
        if settings.label_studio_url:
            return Connection(self.configured, settings.label_studio_url, link.token if link else None)
        return Connection(link.label_studio, link.url, link.token) if link else Connection("", None, None)

    def project_fetcher(self, project) -> ImageFetcher:
        """The image fetcher of a database project (for training jobs, which have no request)."""
        settings = self.settings
        if settings.label_studio_url and settings.label_studio_api_key:
            return self.fetcher(Connection(self.configured, settings.label_studio_url, settings.label_studio_api_key))
        with self.sessions() as session:
            link = repository.link_of_project(session, project)
        if settings.label_studio_url:
            return self.fetcher(Connection(self.configured, settings.label_studio_url, link.token if link else None))
        return self.fetcher(Connection(link.label_studio, link.url, link.token) if link else Connection("", None, None))

    def pipeline_for(self, project_id: int | None, identity: str) -> Pipeline:
        """The pipeline of a project: its PROJECT_PRELABEL_SOURCES entry when it has one, else its
        promoted segmenter (``db.registry``) when it has one, else PRELABEL_SOURCE's."""
        source = self.settings.project_sources.get(project_id)
        if source is None and (promoted := self._promoted(project_id, identity, "prelabel")):
            row_id, weights_id = promoted
            return self.predictor.promoted(weights_id, lambda: self.stored_model(row_id))
        return self.predictor.get(source)

    def clicker_for(self, project_id: int | None, identity: str):
        """The click model that answers a project's clicks (``models.clicking.Clicker``): its promoted
        one (``db.registry``, role "clicks") when it has one, else CLICK_MODEL's, else None."""
        if promoted := self._promoted(project_id, identity, "clicks"):
            row_id, weights_id = promoted
            return self.predictor.clicker(weights_id, lambda: self.stored_model(row_id))
        return self.predictor.clicker()

    def _promoted(self, project_id: int | None, identity: str, role: str) -> tuple[int, str] | None:
        """(row id, weights id) of the project's current model for ``role``, or None."""
        if project_id is None:
            return None
        with self.sessions() as session:
            try:
                project = repository.get_project(session, project_id, identity)
            except ValueError:  # the id exists in several Label Studios and this one is unknown
                return None
            promoted = registry.current_segmenter(session, project, role) if project is not None else None
            return (promoted.id, promoted.weights_id) if promoted is not None else None

    def refresh_label_studio(self, project_row_id: int) -> None:
        """After a promotion: Label Studio re-pre-labels the project's open tasks with the new
        model, whose version becomes the active one (``backend.refresh``); needs the project's Label
        Studio URL and token. A failure is logged (one line) and changes nothing else."""
        with self.sessions() as session:
            project = session.get(Project, project_row_id)
            ls_project_id, identity = project.ls_project_id, project.label_studio
            link = repository.link_of_project(session, project)
        settings = self.settings
        url = settings.label_studio_url or (link.url if link else None)
        token = settings.label_studio_api_key or (link.token if link else None)
        if not url or not token:
            log.warning("project %d: no Label Studio URL and token known, so its open tasks keep their old pre-labels "
                        "until opened (set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)", ls_project_id)
            return
        version = self.pipeline_for(ls_project_id, identity).version
        try:
            asked = refresh_predictions(url, self.auth(url, token), ls_project_id, version)
        except (requests.RequestException, FetchError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            log.warning("project %d: Label Studio did not take the new pre-labels (%s)", ls_project_id,
                        f"HTTP {status}" if status else type(exc).__name__)
            return
        log.info("project %d: %d open task(s) pre-labelled again by Label Studio, active version %s", ls_project_id, asked, version)

    def auth(self, url: str, token: str) -> LabelStudioAuth:
        key = (url, token)
        if key not in self._auths:  # one per token: a personal access token is refreshed, not re-fetched per request
            self._auths[key] = LabelStudioAuth(url, token, self.settings.fetch_timeout)
        return self._auths[key]

    def stored_model(self, segmenter_id: int) -> tuple[bytes, str]:
        """A registry model's ``.keras`` bytes and spec JSON."""
        with self.sessions() as session:
            row = registry.get_segmenter(session, segmenter_id)
            return row.weights, json.dumps(row.spec)

    def enqueue_training(self, project_id: int, identity: str, trigger: str) -> dict:
        """Queue a training job for a project (one waiting job per project: a second ask joins it)."""
        with self.sessions.begin() as session:
            project = repository.upsert_project(session, project_id, label_studio=identity)
            job, created = jobs.enqueue_training(session, project, trigger)
            job_id = job.id
        self.runner.wake()
        log.info("training job %d %s for project %d (asked by %s)", job_id, "queued" if created else "already queued", project_id, trigger)
        return {"job": str(job_id), "status": "queued" if created else "already queued"}

    def train_if_due(self, project_id: int, identity: str) -> dict | None:
        """TRAIN_EVERY: queue a job once that many corrected annotations arrived since the last one."""
        every = self.settings.train_every
        if not every:
            return None
        with self.sessions() as session:
            project = repository.get_project(session, project_id, identity)
            if project is None:
                return None
            last = jobs.last_job(session, project)
            new = jobs.annotations_since(session, project, last.revision_mark if last else None)
        return self.enqueue_training(project_id, identity, f"every-{every}-annotations") if new >= every else None

    def fetcher(self, connection: Connection) -> ImageFetcher:
        auth = self.auth(connection.url, connection.token) if connection.url and connection.token else None
        return ImageFetcher(
            connection.url, auth, self.settings.local_files_document_root, self.settings.allowed_image_hosts,
            self.settings.max_image_bytes, self.settings.fetch_timeout,
        )

    def plan(self, config: str, class_names):
        """The labelling plan of a config, parsed once while it is among the newest ``PLAN_CACHE``."""
        key = (config, tuple(class_names))
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        try:
            plan = plan_for(config, class_names, self.settings.label_map)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        self._plans[key] = plan
        while len(self._plans) > PLAN_CACHE:  # bounded: every caller may send configs of its own
            self._plans.popitem(last=False)
        return plan


def create_app(settings: Settings | None = None) -> Flask:
    """The WSGI application. ``settings`` default to the environment (see backend.config)."""
    settings = settings or Settings.from_env()
    backend = Backend(settings)
    if settings.warmup:
        backend.predictor.warm_up_in_background()
    if settings.training:
        backend.runner.start()
    app = Flask(__name__)
    app.config["BACKEND"] = backend
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes

    @app.before_request
    def start():
        g.started = time.perf_counter()
        if settings.basic_auth_user and not _authorised(request, settings):
            return _error("authentication required", 401, headers={"WWW-Authenticate": 'Basic realm="backend"'})

    @app.after_request
    def count(response):
        route = request.url_rule.rule if request.url_rule else "unknown"
        backend.metrics.requests.labels(route=route, status=str(response.status_code)).inc()
        backend.metrics.latency.labels(route=route).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.get("/health")
    @app.get("/")
    def health():
        return jsonify(
            status="UP", model_class="GradCamPrelabeler", model_loaded=backend.predictor.ready,
            anatomy_prior=backend.predictor.anatomy_prior(),
        )

    @app.post("/setup")
    def setup():
        body = _body()
        project_id = parse_project_id(body.get("project"))
        key = project_key(body.get("project"))
        backend.learn_label_studio(key, body.get("hostname"), body.get("access_token"))
        pipeline = backend.pipeline_for(project_id, backend.connection(key).identity)
        config = parse_config(body.get("schema"), "schema")
        if config:
            backend.plan(config, pipeline.class_names)
        if project_id is not None:
            identity = backend.connection(key).identity
            with backend.sessions.begin() as session:
                _or_bad_request(repository.upsert_project, session, project_id, label_config=config or None, label_studio=identity)
        backend.metrics.set_model_version(pipeline.version)
        return jsonify(model_version=pipeline.version)

    @app.post("/predict")
    def predict():
        body = _body()
        tasks = validate_tasks(body, settings.max_tasks_per_request)
        prompt = request_prompt(body)  # an annotator's clicks (Label Studio's interactive pre-annotation)
        project_id = parse_project_id(body.get("project"))
        connection = backend.connection(project_key(body.get("project")))
        pipeline = backend.pipeline_for(project_id, connection.identity)
        config = body.get("label_config") or _stored_config(backend, project_id, connection.identity)
        if not config:
            raise BadRequest("label_config is missing and no /setup was received for this project")
        plan = backend.plan(config, pipeline.class_names)
        backend.metrics.set_model_version(pipeline.version)
        if prompt is not None:
            clicker = backend.clicker_for(project_id, connection.identity)
            answer = backend.clicks.answer(
                tasks, prompt, config, plan, pipeline, backend.fetcher(connection), connection.identity, clicker
            )
            return jsonify(results=[answer], model_version=pipeline.version)
        results = predict_tasks(
            tasks, project_id, plan, pipeline, backend.fetcher(connection), backend.sessions, backend.metrics,
            label_studio=connection.identity, max_pixels=settings.max_image_pixels,
        )
        return jsonify(results=results, model_version=pipeline.version)

    @app.post("/webhook")
    def webhook():
        body = _body()  # never logged: START_TRAINING carries the project's tokens
        identity = backend.connection(webhook_project_key(body)).identity
        if body.get("action") == "START_TRAINING":  # Label Studio's "Start training", answered at once
            return jsonify(backend.enqueue_training(_or_bad_request(webhook_project_id, body), identity, "label-studio"))
        with backend.sessions.begin() as session:
            summary = _or_bad_request(handle_event, session, body, label_studio=identity)
        if summary.get("stored") and body.get("action") in ANNOTATION_ACTIONS:
            queued = backend.train_if_due(webhook_project_id(body), identity)
            if queued:
                summary["training"] = queued
        return jsonify(summary)

    @app.get("/metrics")
    def metrics():
        return Response(backend.metrics.render(), mimetype="text/plain; version=0.0.4")

    @app.errorhandler(BadRequest)
    def bad_request(exc):
        backend.metrics.failures.labels(kind="bad_request" if exc.status == 400 else "too_large").inc()
        return _error(str(exc), exc.status)

    @app.errorhandler(StorageUnavailable)
    def storage_unavailable(exc):
        return _error(str(exc), 503)

    @app.errorhandler(ModelUnavailable)
    def model_unavailable(exc):
        backend.metrics.failures.labels(kind="model").inc()
        return _error(str(exc), 503)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if exc.code == 413:
            backend.metrics.failures.labels(kind="too_large").inc()
            return _error(f"request body is over MAX_REQUEST_BYTES={settings.max_request_bytes} bytes", 413)
        return _error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def internal_error(exc):
        backend.metrics.failures.labels(kind="internal").inc()
        log.error("%s failed: %s", request.path, type(exc).__name__)  # its text may hold a file path
        return _error(f"internal error ({type(exc).__name__}); see the backend log", 500)

    return app


def _body() -> dict:
    """The request's JSON object. BadRequest when the body is not JSON (NaN and Infinity are not
    JSON either), not an object, or nested deeper than MAX_JSON_DEPTH; a body over
    MAX_CONTENT_LENGTH raises werkzeug's RequestEntityTooLarge (413)."""
    data = request.get_data(cache=True)
    if not request.is_json:
        raise BadRequest("request body must be a JSON object (Content-Type: application/json)")
    try:
        body = json.loads(data, parse_constant=_not_json)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser's stack
        body = None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if _depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"request body is nested deeper than {MAX_JSON_DEPTH} levels")
    return body


def _not_json(name: str):
    raise ValueError(f"{name} is not JSON")


def _depth(value) -> int:
    """How deep lists and objects nest in ``value`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _error(message: str, status: int, headers=None):
    response = jsonify(error=message)
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _authorised(req, settings: Settings) -> bool:
    auth = req.authorization
    return bool(
        auth
        and hmac.compare_digest(_utf8(auth.username), _utf8(settings.basic_auth_user))
        and hmac.compare_digest(_utf8(auth.password), _utf8(settings.basic_auth_pass))
    )


def _utf8(text: str | None) -> bytes:
    """compare_digest takes str only when ASCII: credentials are compared as UTF-8 bytes
    (surrogateescape keeps undecodable environment bytes as they were)."""
    return (text or "").encode("utf-8", "surrogateescape")


def _stored_config(backend: Backend, project_id: int | None, identity: str) -> str | None:
    if project_id is None:
        return None
    with backend.sessions() as session:
        project = _or_bad_request(repository.get_project, session, project_id, identity)
        return project.label_config if project else None


def _or_bad_request(function, *args, **kwargs):
    """``function(*args, **kwargs)``; its ValueError (e.g. a project id that several Label Studios
    share while this one is unknown) answered as a 400 naming the problem."""
    try:
        return function(*args, **kwargs)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
