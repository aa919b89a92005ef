"""Posting predictions to Label Studio the cheaper of its two ways for the project's size.

Label Studio 1.23's bulk ``POST /api/projects/N/import/predictions`` costs one request per batch
but time in proportion to the predictions already in the project (its task counters are
recomputed: measured 0.67 s per 16 at 1,000 tasks, 11.9 s at 16,000); ``POST /api/predictions/``
costs the same per task at any size (about 0.55 s per 16, 4 in flight). So while the project
holds fewer than `BULK_BELOW` predictions each batch goes in one bulk request, above it one post
per task. With `FAST_IMPORT_FLAG` set on the Label Studio server the bulk request costs the same
at any size (about 1 ms per prediction): measured, such requests go on past `BULK_BELOW`
(`CHEAP_BULK_S`), and a caller told so (``fast_import``, `labeler prelabel --fast-import`) posts in
bulk from the start. A bulk request of at most `BULK_MAX` predictions is one INSERT (Django's
``bulk_create``): it lands whole or not at all, as a single post does. Since a bulk request costs
Label Studio the same whatever it carries, its caller gathers `BULK_AT_LEAST` predictions (several
batches; at most `GATHER_AT_MOST_S` seconds) before one (`ready`): on a machine Label Studio shares
with the model that is CPU the model keeps.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

#: Single prediction posts in flight at once (Label Studio handles each in ~35-110 ms).
POSTS_IN_FLIGHT = 4
#: Below this many predictions in the project a batch is posted in one bulk request (measured crossover).
BULK_BELOW = 1500
#: Label Studio stores at most this many predictions of one import per INSERT (PREDICTION_IMPORT_BATCH_SIZE).
BULK_MAX = 500
#: While posting in bulk, predictions gathered before one request (Label Studio's cost is per request)...
BULK_AT_LEAST = 256
#: ... or seconds the oldest of them may wait, so that a slow machine's predictions still show soon.
GATHER_AT_MOST_S = 20.0
#: Label Studio 1.23 feature flag (an environment variable of its server) that makes the bulk
#: import constant-cost: it checks and recounts only the imported predictions' tasks instead of
#: every task of the project (0.02 s per 16 at 1,000 and at 4,000 tasks, against 0.40 / 1.42 s
#: without). The servers this project starts set it (labeler.studio, docker-compose.yml).
FAST_IMPORT_FLAG = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"
#: Past BULK_BELOW, bulk requests go on while the last one (of a batch or more) cost at most this
#: many seconds per prediction (with FAST_IMPORT_FLAG on: about 1 ms at any size); else one post
#: per task (about 30 ms each, 4 in flight).
CHEAP_BULK_S = 0.005
#: A bulk request's cost is measured when it carries at least this many predictions (a small one
#: is mostly the request's own fixed cost).
MEASURED_FROM = 16
#: How often (seconds) the project's prediction count is asked again while posting in bulk
#: (other workers post, too).
RECOUNT_S = 60.0


class PredictionPoster:
    """Posts lists of ``{"task", "result", "score", "model_version"}`` to one project; not
    thread-safe (one caller at a time). ``bulk_requests`` / ``single_posts`` count the requests."""

    def __init__(self, client, project_id: int, predictions_now: int | None, fast_import: bool = False):
        self._client, self._project_id, self._fast_import = client, project_id, fast_import
        self._count = predictions_now or 0
        self._counted_at = time.monotonic()
        self._pool = ThreadPoolExecutor(POSTS_IN_FLIGHT)
        self._bulk_cost: float | None = None  # seconds per prediction of the last bulk request measured
        self.bulk_requests = self.single_posts = 0

    def post(self, posts: list[dict]) -> None:
        """Post every one of ``posts``; returns when all landed, raises the first error."""
        if not posts:
            return
        if self._bulk():
            for start in range(0, len(posts), BULK_MAX):
                chunk = posts[start : start + BULK_MAX]
                started = time.monotonic()
                self._client.projects.import_predictions(id=self._project_id, request=chunk)
                if len(chunk) >= MEASURED_FROM:
                    self._bulk_cost = (time.monotonic() - started) / len(chunk)
                self.bulk_requests += 1
        else:
            futures = [self._pool.submit(self._client.predictions.create, **post) for post in posts]
            self.single_posts += len(futures)
            for future in futures:
                future.result()
        self._count += len(posts)

    def ready(self, gathered: int, waited_s: float) -> bool:
        """Whether ``gathered`` predictions waiting to be posted (the oldest for ``waited_s``
        seconds) should go now: at once when each is posted on its own, else once there are
        ``BULK_AT_LEAST`` or the oldest has waited ``GATHER_AT_MOST_S``."""
        return gathered >= BULK_AT_LEAST or waited_s >= GATHER_AT_MOST_S or not self._bulk()

    def _bulk(self) -> bool:
        """Bulk while the project holds fewer than BULK_BELOW predictions, and past that while
        bulk requests stay cheap (measured: Label Studio's constant-cost import, FAST_IMPORT_FLAG);
        until measured otherwise when the caller says Label Studio runs with that flag (``fast_import``)."""
        if self._bulk_cost is None and self._fast_import:
            return True
        if self._bulk_cost is not None and self._bulk_cost <= CHEAP_BULK_S:
            return True
        if self._count >= BULK_BELOW:
            return False  # a project's predictions do not shrink while it is pre-labelled
        if time.monotonic() - self._counted_at > RECOUNT_S:
            project = self._client.projects.get(id=self._project_id)
            self._count, self._counted_at = project.total_predictions_number or 0, time.monotonic()
        return self._count < BULK_BELOW

    def close(self) -> None:
        self._pool.shutdown(wait=True)
