"""Patient-level splits of a project's tasks, and the validation carved out of a train split,
shared by ``labeler export`` / ``train-segmenter`` and the backend's training jobs so that both
put every task on the same side (no TensorFlow)."""
from __future__ import annotations

import hashlib

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


def split_of(patient: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """The split of a patient: sha256("<seed>:<patient>") as a number in [0, 1) against the
    cumulative fractions. Depends on nothing else, so a patient keeps its split when later
    exports add tasks or patients (no test patient drifts into train)."""
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name, fraction in zip(SPLIT_NAMES, fractions):
        edge += fraction
        if u < edge:
            return name
    return next(n for n, f in zip(reversed(SPLIT_NAMES), reversed(fractions)) if f > 0)


def stored_patient(key: str | None, ls_task_id: int) -> str:
    """The patient of a task whose stored key (our database's ``tasks.patient_key``, taken from
    the task data's ``patient_id`` or ``patient``: `db.repository.task_origin`) is ``key``; a task
    without one is its own patient."""
    return key if key else f"task-{ls_task_id}"


def carve_validation(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of ``count`` tasks with ``round(fraction * count)`` (at least one when
    count >= 2) drawn for validation, seeded."""
    order = np.random.default_rng(seed).permutation(count)
    n_val = min(count - 1, max(1 if count >= 2 else 0, int(round(fraction * count))))
    return np.sort(order[n_val:]), np.sort(order[:n_val])
