"""Fingerprints that make repeated webhook deliveries of one annotation revision idempotent."""
from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from .jsoncodec import canonical
from .timestamps import parse_ls_time


def revision_fingerprint(
    ls_project_id: int,
    ls_task_id: int,
    ls_annotation_id: int,
    action: str,
    ls_updated_at: str | datetime | None,
    result: Any,
    label_studio: str = "",
) -> str:
    """sha256 hex (64 chars) of the Label Studio identity and ids, action, update time and result JSON.

    Equal for every delivery of the same revision: keys are sorted and the time is
    normalised to UTC, so the same payload always hashes the same. ``label_studio`` (see
    `db.identity`) keeps two Label Studios' same-numbered annotations apart; "" (unknown) hashes
    as before it existed.
    """
    updated = parse_ls_time(ls_updated_at)
    parts = [
        int(ls_project_id),
        int(ls_task_id),
        int(ls_annotation_id),
        action,
        None if updated is None else updated.isoformat(),
        result,
    ]
    if label_studio:
        parts.append(label_studio)
    return hashlib.sha256(canonical(parts).encode()).hexdigest()
