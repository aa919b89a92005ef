"""What the labelling-order benchmark (benchmarks/learning_curve.py) labels next: the selection
alone (``next_batch``), on hand-made confidences; no training."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import learning_curve  # noqa: E402

next_batch = learning_curve.next_batch
POOL = [3, 7, 11, 20, 21, 30, 42, 50]
# 7 and 20 are the least sure of all, but 7 is already labelled
CONFIDENCE = {3: 0.90, 7: 0.05, 11: 0.40, 20: 0.10, 21: 0.40, 30: 0.70, 42: 0.20, 50: 0.95}


def test_uncertainty_picks_the_k_lowest_unlabelled_in_order():
    assert next_batch("uncertainty", POOL, [7], 3, seed=0, confidence=CONFIDENCE) == [20, 42, 11]


def test_uncertainty_never_picks_a_labelled_task_even_the_least_sure():
    labelled = [7, 20, 42]
    picked = next_batch("uncertainty", POOL, labelled, 3, seed=0, confidence=CONFIDENCE)
    assert picked == [11, 21, 30]  # the tie 11 / 21 (0.40) broken by task id
    assert not set(picked) & set(labelled)


def test_uncertainty_ignores_scores_of_labelled_tasks_and_stops_at_the_pool_end():
    labelled = [3, 7, 11, 20, 21, 30]
    assert next_batch("uncertainty", POOL, labelled, 10, seed=0, confidence=CONFIDENCE) == [42, 50]


def test_uncertainty_without_a_score_for_an_unlabelled_task_is_an_error():
    partial = {t: c for t, c in CONFIDENCE.items() if t != 30}
    with pytest.raises(ValueError, match="no confidence"):
        next_batch("uncertainty", POOL, [7], 3, seed=0, confidence=partial)


def test_random_is_seeded_deterministic_and_skips_labelled_tasks():
    pool = list(range(100))
    labelled = list(range(0, 100, 2))
    first = next_batch("random", pool, labelled, 10, seed=4)
    assert first == next_batch("random", list(reversed(pool)), list(reversed(labelled)), 10, seed=4)
    assert len(set(first)) == 10 and all(t % 2 == 1 for t in first)
    others = {tuple(next_batch("random", pool, labelled, 10, seed=s)) for s in range(5)}
    assert len(others) == 5  # another seed, another draw
    assert next_batch("random", pool, [], 10, seed=4) != next_batch("random", pool, [], 10, seed=5)


def test_an_unknown_strategy_is_an_error():
    with pytest.raises(ValueError, match="strategy"):
        next_batch("margin", POOL, [], 3, seed=0, confidence=CONFIDENCE)
