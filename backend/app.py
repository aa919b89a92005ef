"""The Label Studio ML backend: a Flask application factory.

Routes: GET /health, POST /setup, POST /predict, POST /webhook, GET /metrics. Every answer is
JSON (Prometheus text for /metrics); errors are ``{"error": "..."}`` with a 4xx status for bad
input and never carry a traceback.
"""
from __future__ import annotations

import hmac
import logging
import time

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from backend.config import Settings
from explain.fetch import ImageFetcher, LabelStudioAuth
from explain.labeling import plan_for
from backend.metrics import Metrics
from backend.predict import BadRequest, parse_project_id, predict_tasks, validate_tasks
from backend.predictor import ModelUnavailable, Predictor, prelabel_settings
from backend.webhooks import handle_event
from db import repository
from db.engine import make_engine, session_factory
from db.migrating import migrate

log = logging.getLogger("backend")


class Backend:
    """Per-process state: settings, database sessions, the lazily loaded model, metrics and the
    Label Studio connection details learnt from /setup."""

    def __init__(self, settings: Settings):
        for source in settings.sources:  # fail at start on a bad setting, not on the first task
            prelabel_settings(settings, source)
        self.settings = settings
        migrate(settings.database_url)
        self.sessions = session_factory(make_engine(settings.database_url))
        self.predictor = Predictor(settings)
        self.metrics = Metrics()
        self._plans: dict[str, object] = {}
        self._label_studio = (settings.label_studio_url, settings.label_studio_api_key)

    def learn_label_studio(self, hostname: str | None, token: str | None):
        """/setup tells where Label Studio is and a token; environment settings take precedence."""
        url, key = self._label_studio
        self._label_studio = (url or (hostname or "").rstrip("/") or None, key or token or None)

    def fetcher(self) -> ImageFetcher:
        url, key = self._label_studio
        auth = LabelStudioAuth(url, key, self.settings.fetch_timeout) if url and key else None
        return ImageFetcher(
            url, auth, self.settings.local_files_document_root, self.settings.allowed_image_hosts,
            self.settings.max_image_bytes, self.settings.fetch_timeout,
        )

    def plan(self, config: str, class_names):
        key = (config, tuple(class_names))
        if key not in self._plans:
            try:
                self._plans[key] = plan_for(config, class_names, self.settings.label_map)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        return self._plans[key]


def create_app(settings: Settings | None = None) -> Flask:
    """The WSGI application. ``settings`` default to the environment (see backend.config)."""
    settings = settings or Settings.from_env()
    backend = Backend(settings)
    if settings.warmup:
        backend.predictor.warm_up_in_background()
    app = Flask(__name__)
    app.config["BACKEND"] = backend

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
        return jsonify(status="UP", model_class="GradCamPrelabeler", model_loaded=backend.predictor.ready)

    @app.post("/setup")
    def setup():
        body = _body()
        backend.learn_label_studio(body.get("hostname"), body.get("access_token"))
        project_id = parse_project_id(body.get("project"))
        pipeline = backend.predictor.get(settings.source_for(project_id))
        config = body.get("schema")
        if config:
            backend.plan(config, pipeline.class_names)
        if project_id is not None:
            with backend.sessions.begin() as session:
                repository.upsert_project(session, project_id, label_config=config or None)
        backend.metrics.set_model_version(pipeline.version)
        return jsonify(model_version=pipeline.version)

    @app.post("/predict")
    def predict():
        body = _body()
        tasks = validate_tasks(body)
        project_id = parse_project_id(body.get("project"))
        pipeline = backend.predictor.get(settings.source_for(project_id))
        config = body.get("label_config") or _stored_config(backend, project_id)
        if not config:
            raise BadRequest("label_config is missing and no /setup was received for this project")
        plan = backend.plan(config, pipeline.class_names)
        backend.metrics.set_model_version(pipeline.version)
        results = predict_tasks(tasks, project_id, plan, pipeline, backend.fetcher(), backend.sessions, backend.metrics)
        return jsonify(results=results, model_version=pipeline.version)

    @app.post("/webhook")
    def webhook():
        body = _body()
        with backend.sessions.begin() as session:
            summary = handle_event(session, body)
        return jsonify(summary)

    @app.get("/metrics")
    def metrics():
        return Response(backend.metrics.render(), mimetype="text/plain; version=0.0.4")

    @app.errorhandler(BadRequest)
    def bad_request(exc):
        backend.metrics.failures.labels(kind="bad_request").inc()
        return _error(str(exc), 400)

    @app.errorhandler(ModelUnavailable)
    def model_unavailable(exc):
        backend.metrics.failures.labels(kind="model").inc()
        return _error(str(exc), 503)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return _error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def internal_error(exc):
        backend.metrics.failures.labels(kind="internal").inc()
        log.error("%s failed: %s", request.path, type(exc).__name__)  # its text may hold a file path
        return _error(f"internal error ({type(exc).__name__}); see the backend log", 500)

    return app


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


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
        and hmac.compare_digest(auth.username or "", settings.basic_auth_user or "")
        and hmac.compare_digest(auth.password or "", settings.basic_auth_pass or "")
    )


def _stored_config(backend: Backend, project_id: int | None) -> str | None:
    if project_id is None:
        return None
    with backend.sessions() as session:
        project = repository.get_project(session, project_id)
        return project.label_config if project else None
