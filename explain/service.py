"""The pre-label service shared by the backend's /predict and ``labeler prelabel``: Label Studio
tasks in, one answer per task out (in task order), with what the database records.

    service = PrelabelService(prelabeler, weights_id, plan, fetcher)
    outcomes = service(tasks)          # = service.label(service.read(tasks))

``read`` fetches and decodes the batch's images on a few threads (network and disk waits
overlap); a task whose image cannot be fetched or decoded gets an empty answer and a failure of
its own, the others are pre-labelled as usual. ``stage`` (optional) is called with a stage name
("read", "fetch", "decode", "model", "regions", "results") and must return a context manager: how the
backend times each stage; "read" is the wall time of reading a batch, while "fetch" and "decode"
add up the time of every reading thread.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np

from explain.labelstudio.fetch import FetchError, ImageFetcher
from explain.images import MAX_PIXELS, ImageError, load_image
from explain.labelstudio.configs import LabelingPlan
from explain.labelstudio.results import prelabel_results
from explain.prelabel import ModelOutput, Prelabel, Prelabeler, model_inputs

Stage = Callable[[str], AbstractContextManager]


@dataclass
class TaskOutcome:
    """One task of a batch: its image URI, content hash (sha256 hex of the image bytes), the
    pre-label and the answer for Label Studio, or the failure ``(kind, message)``; the message
    names the task id, never a file path. ``data`` is the task's data as Label Studio sent it."""

    task_id: int
    uri: str | None
    data: dict = field(default_factory=dict, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)
    content_hash: str | None = None
    prelabel: Prelabel | None = None
    answer: dict = field(default_factory=dict)
    failure: tuple[str, str] | None = None


class PrelabelService:
    """One pre-labeller (its model version: ``weights_id`` + settings), one labelling plan and one
    image fetcher; call it per batch."""

    def __init__(
        self, prelabeler: Prelabeler, weights_id: str, plan: LabelingPlan, fetcher: ImageFetcher,
        readers: int = 4, stage: Stage | None = None, max_pixels: int = MAX_PIXELS,
    ):
        self.prelabeler = prelabeler
        self.weights_id = weights_id
        self.plan = plan
        self.fetcher = fetcher
        self.readers = readers
        self.max_pixels = max_pixels  # width x height, checked from the header before decoding
        self.stage: Stage = stage or (lambda _name: nullcontext())

    @property
    def version(self) -> str:
        """The model version Label Studio sees (see ``Prelabeler.version``)."""
        return self.prelabeler.version(self.weights_id)

    @property
    def recorded_settings(self) -> dict:
        return self.prelabeler.recorded_settings

    def __call__(self, tasks: Sequence[dict]) -> list[TaskOutcome]:
        return self.label(self.read(tasks))

    def read(self, tasks: Sequence[dict]) -> list[TaskOutcome]:
        """Each task (``{"id": int, "data": {...}}``) with its image decoded, or its failure."""
        outcomes = [TaskOutcome(task["id"], task["data"].get(self.plan.data_key), task["data"]) for task in tasks]
        with self.stage("read"):  # the wall time; "fetch" and "decode" add up every thread's time
            if len(outcomes) > 1 and self.readers > 1:
                with ThreadPoolExecutor(min(self.readers, len(outcomes)), thread_name_prefix="read") as pool:
                    list(pool.map(self._read_one, outcomes))
            else:
                for outcome in outcomes:
                    self._read_one(outcome)
        return outcomes

    def _read_one(self, outcome: TaskOutcome) -> None:
        try:
            with self.stage("fetch"):
                data = self.fetcher.fetch(outcome.uri, outcome.task_id)
            with self.stage("decode"):
                outcome.image = load_image(data, name=f"task {outcome.task_id}", max_pixels=self.max_pixels)
            outcome.content_hash = hashlib.sha256(data).hexdigest()
        except FetchError as exc:
            outcome.failure = (exc.kind, f"task {outcome.task_id}: {exc}")
        except ImageError as exc:
            outcome.failure = ("image_decode", str(exc))

    def label(self, outcomes: list[TaskOutcome]) -> list[TaskOutcome]:
        """Pre-labels and answers for the read tasks (failed ones get an empty answer); the
        decoded images are released. The same as ``describe(outcomes, infer(outcomes))``."""
        return self.describe(outcomes, self.infer(outcomes))

    def inputs(self, outcomes: list[TaskOutcome]) -> np.ndarray | None:
        """The classifier's input for the read tasks' images (None when none was read): the part of
        the model step a pipeline may run ahead, on another thread."""
        images = [o.image for o in outcomes if o.failure is None]
        return model_inputs(images, self.prelabeler.spec) if images else None

    def infer(self, outcomes: list[TaskOutcome], inputs: np.ndarray | None = None) -> list[ModelOutput]:
        """The model step for the read tasks (``inputs``: from ``inputs(outcomes)`` when made ahead)."""
        with self.stage("model"):
            return self.prelabeler.explain([o.image for o in outcomes if o.failure is None], inputs)

    def describe(self, outcomes: list[TaskOutcome], outputs: list[ModelOutput]) -> list[TaskOutcome]:
        """Regions and answers from the model's ``outputs`` (one per read task, as ``infer`` gives);
        the decoded images are released."""
        version = self.version
        good = [o for o in outcomes if o.failure is None]
        images = [o.image for o in good]
        with self.stage("regions"):
            prelabels = self.prelabeler.regions(images, outputs)
        for outcome in outcomes:
            outcome.image = None
            outcome.answer = {"result": [], "score": 0.0, "model_version": version}
        with self.stage("results"):
            for outcome, prelabel in zip(good, prelabels):
                outcome.prelabel = prelabel
                outcome.answer = {
                    "result": [r for controls in self.plan.controls for r in prelabel_results(prelabel, controls)],
                    "score": prelabel.confidence,
                    "model_version": version,
                }
        return outcomes
