"""The Label Studio test harness, against a REAL label-studio 1.23 server (labeler/studio.py).

Proves the `label_studio` fixture works and pins down the server behaviour the end-to-end tests
rely on: health, authentication with the legacy token, the task image URL shapes of uploads and
local-files storage (and that they download with `Authorization: Token`), and a brush + polygon
prediction written through label_studio_sdk 2.1.2 and read back byte-exact.
"""
from __future__ import annotations

import socket
import time
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle, mask2rle

LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image">
    <Label value="Opacity"/>
  </BrushLabels>
  <PolygonLabels name="polygon" toName="image">
    <Label value="Opacity"/>
  </PolygonLabels>
  <Choices name="finding" toName="image">
    <Choice value="covid"/>
    <Choice value="normal"/>
  </Choices>
</View>"""

# non-square on purpose: width != height catches transposed RLE/percentages
HEIGHT, WIDTH = 48, 64


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(HEIGHT, WIDTH), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


@pytest.fixture(scope="module")
def project(label_studio, ls, http):
    """A project with one uploaded task and one local-files storage task.

    Returns (project id, {"upload": png bytes, "local": png bytes}, local path relative to the
    document root).
    """
    created = ls.projects.create(title="harness", label_config=LABEL_CONFIG)
    pid = created.id
    pngs = {"upload": _png(1), "local": _png(2)}

    # 1) multipart upload: every file needs its own form field name
    r = http.post(f"{label_studio.url}/api/projects/{pid}/import",
                  files={"file_1": ("upload.png", pngs["upload"], "image/png")}, timeout=30)
    assert r.status_code == 201, r.text
    assert r.json()["task_count"] == 1, r.json()

    # 2) local-files storage: the path must be a sub-folder of LOCAL_FILES_DOCUMENT_ROOT
    folder = label_studio.document_root / "cxr"
    folder.mkdir(exist_ok=True)
    (folder / "local.png").write_bytes(pngs["local"])
    r = http.post(f"{label_studio.url}/api/storages/localfiles", json={
        "project": pid, "path": str(folder), "regex_filter": ".*png", "use_blob_urls": True,
    }, timeout=30)
    assert r.status_code == 201, r.text
    storage_id = r.json()["id"]
    r = http.post(f"{label_studio.url}/api/storages/localfiles/{storage_id}/sync", timeout=60)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 20
    while len(list(ls.tasks.list(project=pid))) < 2:
        assert time.monotonic() < deadline, "local-files sync did not create the task"
        time.sleep(0.2)
    return pid, pngs, "cxr/local.png"


def test_health_is_up_and_the_api_needs_auth(label_studio):
    assert label_studio.url.startswith("http://127.0.0.1:")
    assert len(label_studio.token) == 40
    with requests.Session() as anonymous:
        anonymous.trust_env = False
        r = anonymous.get(f"{label_studio.url}/health", timeout=10)
        assert r.status_code == 200 and r.json() == {"status": "UP"}
        assert anonymous.get(f"{label_studio.url}/api/projects", timeout=10).status_code == 401
        wrong = {"Authorization": "Token " + "0" * 40}
        assert anonymous.get(f"{label_studio.url}/api/projects", headers=wrong, timeout=10).status_code == 401


def test_the_legacy_token_is_the_admin(label_studio, http, ls):
    r = http.get(f"{label_studio.url}/api/current-user/whoami", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["email"] == label_studio.username
    assert ls.users.whoami().email == label_studio.username
    # and the password logs in through the web form, too (useful for manual debugging)
    with requests.Session() as browser:
        browser.trust_env = False
        page = browser.get(f"{label_studio.url}/user/login/", timeout=10)
        r = browser.post(f"{label_studio.url}/user/login/", timeout=10, allow_redirects=False,
                         data={"email": label_studio.username, "password": label_studio.password,
                               "csrfmiddlewaretoken": browser.cookies.get("csrftoken", "")},
                         headers={"Referer": page.url})
        assert r.status_code == 302, r.status_code


def test_task_image_urls_and_downloads(label_studio, ls, http, project):
    pid, pngs, local_rel = project
    tasks = sorted(ls.tasks.list(project=pid), key=lambda t: t.id)
    assert len(tasks) == 2
    images = [t.data["image"] for t in tasks]
    upload_url = next(u for u in images if u.startswith("/data/upload/"))
    local_url = next(u for u in images if u.startswith("/data/local-files/"))

    # uploads: /data/upload/<project>/<8-hex>-<name>; local files: /data/local-files/?d=<relative path>
    assert upload_url.startswith(f"/data/upload/{pid}/") and upload_url.endswith("-upload.png"), upload_url
    split = urlsplit(local_url)
    assert split.path == "/data/local-files/" and parse_qs(split.query) == {"d": [local_rel]}, local_url

    for url, expected in ((upload_url, pngs["upload"]), (local_url, pngs["local"])):
        r = http.get(label_studio.url + url, timeout=30)
        assert r.status_code == 200, (url, r.status_code)
        assert r.content == expected, url
        decoded = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.shape == (HEIGHT, WIDTH)
        with requests.Session() as anonymous:
            anonymous.trust_env = False
            assert anonymous.get(label_studio.url + url, timeout=10).status_code == 401, url


def test_prediction_round_trip(label_studio, ls, http, project):
    pid, _, _ = project
    task = min(ls.tasks.list(project=pid), key=lambda t: t.id)
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[5:20, 10:50] = 255
    polygon = [[10.0, 10.0], [60.0, 12.5], [35.0, 80.0]]
    common = {"from_name": None, "to_name": "image", "original_width": WIDTH,
              "original_height": HEIGHT, "image_rotation": 0}
    result = [
        {**common, "id": "brush1", "from_name": "brush", "type": "brushlabels",
         "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": ["Opacity"]}, "score": 0.5},
        {**common, "id": "poly1", "from_name": "polygon", "type": "polygonlabels",
         "value": {"points": polygon, "closed": True, "polygonlabels": ["Opacity"]}, "score": 0.5},
        {"id": "choice1", "from_name": "finding", "to_name": "image", "type": "choices",
         "value": {"choices": ["covid"]}, "score": 0.5},
    ]
    created = ls.predictions.create(task=task.id, result=result, score=0.5, model_version="t1")
    assert created.id

    back = ls.predictions.get(created.id)
    assert back.task == task.id and back.model_version == "t1" and back.score == pytest.approx(0.5)
    by_id = {region["id"]: region for region in back.result}
    assert set(by_id) == {"brush1", "poly1", "choice1"}
    rle = by_id["brush1"]["value"]["rle"]
    assert np.array_equal(decode_rle(rle).reshape(HEIGHT, WIDTH, 4)[:, :, 3], mask)
    assert by_id["poly1"]["value"]["points"] == polygon
    assert by_id["choice1"]["value"]["choices"] == ["covid"]

    # and it is on the task as LS serves it to the editor
    r = http.get(f"{label_studio.url}/api/tasks/{task.id}", timeout=10)
    assert r.status_code == 200, r.text
    served = r.json()["predictions"]
    assert [p["model_version"] for p in served] == ["t1"]
    assert [p.id for p in ls.predictions.list(task=task.id)] == [created.id]


def test_a_busy_port_is_noticed_and_another_one_used(monkeypatch, label_studio):
    """LS moves to PORT+1 without failing when PORT is busy; the harness must not be fooled."""
    from labeler import studio as labelstudio

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(128)
        taken = busy.getsockname()[1]
        ports = iter([taken])
        real_free_port = labelstudio.free_port
        monkeypatch.setattr(labelstudio, "free_port", lambda: next(ports, None) or real_free_port())
        with labelstudio.LabelStudioServer() as second, requests.Session() as http:
            http.trust_env = False
            http.headers["Authorization"] = f"Token {second.token}"
            assert second.port != taken
            assert f"Port {taken} is in use" in second.log_path.read_text()
            assert second.token != label_studio.token
            r = http.get(f"{second.url}/api/current-user/whoami", timeout=10)
            assert r.status_code == 200 and r.json()["email"] == second.username
            # the session's server is a different one: this token means nothing there
            assert http.get(f"{label_studio.url}/api/current-user/whoami", timeout=10).status_code == 401
        assert not second.running
