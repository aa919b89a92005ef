"""``labeler export`` on a real SQLite database migrated through the Workspace, filled with the
db.repository functions; images are local files read from a temporary document root. No Label
Studio is needed. Expected masks are drawn first, then turned into Label Studio results.
"""
from __future__ import annotations

import csv
import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from db.schema import Task
from db.repository import add_annotation_revision, add_prediction, live_task, model_version, upsert_project
from explain.labelstudio.results import brush_result, choices_result, polygon_result
from labeler import exporting
from labeler.cli import app
from labeler.workspace import Workspace

PROJECT = 7
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="diagnosis" toName="image"><Choice value="clear"/><Choice value="opacity"/></Choices>
  <BrushLabels name="mask" toName="image"><Label value="lesion"/><Label value="opacity"/></BrushLabels>
  <PolygonLabels name="outline" toName="image"><Label value="lesion"/><Label value="opacity"/></PolygonLabels>
</View>"""
LABELS = ["lesion", "opacity"]
SIZES = {101: (40, 30), 102: (40, 30), 103: (40, 30), 104: (36, 28), 105: (36, 28), 106: (40, 30)}  # (w, h)
PATIENTS = {101: "P-a", 103: "P-b", 104: "P-c", 105: "P-c"}


def brush(mask, label):
    return brush_result(mask, label, "mask", "image")


def choice(value):
    return choices_result([value], "diagnosis", "image")


def rect_polygon(x0, y0, x1, y1, w, h, label):
    """A rectangle polygon just inside pixels x0..x1-1, y0..y1-1 (corners 0.2 px in from their
    edges, so no pixel centre lies on the outline) and the mask of those pixels."""
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    a, b, c, d = x0 + 0.2, y0 + 0.2, x1 - 0.2, y1 - 0.2
    return polygon_result(np.array([[a, b], [c, b], [c, d], [a, d]]), w, h, label, "outline", "image"), mask


def blob(rng, w, h, p=0.3):
    return rng.random((h, w)) < p


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_lines(text):
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Database + document root; returns a dict of the expected exports."""
    root = tmp_path_factory.mktemp("export")
    docs = root / "docs"
    (docs / "img").mkdir(parents=True)
    url = f"sqlite:///{root / 'labeler.db'}"
    rng = np.random.default_rng(1)
    images = {}
    for task_id, (w, h) in SIZES.items():
        if task_id == 106:
            continue  # its image is missing
        if task_id == 103:  # an RGB image with different channels
            images[task_id] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            cv2.imwrite(str(docs / "img" / f"{task_id}.png"), cv2.cvtColor(images[task_id], cv2.COLOR_RGB2BGR))
        else:
            images[task_id] = rng.integers(0, 256, (h, w), dtype=np.uint8)
            cv2.imwrite(str(docs / "img" / f"{task_id}.png"), images[task_id])

    expected = {}  # task -> {"latest": masks, "majority": masks, choices, annotators}
    Session = Workspace(database_url=url).sessions
    with Session.begin() as session:
        project = upsert_project(session, PROJECT, title="CXR", label_config=CONFIG)
        tasks = {
            t: live_task(session, project, t, f"/data/local-files/?d=img/{t}.png", width=w, height=h)
            for t, (w, h) in SIZES.items()
        }

        def add(task, ann, action, result, user, stamp, **kw):
            add_annotation_revision(
                session, tasks[task], ann, action, result, completed_by=user,
                ls_updated_at=None if stamp is None else f"2025-01-01T10:{stamp:02d}:00Z", **kw,
            )

        # 101: one annotator; an update replaces the first version; brush + polygon + choice.
        w, h = SIZES[101]
        add(101, 1001, "created", [brush(blob(rng, w, h), "lesion")], 1, 1)
        lesion = blob(rng, w, h)
        poly, opacity = rect_polygon(5, 4, 20, 15, w, h, "opacity")
        add(101, 1001, "updated", [brush(lesion, "lesion"), poly, choice("opacity")], 1, 2)
        expected[101] = {"masks": {"lesion": lesion, "opacity": opacity}, "choice": "opacity", "annotators": "1", "ids": "1001"}

        # 102: only a deleted and a cancelled annotation -> not exported.
        add(102, 2001, "created", [brush(blob(rng, w, h), "lesion")], 1, 1)
        add(102, 2001, "deleted", None, None, None)
        add(102, 2002, "created", [brush(blob(rng, w, h), "lesion")], 2, 2, was_cancelled=True)

        # 103: one good annotation, a newer deleted one and a newer cancelled one.
        good = blob(rng, w, h)
        add(103, 3001, "created", [brush(good, "opacity"), choice("clear")], 1, 1)
        add(103, 3002, "created", [brush(np.ones((h, w), bool), "lesion")], 2, 5)
        add(103, 3002, "deleted", None, None, None)
        add(103, 3003, "created", [brush(np.ones((h, w), bool), "opacity")], 3, 9, was_cancelled=True)
        expected[103] = {"masks": {"opacity": good}, "choice": "clear", "annotators": "1", "ids": "3001"}

        # 104: three annotators; user 2 updated last. Votes: on where >= 2 of 3.
        w, h = SIZES[104]
        m = {user: blob(rng, w, h, 0.5) for user in (1, 2, 3)}
        add(104, 4001, "created", [brush(m[1], "lesion"), choice("opacity")], 1, 1)
        add(104, 4002, "created", [brush(m[2], "lesion"), choice("clear")], 2, 7)
        add(104, 4003, "created", [brush(m[3], "lesion"), choice("opacity")], 3, 4)
        votes = m[1].astype(int) + m[2] + m[3]
        expected[104] = {
            "latest": {"masks": {"lesion": m[2]}, "choice": "clear", "annotators": "2", "ids": "4002"},
            "majority": {"masks": {"lesion": votes >= 2}, "choice": "opacity", "annotators": "1;3;2", "ids": "4001;4003;4002"},
        }

        # 105: two annotators, a tie counts as on (union); one also drew an opacity.
        a, b = blob(rng, w, h), blob(rng, w, h)
        poly, rect = rect_polygon(2, 3, 10, 12, w, h, "opacity")
        add(105, 5001, "created", [brush(a, "lesion"), poly], 4, 3)
        add(105, 5002, "created", [brush(b, "lesion")], 5, 2)
        expected[105] = {
            "latest": {"masks": {"lesion": a, "opacity": rect}, "choice": "", "annotators": "4", "ids": "5001"},
            "majority": {"masks": {"lesion": a | b, "opacity": rect}, "choice": "", "annotators": "5;4", "ids": "5002;5001"},
        }

        # 106: annotated, but its image is missing.
        add(106, 6001, "created", [brush(blob(rng, 40, 30), "lesion")], 1, 1)

        # a prediction on 101
        version = model_version(session, "v1", "w1", {})
        pred = blob(rng, *SIZES[101])
        add_prediction(session, tasks[101], version, {"opacity": 0.9, "clear": 0.1}, "opacity", 0.9, "opacity", None,
                       [brush(pred, "opacity")])
        expected["prediction"] = pred
    for t in (101, 103):
        expected[t] = {"latest": expected[t], "majority": expected[t]}
    return {"root": root, "docs": docs, "url": url, "images": images, "expected": expected}


def export(world, out, *args, **kw):
    return invoke("export", out, "--project", PROJECT, "--database-url", world["url"],
                  "--document-root", world["docs"], *args)


def index_of(masks, shape):
    out = np.zeros(shape, np.uint8)
    for i, label in enumerate(LABELS):
        if label in masks:
            out[masks[label]] = i + 1
    return out


def read_manifest(out):
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def png_latest(world):
    out = world["root"] / "png-latest"
    result = export(world, out)
    return out, result


def test_png_export_matches_annotations(world, png_latest):
    out, result = png_latest
    assert result.exit_code == 1, result.output  # 106 skipped
    assert json.loads((out / "labels.json").read_text()) == {"background": 0, "labels": LABELS}
    rows = read_manifest(out)
    assert [int(r["task_id"]) for r in rows] == [101, 103, 104, 105]  # 102: deleted / cancelled only
    for row in rows:
        task = int(row["task_id"])
        want = world["expected"][task]["latest"]
        w, h = SIZES[task]
        mask = cv2.imread(str(out / row["mask_file"]), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (h, w)
        np.testing.assert_array_equal(mask, index_of(want["masks"], (h, w)))
        image = cv2.imread(str(out / row["image_file"]), cv2.IMREAD_UNCHANGED)
        if task == 103:
            np.testing.assert_array_equal(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), world["images"][task])
        else:
            assert image.ndim == 2
            np.testing.assert_array_equal(image, world["images"][task])
        assert (row["choice"], row["annotators"], row["annotation_ids"]) == (want["choice"], want["annotators"], want["ids"])
        assert (int(row["width"]), int(row["height"])) == (w, h)
        assert row["patient"] == f"task-{task}"  # no Label Studio: each task is its own patient
    assert not (out / "predictions").exists()


def test_manifest_and_files(png_latest):
    out, _ = png_latest
    with open(out / "manifest.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == exporting.MANIFEST_COLUMNS
    assert sorted(p.name for p in (out / "images").iterdir()) == ["101.png", "103.png", "104.png", "105.png"]
    marker = json.loads((out / "export.json").read_text())
    assert marker["skipped"] == [106] and marker["format"] == "png" and marker["tasks"] == 4
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == [101, 103, 104, 105]
    for row in read_manifest(out):
        assert int(row["task_id"]) in splits[row["split"]]


def test_missing_image_one_error_line(png_latest):
    _, result = png_latest
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: task 106:"), result.stderr
    assert "wrote 4 task(s)" in result.stdout


def test_majority_vote(world):
    out = world["root"] / "png-majority"
    result = export(world, out, "--annotators", "majority")
    assert result.exit_code == 1, result.output
    for row in read_manifest(out):
        task = int(row["task_id"])
        want = world["expected"][task]["majority"]
        mask = cv2.imread(str(out / row["mask_file"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, index_of(want["masks"], mask.shape))
        assert (row["choice"], row["annotators"], row["annotation_ids"]) == (want["choice"], want["annotators"], want["ids"])


def test_non_empty_out_refused(world, png_latest, tmp_path):
    out, _ = png_latest
    result = export(world, out)
    assert result.exit_code == 2 and len(error_lines(result.stderr)) == 1 and "--overwrite" in result.stderr
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    result = export(world, stranger, "--overwrite")
    assert result.exit_code == 2 and (stranger / "keep.txt").exists()  # not a previous export: left alone


def test_overwrite_replaces_previous_export(world, tmp_path):
    out = tmp_path / "again"
    assert export(world, out, "--format", "coco").exit_code == 1
    assert (out / "annotations.json").exists()
    result = export(world, out, "--overwrite")
    assert result.exit_code == 1, result.output
    assert not (out / "annotations.json").exists() and (out / "masks").is_dir()


def test_size_resizes_with_nearest_masks(world, tmp_path):
    out = tmp_path / "small"
    assert export(world, out, "--size", 16).exit_code == 1
    for row in read_manifest(out):
        task = int(row["task_id"])
        want = world["expected"][task]["latest"]["masks"]
        mask = cv2.imread(str(out / row["mask_file"]), cv2.IMREAD_UNCHANGED)
        image = cv2.imread(str(out / row["image_file"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == image.shape[:2] == (16, 16)
        assert set(np.unique(mask)) <= {0, 1, 2}
        small = {k: cv2.resize(v.astype(np.uint8), (16, 16), interpolation=cv2.INTER_NEAREST) > 0 for k, v in want.items()}
        np.testing.assert_array_equal(mask, index_of(small, (16, 16)))
        assert (int(row["width"]), int(row["original_width"])) == (16, SIZES[task][0])


def coco_rle_decode(rle):
    """Independent decoder: runs alternate 0 / 1 starting with 0, column-major."""
    h, w = rle["size"]
    flat = np.zeros(h * w, bool)
    position, value = 0, False
    for count in rle["counts"]:
        flat[position : position + count] = value
        position += count
        value = not value
    assert position == h * w
    return flat.reshape((w, h)).T


def test_coco_export(world, tmp_path):
    out = tmp_path / "coco"
    assert export(world, out, "--format", "coco", "--predictions").exit_code == 1
    coco = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == LABELS and [c["id"] for c in coco["categories"]] == [1, 2]
    assert sorted(i["id"] for i in coco["images"]) == [101, 103, 104, 105]
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for image in coco["images"]:
        assert (out / image["file_name"]).is_file()
        want = world["expected"][image["id"]]["latest"]["masks"]
        got = {LABELS[a["category_id"] - 1]: a for a in coco["annotations"] if a["image_id"] == image["id"]}
        assert set(got) == {k for k, v in want.items() if v.any()}
        for label, annotation in got.items():
            mask = coco_rle_decode(annotation["segmentation"])
            np.testing.assert_array_equal(mask, want[label])
            assert annotation["area"] == int(want[label].sum()) and annotation["iscrowd"] == 0
            ys, xs = np.nonzero(want[label])
            assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    predictions = json.loads((out / "predictions.json").read_text())
    assert [(p["image_id"], p["category_id"]) for p in predictions] == [(101, 2)]
    np.testing.assert_array_equal(coco_rle_decode(predictions[0]["segmentation"]), world["expected"]["prediction"])
    # our own encoder round-trips masks starting on and off
    for mask in (np.eye(5, dtype=bool), ~np.eye(5, dtype=bool), np.zeros((3, 4), bool)):
        np.testing.assert_array_equal(exporting.rle_decode(exporting.rle_encode(mask)), mask)


def test_png_predictions(world, tmp_path):
    out = tmp_path / "pred"
    assert export(world, out, "--predictions").exit_code == 1
    rows = {int(r["task_id"]): r for r in read_manifest(out)}
    assert rows[101]["prediction_file"] == "predictions/101.png" and rows[101]["model_version"] == "v1"
    assert rows[104]["prediction_file"] == ""
    mask = cv2.imread(str(out / rows[101]["prediction_file"]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mask, index_of({"opacity": world["expected"]["prediction"]}, mask.shape))


def test_npz_export(world, tmp_path):
    out = tmp_path / "npz"
    result = export(world, out, "--format", "npz")  # two image sizes: needs --size
    assert result.exit_code == 2 and "--size" in result.stderr
    result = export(world, out, "--format", "npz", "--size", 24, "--overwrite")
    assert result.exit_code == 1, result.output
    data = np.load(out / "data.npz")
    assert data["images"].shape == (4, 24, 24, 3) and data["images"].dtype == np.uint8  # 103 is RGB
    assert data["masks"].shape == (4, 24, 24) and data["label_masks"].shape == (4, 24, 24, 2)
    assert data["task_ids"].tolist() == [101, 103, 104, 105] and data["labels"].tolist() == LABELS
    rows = read_manifest(out)
    assert data["splits"].tolist() == [r["split"] for r in rows]
    for n, task in enumerate(data["task_ids"]):
        want = world["expected"][int(task)]["latest"]["masks"]
        small = {k: cv2.resize(v.astype(np.uint8), (24, 24), interpolation=cv2.INTER_NEAREST) > 0 for k, v in want.items()}
        np.testing.assert_array_equal(data["masks"][n], index_of(small, (24, 24)))
        for i, label in enumerate(LABELS):
            np.testing.assert_array_equal(data["label_masks"][n, ..., i], small.get(label, np.zeros((24, 24), bool)))


class FakeTaskList:
    """A loopback stand-in for Label Studio's task list (GET /api/tasks/ with a Data Manager
    ``selectedItems`` query): answers with the selected tasks' data and records every request."""

    def __init__(self, data: dict[int, dict]):
        self.data, self.requests = data, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                parts = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(parts.query).items()}
                owner.requests.append((parts.path, params))
                if parts.path.rstrip("/") != "/api/tasks":
                    return self._answer(404, {"detail": "not found"})
                included = json.loads(params["query"])["selectedItems"]["included"]
                tasks = [{"id": t, "data": owner.data[t]} for t in included if t in owner.data]
                self._answer(200, {"tasks": tasks, "total": len(tasks), "total_annotations": 0, "total_predictions": 0})

            def _answer(self, status, body):
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def own_world(world, tmp_path):
    """A copy of the world's database (patient keys are written into it) and a fake task list."""
    url = f"sqlite:///{tmp_path / 'labeler.db'}"
    with sqlite3.connect(world["url"].removeprefix("sqlite:///")) as source, sqlite3.connect(tmp_path / "labeler.db") as copy:
        source.backup(copy)
    data = {101: {"patient": "P-a"}, 102: {}, 103: {"patient": "P-b"}, 104: {"patient": "P-c"},
            105: {"patient_id": "P-c"}, 106: {"patient": "P-z"}}
    fake = FakeTaskList({t: {"image": f"/data/local-files/?d=img/{t}.png", **d} for t, d in data.items()})
    yield {**world, "url": url}, fake
    fake.close()


def stored_keys(url):
    with Workspace(database_url=url).sessions() as session:
        return dict(session.execute(select(Task.ls_task_id, Task.patient_key)).all())


def store_keys(url, keys):
    with Workspace(database_url=url).sessions.begin() as session:
        for task_id, key in keys.items():
            session.execute(update(Task).where(Task.ls_task_id == task_id).values(patient_key=key))


def task_requests(fake):
    return [params for path, params in fake.requests if path.rstrip("/") == "/api/tasks"]


def test_patient_level_deterministic_splits_from_the_database(own_world, tmp_path):
    """The patient keys come from our database: Label Studio is never asked (a fake one hears
    nothing, an unreachable one does not matter), and one patient's tasks share a split."""
    world, fake = own_world
    store_keys(world["url"], {**PATIENTS, 106: "P-z"})
    outs = []
    for name, server in (("a", fake.url), ("b", "http://127.0.0.1:9"), ("c", None)):
        out = tmp_path / name
        connect = ["--label-studio-url", server, "--api-key", "token"] if server else []
        result = export(world, out, "--seed", 3, "--split", "0.5,0.25,0.25", *connect)
        assert result.exit_code == 1, result.output  # 106: image missing
        assert "own patient" not in result.output and "warning" not in result.stderr
        outs.append(out)
    assert task_requests(fake) == []  # (the missing image 106 is asked of it: no task data)
    first, *others = (json.loads((o / "splits.json").read_text()) for o in outs)
    assert all(other == first for other in others) and first["seed"] == 3
    rows = {int(r["task_id"]): r for r in read_manifest(outs[0])}
    assert {t: r["patient"] for t, r in rows.items()} == PATIENTS
    assert rows[104]["split"] == rows[105]["split"]  # one patient, one split
    for task, row in rows.items():
        assert row["split"] == exporting.split_of(PATIENTS[task], 3, (0.5, 0.25, 0.25))
    # many patients: every split used, close to the fractions, each patient in one split
    names = [exporting.split_of(f"p{i}", 0, (0.7, 0.15, 0.15)) for i in range(3000)]
    share = {n: names.count(n) / len(names) for n in exporting.SPLIT_NAMES}
    assert abs(share["train"] - 0.7) < 0.03 and abs(share["val"] - 0.15) < 0.03
    assert names != [exporting.split_of(f"p{i}", 1, (0.7, 0.15, 0.15)) for i in range(3000)]  # the seed matters
    assert exporting.split_of("x", 0, (1.0, 0.0, 0.0)) == "train"


def test_older_rows_get_their_patient_keys_from_one_filtered_listing(own_world, tmp_path):
    """Rows stored before tasks had a patient key: one Label Studio request lists exactly those
    tasks (cheap fields), their keys are written into our database, the next export asks nothing."""
    world, fake = own_world
    store_keys(world["url"], {101: "P-a", 103: "P-b"})
    connect = ["--label-studio-url", fake.url, "--api-key", "token"]
    result = export(world, tmp_path / "a", *connect)
    assert result.exit_code == 1, result.output
    asked = task_requests(fake)
    assert len(asked) == 1
    assert json.loads(asked[0]["query"])["selectedItems"] == {"all": False, "included": [104, 105, 106]}
    assert asked[0]["fields"] == "task_only" and asked[0]["project"] == str(PROJECT)
    assert "stored the patient keys of 3 older task(s)" in result.output
    rows = {int(r["task_id"]): r for r in read_manifest(tmp_path / "a")}
    assert {t: r["patient"] for t, r in rows.items()} == PATIENTS
    assert rows[104]["split"] == rows[105]["split"]
    keys = stored_keys(world["url"])
    assert {t: keys[t] for t in (101, 103, 104, 105, 106)} == {**PATIENTS, 106: "P-z"} and keys[102] is None
    result = export(world, tmp_path / "b", *connect)
    assert result.exit_code == 1 and len(task_requests(fake)) == 1  # nothing left to ask
    assert (tmp_path / "a" / "manifest.csv").read_text() == (tmp_path / "b" / "manifest.csv").read_text()


def test_older_rows_without_label_studio_are_their_own_patients(own_world, tmp_path):
    world, fake = own_world
    store_keys(world["url"], {101: "P-a", 103: "P-b"})
    result = export(world, tmp_path / "a")  # not connected: nobody asked
    rows = {int(r["task_id"]): r["patient"] for r in read_manifest(tmp_path / "a")}
    assert rows == {101: "P-a", 103: "P-b", 104: "task-104", 105: "task-105"}
    assert "2 task(s) have no patient_id / patient in our database" in result.output
    result = export(world, tmp_path / "b", "--label-studio-url", "http://127.0.0.1:9", "--api-key", "token")
    assert result.exit_code == 1 and "warning: Label Studio could not be asked for the patient keys of 3" in result.stderr
    assert {int(r["task_id"]): r["patient"] for r in read_manifest(tmp_path / "b")} == rows
    assert stored_keys(world["url"])[104] is None


@pytest.mark.parametrize("bad", ["0.5,0.6", "a,b", "0.5,0.5,0.5,-0.5", "-0.1,1.1"])
def test_bad_split_refused(world, tmp_path, bad):
    result = export(world, tmp_path / "x", "--split", bad)
    assert result.exit_code == 2 and len(error_lines(result.stderr)) == 1


def test_unknown_project_refused(world, tmp_path):
    result = invoke("export", tmp_path / "x", "--project", 99, "--database-url", world["url"])
    assert result.exit_code == 2 and "labeler sync" in result.stderr


def test_tf_loader_yields_exported_pairs(world, png_latest):
    from models.datasets import export_labels, segmentation_dataset

    out, _ = png_latest
    assert export_labels(out) == LABELS
    rows = read_manifest(out)
    batches = list(segmentation_dataset(out, split=None, size=(32, 32), batch_size=3, shuffle=False))
    assert [b[0].shape[0] for b in batches] == [3, 1]
    images = np.concatenate([b[0].numpy() for b in batches])
    masks = np.concatenate([b[1].numpy() for b in batches])
    assert images.shape == (4, 32, 32, 1) and images.dtype == np.float32
    assert masks.shape == (4, 32, 32, 1) and masks.dtype == np.int32
    assert 0 <= images.min() and images.max() <= 1
    import tensorflow as tf

    for n, row in enumerate(rows):
        exported = cv2.imread(str(out / row["mask_file"]), cv2.IMREAD_UNCHANGED)
        want = tf.image.resize(exported[..., None], (32, 32), method="nearest").numpy()
        np.testing.assert_array_equal(masks[n], want)  # the pair stays together, nearest keeps the indices
        assert set(np.unique(masks[n])) <= {0, 1, 2}
        if int(row["task_id"]) != 103:
            original = world["images"][int(row["task_id"])].astype(np.float32)[..., None] / 255
            want = tf.image.resize(original, (32, 32), method="bilinear").numpy()
            np.testing.assert_allclose(images[n], want, atol=1e-5)
    # one split; a single label as a 0/1 float mask; shuffling keeps the pairs together
    split = rows[0]["split"]
    expected_ids = [int(r["task_id"]) for r in rows if r["split"] == split]
    pairs = list(segmentation_dataset(out, split=split, size=(30, 40), batch_size=8, shuffle=True, seed=1, label="lesion"))
    image, mask = pairs[0]
    assert image.shape == (len(expected_ids), 30, 40, 1) and mask.dtype.name == "float32"
    assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
    with pytest.raises(ValueError):
        segmentation_dataset(out, label="nothing")


def test_each_task_is_written_before_the_next_image_is_read(world, tmp_path):
    """The export streams: a task's mask is on disk before the next task's image is fetched, so
    only one task's full-resolution masks are ever in memory."""
    ws = Workspace(database_url=world["url"], project_id=PROJECT, writes=False)
    settings = exporting.ExportSettings(predictions=True)
    tasks, config = exporting.read_workspace_tasks(ws, predictions=True)
    labels = exporting.export_labels(tasks, config, settings)
    assert labels == LABELS  # known before any image is read
    out = tmp_path / "stream"
    exporting.prepare_out(out, overwrite=False)
    fetched, checked = [], []

    def fetch(uri, task_id):
        for previous in fetched:
            assert (out / "masks" / f"{previous}.png").is_file(), f"task {previous} not written before {task_id} is read"
            checked.append(previous)
        data = (world["docs"] / uri.split("?d=", 1)[1]).read_bytes()  # 106: missing, skipped
        fetched.append(task_id)
        return data

    report = exporting.export_dataset(tasks, labels, out, settings, fetch)
    assert report.exported == [101, 103, 104, 105] and [t for t, _ in report.skipped] == [106]
    assert len(checked) == 1 + 2 + 3 + 4  # before 103, 104, 105 and 106
    assert (out / "predictions" / "101.png").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted(  # the scratch folder is gone
        ["images", "masks", "predictions", "labels.json", "manifest.csv", "splits.json", "export.json"])
