"""The time window ``labeler stats --since / --until`` limits the annotations to.

An annotation's time is its current revision's ``ls_updated_at``, else ``ls_created_at``, else
``received_at`` (the stamp `db.corrected` orders annotations by). The window is [since, until):
``since`` included, ``until`` left out; a date alone (``2025-03-01``) is that day's start (UTC)
for ``--since`` and the next day's start for ``--until``, so that ``--until 2025-03-31`` keeps
the whole of March 31. Times without a zone are UTC.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from db.timestamps import parse_ls_time

_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Window:
    """[since, until) in aware UTC datetimes; None = open on that side."""

    since: datetime | None = None
    until: datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.since is None and self.until is None

    def describe(self) -> str:
        """e.g. "annotations updated from 2025-03-01 00:00 UTC until 2025-04-01 00:00 UTC"."""
        parts = ["annotations updated"]
        if self.since is not None:
            parts.append(f"from {self.since:%Y-%m-%d %H:%M} UTC")
        if self.until is not None:
            parts.append(f"until {self.until:%Y-%m-%d %H:%M} UTC")
        return " ".join(parts) if not self.is_open else "annotations of any time"


def _parse(value: str, option: str, end_of_day: bool) -> datetime:
    text = value.strip()
    try:
        moment = parse_ls_time(text)
    except ValueError:
        moment = None
    if moment is None:
        raise ValueError(f"{option} must be an ISO date or time like 2025-03-01 or 2025-03-01T12:00, got {value[:40]!r}")
    if end_of_day and _DATE_ONLY.fullmatch(text):
        moment += timedelta(days=1)
    return moment


def parse_window(since: str | None, until: str | None) -> Window:
    """The window of the ``--since`` / ``--until`` texts (ValueError naming the option when one is
    not an ISO date or time, or when the window is empty)."""
    start = None if since is None else _parse(since, "--since", end_of_day=False)
    end = None if until is None else _parse(until, "--until", end_of_day=True)
    if start is not None and end is not None and start >= end:
        raise ValueError(f"--since ({since}) must come before --until ({until})")
    return Window(start, end)
