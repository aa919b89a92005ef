"""explain.labelstudio.fetch and explain.images against hostile or unlucky inputs, with real loopback servers.

Dripping and silent servers (one deadline for the whole download), bodies over the byte limit,
SSRF forms that different URL parsers read differently, paths that would carry the Label Studio
token to its API, broken local-files paths, and a decompression bomb; the last two also through
the Flask app, where one bad task must not sink its batch.
"""
from __future__ import annotations

import io
import logging
import socket
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from explain.labelstudio.fetch import FetchError, ImageFetcher, LabelStudioAuth
from explain.images import ImageError, load_image
from test_backend import client, documents, model_path, predict_body, settings, task  # noqa: F401  (fixtures)

DRIP_SECONDS = 0.3


class Server:
    """A loopback HTTP server whose handler is ``respond(handler)``; ``hits`` records (path, Authorization)."""

    def __init__(self, respond):
        self.hits: list[tuple[str, str | None]] = []
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                outer.hits.append((self.path, self.headers.get("Authorization")))
                try:
                    respond(self, outer)
                except OSError:
                    pass  # the client hung up: what a deadline does

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(respond):
        servers.append(Server(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def answer(body: bytes, status: int = 200, headers: dict | None = None):
    def respond(handler, server):
        handler.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def drip_body(handler, server):
    """Promises a megabyte, then sends one byte every DRIP_SECONDS (for at most 15 s)."""
    handler.send_response(200)
    handler.send_header("Content-Length", "1000000")
    handler.end_headers()
    for _ in range(int(15 / DRIP_SECONDS)):
        if server.stop.wait(DRIP_SECONDS):
            return
        handler.wfile.write(b"x")
        handler.wfile.flush()


def drip_headers(handler, server):
    """Sends its status line and headers one byte every DRIP_SECONDS (for at most 15 s)."""
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"y" * 200 + b"\r\n"
    for byte in head[: int(15 / DRIP_SECONDS)]:
        if server.stop.wait(DRIP_SECONDS):
            return
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()


def external(timeout: float = 2.0, max_bytes: int = 50_000_000, hosts=("127.0.0.1", "localhost")) -> ImageFetcher:
    return ImageFetcher(None, None, allowed_hosts=hosts, max_bytes=max_bytes, timeout=timeout)


def failure(fetcher: ImageFetcher, uri: str, task_id: int | None = None) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetcher.fetch(uri, task_id)
    return info.value


# one deadline for the whole download


@pytest.mark.parametrize("respond", [drip_body, drip_headers], ids=["body", "headers"])
def test_a_dripping_server_is_cut_off_at_the_deadline(serve, respond):
    server = serve(respond)
    start = time.monotonic()
    error = failure(external(timeout=2), f"{server.url}/x.png")
    assert time.monotonic() - start < 2 + 2
    assert error.kind == "image_fetch" and "took over 2 s" in str(error)


def test_four_concurrent_drips_all_end_at_their_deadline(serve):
    servers = [serve(drip_body) for _ in range(4)]
    errors: list[FetchError] = []

    def fetch(server):
        try:
            external(timeout=2).fetch(f"{server.url}/x.png")
        except FetchError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch, args=(server,)) for server in servers]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert time.monotonic() - start < 2 + 2
    assert len(errors) == 4 and all("took over 2 s" in str(e) for e in errors)


def test_a_server_that_never_answers_is_given_up_at_the_deadline():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts the connection; nobody ever reads or answers
    try:
        start = time.monotonic()
        error = failure(external(timeout=2), f"http://127.0.0.1:{silent.getsockname()[1]}/x.png")
        assert time.monotonic() - start < 2 + 2
        assert "took over 2 s" in str(error)
    finally:
        silent.close()


def test_bodies_over_the_byte_limit_are_refused(serve):
    declared = serve(answer(b"x" * 3_000_000))

    def chunked(handler, server):
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for _ in range(40):
            handler.wfile.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    undeclared = serve(chunked)
    for server in (declared, undeclared):
        error = failure(external(max_bytes=1_000_000), f"{server.url}/x.png")
        assert error.kind == "image_too_large"
    assert external(max_bytes=3_000_000).fetch(f"{declared.url}/x.png") == b"x" * 3_000_000


# one parser for checking and connecting


def test_backslash_at_forms_never_reach_the_host_that_was_not_checked(serve):
    allowed = serve(answer(b"allowed image"))
    other = serve(answer(b"other image"))
    fetcher = external(timeout=2, hosts=("localhost",))
    assert fetcher.fetch(f"http://localhost:{allowed.port}/x.png") == b"allowed image"
    for uri in (
        f"http://127.0.0.1:{other.port}\\@localhost:{allowed.port}/x.png",
        f"http://127.0.0.1:{other.port}%5C@localhost:{allowed.port}/x.png",
        f"http://169.254.169.254\\@localhost:{allowed.port}/latest/meta-data/",
        f"http://localhost:{allowed.port}@127.0.0.1:{other.port}/x.png",
        f"http://127.0.0.1:{other.port}\t@localhost:{allowed.port}/x.png",
    ):
        error = failure(fetcher, uri)
        assert error.kind in ("bad_task", "forbidden_host"), (uri, error)
    assert other.hits == [] and len(allowed.hits) == 1


@pytest.mark.parametrize(
    "host", ["2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]",
             "[2002:a9fe:a9fe::1]", "[64:ff9b::a9fe:a9fe]", "[fe80::1]", "0.0.0.0", "169.254.10.1"],
)
def test_odd_forms_of_link_local_and_metadata_addresses_are_refused_even_when_allowed(host):
    start = time.monotonic()
    error = failure(external(timeout=2, hosts=(host,)), f"http://{host}/latest/meta-data/")
    assert error.kind == "forbidden_host" and "link-local or metadata" in str(error)
    assert time.monotonic() - start < 1  # refused from its address, not after trying to connect


# the Label Studio token goes to its file routes only


def label_studio_file(handler, server):
    if handler.path.startswith("/tasks/3/presign/"):
        handler.send_response(302)
        handler.send_header("Location", "/api/users/")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return
    answer(b"bytes of " + handler.path.encode())(handler, server)


@pytest.mark.parametrize(
    "uri",
    [
        "/data/../api/users/",
        "/data/upload/../../api/users",
        "/data/upload/%2e%2e/%2e%2e/api/users",
        "/data/upload/..%2F..%2Fapi/users",
        "/data/upload/%252e%252e/%252e%252e/api/users",
        "/data/upload/..\\..\\api/users",
        "/data/upload//api/users",
        "/data/local-files/../../api/users/?d=x",
        "/api/users/",
        "//127.0.0.1/data/upload/1/a.png",
        "{ls}/data/../api/users/",
        "{ls}/data/upload/%2E%2E/%2E%2E/api/users",
    ],
)
def test_paths_outside_the_file_routes_never_get_the_token(serve, uri):
    ls = serve(label_studio_file)
    fetcher = ImageFetcher(ls.url, LabelStudioAuth(ls.url, "secret"), timeout=2)
    error = failure(fetcher, uri.format(ls=ls.url))
    assert error.kind == "bad_task"
    assert ls.hits == []
    assert fetcher.fetch("/data/upload/1/a.png") == b"bytes of /data/upload/1/a.png"
    assert fetcher.fetch("/data/upload/1/../1/b%20c.png") == b"bytes of /data/upload/1/b%20c.png"
    assert ls.hits == [("/data/upload/1/a.png", "Token secret"), ("/data/upload/1/b%20c.png", "Token secret")]


def test_a_redirect_away_from_the_file_routes_is_followed_without_the_token(serve):
    ls = serve(label_studio_file)
    fetcher = ImageFetcher(ls.url, LabelStudioAuth(ls.url, "secret"), timeout=2)
    assert fetcher.fetch("s3://bucket/key.png", task_id=3) == b"bytes of /api/users/"
    assert [auth for _, auth in ls.hits] == ["Token secret", None]


# one bad local path is that task's failure, with no path in its message


@pytest.fixture
def root(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ok.png").write_bytes(b"12345")
    (docs / "loop").symlink_to(docs / "loop")
    (docs / "a").symlink_to(docs / "b")
    (docs / "b").symlink_to(docs / "a")
    return docs


@pytest.mark.parametrize(
    "relative", ["%00", "ok.png%00.png", "n" * 300 + ".png", "a/" * 2100 + "x.png", "loop", "a/x.png", "loop/x.png"],
    ids=["nul", "nul-suffix", "long-name", "over-path-max", "self-loop", "pair-loop", "through-loop"],
)
def test_broken_local_paths_raise_only_fetch_errors_without_the_path(root, relative):
    fetcher = ImageFetcher(None, None, document_root=root)
    assert fetcher.fetch("/data/local-files/?d=ok.png") == b"12345"
    error = failure(fetcher, f"/data/local-files/?d={relative}")
    assert error.kind in ("bad_task", "image_read", "config")
    assert str(root) not in str(error) and "nnnnn" not in str(error) and "loop" not in str(error)


def bomb_png(side: int = 9000) -> bytes:
    """A real PNG of zeros: a few kilobytes that decode to ``side`` x ``side`` pixels."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def test_a_decompression_bomb_is_refused_from_its_header_with_little_memory():
    data = bomb_png()
    assert len(data) < 100_000
    tracemalloc.start()
    try:
        start = time.monotonic()
        with pytest.raises(ImageError, match="9000x9000 pixels exceeds the limit"):
            load_image(data, name="task 5")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000 and time.monotonic() - start < 5


def test_bad_tasks_in_a_batch_fail_alone_and_no_path_reaches_the_log(client, documents, caplog):
    (documents / "xrays" / "bomb.png").write_bytes(bomb_png())
    (documents / "xrays" / "loop.png").symlink_to(documents / "xrays" / "loop.png")
    bad = [task(21, "%00.png"), task(22, "n" * 300 + ".png"), task(23, "bomb.png"), task(24, "loop.png")]
    with caplog.at_level(logging.INFO):
        answer = client.post("/predict", json=predict_body(*bad, task(25, "img0.png")))
    assert answer.status_code == 200, answer.json
    results = answer.json["results"]
    assert [r["result"] for r in results[:4]] == [[]] * 4
    assert {r["type"] for r in results[4]["result"]} >= {"choices", "brushlabels"}
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "task 23: 9000x9000 pixels exceeds the limit" in logged
    assert str(documents) not in logged and "nnnnn" not in logged and "loop.png" not in logged


def test_an_unexpected_error_logs_its_type_but_not_its_text(client, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "/srv/patients/doe_janet/chest.png")

    monkeypatch.setattr("backend.app.predict_tasks", explode)
    with caplog.at_level(logging.INFO):
        answer = client.post("/predict", json=predict_body(task(31, "img0.png")))
    assert answer.status_code == 500 and "FileNotFoundError" in answer.json["error"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "FileNotFoundError" in logged and "doe_janet" not in logged and "/srv/patients" not in logged
