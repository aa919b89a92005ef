"""/predict with ``params.context``: Label Studio's interactive pre-annotation (an annotator's smart
keypoints and rectangles on one task) -> one brush mask (and polygons where configured).

The image's evidence (``Prelabeler.click_evidence``: the lesion map and the lung prior at the
image's size) is computed once per image and kept in a bounded LRU cache, so the next clicks on
the same image read no image and run the classifier no more (a click model, the project's promoted
one or CLICK_MODEL, bound to the image and kept with its evidence, runs once per new click).
Interactive answers are drafts that the annotator edits (the final annotation arrives by webhook):
they are counted in the metrics, never stored.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict

import numpy as np

from backend.metrics import Metrics
from backend.predict import BadRequest, Stopwatch
from backend.predictor import Pipeline
from explain.clicks import Evidence, method_for, segment
from explain.images import MAX_PIXELS
from explain.labelstudio.configs import LabelingPlan, click_targets
from explain.labelstudio.context import ContextError, Prompt, parse_context
from explain.labelstudio.fetch import ImageFetcher
from explain.labelstudio.results import mask_results
from explain.service import PrelabelService

log = logging.getLogger(__name__)

CACHE_IMAGES = 32  # images whose evidence is kept ...
CACHE_BYTES = 512 * 2**20  # ... within this much memory (a 1024 x 1024 image's evidence: ~9 MB, ~13 MB at most with its answers)


def request_prompt(body: dict) -> Prompt | None:
    """The prompt of a /predict body's ``params.context``; None when there is none (a plain /predict)."""
    params = body.get("params")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise BadRequest(f"params must be an object, got {type(params).__name__}")
    try:
        return parse_context(params.get("context"))
    except ContextError as exc:
        raise BadRequest(str(exc)) from None


class EvidenceCache:
    """The newest evidence per key, at most ``images`` entries and ``max_bytes`` of arrays;
    thread-safe (two first clicks on one image may both compute it: the later one is kept). An
    evidence grows as it answers clicks (``Evidence.nbytes``): ``refresh`` counts it again."""

    def __init__(self, images: int = CACHE_IMAGES, max_bytes: int = CACHE_BYTES):
        self.images, self.max_bytes = images, max_bytes
        self._entries: OrderedDict[tuple, tuple[str, Evidence]] = OrderedDict()
        self._sizes: dict[tuple, int] = {}  # as last counted
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(self._sizes.values())

    def get(self, key: tuple) -> tuple[str, Evidence] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple, entry: tuple[str, Evidence]) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = entry
            self._count(key)

    def refresh(self, key: tuple) -> None:
        """Count ``key``'s evidence again (after it answered), dropping the least recently used
        entries while over the limits."""
        with self._lock:
            if key in self._entries:
                self._count(key)

    def _count(self, key: tuple) -> None:
        self._sizes[key] = self._entries[key][1].nbytes
        while self._entries and (len(self._entries) > self.images or self.nbytes > self.max_bytes):
            del self._sizes[self._entries.popitem(last=False)[0]]

    def __len__(self) -> int:
        return len(self._entries)


class ClickAnswers:
    """Answers interactive requests (one per backend process: the cache is per process)."""

    def __init__(self, metrics: Metrics, max_pixels: int = MAX_PIXELS, cache: EvidenceCache | None = None, method: str | None = None):
        self.metrics = metrics
        self.max_pixels = max_pixels
        self.cache = cache or EvidenceCache()
        self.method = method  # explain.clicks.METHODS name; None: explain.clicks.method_for, by the click model

    def answer(
        self, tasks: list[dict], prompt: Prompt, config: str, plan: LabelingPlan, pipeline: Pipeline,
        fetcher: ImageFetcher, label_studio: str = "", clicker=None,
    ) -> dict:
        """The /predict answer for one task's clicks: ``{"result": [brush (+ polygons)], "score",
        "model_version"}`` (an empty result when the prompt has no keypoint or rectangle, or when
        the image cannot be read: that failure is counted and logged). ``clicker``: the project's
        click model (``models.clicking.Clicker``), or None."""
        if len(tasks) != 1:
            raise BadRequest(f"an interactive request (params.context) must carry exactly one task, got {len(tasks)}")
        try:
            targets = click_targets(config, plan)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        version = pipeline.version
        empty = {"result": [], "score": 0.0, "model_version": version}
        if not prompt:
            return empty
        task = tasks[0]
        wanted = targets.wanted(prompt.label)
        key = (version, label_studio, str(task["data"].get(plan.data_key)), wanted, clicker.version if clicker else None)
        watch = Stopwatch(self.metrics)
        entry = self.cache.get(key)
        self.metrics.interactive.labels(cache="hit" if entry else "miss").inc()
        if entry is None:
            entry = self._evidence(task, plan, pipeline, fetcher, wanted, watch, clicker)
            if entry is None:
                return empty
            self.cache.put(key, entry)
        name, evidence = entry
        height, width = evidence.shape
        with watch.stage("clicks"):
            method = method_for(evidence.clicker is not None, self.method)
            mask = segment(evidence, prompt.clicks(width, height), prompt.boxes(width, height), method)
        self.cache.refresh(key)
        label = targets.label(prompt.label, name)
        polygon = targets.polygon if label in targets.polygon_labels else None
        score = float(evidence.heat[mask].mean()) if mask.any() else 0.0
        with watch.stage("results"):
            result = mask_results(mask, label, targets.to_name, targets.brush, polygon, score)
        return {"result": result, "score": score, "model_version": version}

    def _evidence(self, task, plan, pipeline: Pipeline, fetcher, wanted, watch, clicker) -> tuple[str, Evidence] | None:
        service = PrelabelService(
            pipeline.prelabeler, pipeline.loaded.version, plan, fetcher, stage=watch.stage, max_pixels=self.max_pixels
        )
        outcome = service.read([task])[0]
        if outcome.failure:
            self.metrics.failures.labels(kind=outcome.failure[0]).inc()
            log.warning("interactive request failed (%s): %s", outcome.failure[0], outcome.failure[1][:200])
            return None
        image = outcome.image
        with watch.stage("model"):
            output = pipeline.prelabeler.explain([image])[0]
            name, evidence = pipeline.prelabeler.click_evidence(np.asarray(image, np.float32), output, wanted)
            if clicker is not None:
                evidence = dataclasses.replace(evidence, clicker=clicker.on(evidence.gray))
        return name, evidence
