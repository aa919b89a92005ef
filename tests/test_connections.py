"""Which Label Studio a request comes from, who may say so, and where tokens go (RELIABILITY.md).

Fake Label Studios are loopback HTTP servers that serve one PNG under /data/upload/ to the right
token and record every request they get, so each test sees which server was contacted with what.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from backend.app import create_app
from db.engine import make_engine, session_factory
from db.identity import label_studio_identity
from db.schema import Prediction, Project, Task
from test_backend import CONFIG, documents, make_settings, model_path  # noqa: F401 (fixtures)

IMAGE = "/data/upload/1/xray.png"


class FakeLabelStudio:
    """A loopback server that answers IMAGE to ``Token <token>`` (or a refreshed bearer token) and
    records (path, Authorization) of every request."""

    def __init__(self, token: str):
        self.token, self.hits, self.refreshes = token, [], 0
        png = cv2.imencode(".png", np.random.default_rng(1).integers(0, 255, (40, 50), dtype=np.uint8))[1].tobytes()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body, kind="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                auth = self.headers.get("Authorization")
                fake.hits.append((self.path, auth))
                if self.path == IMAGE and auth in (f"Token {fake.token}", "Bearer access-1"):
                    return self._send(200, png, "image/png")
                self._send(401, b'{"detail": "no"}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.hits.append((self.path, self.headers.get("Authorization")))
                if self.path == "/api/token/refresh/" and body.get("refresh") == fake.token:
                    fake.refreshes += 1
                    return self._send(200, b'{"access": "access-1"}')
                self._send(401, b'{"detail": "no"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fakes():
    servers = []

    def make(token="tok"):
        servers.append(FakeLabelStudio(token))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def upload_task(task_id=1):
    return {"id": task_id, "data": {"image": IMAGE}, "annotations": [], "predictions": []}


def predict(client, project, task_id=1, headers=None):
    body = {"tasks": [upload_task(task_id)], "project": project, "label_config": CONFIG}
    return client.post("/predict", json=body, headers=headers or {})


def regions(answer) -> int:
    return len(answer.json["results"][0]["result"])


AUTH = {"Authorization": "Basic dXNlcjpwYXNz"}  # user:pass


def test_unauthenticated_setup_cannot_choose_where_tokens_go(tmp_path, model_path, documents, fakes):
    """Without LABEL_STUDIO_URL and basic auth, a /setup naming some host teaches nothing: the
    token never reaches that host, not even when Label Studio's own /setup comes later."""
    attacker, studio = fakes("attacker-token"), fakes("real-token")
    client = create_app(make_settings(tmp_path, model_path, documents)).test_client()
    assert client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG, "hostname": attacker.url,
                                       "access_token": "attacker-token"}).status_code == 200
    assert client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG, "hostname": studio.url,
                                       "access_token": "real-token"}).status_code == 200
    answer = predict(client, "3.1700000000")
    assert answer.status_code == 200 and regions(answer) == 0  # a config failure of its own, not a fetch
    assert attacker.hits == [] and studio.hits == []


def test_configured_label_studio_is_the_only_one_tokens_go_to(tmp_path, model_path, documents, fakes):
    studio, attacker = fakes("real-token"), fakes("real-token")
    settings = make_settings(tmp_path, model_path, documents, label_studio_url=studio.url)
    client = create_app(settings).test_client()
    client.post("/setup", json={"project": "3.1700000000", "schema": CONFIG, "hostname": attacker.url,
                                "access_token": "real-token"})
    answer = predict(client, "3.1700000000")
    assert answer.status_code == 200 and regions(answer) > 0
    assert attacker.hits == []
    assert studio.hits == [(IMAGE, "Token real-token")]


def test_two_label_studios_keep_their_images_and_projects_apart(tmp_path, model_path, documents, fakes):
    """Two Label Studios with a project 1 each, behind one authenticated backend: each one's
    images come from it, with its token, and our database keeps two projects."""
    first, second = fakes("first-token"), fakes("second-token")
    settings = make_settings(tmp_path, model_path, documents, basic_auth_user="user", basic_auth_pass="pass")
    client = create_app(settings).test_client()
    for studio, key in ((first, "1.1700000001"), (second, "1.1700000002")):
        setup = client.post("/setup", headers=AUTH, json={"project": key, "schema": CONFIG, "hostname": studio.url,
                                                          "access_token": studio.token})
        assert setup.status_code == 200
    assert regions(predict(client, "1.1700000001", headers=AUTH)) > 0
    assert regions(predict(client, "1.1700000002", task_id=1, headers=AUTH)) > 0
    assert first.hits == [(IMAGE, "Token first-token")]
    assert second.hits == [(IMAGE, "Token second-token")]
    with session_factory(make_engine(settings.database_url))() as session:
        projects = session.scalars(select(Project).where(Project.ls_project_id == 1)).all()
        assert sorted(p.label_studio for p in projects) == sorted(label_studio_identity(s.url) for s in (first, second))
        for project in projects:
            tasks = session.scalars(select(Task).where(Task.project_id == project.id)).all()
            assert len(tasks) == 1
            assert session.scalars(select(Prediction).where(Prediction.task_id == tasks[0].id)).first() is not None


def test_what_setup_taught_one_worker_every_worker_knows(tmp_path, model_path, documents, fakes):
    studio = fakes("real-token")
    settings = make_settings(tmp_path, model_path, documents, label_studio_url=studio.url)
    one, other = create_app(settings).test_client(), create_app(settings).test_client()
    one.post("/setup", json={"project": "3.1700000000", "schema": CONFIG, "access_token": "real-token"})
    answer = predict(other, "3.1700000000")
    assert regions(answer) > 0 and studio.hits == [(IMAGE, "Token real-token")]


def test_a_personal_access_token_is_refreshed_once_not_per_request(tmp_path, model_path, documents, fakes):
    studio = fakes("a.personal.token")
    settings = make_settings(tmp_path, model_path, documents, label_studio_url=studio.url,
                             label_studio_api_key="a.personal.token")
    client = create_app(settings).test_client()
    for task_id in (1, 2, 3):
        assert regions(predict(client, "3.1700000000", task_id=task_id)) > 0
    assert studio.refreshes == 1


def test_webhooks_of_two_label_studios_land_in_their_own_projects(tmp_path, model_path, documents, fakes):
    first, second = fakes("first-token"), fakes("second-token")
    settings = make_settings(tmp_path, model_path, documents, basic_auth_user="user", basic_auth_pass="pass")
    client = create_app(settings).test_client()
    created = {"1.1700000001": "2023-11-14T22:13:21Z", "1.1700000002": "2023-11-14T22:13:22Z"}
    for studio, key in ((first, "1.1700000001"), (second, "1.1700000002")):
        client.post("/setup", headers=AUTH, json={"project": key, "schema": CONFIG, "hostname": studio.url,
                                                  "access_token": studio.token})
    for key, when in created.items():
        event = {
            "action": "ANNOTATION_CREATED",
            "project": {"id": 1, "created_at": when},
            "task": {"id": 4, "data": {"image": IMAGE}},
            "annotation": {"id": 9, "task": 4, "result": [], "updated_at": "2026-11-30T10:00:00Z"},
        }
        assert client.post("/webhook", headers=AUTH, json=event).json["stored"] == 1
    with session_factory(make_engine(settings.database_url))() as session:
        identities = session.scalars(select(Project.label_studio).where(Project.ls_project_id == 1)).all()
        assert sorted(identities) == sorted(label_studio_identity(s.url) for s in (first, second))


@pytest.mark.parametrize("url, identity", [
    ("http://127.0.0.1:8080/", "http://localhost:8080"),
    ("HTTP://LocalHost:8080", "http://localhost:8080"),
    ("https://ls.example.org:443/label/", "https://ls.example.org/label"),
    (None, ""),
])
def test_label_studio_identity_is_one_spelling(url, identity):
    assert label_studio_identity(url) == identity


@pytest.mark.parametrize("url", ["ftp://x", "http://", "http://a@b/", "http://h:99999"])
def test_label_studio_identity_refuses_what_is_not_a_base_url(url):
    with pytest.raises(ValueError, match="not a Label Studio base URL"):
        label_studio_identity(url)


def test_a_label_studio_url_that_is_no_base_url_stops_the_settings_with_its_name():
    from backend.config import Settings

    with pytest.raises(ValueError, match="LABEL_STUDIO_URL: not a Label Studio base URL"):
        Settings.from_env({"MODEL_PATH": "m.keras", "LABEL_STUDIO_URL": "http://user@host:8080"})
    assert Settings.from_env({"MODEL_PATH": "m.keras", "LABEL_STUDIO_URL": "http://h:8080/"}).label_studio_url == "http://h:8080"
