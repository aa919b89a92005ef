"""``labeler stats`` and the agreement metrics behind it.

The metrics are checked against values worked out by hand (or by brute force over every pair of
boundary pixels); the command against a real SQLite database filled through `db.repository`
with masks built here, whose expected scores are computed independently in the test.
"""
from __future__ import annotations

import base64
import csv
import io
import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist
from typer.testing import CliRunner

from db import repository as repo
from explain.labelstudio.results import brush_result, choices_result, polygon_result, region_mask
from models import agreement
from labeler.cli import app
from labeler.stats.pictures import FINAL_COLOUR, PRED_COLOUR
from labeler.workspace import Workspace

W, H = 40, 30
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
PROJECT = 7


# --- independent references ----------------------------------------------------------------------


def ref_dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.sum() + b.sum() == 0:
        return 1.0
    return 2 * np.sum(a & b) / (a.sum() + b.sum())


def ref_iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.sum(a | b)
    return 1.0 if union == 0 else np.sum(a & b) / union


def ref_boundary_points(mask):
    """(N, 2) coordinates of on pixels with a 4-neighbour off or outside the image (by loops)."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1)
    points = []
    for r, c in zip(*np.nonzero(mask)):
        pr, pc = r + 1, c + 1
        if not (padded[pr - 1, pc] and padded[pr + 1, pc] and padded[pr, pc - 1] and padded[pr, pc + 1]):
            points.append((r, c))
    return np.array(points, float)


def ref_hd95(a, b):
    pa, pb = ref_boundary_points(a), ref_boundary_points(b)
    if len(pa) == 0 and len(pb) == 0:
        return 0.0
    if len(pa) == 0 or len(pb) == 0:
        return float("nan")
    d = cdist(pa, pb)
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


def rect(r0, r1, c0, c1, shape=(H, W)):
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


def disk(cy, cx, radius, shape=(H, W)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


# --- metrics -------------------------------------------------------------------------------------


def test_dice_and_iou_of_two_overlapping_squares():
    a = rect(0, 10, 0, 10)  # 100 px
    b = rect(5, 15, 5, 15)  # 100 px, 5 x 5 = 25 shared
    assert agreement.dice(a, b) == pytest.approx(2 * 25 / 200)  # 0.25
    assert agreement.iou(a, b) == pytest.approx(25 / 175)
    assert agreement.dice(a, a) == 1.0 and agreement.iou(a, a) == 1.0
    assert agreement.pixel_changes(a, b) == (75, 75)


def test_edit_fraction_counts_pixels_to_paint_and_to_erase_over_the_truth():
    truth = rect(0, 10, 0, 10)  # 100 px
    shifted = rect(5, 15, 0, 10)  # 50 shared: 50 to erase, 50 to paint
    assert agreement.edit_fraction(shifted, truth) == pytest.approx(100 / 100)
    assert agreement.edit_fraction(rect(0, 10, 0, 5), truth) == pytest.approx(50 / 100)  # half drawn
    assert agreement.edit_fraction(truth, truth) == 0.0
    assert agreement.edit_fraction(np.zeros((H, W), bool), truth) == 1.0  # nothing: draw it all
    assert agreement.edit_fraction(rect(0, 20, 0, 20), truth) == pytest.approx(300 / 100)  # worse than drawing
    empty = np.zeros((H, W), bool)
    assert agreement.edit_fraction(empty, empty) == 0.0 and agreement.edit_fraction(truth, empty) == 1.0


def test_empty_mask_conventions():
    empty, a = np.zeros((H, W), bool), rect(3, 8, 3, 8)
    assert agreement.dice(empty, empty) == 1.0 and agreement.iou(empty, empty) == 1.0
    assert agreement.dice(a, empty) == 0.0 and agreement.iou(empty, a) == 0.0
    assert agreement.hausdorff95(empty, empty) == 0.0
    assert math.isnan(agreement.hausdorff95(a, empty)) and math.isnan(agreement.hausdorff95(empty, a))
    with pytest.raises(ValueError):
        agreement.dice(a, a[:, :5])


def test_hd95_known_distances():
    one, other = np.zeros((H, W), bool), np.zeros((H, W), bool)
    one[2, 3], other[2 + 3, 3 + 4] = True, True
    assert agreement.hausdorff95(one, other) == pytest.approx(5.0)  # 3-4-5 triangle
    line_a, line_b = rect(5, 6, 0, W), rect(12, 13, 0, W)  # two full-width lines 7 rows apart
    assert agreement.hausdorff95(line_a, line_b) == pytest.approx(7.0)
    square = rect(4, 20, 6, 30)
    assert agreement.hausdorff95(square, square) == 0.0


@pytest.mark.parametrize(
    "a, b",
    [
        (rect(4, 20, 6, 30), rect(6, 24, 10, 36)),
        (disk(15, 20, 8), rect(10, 22, 12, 34)),
        (disk(10, 10, 5) | disk(20, 30, 4), disk(12, 11, 6)),
        (rect(0, H, 0, 12), disk(14, 25, 9)),  # touches the image's edge
    ],
)
def test_hd95_matches_brute_force(a, b):
    assert agreement.hausdorff95(a, b) == pytest.approx(ref_hd95(a, b))
    assert agreement.hausdorff95(b, a) == pytest.approx(agreement.hausdorff95(a, b))


def test_cohen_kappa_hand_computed_2x2():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4
    assert agreement.cohen_kappa(a, b) == pytest.approx(0.4)
    assert agreement.cohen_kappa(a, a) == pytest.approx(1.0)
    assert math.isnan(agreement.cohen_kappa(["x", "x"], ["x", "x"]))
    assert agreement.accuracy(a, b) == pytest.approx(0.7)


def test_fleiss_kappa_wikipedia_example():
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]
    assert agreement.fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)
    with pytest.raises(ValueError):
        agreement.fleiss_kappa([[1, 1], [2, 1]])  # unequal rater counts


# --- the command ---------------------------------------------------------------------------------


def brush(mask, label="opacity"):
    return brush_result(mask, label, "mask", "image")


def choice(name):
    return choices_result([name], "diagnosis", "image")


POLY = np.array([[22.0, 4.0], [36.0, 4.0], [36.0, 16.0], [22.0, 16.0]])


def polygon(points=POLY, label="nodule"):
    return polygon_result(points, W, H, label, "outline", "image")


# Masks of the scenario (task -> what).
PRED1, ANN1_B = rect(5, 15, 5, 15), rect(8, 20, 6, 18)
PRED2, ANN2_A, ANN2_B = disk(15, 20, 7), rect(10, 20, 14, 26), disk(15, 21, 7)
PRED3_EARLY, PRED3_LATE, ANN3_A, ANN3_B = rect(2, 12, 2, 12), rect(2, 12, 20, 30), rect(3, 12, 2, 12), rect(2, 12, 2, 13)
NODULE = region_mask(polygon())
ANN2_NODULE = rect(6, 14, 24, 34)


@pytest.fixture()
def db_url(tmp_path):
    url = f"sqlite:///{tmp_path}/x.db"
    sessions = Workspace(database_url=url).sessions
    with sessions() as s:
        project = repo.upsert_project(s, PROJECT, title="chest")
        mv_a = repo.model_version(s, "mv-a", "w1", {"t": 0.2})
        mv_b = repo.model_version(s, "mv-b", "w2", {"t": 0.3})

        def task(n):
            return repo.live_task(s, project, n, f"/data/upload/{n}.png", width=W, height=H)

        def predict(t, version, results, at, cls="opacity"):
            p = repo.add_prediction(s, t, version, {"opacity": 0.8, "clear": 0.2}, cls, 0.8, cls, None, results)
            p.created_at = at
            s.flush()
            return p

        def annotate(t, ann_id, action, results, who, at, **kw):
            return repo.add_annotation_revision(
                s, t, ann_id, action, results, completed_by=who, lead_time=12.5,
                ls_created_at=T0 + timedelta(hours=1), ls_updated_at=at, **kw,
            )

        # task 1: annotator 1 accepts the pre-label untouched; annotator 2 redraws it (created, then updated);
        # annotator 3's annotation is deleted.
        t1 = task(1)
        pred1 = [choice("opacity"), brush(PRED1)]
        predict(t1, mv_a, pred1, T0)
        annotate(t1, 101, "created", [dict(r) for r in pred1], 1, T0 + timedelta(hours=1))
        annotate(t1, 102, "created", [choice("opacity"), brush(rect(0, 3, 0, 3))], 2, T0 + timedelta(hours=1))
        annotate(t1, 102, "updated", [choice("opacity"), brush(ANN1_B)], 2, T0 + timedelta(hours=2))
        annotate(t1, 103, "created", [choice("clear"), brush(rect(0, 30, 0, 40))], 3, T0 + timedelta(hours=1))
        annotate(t1, 103, "deleted", None, 3, T0 + timedelta(hours=3))

        # task 2: two labels (brush + polygon) in the prediction; annotator 1 moves both and changes the class.
        t2 = task(2)
        predict(t2, mv_a, [choice("opacity"), brush(PRED2), polygon()], T0)
        annotate(t2, 201, "created", [choice("clear"), brush(ANN2_A), brush(ANN2_NODULE, "nodule")], 1, T0 + timedelta(hours=1))
        annotate(t2, 202, "created", [choice("opacity"), brush(ANN2_B)], 2, T0 + timedelta(hours=1))

        # task 3: a prediction before the annotations and a newer one (another version) after them.
        t3 = task(3)
        predict(t3, mv_a, [choice("opacity"), brush(PRED3_EARLY)], T0)
        annotate(t3, 301, "created", [choice("opacity"), brush(ANN3_A)], 1, T0 + timedelta(hours=1))
        annotate(t3, 302, "created", [choice("clear"), brush(ANN3_B)], 2, T0 + timedelta(hours=1))
        predict(t3, mv_b, [choice("opacity"), brush(PRED3_LATE)], T0 + timedelta(hours=5))

        # task 4: a prediction and a cancelled (skipped) annotation only.
        t4 = task(4)
        predict(t4, mv_a, [choice("opacity"), brush(PRED1)], T0)
        annotate(t4, 401, "created", [], 1, T0 + timedelta(hours=1), was_cancelled=True)

        # project 8: known, with only a deleted annotation.
        other = repo.upsert_project(s, 8)
        t = repo.live_task(s, other, 1, "/data/upload/x.png", width=W, height=H)
        repo.add_annotation_revision(s, t, 801, "created", [brush(PRED1)], completed_by=1)
        repo.add_annotation_revision(s, t, 801, "deleted", None, completed_by=1)
        s.commit()
    return url


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def read_csv(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def num(text):
    return float("nan") if text == "" else float(text)


def run_stats(db_url, out, *extra):
    result = invoke("stats", "--project", PROJECT, "--database-url", db_url, "--out", out, *extra)
    assert result.exit_code == 0, result.output
    return result


def test_per_task_numbers_match_independent_values(db_url, tmp_path):
    out = tmp_path / "stats"
    result = run_stats(db_url, out)
    assert "worst" in result.output and "dice_mean" in result.output
    rows = {int(r["ls_annotation_id"]): r for r in read_csv(out / "per_task.csv")}
    assert set(rows) == {101, 102, 201, 202, 301, 302}  # 103 deleted, 401 cancelled

    empty = np.zeros((H, W), bool)
    expected = {
        101: {"opacity": (PRED1, PRED1)},
        102: {"opacity": (PRED1, ANN1_B)},
        201: {"opacity": (PRED2, ANN2_A), "nodule": (NODULE, ANN2_NODULE)},
        202: {"opacity": (PRED2, ANN2_B), "nodule": (NODULE, empty)},
        301: {"opacity": (PRED3_EARLY, ANN3_A)},
        302: {"opacity": (PRED3_EARLY, ANN3_B)},
    }
    for ann_id, labels in expected.items():
        row = rows[ann_id]
        dices = [ref_dice(p, f) for p, f in labels.values()]
        ious = [ref_iou(p, f) for p, f in labels.values()]
        hds = [h for h in (ref_hd95(p, f) for p, f in labels.values()) if not math.isnan(h)]
        assert num(row["dice"]) == pytest.approx(np.mean(dices), abs=1e-6), ann_id
        assert num(row["iou"]) == pytest.approx(np.mean(ious), abs=1e-6), ann_id
        assert num(row["hd95"]) == pytest.approx(np.mean(hds), abs=1e-6), ann_id
        assert int(row["pixels_added"]) == sum(int((f & ~p).sum()) for p, f in labels.values())
        assert int(row["pixels_removed"]) == sum(int((p & ~f).sum()) for p, f in labels.values())
        changed = sum(int((p ^ f).sum()) for p, f in labels.values())
        truth = sum(int(f.sum()) for f in (f for _, f in labels.values()))
        assert num(row["edit_fraction"]) == pytest.approx(changed / truth if truth else float(changed > 0)), ann_id
        assert row["labels"].split() == sorted(labels)
        assert row["prediction_source"] == "before" and row["model_version"] == "mv-a"

    assert rows[101]["untouched"] == "1" and num(rows[101]["dice"]) == 1.0 and num(rows[101]["hd95"]) == 0.0
    assert all(rows[a]["untouched"] == "0" for a in (102, 201, 202, 301, 302))
    assert rows[201]["class_match"] == "0" and rows[201]["final_choice"] == "clear"
    assert rows[102]["class_match"] == "1" and rows[102]["revisions"] == "2"
    assert rows[301]["pred_choice"] == "opacity"

    # worst Dice first
    dices = [num(r["dice"]) for r in read_csv(out / "per_task.csv")]
    assert dices == sorted(dices) and dices[-1] == 1.0


def test_aggregates_and_annotator_agreement(db_url, tmp_path):
    out = tmp_path / "stats"
    run_stats(db_url, out)
    per_task = read_csv(out / "per_task.csv")

    annotators = {r["annotator"]: r for r in read_csv(out / "per_annotator.csv")}
    assert set(annotators) == {"1", "2"}  # annotator 3's only annotation was deleted
    for name, row in annotators.items():
        mine = [num(r["dice"]) for r in per_task if r["annotator"] == name]
        assert num(row["dice_mean"]) == pytest.approx(np.mean(mine), abs=1e-6)
        assert int(row["annotations"]) == 3
    assert num(annotators["1"]["untouched_rate"]) == pytest.approx(1 / 3, abs=1e-6)
    assert num(annotators["1"]["class_accuracy"]) == pytest.approx(2 / 3, abs=1e-6)

    classes = {r["label"]: r for r in read_csv(out / "per_class.csv")}
    assert num(classes["nodule"]["dice_mean"]) == pytest.approx(np.mean([ref_dice(NODULE, ANN2_NODULE), 0.0]), abs=1e-6)
    assert int(classes["opacity"]["n"]) == 6 and int(classes["nodule"]["n"]) == 2

    versions = {r["model_version"]: r for r in read_csv(out / "per_model_version.csv")}
    assert set(versions) == {"mv-a"} and int(versions["mv-a"]["annotations"]) == 6

    pairs = {(int(r["ls_task_id"]), r["label"]): r for r in read_csv(out / "pairs.csv")}
    assert set(pairs) == {(1, "opacity"), (2, "opacity"), (2, "nodule"), (3, "opacity")}
    assert all((r["annotator_a"], r["annotator_b"]) == ("1", "2") for r in pairs.values())
    assert num(pairs[(1, "opacity")]["dice"]) == pytest.approx(ref_dice(PRED1, ANN1_B), abs=1e-6)
    assert num(pairs[(2, "opacity")]["iou"]) == pytest.approx(ref_iou(ANN2_A, ANN2_B), abs=1e-6)
    assert num(pairs[(2, "nodule")]["dice"]) == 0.0  # only annotator 1 drew a nodule
    assert num(pairs[(3, "opacity")]["hd95"]) == pytest.approx(ref_hd95(ANN3_A, ANN3_B), abs=1e-6)

    summary = {(r["metric"], r["scope"]): r for r in read_csv(out / "summary.csv")}
    # choices of annotators 1 / 2 on tasks 1, 2, 3: opacity/opacity, clear/opacity, opacity/clear
    a, b = ["opacity", "clear", "opacity"], ["opacity", "opacity", "clear"]
    po, pe = 1 / 3, (2 / 3) * (2 / 3) + (1 / 3) * (1 / 3)
    assert num(summary[("cohen_kappa", "annotators 1 vs 2")]["value"]) == pytest.approx((po - pe) / (1 - pe), abs=1e-6)
    assert summary[("cohen_kappa", "annotators 1 vs 2")]["n"] == "3"
    # Fleiss with 2 raters over 3 tasks: P_i = 1, 0, 0; p = (4/6, 2/6)
    p_bar, p_e = 1 / 3, (4 / 6) ** 2 + (2 / 6) ** 2
    assert num(summary[("fleiss_kappa", "tasks with 2 raters")]["value"]) == pytest.approx((p_bar - p_e) / (1 - p_e), abs=1e-6)
    assert num(summary[("dice_mean", "pre-label vs final")]["value"]) == pytest.approx(np.mean([num(r["dice"]) for r in per_task]), abs=1e-6)
    assert summary[("annotations", "all")]["value"] == "6"
    assert num(summary[("untouched_rate", "pre-label vs final")]["value"]) == pytest.approx(1 / 6, abs=1e-6)
    assert agreement.cohen_kappa(a, b) == pytest.approx((po - pe) / (1 - pe))


def test_model_version_filter_and_fallback(db_url, tmp_path):
    out = tmp_path / "mv-b"
    run_stats(db_url, out, "--model-version", "mv-b")
    rows = {int(r["ls_annotation_id"]): r for r in read_csv(out / "per_task.csv")}
    # only task 3 has an mv-b prediction, made after its annotations: the newest one is taken.
    assert rows[301]["prediction_source"] == "latest" and rows[301]["model_version"] == "mv-b"
    assert num(rows[301]["dice"]) == pytest.approx(ref_dice(PRED3_LATE, ANN3_A), abs=1e-6)
    assert all(rows[a]["prediction_source"] == "none" and rows[a]["dice"] == "" for a in (101, 102, 201, 202))
    assert [r["ls_annotation_id"] for r in read_csv(out / "per_task.csv")][-4:] == ["101", "102", "201", "202"]

    result = invoke("stats", "--project", PROJECT, "--database-url", db_url, "--out", out, "--model-version", "nope")
    assert result.exit_code != 0 and "model version 'nope'" in result.output


def test_html_report_has_tables_plots_and_thumbnails(db_url, tmp_path):
    out = tmp_path / "stats"
    run_stats(db_url, out)
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert page.count("<table>") >= 5 and page.count("<svg") >= 3
    uris = [part.split('"')[0] for part in page.split('src="data:image/png;base64,')[1:]]
    assert len(uris) == 6  # every scored annotation is among the worst 10
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[0]))).convert("RGB"))
    colours = {tuple(int(v) for v in p) for p in picture.reshape(-1, 3)}
    assert PRED_COLOUR in colours and FINAL_COLOUR in colours
    for name in ("summary", "per_task", "per_annotator", "per_class", "pairs"):
        assert (out / f"{name}.csv").is_file()


def test_errors_are_one_line(db_url, tmp_path, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_PROJECT", raising=False)
    for project, message in ((99, "project 99 is not in the database"), (8, "project 8 has no annotations yet")):
        result = invoke("stats", "--project", project, "--database-url", db_url, "--out", tmp_path / "o")
        assert result.exit_code == 2
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {message}")
    missing = tmp_path / "none.db"
    result = invoke("stats", "--project", PROJECT, "--database-url", f"sqlite:///{missing}")
    assert result.exit_code == 2 and "no database at" in result.output and not missing.exists()
    result = invoke("stats", "--database-url", db_url)
    assert result.exit_code == 2 and "no project given" in result.output


def test_report_escapes_project_title_and_labels(tmp_path):
    """Text from the database reaches report.html escaped: a title or label holding markup stays text."""
    url = f"sqlite:///{tmp_path}/x.db"
    title, label, cls = "<script>alert('title')</script>", "<script>alert('label')</script>", "a&b <i>"
    with Workspace(database_url=url).sessions() as s:
        project = repo.upsert_project(s, PROJECT, title=title)
        version = repo.model_version(s, "<b>mv</b>", "w", {})
        t = repo.live_task(s, project, 1, "/data/upload/1.png", width=W, height=H)
        p = repo.add_prediction(s, t, version, {cls: 1.0}, cls, 1.0, cls, None,
                                [choice(cls), brush(PRED1, label)])
        p.created_at = T0
        repo.add_annotation_revision(s, t, 11, "created", [choice(cls), brush(ANN1_B, label)], completed_by=1,
                                     ls_created_at=T0 + timedelta(hours=1))
        repo.add_annotation_revision(s, t, 12, "created", [choice("x"), brush(PRED1, label)], completed_by=2,
                                     ls_created_at=T0 + timedelta(hours=1))
        s.commit()
    out = tmp_path / "stats"
    run_stats(url, out)
    page = (out / "report.html").read_text()
    assert "<script" not in page and "<b>" not in page and "<i>" not in page
    assert f"<h1>Label statistics, project {PROJECT} (&lt;script&gt;alert(&#39;title&#39;)&lt;/script&gt;)</h1>" in page
    assert "<title>Label statistics, project 7 (&lt;script&gt;" in page
    assert page.count("&lt;script&gt;alert(&#39;label&#39;)&lt;/script&gt;") >= 2  # per class, between annotators
    assert "&lt;b&gt;mv&lt;/b&gt;" in page and "a&amp;b &lt;i&gt;" in page
    assert {r["label"] for r in read_csv(out / "per_class.csv")} == {label}  # the CSV keeps the text as it is


# --- streaming, time window ----------------------------------------------------------------------


def scenario_tables(url, **kwargs):
    """Every CSV table's text for `collect` of PROJECT with these arguments."""
    from labeler.stats import build_tables, collect

    with Workspace(database_url=url).sessions() as s:
        stats = collect(s, PROJECT, **kwargs)
    tables = build_tables(stats)
    return {name: [{k: str(v) for k, v in row.items()} for row in rows] for name, rows in tables.named().items()}, stats


def test_chunks_of_any_size_give_the_same_tables(db_url):
    whole, stats = scenario_tables(db_url)
    for chunk in (1, 2, 3):
        assert scenario_tables(db_url, chunk=chunk)[0] == whole, chunk
    # the worst annotations get their results back for the thumbnails, from the database
    shown = [s for s in stats.annotations if s.prediction_id is not None]
    assert all(s.final_results and s.pred_results for s in shown)
    worst = shown[0]
    with Workspace(database_url=db_url).sessions() as s:
        from db.schema import AnnotationRevision, Prediction

        assert worst.final_results == s.get(AnnotationRevision, worst.revision_id).result
        assert worst.pred_results == s.get(Prediction, worst.prediction_id).results


def many_tasks(url, n, annotators=2):
    """Project PROJECT with `n` tasks, each with one prediction and `annotators` annotations."""
    with Workspace(database_url=url).sessions() as s:
        project = repo.upsert_project(s, PROJECT, title="many")
        version = repo.model_version(s, "mv", "w", {})
        for n_task in range(1, n + 1):
            t = repo.live_task(s, project, n_task, f"/data/upload/{n_task}.png", width=W, height=H)
            repo.add_prediction(s, t, version, {"opacity": 1.0}, "opacity", 1.0, "opacity", None,
                                [choice("opacity"), brush(rect(2, 10 + n_task % 7, 2, 12))])
            for who in range(1, annotators + 1):
                repo.add_annotation_revision(s, t, 1000 * n_task + who, "created",
                                             [choice("opacity"), brush(rect(3, 12, 2, 10 + who))], completed_by=who)
        s.commit()


def statements_of_collect(url, **kwargs):
    from sqlalchemy import event

    from labeler.stats import collect

    sessions = Workspace(database_url=url).sessions
    engine = sessions.kw["bind"]
    seen = []

    def count(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with sessions() as s:
            stats = collect(s, PROJECT, **kwargs)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(seen), stats


@pytest.mark.parametrize("model_version", [None, "mv"])
def test_sql_statements_do_not_grow_with_the_tasks(tmp_path, model_version):
    counts = {}
    for n in (10, 40):
        url = f"sqlite:///{tmp_path}/{n}-{model_version}.db"
        many_tasks(url, n)
        counts[n], stats = statements_of_collect(url, model_version=model_version)
        assert len(stats.annotations) == 2 * n and len(stats.pairs) == n
        # in chunks of 16 tasks: a fixed number of statements per chunk, not per task
        small, _ = statements_of_collect(url, model_version=model_version, chunk=16)
        chunks = -(-n // 16)
        assert small - counts[n] <= 8 * (chunks - 1), (n, small, counts[n])
    assert counts[10] == counts[40]


def windowed_db(url):
    """Four annotations on four tasks, last updated on different days; 'b' has an old first
    revision and a new one, 'c' no Label Studio times (its received time counts)."""
    days = {d: datetime(2025, 3, d, 9, 30, tzinfo=timezone.utc) for d in range(1, 32)}
    with Workspace(database_url=url).sessions() as s:
        project = repo.upsert_project(s, PROJECT)
        old, new = repo.model_version(s, "old", "w1", {}), repo.model_version(s, "new", "w2", {})
        tasks = [repo.live_task(s, project, n, f"/data/upload/{n}.png", width=W, height=H) for n in (1, 2, 3, 4)]
        for t in tasks:
            p = repo.add_prediction(s, t, old, {"opacity": 1.0}, "opacity", 1.0, "opacity", None, [brush(PRED1)])
            p.created_at = days[1] - timedelta(days=1)
        p = repo.add_prediction(s, tasks[3], new, {"opacity": 1.0}, "opacity", 1.0, "opacity", None, [brush(ANN1_B)])
        p.created_at = days[1] - timedelta(days=1)

        def annotate(t, ann_id, updated, result=(), **kw):
            return repo.add_annotation_revision(s, t, ann_id, "updated" if kw.pop("update", False) else "created",
                                                [brush(PRED1), *result], completed_by=1, ls_updated_at=updated, **kw)

        annotate(tasks[0], 11, days[2], ls_created_at=days[2])  # a: March 2
        annotate(tasks[1], 21, days[3], ls_created_at=days[3])  # b: first on March 3 ...
        annotate(tasks[1], 21, days[20], [choice("clear")], ls_created_at=days[3], update=True)  # ... now March 20
        c = annotate(tasks[2], 31, None)  # c: no Label Studio times, received March 10
        c.received_at = days[10]
        annotate(tasks[3], 41, days[31], ls_created_at=days[31])  # d: March 31, 9:30
        s.commit()


def per_task_ids(out):
    return sorted(int(r["ls_annotation_id"]) for r in read_csv(out / "per_task.csv"))


@pytest.mark.parametrize(
    "window, expected",
    [
        ((), [11, 21, 31, 41]),
        (("--since", "2025-03-03"), [21, 31, 41]),  # b counts by its current revision (March 20)
        (("--until", "2025-03-19"), [11, 31]),  # b's first revision in the window does not count
        (("--since", "2025-03-10", "--until", "2025-03-10"), [31]),  # a date alone: its whole day
        (("--since", "2025-03-10T09:31", "--until", "2025-03-31"), [21, 41]),
        (("--until", "2025-03-31T09:30:00+00:00"), [11, 21, 31]),  # until is left out
        (("--since", "2025-03-31T10:30:00+01:00"), [41]),  # an offset: 09:30 UTC
    ],
)
def test_time_window_selects_annotations_by_their_current_revision(tmp_path, window, expected):
    url = f"sqlite:///{tmp_path}/w.db"
    windowed_db(url)
    out = tmp_path / "stats"
    run_stats(url, out, *window)
    assert per_task_ids(out) == expected
    rows = {int(r["ls_annotation_id"]): r for r in read_csv(out / "per_task.csv")}
    if 21 in rows:
        assert rows[21]["revisions"] == "2" and rows[21]["final_choice"] == "clear"
    if window:
        assert "annotations updated" in (out / "report.html").read_text()


def test_time_window_and_model_version_together(tmp_path):
    url = f"sqlite:///{tmp_path}/w.db"
    windowed_db(url)
    out = tmp_path / "stats"
    run_stats(url, out, "--since", "2025-03-15", "--model-version", "new")
    rows = {int(r["ls_annotation_id"]): r for r in read_csv(out / "per_task.csv")}
    assert set(rows) == {21, 41}
    assert rows[41]["model_version"] == "new" and num(rows[41]["dice"]) == pytest.approx(ref_dice(ANN1_B, PRED1), abs=1e-6)
    assert rows[21]["prediction_source"] == "none"  # task 2 has no prediction of "new"
    run_stats(url, out, "--since", "2025-03-15", "--model-version", "old")
    rows = {int(r["ls_annotation_id"]): r for r in read_csv(out / "per_task.csv")}
    assert rows[41]["model_version"] == "old" and rows[41]["dice"] == "1.000000"


@pytest.mark.parametrize(
    "args, message",
    [
        (("--since", "last tuesday"), "error: --since must be an ISO date or time"),
        (("--until", "2025-13-01"), "error: --until must be an ISO date or time"),
        (("--since", "2025-03-05", "--until", "2025-03-01"), "error: --since (2025-03-05) must come before --until"),
        (("--since", "2026-01-01"), "error: project 7 has no annotations updated from 2026-01-01 00:00 UTC"),
    ],
)
def test_bad_or_empty_window_is_one_error_line(tmp_path, args, message):
    url = f"sqlite:///{tmp_path}/w.db"
    windowed_db(url)
    result = invoke("stats", "--project", PROJECT, "--database-url", url, "--out", tmp_path / "o", *args)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), lines
