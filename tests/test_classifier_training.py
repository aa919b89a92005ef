"""Training a classifier a user can trust: patient-grouped validation split, class weights, the
validation confusion matrix and the warning when the model does no better than the majority class.

Tiny images (16 x 16) and a two-block small CNN keep each training to a few seconds.
"""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from typer.testing import CliRunner

from labeler.class_folders import read_patients, scan_class_folders
from labeler.cli import app
from models.classifiers import build_small_cnn
from models.training import class_weights, patient_split, stratified_split, train_classifier

pytestmark = pytest.mark.train

SIZE = 16


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def write_folders(root: Path, counts: dict[str, int], pixel) -> Path:
    """root/<class>/<class>_<i>.png, ``pixel(class index, i)`` -> (SIZE, SIZE) uint8 image."""
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / name / f"{name}_{i:02d}.png"), pixel(c, i))
    return root


def read_confusion(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    rows = list(csv.reader(path.open()))
    return rows[0], [r[0] for r in rows[1:]], np.array([[int(v) for v in r[1:]] for r in rows[1:]])


# --------------------------------------------------------------------------------------------
# patient split


def grouped_labels():
    """30 images of 12 patients (1 to 4 images each); a patient's images mostly share a class."""
    rng = np.random.default_rng(5)
    patients, labels = [], []
    for p in range(12):
        n = int(rng.integers(1, 5))
        patients += [f"patient-{p}"] * n
        labels += [p % 3] * n
    order = rng.permutation(len(labels))  # a patient's images are not adjacent
    return np.array(labels)[order], np.array(patients)[order]


def test_patient_split_keeps_each_patient_on_one_side_and_is_seeded():
    labels, patients = grouped_labels()
    splits = {}
    for seed in range(6):
        train, val = patient_split(labels, patients, 0.3, seed)
        assert sorted([*train, *val]) == list(range(len(labels)))
        assert not set(patients[train]) & set(patients[val])
        assert set(labels[val]) == {0, 1, 2}  # stratified: every class has validation patients
        again = patient_split(labels, patients, 0.3, seed)
        assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
        splits[seed] = tuple(val)
    assert len(set(splits.values())) > 1  # the seed matters


def test_patient_split_with_one_image_per_patient_is_the_stratified_split():
    labels = np.random.default_rng(2).integers(0, 3, 40)
    ids = np.array([f"p{i:02d}" for i in np.random.default_rng(3).permutation(40)])  # sorted ids != image order
    for seed in range(5):
        for got, want in zip(patient_split(labels, ids, 0.25, seed), stratified_split(labels, 0.25, seed)):
            assert np.array_equal(got, want)


def test_patient_split_rejects_a_length_mismatch():
    with pytest.raises(ValueError, match="one patient per image"):
        patient_split(np.array([0, 1, 0]), np.array(["a", "b"]), 0.3, 0)


def test_read_patients_by_relative_path_and_by_name(tmp_path):
    data = write_folders(tmp_path / "data", {"a": 3, "b": 3}, lambda c, i: np.zeros((SIZE, SIZE), np.uint8))
    paths, _, _ = scan_class_folders(data)
    (tmp_path / "p.csv").write_text("file,patient\na/a_00.png,P1\nb_01.png,P1\n./b/b_02.png,P2\n")
    ids = read_patients(tmp_path / "p.csv", data, paths)
    names = [p.name for p in paths]
    assert ids[names.index("a_00.png")] == ids[names.index("b_01.png")] == "P1"
    assert ids[names.index("b_02.png")] == "P2"
    unlisted = [ids[names.index(n)] for n in ("a_01.png", "a_02.png", "b_00.png")]
    assert len(set(unlisted)) == 3 and not set(unlisted) & {"P1", "P2"}


# --------------------------------------------------------------------------------------------
# class weights


def test_class_weights_are_inverse_frequency_with_mean_one():
    assert class_weights(np.array([0, 0, 0, 1])) == pytest.approx({0: 0.5, 1: 1.5})
    # counts 2, 4, 4: inverse 1/2, 1/4, 1/4, mean 1/3 -> 1.5, 0.75, 0.75
    assert class_weights(np.array([2, 1, 0, 1, 2, 1, 0, 2, 1, 2])) == pytest.approx({0: 1.5, 1: 0.75, 2: 0.75})
    assert class_weights(np.array([1, 0, 1, 0])) == {0: 1.0, 1: 1.0}


@pytest.fixture
def fit_calls(monkeypatch):
    """The keyword arguments of every keras Model.fit call (fit still runs)."""
    calls = []
    original = keras.Model.fit

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy)
    return calls


def small_set(counts=(9, 3)):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(counts)), counts)
    images = rng.integers(0, 256, (len(labels), SIZE, SIZE, 3), dtype=np.uint8)
    return images, labels


def test_class_weights_of_the_training_split_reach_fit(fit_calls):
    images, labels = small_set((9, 3))
    model, spec = build_small_cnn(class_names=("a", "b"), input_size=(SIZE, SIZE), filters=(4, 8))
    report = train_classifier(model, spec, images, labels, epochs=1, batch_size=4, val_fraction=0.25, verbose=0)
    train, _ = stratified_split(labels, 0.25, 0)
    assert np.bincount(labels[train]).tolist() == [7, 2]  # inverse 1/7, 1/2 -> mean 9/28
    assert report.class_weights == pytest.approx({0: 4 / 9, 1: 14 / 9})
    assert fit_calls[-1]["class_weight"] == report.class_weights

    model, spec = build_small_cnn(class_names=("a", "b"), input_size=(SIZE, SIZE), filters=(4, 8))
    report = train_classifier(
        model, spec, images, labels, epochs=1, batch_size=4, val_fraction=0.25, balance_classes=False, verbose=0
    )
    assert report.class_weights is None and fit_calls[-1]["class_weight"] is None


# --------------------------------------------------------------------------------------------
# confusion matrix


def test_confusion_matrix_is_the_kept_models_predictions_on_the_validation_split():
    images, labels = small_set((10, 6))
    keras.utils.set_random_seed(1)
    model, spec = build_small_cnn(class_names=("a", "b"), input_size=(SIZE, SIZE), filters=(4, 8))
    report = train_classifier(
        model, spec, images, labels, epochs=2, batch_size=4, val_fraction=0.3, augment=False, seed=1, verbose=0
    )
    _, val = stratified_split(labels, 0.3, 1)
    predicted = model.predict(spec.preprocess(images[val].astype(np.float32) / 255.0), verbose=0).argmax(-1)
    want = np.zeros((2, 2), int)
    for t, p in zip(labels[val], predicted):
        want[t, p] += 1
    assert np.array_equal(report.confusion, want)
    assert report.confusion.sum(axis=1).tolist() == np.bincount(labels[val]).tolist()
    assert report.confusion.trace() / len(val) == pytest.approx(report.val_accuracy, abs=1e-6)
    assert report.majority_baseline() == (0, pytest.approx(np.bincount(labels[val])[0] / len(val)))


def test_no_confusion_without_a_validation_split():
    images, labels = small_set((4, 4))
    model, spec = build_small_cnn(class_names=("a", "b"), input_size=(SIZE, SIZE), filters=(4,))
    report = train_classifier(model, spec, images, labels, epochs=1, val_fraction=0.0, verbose=0)
    assert report.confusion is None and report.majority_baseline() is None


# --------------------------------------------------------------------------------------------
# the command


def test_cli_writes_the_confusion_csv_and_warns_when_the_data_are_unlearnable(tmp_path):
    """Every image is the same gray square: the model cannot tell the classes apart, so its
    validation accuracy is at most the majority class's share."""
    data = write_folders(tmp_path / "data", {"clear": 10, "opacity": 5, "other": 3},
                         lambda c, i: np.full((SIZE, SIZE), 128, np.uint8))
    out = tmp_path / "m.keras"
    result = invoke("train-classifier", data, "--out", out, "--size", SIZE, "--epochs", 1, "--batch-size", 4,
                    "--val-split", 0.4)
    assert result.exit_code == 0, result.output
    header, rows, matrix = read_confusion(tmp_path / "m.confusion.csv")
    assert header == ["true\\predicted", "clear", "opacity", "other"] and rows == ["clear", "opacity", "other"]
    _, val = stratified_split(np.repeat([0, 1, 2], [10, 5, 3]), 0.4, 0)
    assert matrix.shape == (3, 3) and matrix.sum() == len(val) == 7
    assert matrix.sum(axis=1).tolist() == [4, 2, 1]
    assert "recall" in result.stdout and "class weights: clear" in result.stdout
    accuracy = matrix.trace() / matrix.sum()
    assert warning_lines(result.stderr) == [
        f"warning: validation accuracy {accuracy:.3f} does not beat always guessing 'clear' ({4 / 7:.3f})"
    ]


def test_cli_warns_when_accuracy_only_equals_the_majority_rate(tmp_path):
    """Balanced classes, identical images: every validation image gets the same class, so accuracy
    is exactly the majority rate 0.5 (ties name the first class) -- no better, so a warning."""
    data = write_folders(tmp_path / "data", {"clear": 5, "opacity": 5},
                         lambda c, i: np.full((SIZE, SIZE), 90, np.uint8))
    result = invoke("train-classifier", data, "--out", tmp_path / "m.keras", "--size", SIZE, "--epochs", 1,
                    "--val-split", 0.4)
    assert result.exit_code == 0, result.output
    _, _, matrix = read_confusion(tmp_path / "m.confusion.csv")
    assert matrix.sum(axis=1).tolist() == [2, 2] and matrix.trace() == 2
    assert warning_lines(result.stderr) == [
        "warning: validation accuracy 0.500 does not beat always guessing 'clear' (0.500)"
    ]


def test_cli_does_not_warn_when_the_classes_are_learnt(tmp_path):
    """Black against white images: learnt in a few epochs, and the majority-class rate is beaten."""
    data = write_folders(tmp_path / "data", {"dark": 8, "light": 8},
                         lambda c, i: np.full((SIZE, SIZE), 255 * c, np.uint8))
    out = tmp_path / "m.keras"
    result = invoke("train-classifier", data, "--out", out, "--size", SIZE, "--epochs", 6, "--batch-size", 4,
                    "--learning-rate", 0.05, "--no-augment", "--no-class-weights", "--val-split", 0.25)
    assert result.exit_code == 0, result.output
    _, _, matrix = read_confusion(tmp_path / "m.confusion.csv")
    assert matrix.trace() / matrix.sum() > 0.5, matrix
    assert warning_lines(result.stderr) == []
    assert "class weights" not in result.stdout


def test_cli_patients_file_groups_the_split(tmp_path):
    data = write_folders(tmp_path / "data", {"a": 6, "b": 6}, lambda c, i: np.full((SIZE, SIZE), 40 * i, np.uint8))
    # One patient has all of b's images but one: on one side together.
    rows = "".join(f"b/b_{i:02d}.png,P\n" for i in range(5))
    (tmp_path / "p.csv").write_text("file,patient\n" + rows)
    result = invoke("train-classifier", data, "--out", tmp_path / "m.keras", "--size", SIZE, "--epochs", 1,
                    "--patients", tmp_path / "p.csv", "--val-split", 0.3)
    assert result.exit_code == 0, result.output
    _, _, matrix = read_confusion(tmp_path / "m.confusion.csv")
    paths, labels, _ = scan_class_folders(data)
    _, val = patient_split(labels, read_patients(tmp_path / "p.csv", data, paths), 0.3, 0)
    assert matrix.sum(axis=1).tolist() == np.bincount(labels[val], minlength=2).tolist()
    assert matrix.sum(axis=1)[1] in (1, 5)  # b's validation images: the lone one or patient P's five


def test_cli_bad_patients_file(tmp_path):
    data = write_folders(tmp_path / "data", {"a": 3, "b": 3}, lambda c, i: np.zeros((SIZE, SIZE), np.uint8))
    (data / "b" / "a_01.png").write_bytes((data / "a" / "a_01.png").read_bytes())  # one name, two images
    cases = {
        "missing.csv": (None, "--patients: no such file"),
        "columns.csv": ("name,id\na_00.png,P1\n", "columns file,patient"),
        "unknown.csv": ("file,patient\nsecret-name.png,P1\n", "line 2: no image in DATA_DIR"),
        "empty.csv": ("file,patient\na_00.png,\n", "line 2: empty file or patient"),
        "twice.csv": ("file,patient\na_00.png,P1\na/a_00.png,P2\n", "line 3: the image is already listed"),
        "ambiguous.csv": ("file,patient\na_01.png,P1\n", "line 2: that name matches several images"),
        "binary.csv": (b"file,patient\n\xff\xfe,P1\n", "not UTF-8"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
        result = invoke("train-classifier", data, "--out", tmp_path / "m.keras", "--size", SIZE, "--epochs", 1,
                        "--patients", path)
        assert result.exit_code == 2, (name, result.output)
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and message in lines[0], (name, result.stderr)
        assert "secret-name" not in result.output and "P1" not in result.output and str(tmp_path) not in result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "m.keras").exists()


def test_cli_without_validation_leaves_no_confusion_csv(tmp_path):
    data = write_folders(tmp_path / "data", {"a": 4, "b": 4}, lambda c, i: np.full((SIZE, SIZE), 60 * c, np.uint8))
    out = tmp_path / "m.keras"
    assert invoke("train-classifier", data, "--out", out, "--size", SIZE, "--epochs", 1).exit_code == 0
    assert (tmp_path / "m.confusion.csv").is_file()
    result = invoke("train-classifier", data, "--out", out, "--size", SIZE, "--epochs", 1, "--val-split", 0)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "m.confusion.csv").exists()  # the earlier matrix described another model
    assert "validation accuracy n/a" in result.stdout and warning_lines(result.stderr) == []
