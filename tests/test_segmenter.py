"""The segmenter loop: a U-Net trained on the corrected masks of a real ``labeler export`` (made
from a real SQLite database filled with synthetic radiographs and their true lesion masks),
evaluated against them and against the exported pre-labels, and used by the backend per project.

Tiny images (48 px) and a tiny U-Net keep every training here to a few seconds.
"""
from __future__ import annotations

import csv

import cv2
import keras
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from typer.testing import CliRunner

from backend.app import create_app
from db.engine import make_engine, session_factory
from db.repository import add_annotation_revision, add_prediction, live_task, model_version, upsert_project
from db.schema import Prediction
from explain.labelstudio.results import brush_result, choices_result
from explain.prelabel import Prelabeler, PrelabelSettings
from explain.regions import RegionSettings, Threshold
from labeler.cli import app
from labeler.segmenting import score_labels
from models.splits import carve_validation
from labeler.synthetic import synthetic_radiograph
from labeler.workspace import Workspace
from models.classifiers import build_small_cnn
from models.loading import load_classifier, load_segmenter, save_model
from models.segmentation import Segmenter, train_segmenter
from models.unet import build_unet
from sqlalchemy import select
from test_backend import make_settings, predict_body, task

pytestmark = pytest.mark.train  # U-Nets trained for 20-30 epochs (40 s each on 2 shared cores)

SIZE = 48
FILTERS = (4, 8, 16)
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="diagnosis" toName="image"><Choice value="clear"/><Choice value="opacity"/></Choices>
  <BrushLabels name="mask" toName="image"><Label value="Opacity"/></BrushLabels>
</View>"""


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def synthetic_set(count, seed, opacity_share=0.75):
    """(N, SIZE, SIZE, 3) uint8 images and (N, SIZE, SIZE, 1) uint8 lesion masks."""
    rng = np.random.default_rng(seed)
    pairs = [synthetic_radiograph(SIZE, n < count * opacity_share, rng) for n in range(count)]
    images = np.stack([np.repeat(image[..., None], 3, -1) for image, _ in pairs])
    return images, np.stack([mask[..., None].astype(np.uint8) for _, mask in pairs])


def shifted(mask, dx):
    """A poor pre-label: the true mask moved ``dx`` pixels sideways."""
    return np.roll(mask, dx, axis=1)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A png export (with predictions) of 40 annotated synthetic radiographs, split 60/20/20 (each task its own patient)."""
    root = tmp_path_factory.mktemp("segmenter-export")
    docs = root / "docs"
    (docs / "img").mkdir(parents=True)
    url = f"sqlite:///{root / 'labeler.db'}"
    images, masks = synthetic_set(40, seed=3)
    with Workspace(database_url=url).sessions.begin() as session:
        project = upsert_project(session, 5, title="seg", label_config=CONFIG)
        version = model_version(session, "cam-v1", "w1", {})
        for n, (image, mask) in enumerate(zip(images, masks[..., 0].astype(bool))):
            cv2.imwrite(str(docs / "img" / f"{n}.png"), image[..., 0])
            row = live_task(session, project, 100 + n, f"/data/local-files/?d=img/{n}.png", width=SIZE, height=SIZE)
            label = "opacity" if mask.any() else "clear"
            add_prediction(session, row, version, {label: 1.0}, label, 1.0, label, None,
                           [brush_result(shifted(mask, 6), "Opacity", "mask", "image")] if mask.any() else [])
            result = [choices_result([label], "diagnosis", "image")]
            if mask.any():
                result.append(brush_result(mask, "Opacity", "mask", "image"))
            add_annotation_revision(session, row, 1000 + n, "created", result, completed_by=1,
                                    ls_updated_at="2026-11-28T10:00:00Z")
    out = root / "export"
    done = invoke("export", out, "--project", 5, "--database-url", url, "--document-root", docs,
                  "--predictions", "--split", "0.6,0.2,0.2")
    assert done.exit_code == 0, done.output
    return out


def test_unet_shapes_and_spec():
    model, spec = build_unet(("Opacity", "Nodule"), (32, 48), filters=(4, 8, 16))
    assert model.output_shape == (None, 32, 48, 2)
    assert spec.kind == "segmenter" and spec.class_names == ("Opacity", "Nodule") and spec.channels == 1
    probabilities = np.asarray(model(np.zeros((2, 32, 48, 1), np.float32)))
    assert probabilities.min() >= 0 and probabilities.max() <= 1
    with pytest.raises(ValueError, match="divisible by 4"):
        build_unet(input_size=(30, 48), filters=(4, 8, 16))


def test_train_segmenter_learns_the_lesions_and_keeps_the_best_epoch():
    images, masks = synthetic_set(48, seed=1)
    val_images, val_masks = synthetic_set(16, seed=2)
    keras.utils.set_random_seed(0)
    model, spec = build_unet(("Opacity",), (SIZE, SIZE), filters=FILTERS)
    report = train_segmenter(model, spec, images, masks, val_images, val_masks, epochs=25, batch_size=8, verbose=0)
    assert report.epochs == 25
    best = int(np.argmin(report.history["val_loss"]))
    assert report.best_epoch == best + 1
    assert report.val_dice == pytest.approx(report.history["val_hard_dice"][best])
    # the bright blobs are easy: the kept epoch segments them far better than chance
    assert report.val_dice > 0.6, report.history["val_hard_dice"]


def test_train_segmenter_refuses_mismatched_inputs():
    images, masks = synthetic_set(4, seed=1)
    model, spec = build_unet(("Opacity",), (SIZE, SIZE), filters=FILTERS)
    with pytest.raises(ValueError, match="masks must be"):
        train_segmenter(model, spec, images, masks[..., 0], epochs=1, verbose=0)
    with pytest.raises(ValueError, match="images must be"):
        train_segmenter(model, spec, images[:, :32], masks, epochs=1, verbose=0)


def test_carve_validation_is_seeded_and_disjoint():
    train, val = carve_validation(20, 0.15, seed=4)
    assert len(val) == 3 and not set(train) & set(val) and sorted([*train, *val]) == list(range(20))
    assert np.array_equal(carve_validation(20, 0.15, seed=4)[1], val)
    assert len(carve_validation(2, 0.01, seed=0)[1]) == 1


def test_score_labels_counts_empty_predictions_as_zero_and_false_positives_on_clear():
    truth = np.zeros((10, 10, 1), bool)
    truth[2:6, 2:6] = True
    clear = np.zeros((10, 10, 1), bool)
    half = np.zeros((10, 10, 1), bool)
    half[2:6, 2:4] = True
    noise = np.zeros((10, 10, 1), bool)
    noise[0, :5] = True
    summaries, rows = score_labels(["Opacity"], [truth, truth, clear, clear], [half, clear, noise, clear],
                                   [truth, None, None, None])
    (s,) = summaries
    assert s.tasks == 2
    assert s.dice == pytest.approx((2 * 8 / (16 + 8) + 0.0) / 2)
    assert s.iou == pytest.approx((8 / 16 + 0.0) / 2)
    assert s.fp == pytest.approx((0.05 + 0.0) / 2) and s.fp_any == pytest.approx(0.5)
    assert s.prelabel_dice == pytest.approx(1.0)
    # edit fraction over every task: half drawn 8/16, nothing drawn 16/16, noise on a clear task 1, clear 0
    assert [r["edit_fraction"] for r in rows] == pytest.approx([0.5, 1.0, 1.0, 0.0])
    assert s.edit == pytest.approx(0.625) and s.prelabel_edit == pytest.approx(0.0)
    assert len(rows) == 4


def test_train_and_evaluate_segmenter_commands_on_an_export(export_dir, tmp_path):
    model_file = tmp_path / "unet.keras"
    trained = invoke("train-segmenter", export_dir, "--out", model_file, "--size", SIZE, "--epochs", 30,
                     "--filters", ",".join(map(str, FILTERS)), "--batch-size", 4)
    assert trained.exit_code == 0, trained.output
    assert "labels Opacity" in trained.output and "validation Dice" in trained.output
    loaded = load_segmenter(model_file)
    assert loaded.spec.kind == "segmenter" and loaded.spec.input_size == (SIZE, SIZE)
    assert loaded.version in trained.output

    scores = tmp_path / "scores.csv"
    evaluated = invoke("evaluate-segmenter", model_file, export_dir, "--split", "test", "--csv", scores)
    assert evaluated.exit_code == 0, evaluated.output
    with open(scores) as handle:
        rows = list(csv.DictReader(handle))
    manifest = list(csv.DictReader(open(export_dir / "manifest.csv")))
    assert {r["task_id"] for r in rows} == {m["task_id"] for m in manifest if m["split"] == "test"}
    present = [r for r in rows if r["present"] == "True"]
    assert present, "the test split has lesion images"
    # the exported pre-labels are the true masks shifted by 6 px: their Dice is known exactly
    for row in present:
        mask = cv2.imread(str(export_dir / "masks" / f"{row['task_id']}.png"), cv2.IMREAD_UNCHANGED) == 1
        area = mask.sum()
        overlap = (mask & shifted(mask, 6)).sum()
        assert float(row["prelabel_dice"]) == pytest.approx(2 * overlap / (2 * area))
    # the segmenter trained on the corrected masks does better than the shifted pre-labels
    segmenter_dice = np.mean([float(r["dice"]) for r in present])
    prelabel_dice = np.mean([float(r["prelabel_dice"]) for r in present])
    assert segmenter_dice > prelabel_dice, (segmenter_dice, prelabel_dice)
    assert f"{segmenter_dice:.3f}" in evaluated.output


def test_train_segmenter_clicks_trains_a_click_model_on_the_export(export_dir, tmp_path):
    """--clicks: a clicker (models.clicking) on the export's train split, kept by its val split's Dice
    over simulated clicks; three clicks of the simulated annotator on a validation lesion outline it."""
    from models.clicking import Clicker
    from models.loading import load_model
    from test_clicking import answer_after_clicks

    model_file = tmp_path / "clicker.keras"
    trained = invoke("train-segmenter", export_dir, "--out", model_file, "--clicks", "--size", SIZE, "--epochs", 80,
                     "--filters", ",".join(map(str, FILTERS)), "--batch-size", 4, "--learning-rate", 0.003)
    assert trained.exit_code == 0, trained.output
    assert "labels Opacity" in trained.output and "validation Dice over 1-5 simulated clicks" in trained.output
    loaded = load_model(model_file, kind="clicker")
    assert loaded.spec.input_size == (SIZE, SIZE) and loaded.spec.input_channels == 4 and loaded.version in trained.output
    clicker = Clicker(loaded)
    manifest = [r for r in csv.DictReader(open(export_dir / "manifest.csv")) if r["split"] == "val"]
    scores = []
    for row in manifest:
        mask = cv2.imread(str(export_dir / "masks" / f"{row['task_id']}.png"), cv2.IMREAD_UNCHANGED) == 1
        if not mask.any():
            continue
        answers = clicker.on(cv2.imread(str(export_dir / row["image_file"]), cv2.IMREAD_GRAYSCALE) / 255.0)
        answer = answer_after_clicks(answers, mask)
        scores.append(2 * (answer & mask).sum() / (answer.sum() + mask.sum()))
    assert scores and np.mean(scores) > 0.5, scores


def test_segmenter_commands_name_bad_input_in_one_line(export_dir, tmp_path):
    not_export = invoke("train-segmenter", tmp_path, "--out", tmp_path / "m.keras")
    assert not_export.exit_code == 2 and "neither a `labeler export --format png` folder (manifest.csv)" in not_export.output
    bad_suffix = invoke("train-segmenter", export_dir, "--out", tmp_path / "m.pt")
    assert bad_suffix.exit_code == 2 and "--out must end in .keras or .h5" in bad_suffix.output
    bad_filters = invoke("train-segmenter", export_dir, "--out", tmp_path / "m.keras", "--filters", "8,x")
    assert bad_filters.exit_code == 2 and "--filters" in bad_filters.output
    bad_fraction = invoke("train-segmenter", export_dir, "--out", tmp_path / "m.keras", "--val-fraction", 1)
    assert bad_fraction.exit_code == 2 and "--val-fraction must be in [0, 1), got 1.0" in bad_fraction.output
    model, spec = build_small_cnn(("clear", "opacity"), (SIZE, SIZE), filters=(4, 8))
    classifier = save_model(model, spec, tmp_path / "cnn.keras")
    wrong_kind = invoke("evaluate-segmenter", classifier, export_dir)
    assert wrong_kind.exit_code == 2 and "is a classifier" in wrong_kind.output
    for result in (not_export, bad_suffix, bad_filters, bad_fraction, wrong_kind):
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


# --------------------------------------------------------------------------------------------
# the pre-label pipeline and the backend with a segmenter


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny classifier and a tiny U-Net trained for a few epochs, saved with their specs."""
    folder = tmp_path_factory.mktemp("seg-models")
    keras.utils.set_random_seed(0)
    classifier, cspec = build_small_cnn(("clear", "opacity"), (SIZE, SIZE), filters=(4, 8))
    unet, uspec = build_unet(("Opacity",), (SIZE, SIZE), filters=FILTERS)
    images, masks = synthetic_set(32, seed=5)
    train_segmenter(unet, uspec, images, masks, epochs=20, batch_size=8, learning_rate=3e-3, verbose=0)
    return save_model(classifier, cspec, folder / "cnn.keras"), save_model(unet, uspec, folder / "unet.keras")


def expected_segmenter_mask(segmenter_path, image, threshold=0.5):
    """The pre-label straight from the U-Net: its map resized bilinearly, thresholded."""
    segmenter = Segmenter(load_segmenter(segmenter_path))
    height, width = image.shape[:2]
    probability = cv2.resize(segmenter([image])[0, ..., 0], (width, height), interpolation=cv2.INTER_LINEAR)
    return probability >= threshold


def test_prelabeler_sources(models):
    classifier_path, segmenter_path = models
    classifier, segmenter = load_classifier(classifier_path), Segmenter(load_segmenter(segmenter_path))
    images, _ = synthetic_set(4, seed=9, opacity_share=1.0)
    images = [cv2.resize(im, (72, 60)).astype(np.float32) / 255 for im in images]  # not the model size
    regions = RegionSettings(Threshold("value", 0.5), min_area=0.0, fill_holes=False)
    by_source = {
        source: Prelabeler(classifier.model, classifier.spec, PrelabelSettings(regions=regions, source=source),
                           segmenter=segmenter)
        for source in ("segmenter", "fusion")
    }
    seg = by_source["segmenter"](images)
    fused = by_source["fusion"](images)
    for image, s, f in zip(images, seg, fused):
        (cls,) = s.classes
        assert cls.class_name == "Opacity" and (s.width, s.height) == (72, 60)
        union = np.zeros((60, 72), bool)
        for region in cls.regions:
            union |= region.mask
        expected = expected_segmenter_mask(segmenter_path, image)
        assert expected.any() and np.array_equal(union, expected)
        # fusion = sqrt(segmenter x Grad-CAM): never above the segmenter's own map
        assert np.all(f.classes[0].heatmap <= cls.heatmap + 1e-6)
    assert "segmenter:" + segmenter.version in by_source["segmenter"].description
    assert by_source["fusion"].description.startswith(f"fusion:{segmenter.version}+gradcam@features")
    with pytest.raises(ValueError, match="needs a segmenter"):
        Prelabeler(classifier.model, classifier.spec, PrelabelSettings(source="segmenter"))


def test_backend_chooses_the_source_per_project(models, tmp_path):
    classifier_path, segmenter_path = models
    documents = tmp_path / "documents"
    (documents / "xrays").mkdir(parents=True)
    images, _ = synthetic_set(2, seed=11, opacity_share=1.0)
    for n, image in enumerate(images):
        cv2.imwrite(str(documents / "xrays" / f"img{n}.png"), image[..., 0])
    settings = make_settings(tmp_path, classifier_path, documents, segmenter_path=segmenter_path,
                             project_sources={8: "segmenter", 9: "fusion"}, cam_min_area=1e-6,
                             cam_shape="map")  # the U-Net's mask as is: checked against expected_segmenter_mask
    client = create_app(settings).test_client()
    answers = {
        project: client.post("/predict", json={**predict_body(task(project * 10, "img0.png"), project=f"{project}.1"),
                                                "label_config": CONFIG}).json
        for project in (7, 8, 9)
    }
    versions = {project: answer["model_version"] for project, answer in answers.items()}
    segmenter_version = load_segmenter(segmenter_path).version
    assert "layercam@" in versions[7] and "segmenter:" not in versions[7]
    assert f"-segmenter:{segmenter_version}-value0.5" in versions[8]
    assert f"-fusion:{segmenter_version}+layercam@" in versions[9]
    assert len(set(versions.values())) == 3
    # project 8's brush pre-label is the U-Net's mask (regions above min area, holes filled)
    image = cv2.imread(str(documents / "xrays" / "img0.png"), cv2.IMREAD_GRAYSCALE)
    rgb = np.repeat(image[..., None], 3, -1).astype(np.float32) / 255
    brushes = [r for r in answers[8]["results"][0]["result"] if r["type"] == "brushlabels"]
    assert brushes and all(r["value"]["brushlabels"] == ["Opacity"] for r in brushes)
    drawn = np.zeros(image.shape, bool)
    for r in brushes:
        drawn |= decode_rle(r["value"]["rle"]).reshape(*image.shape, 4)[..., 3] > 0
    expected = expected_segmenter_mask(segmenter_path, rgb)
    assert (drawn & expected).sum() / max(expected.sum(), 1) > 0.95 and (drawn & ~expected).sum() <= 0.05 * drawn.sum() + 2
    # every project's prediction is stored under its own version
    sessions = session_factory(make_engine(settings.database_url))
    with sessions() as session:
        stored = {p.task.ls_task_id: p.model_version.name for p in session.scalars(select(Prediction))}
    assert stored == {70: versions[7], 80: versions[8], 90: versions[9]}


def test_backend_refuses_a_segmenter_source_without_a_segmenter(tmp_path):
    from backend.config import Settings

    for env, message in [
        ({"PRELABEL_SOURCE": "segmenter"}, "SEGMENTER_PATH is not set"),
        ({"PRELABEL_SOURCE": "unet"}, "PRELABEL_SOURCE: source must be one of gradcam, segmenter, fusion"),
        ({"PROJECT_PRELABEL_SOURCES": "x=fusion", "SEGMENTER_PATH": "s.keras"}, "project id must be a number"),
        ({"PROJECT_PRELABEL_SOURCES": "3", "SEGMENTER_PATH": "s.keras"}, "expected project_id=source"),
    ]:
        with pytest.raises(ValueError, match=message):
            Settings.from_env({"MODEL_PATH": "m.keras", **env})
    settings = Settings.from_env({"MODEL_PATH": "m.keras", "SEGMENTER_PATH": "s.keras", "PROJECT_PRELABEL_SOURCES": "3=fusion"})
    assert settings.source_for(3) == "fusion" and settings.source_for(4) == "gradcam" and settings.source_for(None) == "gradcam"


@pytest.mark.parametrize("source", ["segmenter", "fusion"])
def test_prelabel_command_has_every_source_of_the_backend(models, label_studio, ls, tmp_path, source):
    """`labeler prelabel --source S` pre-labels with the backend's pipeline: the same model
    version (so neither asks again for what the other did) and the U-Net's regions."""
    classifier_path, segmenter_path = models
    env = {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'labeler.db'}", "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root),
    }
    runner = CliRunner()
    output = runner.invoke(app, ["init", "--model", str(classifier_path), "--title", f"cli-{source}"], env=env).output
    env["LABEL_STUDIO_PROJECT"] = project = output.split("LABEL_STUDIO_PROJECT=")[1].split()[0]
    images, _ = synthetic_set(3, seed=13, opacity_share=1.0)
    folder = tmp_path / "images"
    folder.mkdir()
    for n, image in enumerate(images):
        cv2.imwrite(str(folder / f"img{n}.png"), image[..., 0])
    assert runner.invoke(app, ["import", str(folder)], env=env).exit_code == 0
    result = runner.invoke(
        app, ["prelabel", "--model", str(classifier_path), "--source", source, "--segmenter", str(segmenter_path)], env=env,
    )
    assert result.exit_code == 0, result.output
    predictions = ls.predictions.list(project=int(project))
    assert len(predictions) == 3
    backend = create_app(make_settings(tmp_path, classifier_path, label_studio.document_root, segmenter_path=segmenter_path,
                                       prelabel_source=source, cam_threshold="fraction:0.2")).test_client()
    backend_version = backend.post("/setup", json={"project": "99"}).json["model_version"]
    assert {p.model_version for p in predictions} == {backend_version}
    if source == "segmenter":  # (fusion's map also needs the untrained classifier's agreement)
        assert any(r["type"] == "brushlabels" for p in predictions for r in p.result)
    missing = runner.invoke(app, ["prelabel", "--model", str(classifier_path), "--source", source], env=env)
    assert missing.exit_code == 2 and "needs --segmenter" in missing.output
