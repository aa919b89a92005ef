"""The COCO export read by the reference implementation, pycocotools (the COCO API).

``labeler export --format coco`` writes uncompressed RLE (column-major run lengths, the first a
run of 0s). Here pycocotools decodes every segmentation of a real export (a SQLite database
filled through db.repository, images on disk, non-square sizes so that a row-major slip shows)
back to exactly the annotated mask, and its area and bbox agree with the ones we wrote;
``rle_encode`` alone gives the same runs as pycocotools' own encoder on masks of every awkward
kind (first or last pixel set, full, one row, one column).
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from typer.testing import CliRunner

from db.repository import add_annotation_revision, add_prediction, live_task, model_version, upsert_project
from explain.labelstudio.results import brush_result
from labeler.cli import app
from labeler.exporting import rle_encode
from labeler.workspace import Workspace

PROJECT = 3
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="lesion"/><Label value="opacity"/></BrushLabels>
</View>"""
LABELS = ["lesion", "opacity"]
SIZES = {11: (37, 23), 12: (16, 41), 13: (29, 29)}  # task -> (width, height)


def awkward_masks(height: int, width: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Masks that trip run-length coders: random blobs, the first or the last pixel set, full."""
    blob = rng.random((height, width)) < 0.35
    first = np.zeros((height, width), bool)
    first[0, 0] = True
    last = np.zeros((height, width), bool)
    last[-1, -1] = True
    stripe = np.zeros((height, width), bool)
    stripe[:, width // 2] = True  # one column: a single run in column-major order, many in row-major
    return [blob, first, last, stripe, np.ones((height, width), bool), blob | first | last]


def reference(segmentation: dict) -> dict:
    """pycocotools' compressed RLE of an uncompressed one (frPyObjects checks the counts add up)."""
    height, width = segmentation["size"]
    return coco_mask.frPyObjects(segmentation, height, width)


@pytest.mark.parametrize("shape", [(23, 37), (41, 16), (1, 9), (9, 1), (1, 1)])
def test_rle_encode_gives_pycocotools_own_runs(shape):
    rng = np.random.default_rng(sum(shape))
    for mask in awkward_masks(*shape, rng):
        ours = reference(rle_encode(mask))
        theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ours["counts"] == theirs["counts"] and list(ours["size"]) == list(theirs["size"]) == list(shape)
        np.testing.assert_array_equal(coco_mask.decode(ours).astype(bool), mask)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A real ``labeler export --format coco --predictions``: (output folder, expected masks per
    task and label, expected prediction masks per task)."""
    root = tmp_path_factory.mktemp("coco")
    docs = root / "docs"
    (docs / "img").mkdir(parents=True)
    url = f"sqlite:///{root / 'labeler.db'}"
    rng = np.random.default_rng(5)
    expected, predicted = {}, {}
    with Workspace(database_url=url).sessions.begin() as session:
        project = upsert_project(session, PROJECT, title="coco", label_config=CONFIG)
        version = model_version(session, "v1", "w1", {})
        for number, (task_id, (width, height)) in enumerate(SIZES.items()):
            cv2.imwrite(str(docs / "img" / f"{task_id}.png"), rng.integers(0, 256, (height, width), dtype=np.uint8))
            task = live_task(session, project, task_id, f"/data/local-files/?d=img/{task_id}.png", width=width, height=height)
            masks = awkward_masks(height, width, rng)
            expected[task_id] = {"lesion": masks[number], "opacity": masks[-1 - number]}
            result = [brush_result(mask, label, "mask", "image") for label, mask in expected[task_id].items()]
            add_annotation_revision(session, task, 100 + task_id, "created", result, completed_by=1,
                                    ls_updated_at="2025-01-01T10:00:00Z")
            predicted[task_id] = masks[(number + 2) % len(masks)]
            add_prediction(session, task, version, {"opacity": 0.9}, "opacity", 0.9, "opacity", None,
                           [brush_result(predicted[task_id], "opacity", "mask", "image")])
    out = root / "export"
    result = CliRunner().invoke(app, ["export", str(out), "--project", str(PROJECT), "--database-url", url,
                                      "--document-root", str(docs), "--format", "coco", "--predictions"])
    assert result.exit_code == 0, result.output
    return out, expected, predicted


def test_every_exported_segmentation_decodes_to_the_annotated_mask(exported):
    out, expected, _ = exported
    coco = COCO(str(out / "annotations.json"))  # the COCO API's own loader and index
    assert sorted(coco.getImgIds()) == sorted(SIZES)
    assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == LABELS
    seen = set()
    for annotation in coco.loadAnns(coco.getAnnIds()):
        task_id, label = annotation["image_id"], coco.cats[annotation["category_id"]]["name"]
        image = coco.imgs[task_id]
        assert (image["width"], image["height"]) == SIZES[task_id]
        want = expected[task_id][label]
        np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), want, err_msg=f"task {task_id} {label}")
        rle = reference(annotation["segmentation"])
        assert annotation["area"] == int(coco_mask.area(rle)) == int(want.sum())
        assert annotation["bbox"] == coco_mask.toBbox(rle).tolist()
        seen.add((task_id, label))
    assert seen == {(t, label) for t in SIZES for label in LABELS}


def test_exported_predictions_decode_to_the_predicted_masks(exported):
    out, _, predicted = exported
    results = json.loads((out / "predictions.json").read_text())
    assert sorted(r["image_id"] for r in results) == sorted(SIZES)
    for entry in results:
        rle = reference(entry["segmentation"])
        want = predicted[entry["image_id"]]
        assert list(entry["segmentation"]["size"]) == [SIZES[entry["image_id"]][1], SIZES[entry["image_id"]][0]]
        np.testing.assert_array_equal(coco_mask.decode(rle).astype(bool), want)
        assert entry["area"] == int(coco_mask.area(rle)) and entry["bbox"] == coco_mask.toBbox(rle).tolist()
    # the results file is what COCO's evaluation loads against the ground truth
    loaded = COCO(str(out / "annotations.json")).loadRes(str(out / "predictions.json"))
    assert len(loaded.getAnnIds()) == len(results)
