"""When gathered predictions go to Label Studio (`labeler.posting.PredictionPoster.ready`): in bulk
once `BULK_AT_LEAST` are gathered or the oldest has waited `GATHER_AT_MOST_S`; one by one (at
once) in a project past `BULK_BELOW`. The wiring into ``labeler prelabel`` is tested against a
real Label Studio in tests/test_prelabel_workers.py."""
from __future__ import annotations

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
