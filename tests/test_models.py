"""models/: the spec beside a model, loading and saving in every format, the builders and training.

Every model here is a real, tiny Keras model built in the test (the InceptionV3 one is built once
per module at the article's 256 x 256, with random weights: nothing is downloaded).
"""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from explain.gradcam import GradCam
from labeler.synthetic import CLASSES, synthetic_radiograph
from models.classifiers import ARCHITECTURES, ARTICLE_CLASSES, build_inception_classifier, build_small_cnn
from models.loading import LoadedModel, load_classifier, save_classifier, weights_version
from models.spec import ModelSpec, load_spec, save_spec, spec_path
from models.training import TrainingReport, stratified_split, train_classifier


def small_model(classes=("a", "b", "c"), size=(32, 40), seed=0, filters=(4, 8)):
    keras.utils.set_random_seed(seed)
    return build_small_cnn(class_names=classes, input_size=size, filters=filters)


def random_inputs(n, size, channels=3, seed=1):
    return np.random.default_rng(seed).random((n, *size, channels), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# ModelSpec


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"input_size": (0, 32)}, "input_size"),
        ({"input_size": (32, 32, 3)}, "input_size"),
        ({"input_size": (-4, 32)}, "input_size"),
        ({"class_names": ("a", "b", "a")}, "class_names"),
        ({"class_names": ()}, "class_names"),
        ({"channels": 2}, "channels"),
        ({"scaling": "imagenet"}, "scaling"),
    ],
)
def test_spec_validation_names_the_field(kwargs, field):
    arguments = {"input_size": (32, 32), "class_names": ("a", "b"), **kwargs}
    with pytest.raises(ValueError, match=field):
        ModelSpec(**arguments)


def test_spec_normalises_types():
    spec = ModelSpec(input_size=[np.int64(48), 64.0], class_names=["x", "y"])
    assert spec.input_size == (48, 64) and all(type(v) is int for v in spec.input_size)
    assert spec.class_names == ("x", "y")
    assert spec.channels == 3 and spec.scaling == "unit" and spec.target_layer is None


def test_preprocess_scalings_numerically():
    images = np.array([[[[0.0, 0.5, 1.0], [0.25, 0.75, 0.1]]]], dtype=np.float64)  # (1, 1, 2, 3)
    expected = {"unit": images, "symmetric": images * 2 - 1, "raw": images * 255}
    for scaling, want in expected.items():
        out = ModelSpec((1, 2), ("a",), scaling=scaling).preprocess(images)
        assert out.dtype == np.float32 and out.shape == (1, 1, 2, 3)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-5)
    # The symmetric scaling is Keras' InceptionV3 preprocess_input of the 8-bit values.
    pixels = np.array([0, 1, 127, 128, 255], np.float32).reshape(1, 1, 5, 1).repeat(3, -1)
    symmetric = ModelSpec((1, 5), ("a",), scaling="symmetric").preprocess(pixels / 255)
    np.testing.assert_allclose(symmetric, pixels / 127.5 - 1, atol=1e-6)


def test_preprocess_gray_channel_and_single_image():
    image = np.random.default_rng(0).random((5, 6, 3))
    spec = ModelSpec((5, 6), ("a", "b"), channels=1, scaling="symmetric")
    out = spec.preprocess(image)  # (H, W, 3) becomes a batch of one
    assert out.shape == (1, 5, 6, 1)
    gray = 0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
    np.testing.assert_allclose(out[0, ..., 0], gray * 2 - 1, atol=1e-5)
    # a gray RGB image stays the same value (weights sum to one)
    flat = np.full((1, 2, 2, 3), 0.4)
    np.testing.assert_allclose(ModelSpec((2, 2), ("a",), channels=1).preprocess(flat), 0.4, atol=1e-6)


def test_preprocess_refuses_non_rgb():
    spec = ModelSpec((4, 4), ("a",))
    for shape in [(1, 4, 4, 1), (4, 4), (1, 1, 4, 4, 3)]:
        with pytest.raises(ValueError, match="RGB"):
            spec.preprocess(np.zeros(shape))


def test_spec_json_round_trip():
    spec = ModelSpec((256, 200), ("covid", "normal", "pneumonia"), channels=1, scaling="raw", target_layer="mixed10")
    text = spec.to_json()
    data = json.loads(text)
    assert data == {
        "input_size": [256, 200],
        "class_names": ["covid", "normal", "pneumonia"],
        "channels": 1,
        "scaling": "raw",
        "target_layer": "mixed10",
        "kind": "classifier",
    }
    assert ModelSpec.from_json(text) == spec
    # specs written before segmenters existed have no kind: they are classifiers
    del data["kind"]
    assert ModelSpec.from_json(json.dumps(data)) == spec


def test_spec_path_file_and_folder(tmp_path):
    assert spec_path(tmp_path / "m.keras") == tmp_path / "m.spec.json"
    assert spec_path(tmp_path / "net.v2.h5") == tmp_path / "net.v2.spec.json"
    folder = tmp_path / "saved"
    folder.mkdir()
    assert spec_path(folder) == folder / "spec.json"


def test_save_and_load_spec(tmp_path):
    spec = ModelSpec((32, 32), ("a", "b"), target_layer="features")
    written = save_spec(spec, tmp_path / "m.keras")
    assert written == tmp_path / "m.spec.json" and written.is_file()
    assert load_spec(tmp_path / "m.keras") == spec


def test_load_spec_missing_names_the_expected_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"m\.spec\.json"):
        load_spec(tmp_path / "m.keras")
    folder = tmp_path / "saved"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=r"spec\.json"):
        load_spec(folder)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"input_size": [32, 32]}',  # class_names missing
        '{"input_size": [32, 32], "class_names": ["a"], "colour": "red"}',  # unknown key
        '{"input_size": [32, 32], "class_names": ["a"], "scaling": "weird"}',
    ],
)
def test_load_spec_invalid_is_value_error(tmp_path, text):
    (tmp_path / "m.spec.json").write_text(text)
    with pytest.raises(ValueError, match=r"m\.spec\.json: invalid model spec"):
        load_spec(tmp_path / "m.keras")


# --------------------------------------------------------------------------------------------
# Saving, loading, version ids


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_save_load_round_trip(tmp_path, suffix):
    model, spec = small_model()
    x = random_inputs(3, spec.input_size)
    path = save_classifier(model, spec, tmp_path / "sub" / f"m{suffix}")
    assert path.is_file() and (tmp_path / "sub" / "m.spec.json").is_file()
    loaded = load_classifier(path)
    assert isinstance(loaded, LoadedModel)
    assert loaded.spec == spec and loaded.path == path
    assert loaded.version == weights_version(model)
    np.testing.assert_array_equal(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0))


def test_same_weights_same_version_in_both_formats(tmp_path):
    model, spec = small_model()
    a = load_classifier(save_classifier(model, spec, tmp_path / "a.keras"))
    b = load_classifier(save_classifier(model, spec, tmp_path / "b.h5"))
    assert a.version == b.version == weights_version(model)
    assert len(a.version) == 12 and int(a.version, 16) >= 0


def test_version_changes_with_one_weight():
    model, _ = small_model()
    before = weights_version(model)
    assert weights_version(model) == before  # deterministic
    kernel = model.get_layer("predictions").kernel
    value = keras.ops.convert_to_numpy(kernel).copy()
    value[0, 0] += 1e-3
    kernel.assign(value)
    changed = weights_version(model)
    assert changed != before
    value[0, 0] -= 1e-3
    kernel.assign(value)
    assert weights_version(model) == before
    # the same architecture with other random weights has another version
    other, _ = small_model(seed=1)
    assert weights_version(other) != before


def test_saved_model_folder_from_tf_keras(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    tf_keras.utils.set_random_seed(0)
    legacy = tf_keras.Sequential(
        [
            tf_keras.Input((24, 24, 3)),
            tf_keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            tf_keras.layers.GlobalAveragePooling2D(name="gap"),
            tf_keras.layers.Dense(2, activation="softmax", name="predictions"),
        ]
    )
    folder = tmp_path / "saved"
    legacy.save(folder)
    assert (folder / "saved_model.pb").is_file()
    # without its spec the folder is refused, naming the missing file
    with pytest.raises(FileNotFoundError, match=r"spec\.json"):
        load_classifier(folder)
    spec = ModelSpec((24, 24), ("clear", "opacity"))
    save_spec(spec, folder)
    loaded = load_classifier(folder)
    assert loaded.spec == spec
    x = random_inputs(4, (24, 24))
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), legacy.predict(x, verbose=0), atol=1e-6)
    # the converted model is a Keras 3 model whose layers Grad-CAM can reach
    probabilities, _, heat = GradCam(loaded.model).compute(x)
    assert GradCam(loaded.model).layer_name == "conv"
    assert heat.shape == (4, 22, 22)
    np.testing.assert_allclose(probabilities, legacy.predict(x, verbose=0), atol=1e-5)
    # the version is the one of the legacy weights' values
    assert loaded.version == weights_version(loaded.model)
    assert [w.shape for w in loaded.model.get_weights()] == [w.shape for w in legacy.get_weights()]


def test_folder_without_saved_model_is_refused(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    save_spec(ModelSpec((8, 8), ("a", "b")), folder)
    with pytest.raises(ValueError, match="not a SavedModel folder"):
        load_classifier(folder)


def test_bad_suffix_missing_path_and_class_mismatch(tmp_path):
    model, spec = small_model()
    with pytest.raises(ValueError, match=r"\.keras or \.h5"):
        save_classifier(model, spec, tmp_path / "m.txt")
    assert not (tmp_path / "m.txt").exists() and not (tmp_path / "m.spec.json").exists()

    with pytest.raises(FileNotFoundError, match="nothere.keras"):
        load_classifier(tmp_path / "nothere.keras")

    (tmp_path / "m.txt").write_bytes(b"not a model")
    save_spec(spec, tmp_path / "m.txt")
    with pytest.raises(ValueError, match="unsupported model format"):
        load_classifier(tmp_path / "m.txt")

    path = save_classifier(model, spec, tmp_path / "three.keras")
    save_spec(ModelSpec(spec.input_size, ("a", "b")), path)  # spec now names 2 classes
    with pytest.raises(ValueError, match="3 outputs but its spec names 2 classes"):
        load_classifier(path)


# --------------------------------------------------------------------------------------------
# Builders


def test_small_cnn_builder():
    model, spec = build_small_cnn(class_names=("x", "y"), input_size=(32, 48), channels=1, filters=(2, 3, 4))
    assert tuple(model.inputs[0].shape) == (None, 32, 48, 1)
    assert tuple(model.outputs[0].shape) == (None, 2)
    assert spec == ModelSpec((32, 48), ("x", "y"), channels=1, target_layer="features")
    assert tuple(model.get_layer("features").output.shape) == (None, 8, 12, 4)
    assert set(ARCHITECTURES) == {"inception", "small-cnn"}
    assert ARCHITECTURES["small-cnn"] is build_small_cnn


@pytest.fixture(scope="module")
def inception():
    keras.utils.set_random_seed(0)
    return build_inception_classifier()


def test_inception_classifier_is_the_articles(inception):
    model, spec = inception
    backbone = model.get_layer("inception_v3")
    assert isinstance(backbone, keras.Model)  # nested backbone
    assert tuple(model.inputs[0].shape) == (None, 256, 256, 3)
    assert tuple(model.outputs[0].shape) == (None, 3)
    assert model.get_layer("predictions").activation.__name__ == "softmax"
    assert spec.class_names == ARTICLE_CLASSES == ("covid", "normal", "pneumonia")
    assert spec.scaling == "unit" and spec.channels == 3 and spec.input_size == (256, 256)
    assert spec.target_layer == "mixed10"
    assert tuple(backbone.get_layer("mixed10").output.shape) == (None, 6, 6, 2048)


def test_gradcam_finds_mixed10_inside_the_nested_backbone(inception):
    model, spec = inception
    x = spec.preprocess(random_inputs(2, (256, 256)))
    auto = GradCam(model)
    assert auto.layer_name == "mixed10"
    assert GradCam(model, layer=spec.target_layer).layer_name == "mixed10"
    probabilities, chosen, heat = auto.compute(x)
    assert probabilities.shape == (2, 3) and heat.shape == (2, 6, 6)
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(probabilities, model(x, training=False), atol=1e-4)
    assert (chosen == probabilities.argmax(1)).all()
    assert heat.min() >= 0 and heat.max() <= 1 and heat.max() == pytest.approx(1)


def test_inception_weights_must_be_a_local_file(tmp_path):
    for weights in (tmp_path / "missing.weights.h5", "imagenet", tmp_path):
        with pytest.raises(ValueError, match="local weights file"):
            build_inception_classifier(weights=weights)


def test_inception_weights_from_a_local_file(inception, tmp_path):
    model, _ = inception
    path = tmp_path / "backbone.weights.h5"
    model.get_layer("inception_v3").save_weights(path)
    other, spec = build_inception_classifier(class_names=("a", "b"), weights=path)
    want = model.get_layer("inception_v3").get_weights()
    got = other.get_layer("inception_v3").get_weights()
    assert len(got) == len(want) > 300
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert spec.class_names == ("a", "b") and tuple(other.outputs[0].shape) == (None, 2)
    # a random build differs: the equality above comes from the file
    keras.utils.set_random_seed(123)
    fresh, _ = build_inception_classifier()
    fresh_weights = fresh.get_layer("inception_v3").get_weights()
    assert not all(np.array_equal(f, w) for f, w in zip(fresh_weights, want))


# --------------------------------------------------------------------------------------------
# Training


def test_stratified_split():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3])
    train, val = stratified_split(labels, 0.2, seed=7)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert list(train) == sorted(train) and list(val) == sorted(val)
    counts = {c: (int((labels[train] == c).sum()), int((labels[val] == c).sum())) for c in range(4)}
    # round(10 * .2) = 2, round(5 * .2) = 1, round(2 * .2) = 0 -> at least 1, a single image stays in train
    assert counts == {0: (8, 2), 1: (4, 1), 2: (1, 1), 3: (1, 0)}
    again = stratified_split(labels, 0.2, seed=7)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], val)
    others = [stratified_split(labels, 0.2, seed=s)[1] for s in range(1, 6)]
    assert any(not np.array_equal(o, val) for o in others)
    train0, val0 = stratified_split(labels, 0.0, seed=0)
    assert len(val0) == 0 and len(train0) == len(labels)
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="val_fraction"):
            stratified_split(labels, bad, seed=0)


@pytest.fixture(scope="module")
def tiny_set():
    rng = np.random.default_rng(0)
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for _ in range(12):
            gray, _ = synthetic_radiograph(48, name == "opacity", rng)
            images.append(np.repeat(gray[..., None], 3, axis=-1))
            labels.append(label)
    return np.stack(images), np.array(labels)


def test_train_classifier_on_a_synthetic_set(tiny_set):
    images, labels = tiny_set
    keras.utils.set_random_seed(0)
    model, spec = build_small_cnn(class_names=CLASSES, input_size=(48, 48), filters=(4, 8))
    report = train_classifier(
        model, spec, images, labels, epochs=3, batch_size=8, val_fraction=0.25, learning_rate=0.01, verbose=0
    )
    assert isinstance(report, TrainingReport)
    assert report.epochs == 3 and 1 <= report.best_epoch <= report.epochs
    assert set(report.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in report.history.values())
    assert 0 <= report.train_accuracy <= 1 and 0 <= report.val_accuracy <= 1
    best = report.best_epoch - 1
    assert report.history["val_loss"][best] == min(report.history["val_loss"])
    assert report.val_accuracy == report.history["val_accuracy"][best]
    assert report.train_accuracy == report.history["accuracy"][best]
    assert validation_loss(model, spec, images, labels, 0.25, 0) == pytest.approx(
        min(report.history["val_loss"]), rel=1e-3, abs=1e-4
    )


def validation_loss(model, spec, images, labels, val_fraction, seed):
    """Cross-entropy of ``model`` on the validation part train_classifier held out."""
    _, val = stratified_split(labels, val_fraction, seed)
    x = spec.preprocess(images[val].astype(np.float32) / 255.0)
    probabilities = model.predict(x, verbose=0)
    return float(np.mean(-np.log(np.clip(probabilities[np.arange(len(val)), labels[val]], 1e-7, 1))))


def test_train_classifier_restores_the_best_validation_epoch():
    """Noise images with random labels: the model overfits, so the validation loss rises after the
    first epoch or two; the model must come back with the best epoch's weights, not the last's."""
    images = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    for seed in range(4):  # the first seed nearly always has a best epoch before the last
        labels = np.random.default_rng(seed).permutation(np.arange(32) % 2)
        keras.utils.set_random_seed(seed)
        model, spec = build_small_cnn(class_names=("a", "b"), input_size=(32, 32), filters=(4, 8))
        report = train_classifier(
            model, spec, images, labels, epochs=3, batch_size=8, val_fraction=0.25, learning_rate=0.05,
            seed=seed, augment=False, verbose=0,
        )
        losses = report.history["val_loss"]
        if report.best_epoch < report.epochs and losses[-1] > min(losses) * 1.05:
            break
    else:
        pytest.fail(f"no run had its best validation epoch before the last: {losses}")
    assert losses[report.best_epoch - 1] == min(losses)
    assert validation_loss(model, spec, images, labels, 0.25, seed) == pytest.approx(min(losses), rel=1e-3, abs=1e-4)


def test_train_classifier_without_validation_and_gray(tiny_set):
    images, labels = tiny_set
    model, spec = build_small_cnn(class_names=CLASSES, input_size=(48, 48), channels=1, filters=(4,))
    report = train_classifier(
        model, spec, images, labels, epochs=1, batch_size=12, val_fraction=0.0, augment=False, verbose=0
    )
    assert report.val_accuracy is None and report.best_epoch == 1 and report.epochs == 1
    assert "val_loss" not in report.history
    assert 0 <= report.train_accuracy <= 1


def test_train_classifier_rejects_bad_inputs(tiny_set):
    images, labels = tiny_set
    model, spec = build_small_cnn(class_names=CLASSES, input_size=(32, 32), filters=(4,))
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\)"):
        train_classifier(model, spec, images, labels, epochs=1, verbose=0)
    model, spec = build_small_cnn(class_names=CLASSES, input_size=(48, 48), filters=(4,))
    with pytest.raises(ValueError, match="one label per image"):
        train_classifier(model, spec, images, labels[:-1], epochs=1, verbose=0)


def test_mixed_precision_copy_computes_in_float16_and_keeps_the_output_float32():
    import keras
    import numpy as np

    from explain.gradcam import GradCam
    from models.classifiers import build_small_cnn
    from models.loading import with_mixed_precision

    model, _ = build_small_cnn(input_size=(32, 32), filters=(4, 8))
    mixed = with_mixed_precision(model)
    assert mixed.get_layer("conv1").dtype_policy.name == "mixed_float16"
    assert mixed.layers[-1].dtype_policy.name == "float32"
    assert model.get_layer("conv1").dtype_policy.name == "float32"
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(mixed.predict(x, verbose=0), model.predict(x, verbose=0), atol=5e-3)
    np.testing.assert_allclose(GradCam(mixed).compute(x)[2], GradCam(model).compute(x)[2], atol=2e-2)
    backbone = keras.Model(model.input, model.get_layer("features").output)
    inputs = keras.Input((32, 32, 3))
    head = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    nested = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(head))
    converted = with_mixed_precision(nested)
    assert converted.layers[1].get_layer("conv1").dtype_policy.name == "mixed_float16"
