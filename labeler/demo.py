"""``labeler demo``: a Label Studio with a demo project pre-labelled by the backend, on this machine.

Everything lives under one folder (default ``out/demo``): synthetic radiograph-like images, a
small classifier trained on them, a small ROI model trained on their lungs (the anatomy prior), Label Studio's data and login, our SQLite database. A rerun
reuses all of it and starts in seconds. Nothing is downloaded but Label Studio itself, from PyPI,
into its own environment the first time.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from labeler.studio import LabelStudioServer, free_port
from labeler.workspace import Workspace


@dataclass
class Demo:
    """The running demo: Label Studio, the backend process and the project."""

    studio: LabelStudioServer
    backend: "BackendProcess"
    project_id: int

    @property
    def backend_url(self) -> str:
        return self.backend.url

    def stop(self):
        self.backend.stop()
        self.studio.stop()


def ensure_model(folder: Path, log) -> tuple[Path, Path]:
    """Demo images, a small classifier trained on them and a small ROI model trained on their lungs
    (each once; ~1 minute on a CPU): the paths of the classifier and of the ROI model."""
    model, roi_model = folder / "model.keras", folder / "roi.keras"
    labeler = [str(Path(sys.executable).parent / "labeler")]
    if not model.exists():
        log("making demo images and training a small classifier (once)")
        subprocess.run([*labeler, "demo-data", str(folder / "data"), "--per-class", "100", "--size", "128"], check=True)
        subprocess.run(
            [*labeler, "train-classifier", str(folder / "data" / "images"), "--out", str(model), "--size", "128", "--epochs", "20"],
            check=True,
        )
    if not roi_model.exists():
        log("training a small ROI model on the demo images' lungs (once)")
        pairs = lung_pairs(folder / "data", folder / "lung-pairs")
        count = len(list((pairs / "images").iterdir()))
        # About 120 training steps whatever the number of images (~35 s on a CPU): lungs are easy.
        batch = 8 if count >= 64 else 2
        epochs = max(8, math.ceil(120 / math.ceil(0.8 * count / batch)))
        subprocess.run(
            [*labeler, "train-segmenter", str(pairs), "--out", str(roi_model), "--label", "Lungs", "--size", "64",
             "--filters", "8,16,32", "--epochs", str(epochs), "--batch-size", str(batch)],
            check=True, stdout=subprocess.DEVNULL,
        )
    return model, roi_model


def lung_pairs(data: Path, out: Path) -> Path:
    """A ``train-segmenter`` pairs folder (``images/``, ``masks/``) from ``labeler demo-data``'s
    class folders and ``lungs/``."""
    for name in ("images", "masks"):
        (out / name).mkdir(parents=True, exist_ok=True)
    for image in sorted((data / "images").glob("*/*.png")):
        shutil.copyfile(image, out / "images" / image.name)
        shutil.copyfile(data / "lungs" / image.name, out / "masks" / image.name)
    return out


@dataclass
class BackendProcess:
    """``labeler-backend`` running as a child process on a free loopback port."""

    process: subprocess.Popen
    url: str
    log_path: Path

    @classmethod
    def start(cls, settings: dict[str, str], log_path: Path, timeout: float = 180.0) -> "BackendProcess":
        """Start it with these environment ``settings`` (MODEL_PATH, DATABASE_URL, ...) on top of
        ours and wait until its model is loaded; its output goes to ``log_path``."""
        port = free_port()
        env = {**os.environ, **settings, "BACKEND_PORT": str(port), "NO_PROXY": "127.0.0.1,localhost"}
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "labeler-backend")], env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        backend = cls(process, f"http://127.0.0.1:{port}", log_path)
        deadline = time.monotonic() + timeout
        while not backend.ready():
            if process.poll() is not None or time.monotonic() > deadline:
                backend.stop()
                raise RuntimeError(f"the backend did not load its model in {timeout:.0f} s; see {log_path}")
            time.sleep(0.5)
        return backend

    def ready(self) -> bool:
        try:
            return bool(requests.get(f"{self.url}/health", timeout=1).json().get("model_loaded"))
        except (requests.RequestException, ValueError):
            return False

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)


def start_demo(folder: Path, port: int | None = None, log=print) -> Demo:
    """Start (or restart) the demo and pre-label its project; returns the running demo."""
    from labeler.importing import import_images
    from labeler.project import connect_backend, init_project, set_active_model_version

    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    model, roi_model = ensure_model(folder, log)
    log("starting Label Studio (the first time installs it into .cache/label-studio-venv)")
    studio = LabelStudioServer(workdir=folder / "label-studio", port=port).start()
    backend = None
    try:
        backend = BackendProcess.start(
            {
                "MODEL_PATH": str(model),
                "ROI_MODEL_PATH": str(roi_model),
                "DATABASE_URL": f"sqlite:///{folder / 'labeler.db'}",
                "LABEL_STUDIO_URL": studio.url,
                "LABEL_STUDIO_API_KEY": studio.token,
                "LOCAL_FILES_DOCUMENT_ROOT": str(studio.document_root),
            },
            folder / "backend.log",
        )
        backend_url = backend.url
        state_file = folder / "state.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        ws = Workspace(studio.url, studio.token, state.get("project"), f"sqlite:///{folder / 'labeler.db'}")
        if ws.project_id is None:
            project_id = init_project(ws, model, "Demo: chest X-ray opacities", None)
            state_file.write_text(json.dumps({"project": project_id}))
            ws = Workspace(studio.url, studio.token, project_id, ws.database_url)
        for backend_model in ws.client.ml.list(project=ws.project_id):  # the backend's port changes per run
            if backend_model.url.rstrip("/") != backend_url:
                ws.client.ml.delete(id=backend_model.id)
        for hook in ws.client.webhooks.list(project=ws.project_id):
            if hook.url.rstrip("/") != f"{backend_url}/webhook":
                ws.client.webhooks.delete(id=hook.id)
        connect_backend(ws, ws.project_id, backend_url)
        images = sorted((folder / "data" / "images" / "opacity").glob("*.png"))[:6]
        images += sorted((folder / "data" / "images" / "clear").glob("*.png"))[:2]
        import_images(ws, images, studio.document_root)
        ws.client.actions.create(
            id="retrieve_tasks_predictions", project=ws.project_id, selected_items={"all": True, "excluded": []}
        )
        versions = {p.model_version for p in ws.client.predictions.list(project=ws.project_id)}
        if len(versions) == 1:  # the Data Manager shows and sorts by the active version's scores
            set_active_model_version(ws, ws.project_id, versions.pop())
        return Demo(studio, backend, ws.project_id)
    except BaseException:
        if backend is not None:
            backend.stop()
        studio.stop()
        raise
