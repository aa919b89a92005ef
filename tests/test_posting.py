"""When gathered predictions go to Label Studio (`labeler.posting.PredictionPoster.ready`): in bulk
once `BULK_AT_LEAST` are gathered or the oldest has waited `GATHER_AT_MOST_S`; one by one (at
once) in a project past `BULK_BELOW`, unless bulk requests were measured cheap (`CHEAP_BULK_S`). The wiring into ``labeler prelabel`` is tested against a
real Label Studio in tests/test_prelabel_workers.py."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from labeler import posting
from labeler.posting import PredictionPoster


def test_bulk_posts_wait_for_enough_predictions_or_for_the_oldest_to_have_waited_long_enough():
    poster = PredictionPoster(client=None, project_id=1, predictions_now=0)  # counted now: no request
    try:
        assert not poster.ready(posting.BULK_AT_LEAST - 1, 0.0)
        assert poster.ready(posting.BULK_AT_LEAST, 0.0)
        assert not poster.ready(1, posting.GATHER_AT_MOST_S - 0.1)
        assert poster.ready(1, posting.GATHER_AT_MOST_S)
    finally:
        poster.close()


def test_past_the_bulk_threshold_every_prediction_goes_at_once():
    poster = PredictionPoster(client=None, project_id=1, predictions_now=posting.BULK_BELOW)
    try:
        assert poster.ready(1, 0.0)
    finally:
        poster.close()


class TimedProjects:
    """``client.projects`` whose bulk import takes ``seconds_per_prediction`` per prediction."""

    def __init__(self, seconds_per_prediction: float):
        self.seconds_per_prediction, self.requests = seconds_per_prediction, []

    def import_predictions(self, id, request):  # noqa: A002 - the SDK's name
        import time

        time.sleep(self.seconds_per_prediction * len(request))
        self.requests.append(len(request))


@pytest.mark.parametrize("fast_import", [False, True])
@pytest.mark.parametrize("seconds_per_prediction, bulk_after", [(0.0001, True), (0.02, False)])
def test_past_the_threshold_bulk_goes_on_only_while_it_was_measured_cheap(seconds_per_prediction, bulk_after, fast_import):
    """Label Studio's constant-cost import (FAST_IMPORT_FLAG) answers in about a millisecond per
    prediction: then bulk requests go on past BULK_BELOW; a slow one means one post per task, even
    when the caller said Label Studio had the flag (``fast_import``: bulk until measured)."""
    client = SimpleNamespace(projects=TimedProjects(seconds_per_prediction))
    start = posting.BULK_BELOW + (10 if fast_import else -posting.MEASURED_FROM)
    poster = PredictionPoster(client, project_id=1, predictions_now=start, fast_import=fast_import)
    try:
        assert not poster.ready(1, 0.0)  # below the threshold, or told the import is cheap: gather
        poster.post([{"task": n} for n in range(posting.MEASURED_FROM)])  # in bulk, measured
        assert client.projects.requests == [posting.MEASURED_FROM]
        assert poster.ready(1, 0.0) is not bulk_after  # past the threshold: gather only while bulk is cheap
    finally:
        poster.close()
