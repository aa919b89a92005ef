"""Backend building blocks: labelling-config plans and image fetching rules."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from explain.labelstudio.fetch import FetchError, ImageFetcher, LabelStudioAuth
from explain.labelstudio.configs import image_data_key, plan_for

CLASSES = ("covid", "normal", "pneumonia")


def config(*controls, image="image", value="$image"):
    return f"<View><Image name='{image}' value='{value}'/>{''.join(controls)}</View>"


def labels(tag, name, *values, to="image"):
    inner = "".join(f"<{'Choice' if tag == 'Choices' else 'Label'} value='{v}'/>" for v in values)
    return f"<{tag} name='{name}' toName='{to}'>{inner}</{tag}>"


def test_single_lesion_label_takes_every_abnormal_class():
    plan = plan_for(config(labels("BrushLabels", "mask", "Opacity"), labels("Choices", "dx", "Covid", "Normal")), CLASSES)
    assert plan.image == "image" and plan.data_key == "image"
    brush, choices = plan.controls
    assert brush.brush == "mask" and brush.polygon is None and brush.choices is None
    assert brush.labels == {"covid": "Opacity", "pneumonia": "Opacity"}
    assert choices.choices == "dx" and choices.labels == {"covid": "Covid", "normal": "Normal"}


def test_labels_match_class_names_and_label_map_overrides():
    xml = config(labels("PolygonLabels", "poly", "covid", "pneumonia", "Other"), labels("RectangleLabels", "box", "A", "B"))
    plan = plan_for(xml, CLASSES, {"normal": "Other", "pneumonia": "B"})
    poly, box = plan.controls
    assert poly.polygon == "poly" and poly.labels == {"covid": "covid", "normal": "Other"}
    assert box.rectangle == "box" and box.labels == {"pneumonia": "B"}


def test_controls_on_another_object_and_unmatched_configs_are_refused():
    xml = config(labels("BrushLabels", "mask", "A", "B", to="other"))
    with pytest.raises(ValueError, match="no BrushLabels, PolygonLabels, RectangleLabels or Choices"):
        plan_for(xml, CLASSES)
    assert image_data_key(config(labels("Choices", "c", "covid"), value="$xray")) == "xray"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "docs" / "a").mkdir(parents=True)
    (tmp_path / "docs" / "a" / "x.png").write_bytes(b"12345")
    (tmp_path / "secret.png").write_bytes(b"secret")
    return tmp_path / "docs"


def test_local_files_are_read_from_the_shared_document_root(root):
    fetcher = ImageFetcher(None, None, document_root=root)
    assert fetcher.fetch("/data/local-files/?d=a/x.png") == b"12345"
    assert fetcher.fetch("/data/local-files/?d=a%2Fx.png") == b"12345"
    with pytest.raises(FetchError, match="leaves the document root") as error:
        fetcher.fetch("/data/local-files/?d=../secret.png")
    assert error.value.kind == "bad_task"
    with pytest.raises(FetchError, match="over the limit"):
        ImageFetcher(None, None, document_root=root, max_bytes=4).fetch("/data/local-files/?d=a/x.png")
    with pytest.raises(FetchError, match="LABEL_STUDIO_URL"):
        fetcher.fetch("/data/upload/1/x.png")


@pytest.mark.parametrize(
    "uri, allowed, message",
    [
        ("https://images.example.org/a.png", (), "not in ALLOWED_IMAGE_HOSTS"),
        ("http://169.254.169.254/latest/meta-data", ("169.254.169.254",), "link-local or metadata"),
        ("http://metadata.google.internal/x", ("metadata.google.internal",), "link-local or metadata"),
        ("ftp://host/a.png", ("host",), "unsupported image URI scheme"),
        ("s3://bucket/a.png", (), "cloud storage images need"),
        ("", (), "task has no image URI"),
    ],
)
def test_external_urls_follow_the_allow_list_and_never_reach_metadata(uri, allowed, message):
    with pytest.raises(FetchError, match=message):
        ImageFetcher(None, None, allowed_hosts=allowed).fetch(uri, task_id=1)


class FakeLabelStudio(BaseHTTPRequestHandler):
    """Just enough of Label Studio's token and file endpoints to watch the headers we send."""

    refreshes = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ok = body.get("refresh") == "aaa.bbb.ccc"
        FakeLabelStudio.refreshes += ok
        self._answer(200 if ok else 401, json.dumps({"access": "fresh"} if ok else {"detail": "bad"}).encode())

    def do_GET(self):
        auth = self.headers.get("Authorization")
        if self.path.startswith("/tasks/3/presign/"):
            self._answer(200, b"presigned") if auth == "Token legacy" else self._answer(401, b"")
        elif auth in ("Bearer fresh", "Token legacy"):
            self._answer(200, b"image:" + self.path.encode())
        else:
            self._answer(401, b"")

    def _answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_label_studio():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeLabelStudio)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_personal_access_token_is_refreshed_once_and_sent_as_bearer(fake_label_studio):
    FakeLabelStudio.refreshes = 0
    auth = LabelStudioAuth(fake_label_studio, "aaa.bbb.ccc")
    fetcher = ImageFetcher(fake_label_studio, auth)
    assert fetcher.fetch("/data/upload/1/a.png") == b"image:/data/upload/1/a.png"
    assert fetcher.fetch(f"{fake_label_studio}/data/upload/1/b.png") == b"image:/data/upload/1/b.png"
    assert FakeLabelStudio.refreshes == 1
    with pytest.raises(FetchError, match="refused the personal access token"):
        ImageFetcher(fake_label_studio, LabelStudioAuth(fake_label_studio, "x.y.z")).fetch("/data/upload/1/a.png")


def test_legacy_token_and_cloud_uris_through_presign(fake_label_studio):
    fetcher = ImageFetcher(fake_label_studio, LabelStudioAuth(fake_label_studio, "legacy"))
    assert fetcher.fetch("/data/local-files/?d=a/x.png") == b"image:/data/local-files/?d=a/x.png"
    assert fetcher.fetch("s3://bucket/key.png", task_id=3) == b"presigned"
    with pytest.raises(FetchError, match="HTTP 401") as error:
        ImageFetcher(fake_label_studio, LabelStudioAuth(fake_label_studio, "wrong")).fetch("/data/upload/1/a.png")
    assert error.value.kind == "image_fetch"
