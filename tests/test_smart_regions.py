"""What an annotator places with smart tools (the keypoints and boxes that ask the backend for an
interactive answer) is saved in the annotation beside what they drew, but it is no lesion: every
reader of regions (export, stats with annotator agreement, the backend's training data) leaves the
results of the project's smart controls out, while a plain RectangleLabels control's boxes stay
lesions. Real SQLite databases migrated through the Workspace, filled with `db.repository`; the
config is the one ``labeler init --interactive`` writes, plus a plain RectangleLabels control.
"""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from db import repository as repo
from db.corrected import read_tasks
from explain.labelstudio.configs import labeling_config, plan_for, region_labels, smart_controls
from explain.labelstudio.results import (
    brush_result, choices_result, drawn_results, label_masks, rectangle_result, result_labels, results_to_masks,
)
from labeler.cli import app
from labeler.workspace import Workspace

W, H = 40, 30
LABEL = "Opacity"
CONFIG = labeling_config(["clear", "opacity"], interactive=True).replace(
    "</View>", f'  <RectangleLabels name="rect" toName="image"><Label value="{LABEL}"/></RectangleLabels>\n</View>'
)


def box_mask(x, y, w, h):
    mask = np.zeros((H, W), bool)
    mask[y:y + h, x:x + w] = True
    return mask


LESION = box_mask(3, 5, 10, 8)  # brushed
PLAIN = (5, 20, 10, 6)  # (x, y, w, h) of a box drawn with the plain RectangleLabels control
SMART = (24, 4, 12, 12)  # a smart box elsewhere, with a keypoint inside it


def brush(mask):
    return brush_result(mask, LABEL, "mask", "image")


def smart_box(box=SMART):
    return rectangle_result(box, W, H, LABEL, "box", "image")


def plain_box(box=PLAIN):
    return rectangle_result(box, W, H, LABEL, "rect", "image")


def keypoint(x=30.0, y=10.0):
    return {
        "id": "kp1", "from_name": "click", "to_name": "image", "type": "keypointlabels",
        "original_width": W, "original_height": H, "image_rotation": 0,
        "value": {"x": x / W * 100, "y": y / H * 100, "width": 1.0, "keypointlabels": [LABEL]},
    }


def annotated(*regions):
    return [choices_result(["opacity"], "diagnosis", "image"), *regions, smart_box(), keypoint()]


# --- the shared mechanism ---------------------------------------------------------------------


def test_the_config_names_its_smart_controls_and_their_labels_are_not_region_labels():
    assert smart_controls(CONFIG) == {"click", "box"}
    assert smart_controls(CONFIG.replace('smart="true"', 'smart="True"')) == {"click", "box"}
    assert smart_controls(labeling_config(["clear", "opacity"])) == frozenset()
    # no config (or an unreadable one): nothing is known to be smart, every region counts
    assert smart_controls(None) == smart_controls("") == smart_controls("<View") == frozenset()
    only_smart = CONFIG.replace(
        f'<RectangleLabels name="box" toName="image" smart="true" smartOnly="true"><Label value="{LABEL}"/>',
        f'<RectangleLabels name="box" toName="image" smart="true" smartOnly="true"><Label value="Prompt"/>',
    )
    assert "Prompt" in only_smart and region_labels(only_smart) == {LABEL}
    assert region_labels(None) == set()
    # the pre-labels' plan and the readers agree on which controls are smart
    planned = {name for c in plan_for(CONFIG, ["opacity"]).controls for name in (c.brush, c.polygon, c.rectangle) if name}
    assert planned == {"mask", "rect"}


def test_region_readers_leave_the_smart_controls_results_out():
    results = annotated(brush(LESION), plain_box())
    smart = smart_controls(CONFIG)
    expected = LESION | box_mask(*PLAIN)
    assert [r["from_name"] for r in drawn_results(results, smart)] == ["diagnosis", "mask", "rect"]
    np.testing.assert_array_equal(results_to_masks(results, smart=smart)[LABEL], expected)
    np.testing.assert_array_equal(label_masks(results, H, W, (W, H), smart)[LABEL], expected)
    # only a smart box and a keypoint: no region at all
    assert results_to_masks(annotated(), smart=smart) == {} and result_labels(annotated(), smart) == set()
    assert result_labels(annotated(), frozenset()) == {LABEL}  # without the config the smart box counts
    np.testing.assert_array_equal(results_to_masks(results)[LABEL], expected | box_mask(*SMART))


# --- the readers ------------------------------------------------------------------------------


def project_db(tmp_path, config=CONFIG):
    """A migrated SQLite database with project 9 (its stored config `config`) and two images."""
    url = f"sqlite:///{tmp_path / 'labeler.db'}"
    docs = tmp_path / "docs"
    docs.mkdir()
    rng = np.random.default_rng(3)
    for n in (1, 2):
        cv2.imwrite(str(docs / f"{n}.png"), rng.integers(0, 256, (H, W), dtype=np.uint8))
    sessions = Workspace(database_url=url).sessions
    with sessions.begin() as session:
        repo.upsert_project(session, 9, title="smart", label_config=config)
    return url, docs, sessions


def test_export_masks_hold_the_drawn_regions_only(tmp_path):
    url, docs, sessions = project_db(tmp_path)
    with sessions.begin() as session:
        project = repo.get_project(session, 9)
        one = repo.live_task(session, project, 1, "/data/local-files/?d=1.png", width=W, height=H)
        two = repo.live_task(session, project, 2, "/data/local-files/?d=2.png", width=W, height=H)
        prompt = rectangle_result((1, 1, 5, 5), W, H, "Prompt", "box", "image")  # a label only a smart box has
        repo.add_annotation_revision(session, one, 11, "created", annotated(brush(LESION), prompt), completed_by=1)
        repo.add_annotation_revision(session, two, 21, "created", annotated(brush(LESION), plain_box()), completed_by=1)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "export", str(out), "--project", "9", "--database-url", url, "--document-root", str(docs), "--format", "png",
    ])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "labels.json").read_text())["labels"] == [LABEL]
    with open(out / "manifest.csv", newline="") as handle:
        rows = {int(r["task_id"]): r for r in csv.DictReader(handle)}
    masks = {t: cv2.imread(str(out / rows[t]["mask_file"]), cv2.IMREAD_UNCHANGED) for t in (1, 2)}
    np.testing.assert_array_equal(masks[1], LESION.astype(np.uint8))
    np.testing.assert_array_equal(masks[2], (LESION | box_mask(*PLAIN)).astype(np.uint8))  # plain boxes are lesions


def test_stats_and_annotator_agreement_ignore_smart_regions(tmp_path):
    url, _, sessions = project_db(tmp_path)
    with sessions.begin() as session:
        project = repo.get_project(session, 9)
        task = repo.live_task(session, project, 1, "/data/local-files/?d=1.png", width=W, height=H)
        version = repo.model_version(session, "mv", "w", {})
        repo.add_prediction(session, task, version, {"opacity": 0.9, "clear": 0.1}, "opacity", 0.9, "opacity", None,
                            [choices_result(["opacity"], "diagnosis", "image"), brush(LESION)])
        # annotator 1 kept the pre-label and only clicked; annotator 2 also drew a plain box
        repo.add_annotation_revision(session, task, 11, "created", annotated(brush(LESION)), completed_by=1)
        repo.add_annotation_revision(
            session, task, 12, "created", annotated(brush(LESION), plain_box(), smart_box((0, 0, 40, 30))), completed_by=2,
        )
    out = tmp_path / "stats"
    result = CliRunner().invoke(app, ["stats", "--project", "9", "--database-url", url, "--out", str(out)])
    assert result.exit_code == 0, result.output
    with open(out / "per_task.csv", newline="") as handle:
        rows = {int(r["ls_annotation_id"]): r for r in csv.DictReader(handle)}
    assert float(rows[11]["dice"]) == 1.0 and rows[11]["untouched"] == "1" and int(rows[11]["pixels_added"]) == 0
    plain = box_mask(*PLAIN)
    assert int(rows[12]["pixels_added"]) == int(plain.sum()) and int(rows[12]["pixels_removed"]) == 0
    assert float(rows[12]["dice"]) == pytest.approx(2 * LESION.sum() / (2 * LESION.sum() + plain.sum()))
    with open(out / "pairs.csv", newline="") as handle:
        pairs = list(csv.DictReader(handle))
    assert len(pairs) == 1
    assert float(pairs[0]["dice"]) == pytest.approx(2 * LESION.sum() / (2 * LESION.sum() + plain.sum()))


def test_backend_training_examples_and_masks_ignore_smart_regions(tmp_path):
    from backend.training import _truth, corrected_examples

    url, _, sessions = project_db(tmp_path)
    with sessions.begin() as session:
        project = repo.get_project(session, 9)
        one = repo.live_task(session, project, 1, "/data/local-files/?d=1.png", width=W, height=H)
        two = repo.live_task(session, project, 2, "/data/local-files/?d=2.png", width=W, height=H)
        repo.add_annotation_revision(session, one, 11, "created", annotated(brush(LESION)), completed_by=1)
        repo.add_annotation_revision(session, two, 21, "created", annotated(plain_box()), completed_by=1)
    with sessions() as session:
        examples, labels = corrected_examples(session, repo.get_project(session, 9))
    assert labels == [LABEL]
    truth = {e.task_id: _truth(e, H, W, labels)[LABEL] for e in examples}
    np.testing.assert_array_equal(truth[1], LESION)
    np.testing.assert_array_equal(truth[2], box_mask(*PLAIN))
    with sessions() as session:  # what is stored stays as Label Studio sent it
        records, config = read_tasks(session, 9)
    assert config == CONFIG
    assert [r["from_name"] for r in records[0].annotations[0].result] == [r["from_name"] for r in annotated(brush(LESION))]
