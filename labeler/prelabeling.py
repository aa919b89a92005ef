"""``labeler prelabel``: pre-label a whole project in batches, without Label Studio's synchronous
"retrieve predictions" action: the pipeline runs here and predictions are posted through the SDK.

Resumable and database first: each batch is stored in our database, then posted to Label Studio,
one ``POST /api/predictions/`` per task, several in flight (Label Studio's bulk
``import/predictions`` costs time in proportion to the predictions already in the project; a
single post costs the same at any size). The pending tasks are those without a prediction of the
current model version in Label Studio (`labeler.pending`: a Data Manager filter, so a rerun with
nothing to do lists no prediction and no task). Those whose prediction reached our database but
not Label Studio (a crash between the two writes, or in the middle of a batch's posts: each post
either landed, and the task is no longer pending, or did not) get the stored prediction posted
again, not a new one. So a rerun after an interruption continues where it stopped, and afterwards
Label Studio and our database hold the same predictions, one per task. Reading the next batch and
storing / posting the last one overlap with the model's work.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from db import repository
from explain.labelstudio.fetch import ImageFetcher
from explain.labelstudio.configs import plan_for
from explain.anatomy import PriorSettings
from explain.prelabel import PrelabelSettings
from explain.service import PrelabelService
from labeler.pending import pending_tasks
from labeler.pipelines import build_prelabeler
from labeler.project import set_active_model_version
from labeler.workspace import Workspace


#: Single prediction posts in flight at once (Label Studio handles each in ~35-110 ms).
POSTS_IN_FLIGHT = 4


@dataclass(frozen=True)
class PrelabelReport:
    predicted: int
    skipped: int
    failed: list[str]
    seconds: float
    version: str
    reposted: int = 0

    @property
    def images_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds else 0.0


def prelabel_project(
    ws: Workspace,
    model_path: Path,
    settings: PrelabelSettings,
    batch_size: int = 16,
    document_root: Path | None = None,
    label_map: dict[str, str] | None = None,
    segmenter_path: Path | None = None,
    roi_model_path: Path | None = None,
    prior: PriorSettings = PriorSettings(),
) -> PrelabelReport:
    """Pre-label every task of ``ws``'s project that lacks a prediction of this model version, with
    the source ``settings.source`` (the segmenter and fusion sources need ``segmenter_path``),
    inside the lungs of the ROI model at ``roi_model_path`` when given."""
    project_id = ws.require_project()
    loaded, prelabeler = build_prelabeler(model_path, settings, batch_size, segmenter_path, roi_model_path, prior)
    project = ws.client.projects.get(id=project_id)
    plan = plan_for(project.label_config, prelabeler.label_names, label_map)
    service = PrelabelService(prelabeler, loaded.version, plan, ImageFetcher(ws.label_studio_url, ws.auth, document_root))
    version = service.version
    tasks = pending_tasks(ws, project_id, version)
    done = max(0, (project.task_number or 0) - len(tasks))
    reposts = _stored_but_not_posted(ws, project_id, version, tasks, plan.data_key)
    reposted = {post["task"] for post in reposts}
    tasks = [t for t in tasks if t.id not in reposted]
    batches = [tasks[i : i + batch_size] for i in range(0, len(tasks), batch_size)]

    def read(batch):
        return service.read([{"id": task.id, "data": task.data} for task in batch])

    def save(outcomes):
        with ws.sessions.begin() as session:  # database first: see the module docstring
            repository.store_outcomes(
                session, project_id, version, loaded.version, service.recorded_settings, outcomes,
                label_studio=ws.label_studio,
            )
        _post(ws, posting, [{"task": o.task_id, **o.answer} for o in outcomes if o.prelabel is not None])

    predicted, failed = 0, []
    start = time.perf_counter()
    # The model runs here while a worker reads the next batch and stores / posts the previous one.
    with Progress() as progress, ThreadPoolExecutor(2) as pool, ThreadPoolExecutor(POSTS_IN_FLIGHT) as posting:
        _post(ws, posting, reposts)
        bar = progress.add_task("pre-labelling", total=sum(len(batch) for batch in batches))
        reading = pool.submit(read, batches[0]) if batches else None
        saving = None
        for n, batch in enumerate(batches):
            outcomes = reading.result()
            if n + 1 < len(batches):
                reading = pool.submit(read, batches[n + 1])
            service.label(outcomes)
            if saving is not None:
                saving.result()
            saving = pool.submit(save, outcomes)
            predicted += sum(o.prelabel is not None for o in outcomes)
            failed += [o.failure[1] for o in outcomes if o.failure]
            progress.advance(bar, len(batch))
        if saving is not None:
            saving.result()
    if done or reposts or predicted:  # the Data Manager's score column shows these predictions
        set_active_model_version(ws, project_id, version)
    return PrelabelReport(predicted, done, failed, time.perf_counter() - start, version, len(reposts))


def _post(ws: Workspace, pool: ThreadPoolExecutor, posts: list[dict]):
    """Each of ``posts`` (``{"task", "result", "score", "model_version"}``) as one Label Studio
    prediction, ``POSTS_IN_FLIGHT`` at a time; returns when all are done, raises the first error."""
    futures = [pool.submit(ws.client.predictions.create, **post) for post in posts]
    for future in futures:
        future.result()


def _stored_but_not_posted(ws: Workspace, project_id: int, version: str, tasks, data_key: str) -> list[dict]:
    """Label Studio predictions for the ``tasks`` (lacking one of ``version`` in Label Studio)
    whose answer of ``version`` for the same image is already in our database."""
    with ws.sessions() as session:
        project = repository.get_project(session, project_id, ws.label_studio)
        if project is None:
            return []
        stored = repository.stored_answers(session, project, version, [t.id for t in tasks])
    return [
        {"task": t.id, "result": stored[t.id].results, "score": stored[t.id].score, "model_version": version}
        for t in tasks
        if t.id in stored and stored[t.id].image_uri == t.data.get(data_key)
    ]
