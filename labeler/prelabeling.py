"""``labeler prelabel``: pre-label a whole project in batches, without Label Studio's synchronous
"retrieve predictions" action: the pipeline runs here and predictions are posted through the SDK.

Resumable and database first: each batch is stored in our database, then posted to Label Studio
(`labeler.posting`: while the project is small, one bulk request per `BULK_AT_LEAST` predictions,
gathered over several batches; above that one post per task; each landing whole or not at all).
The pending tasks are those without a prediction of the current model version in Label Studio
(`labeler.pending`: a Data Manager filter, so a rerun with nothing to do lists no prediction and
no task). Those whose prediction reached our database but not Label Studio (a crash between the
two writes, or in the middle of a batch's posts) get the stored prediction posted again, not a
new one. So a rerun after an interruption continues where it stopped, and afterwards Label Studio
and our database hold the same predictions, one per task.

Several workers (processes, machines sharing the database) may pre-label one project at once:
each claims a batch of pending tasks before reading it (`db.claims`), so no task is done twice.
Claiming and reading the next batch, and storing / posting earlier ones, overlap the model.
"""
from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from rich.progress import Progress

from db import claims, repository
from db.schema import Project
from db.timestamps import utcnow
from explain.labelstudio.fetch import ImageFetcher
from explain.labelstudio.configs import plan_for
from explain.anatomy import PriorSettings
from explain.prelabel import PrelabelSettings
from explain.service import PrelabelService
from labeler.pending import pending_tasks
from labeler.pipelines import build_prelabeler
from labeler.posting import PredictionPoster
from labeler.project import set_active_model_version
from labeler.workspace import Workspace


#: Batches the model works on at once: on a CPU, two calls fill each other's gaps (measured on
#: 2 cores: 44 against 41.5 images/s at batch 16, InceptionV3 Grad-CAM; see BENCHMARKS.md).
MODEL_CALLS_IN_FLIGHT = 2
#: Stored-then-posted batches that may wait behind the model before it waits for them.
SAVES_AHEAD = 4
#: Clocks of the machines sharing the database may differ by up to this much (seconds).
CLOCK_SKEW_S = 60.0
#: Nice steps the reading and saving threads run below the model's (Linux).
BACKGROUND_NICE = 10


@dataclass(frozen=True)
class PrelabelReport:
    predicted: int
    skipped: int
    failed: list[str]
    seconds: float
    version: str
    reposted: int = 0
    elsewhere: int = 0  # pending tasks that other workers claimed

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
    claim_lease_s: float = claims.DEFAULT_LEASE_S,
    fast_import: bool = False,
) -> PrelabelReport:
    """Pre-label every task of ``ws``'s project that lacks a prediction of this model version, with
    the source ``settings.source`` (the segmenter and fusion sources need ``segmenter_path``),
    inside the lungs of the ROI model at ``roi_model_path`` when given. Other workers may run
    at once on the same project and database: each task is claimed by one of them (a claim not
    finished within ``claim_lease_s`` seconds is taken over). ``fast_import``: Label Studio runs with
    its constant-cost bulk import (`labeler.posting.FAST_IMPORT_FLAG`), post in bulk at any size."""
    project_id = ws.require_project()
    loaded, prelabeler = build_prelabeler(model_path, settings, batch_size, segmenter_path, roi_model_path, prior)
    project = ws.client.projects.get(id=project_id)
    plan = plan_for(project.label_config, prelabeler.label_names, label_map)
    service = PrelabelService(prelabeler, loaded.version, plan, ImageFetcher(ws.label_studio_url, ws.auth, document_root))
    version = service.version
    listed_after = utcnow() - timedelta(seconds=CLOCK_SKEW_S)
    pending = pending_tasks(ws, project_id, version)
    done = max(0, (project.task_number or 0) - len(pending))
    worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    work = _Claims(ws, project_id, version, worker, claim_lease_s, pending, batch_size, listed_after) if pending else None
    poster = PredictionPoster(ws.client, project_id, project.total_predictions_number, fast_import)
    stop = threading.Event()  # after a failed save nothing more is written, as after a kill

    def prepare():
        """The next claimed batch: (its task ids, stored answers to repost, outcomes read, the
        classifier's input for their images)."""
        batch = work.next_batch()
        if not batch:
            return None
        reposts = _stored_but_not_posted(ws, project_id, version, batch, plan.data_key)
        again = {post["task"] for post in reposts}
        outcomes = service.read([{"id": t.id, "data": t.data} for t in batch if t.id not in again])
        return [t.id for t in batch], reposts, outcomes, service.inputs(outcomes)

    # stored batches waiting for one bulk request: (task ids, posts, when stored: time.monotonic())
    gathered: list[tuple[list[int], list[dict], float]] = []

    def post_gathered(now: bool = False) -> None:
        """Post the gathered batches' predictions when the poster says so (or ``now``), then
        finish their claims."""
        if not gathered:
            return
        count = sum(len(posts) for _, posts, _ in gathered)
        if not (now or poster.ready(count, time.monotonic() - gathered[0][2])):
            return
        poster.post([post for _, posts, _ in gathered for post in posts])
        for ids, posts, _ in gathered:
            work.finish(ids, {post["task"] for post in posts})
        gathered.clear()

    def save(ids, reposts, described: Future | None) -> list:
        """Store a batch once its regions are outlined and post it (with the batches gathered
        before it, see `PredictionPoster.ready`); its outcomes. ``described`` None: post what is
        gathered."""
        if stop.is_set():
            return []
        try:
            if described is None:
                post_gathered(now=True)
                return []
            outcomes = described.result()
            if outcomes:
                with ws.sessions.begin() as session:  # database first: see the module docstring
                    repository.store_outcomes(
                        session, project_id, version, loaded.version, service.recorded_settings, outcomes,
                        label_studio=ws.label_studio,
                    )
            posts = reposts + [{"task": o.task_id, **o.answer} for o in outcomes if o.prelabel is not None]
            gathered.append((ids, posts, time.monotonic()))
            post_gathered()
            return outcomes
        except BaseException:
            stop.set()
            raise

    def settle(saving: Future) -> None:
        nonlocal predicted, failed
        outcomes = saving.result()
        predicted += sum(o.prelabel is not None for o in outcomes)
        failed += [o.failure[1] for o in outcomes if o.failure]

    def describe(outcomes, inferred: Future) -> list:
        return service.describe(outcomes, inferred.result())

    predicted, reposted, failed = 0, 0, []
    start = time.perf_counter()
    # This thread only hands batches on. The model runs on MODEL_CALLS_IN_FLIGHT threads, a batch
    # each. One thread claims, reads and resizes the next batch; one outlines the regions of each
    # batch in turn, once its model call is through (so its images are freed soon); one stores and
    # posts earlier ones (up to SAVES_AHEAD of them wait; the model waits only beyond that; posts
    # may be gathered). Those three run at a lower CPU priority: on a machine whose cores the
    # model fills they take the gaps.
    try:
        with Progress() as progress, ThreadPoolExecutor(MODEL_CALLS_IN_FLIGHT, thread_name_prefix="model") as model, \
                ThreadPoolExecutor(1, initializer=_in_background) as reader, \
                ThreadPoolExecutor(1, initializer=_in_background) as describer, \
                ThreadPoolExecutor(1, initializer=_in_background) as saver:
            bar = progress.add_task("pre-labelling", total=len(pending))
            reading = reader.submit(prepare) if work else None
            inferring: deque[Future] = deque()
            saves: deque[Future] = deque()
            while reading is not None:
                prepared = reading.result()
                if prepared is None:
                    break
                reading = reader.submit(prepare)
                ids, reposts, outcomes, inputs = prepared
                inferring.append(model.submit(service.infer, outcomes, inputs))
                described = describer.submit(describe, outcomes, inferring[-1])
                saves.append(saver.submit(save, ids, reposts, described))
                while len(inferring) >= MODEL_CALLS_IN_FLIGHT or (inferring and inferring[0].done()):
                    inferring.popleft().result()
                while saves and (saves[0].done() or len(saves) > SAVES_AHEAD):
                    settle(saves.popleft())
                reposted += len(reposts)
                progress.advance(bar, len(ids))
            saves.append(saver.submit(save, [], [], None))  # the last gathered batches
            for saving in saves:
                settle(saving)
    except BaseException:
        stop.set()
        if work is not None:
            work.release()
        raise
    finally:
        poster.close()
    if done or reposted or predicted:  # the Data Manager's score column shows these predictions
        set_active_model_version(ws, project_id, version)
    elsewhere = work.elsewhere if work else 0
    return PrelabelReport(predicted, done, failed, time.perf_counter() - start, version, reposted, elsewhere)


class _Claims:
    """This worker's claims on the ``pending`` tasks (SDK task objects, id order), a batch at a
    time (see `db.claims`). Claims of workers of this host whose process has ended are released
    first; a task taken over from another worker is checked in Label Studio first (that worker
    may have posted it before it stopped). A pending task with a done claim had its prediction
    deleted in Label Studio since, and is claimed again: without asking when the claim was done
    before ``listed_after`` (the listing's start, less the clock skew allowed), else when Label
    Studio, asked now, still has no prediction of the version for it (it may have been posted
    by another worker after our listing)."""

    def __init__(
        self, ws: Workspace, project_id: int, version: str, worker: str, lease_s: float, pending, batch_size: int,
        listed_after: datetime,
    ):
        self._ws, self._version, self._worker, self._lease_s = ws, version, worker, lease_s
        self._listed_after = listed_after
        self._pending, self._cursor, self._batch_size = pending, 0, batch_size
        self.elsewhere = 0
        with ws.sessions.begin() as session:
            self._project_id = repository.upsert_project(session, project_id, label_studio=ws.label_studio).id
            for other in claims.open_workers(session, self._project(session), version):
                if _ended_here(other):
                    claims.release_claims(session, self._project(session), version, other)

    def _project(self, session):
        return session.get(Project, self._project_id)

    def next_batch(self) -> list:
        """Up to ``batch_size`` pending tasks now claimed by this worker; [] when none are left."""
        batch: list = []
        while len(batch) < self._batch_size and self._cursor < len(self._pending):
            window = self._pending[self._cursor : self._cursor + self._batch_size - len(batch)]
            self._cursor += len(window)
            with self._ws.sessions.begin() as session:
                project = self._project(session)
                got = claims.claim_tasks(session, project, self._version, [t.id for t in window], self._worker, self._lease_s)
                claimed = set(got.ids)
                done = claims.done_among(session, project, self._version, [t.id for t in window if t.id not in claimed])
                again = claims.reopen_done(session, project, self._version, done, self._worker, self._listed_after)
            again += self._reopen_deleted([i for i in done if i not in again])
            posted = {t for t in got.taken_over if _has_prediction(self._ws, t, self._version)}
            if posted:
                self.finish(posted, posted)
            mine = (claimed | set(again)) - posted
            self.elsewhere += len(window) - len(got.ids) - len(again)
            batch += [t for t in window if t.id in mine]
        return batch

    def _reopen_deleted(self, recently_done: list[int]) -> list[int]:
        gone = [i for i in recently_done if not _has_prediction(self._ws, i, self._version)]
        if not gone:
            return []
        with self._ws.sessions.begin() as session:
            return claims.reopen_done(session, self._project(session), self._version, gone, self._worker)

    def finish(self, ids, posted) -> None:
        """The batch ``ids`` is through: the ``posted`` ones are done, the others (failed or
        without a pre-label) are released, so that a rerun tries them again."""
        with self._ws.sessions.begin() as session:
            project = self._project(session)
            claims.finish_claims(session, project, self._version, posted, self._worker)
            rest = set(ids) - set(posted)
            if rest:
                claims.release_claims(session, project, self._version, self._worker, rest)

    def release(self) -> None:
        """Free every claim this worker has not finished (it stops early)."""
        try:
            with self._ws.sessions.begin() as session:
                claims.release_claims(session, self._project(session), self._version, self._worker)
        except Exception:  # noqa: BLE001 - the error that stopped us is the one to report
            pass


def _in_background() -> None:
    """Lower the calling thread's CPU priority by ``BACKGROUND_NICE`` (Linux, where nice is per
    thread and the threads it starts inherit it): on a machine whose cores the model fills,
    reading, storing and posting then take the gaps instead of slowing every model step."""
    if sys.platform != "linux":
        return
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + BACKGROUND_NICE))
    except OSError:
        pass


def _ended_here(worker: str) -> bool:
    """Whether ``worker`` ("host:pid:token") ran on this host in a process that has ended."""
    host, _, rest = worker.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _has_prediction(ws: Workspace, ls_task_id: int, version: str) -> bool:
    return any(p.model_version == version for p in ws.client.predictions.list(task=ls_task_id))


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
