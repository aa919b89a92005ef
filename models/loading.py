"""Loading and saving models (.keras, .h5, SavedModel folder) with their spec and version id.

Classifiers and segmenters share the mechanism; the spec's ``kind`` says which one a file holds."""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from models.spec import ModelSpec, load_spec, save_spec, spec_path


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to use: the Keras model, its spec and a version id of its weights."""

    model: keras.Model
    spec: ModelSpec
    version: str
    path: Path


def weights_version(model: keras.Model) -> str:
    """A short id derived from the weights' values and shapes (same weights -> same id, any format)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:12]


def save_model(model: keras.Model, spec: ModelSpec, path: str | Path) -> Path:
    """Save ``model`` (a classifier or a segmenter) as ``.keras`` or ``.h5`` (by suffix) with its spec beside it."""
    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise ValueError(f"model path must end in .keras or .h5, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    save_spec(spec, path)
    return path


def model_file_bytes(model: keras.Model) -> bytes:
    """The ``.keras`` file of ``model`` as bytes (what a model registry stores)."""
    with tempfile.TemporaryDirectory(prefix="labeler-model-") as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return path.read_bytes()


MODEL_CACHE = Path(tempfile.gettempdir()) / "labeler-models"  # backend MODEL_CACHE_DIR's default too


def unpack_segmenter(weights: bytes, spec_json: str, weights_id: str, folder: str | Path = MODEL_CACHE) -> Path:
    """A registry segmenter (``db.registry``) as ``folder/segmenter-<weights id>.keras`` (``unpack_model``)."""
    return unpack_model(weights, spec_json, folder, f"segmenter-{weights_id}")


def unpack_clicker(weights: bytes, spec_json: str, weights_id: str, folder: str | Path = MODEL_CACHE) -> Path:
    """A registry click model (``db.registry``) as ``folder/clicker-<weights id>.keras`` (``unpack_model``)."""
    return unpack_model(weights, spec_json, folder, f"clicker-{weights_id}")


def unpack_model(weights: bytes, spec_json: str, folder: str | Path, name: str) -> Path:
    """Write a stored model (its ``.keras`` bytes and spec JSON) as ``folder/<name>.keras`` with its
    spec beside it, once (an existing, complete copy is reused); returns the model's path."""
    path = Path(folder) / f"{name}.keras"
    spec = spec_path(path)
    if not (path.is_file() and spec.is_file()):
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, data in ((path, weights), (spec, spec_json.encode())):
            partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
            partial.write_bytes(data)
            os.replace(partial, target)  # atomic: another process never reads half a file
    return path


save_classifier = save_model


def load_classifier(path: str | Path) -> LoadedModel:
    """Load a classifier (see ``load_model``); a segmenter's file is refused with a clear message."""
    return load_model(path, kind="classifier")


def load_segmenter(path: str | Path) -> LoadedModel:
    """Load a segmenter (see ``load_model``); a classifier's file is refused with a clear message."""
    return load_model(path, kind="segmenter")


def load_model(path: str | Path, kind: str | None = None) -> LoadedModel:
    """Load a model from a ``.keras`` file, a ``.h5`` file or a SavedModel folder, with its spec;
    ``kind`` ("classifier" / "segmenter"), when given, must be the spec's.

    A SavedModel folder (``saved_model.pb`` inside, written by tf.keras 2) is read through
    tf_keras (``pip install tf-keras``) and converted in memory, so that Grad-CAM can reach its
    layers. The spec is ``<name>.spec.json`` beside a file, ``spec.json`` inside a folder.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path.name}: no such model file or folder")
    spec = load_spec(path)
    if kind is not None and spec.kind != kind:
        raise ValueError(f"{path.name}: this is a {spec.kind} (its spec says so), not a {kind}")
    if path.is_dir():
        model = _load_saved_model(path)
    elif path.suffix in (".keras", ".h5"):
        model = keras.models.load_model(path, compile=False)
    else:
        raise ValueError(f"{path.name}: unsupported model format (expected .keras, .h5 or a SavedModel folder)")
    outputs = model.outputs[0].shape[-1] if model.outputs else None
    if outputs is not None and outputs != len(spec.class_names):
        raise ValueError(
            f"{path.name}: the model has {outputs} outputs but its spec names {len(spec.class_names)} classes"
        )
    return LoadedModel(model=model, spec=spec, version=weights_version(model), path=path)


def _load_saved_model(folder: Path) -> keras.Model:
    if not (folder / "saved_model.pb").is_file():
        raise ValueError(f"{folder.name}: not a SavedModel folder (no saved_model.pb)")
    try:
        import tf_keras
    except ImportError:
        raise ValueError(
            f"{folder.name}: reading a SavedModel folder needs tf-keras (pip install 'tf-keras==2.21.*')"
        ) from None
    legacy = tf_keras.models.load_model(folder, compile=False)
    with tempfile.TemporaryDirectory() as tmp:
        h5 = Path(tmp) / "model.h5"
        legacy.save(h5)
        return keras.models.load_model(h5, compile=False)


def with_mixed_precision(model: keras.Model) -> keras.Model:
    """A copy of ``model`` computing in float16 with float32 weights (Keras "mixed_float16"), for
    GPUs with tensor cores; the output layer stays float32 so probabilities keep their precision.
    Nested models are converted too; the weights are copied, the original is left alone."""
    output_layer = model.layers[-1]

    def convert(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=convert)
        dtype = "float32" if layer is output_layer else "mixed_float16"
        return layer.__class__.from_config({**layer.get_config(), "dtype": dtype})

    mixed = keras.models.clone_model(model, clone_function=convert)
    mixed.set_weights(model.get_weights())
    return mixed
