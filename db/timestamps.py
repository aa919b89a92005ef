"""Timezone-aware UTC timestamps: the column type, the clock and Label Studio's ISO strings."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


def parse_ls_time(value: str | datetime | None) -> datetime | None:
    """A Label Studio timestamp as an aware UTC datetime.

    Accepts ISO 8601 strings as Label Studio sends them (``2025-01-31T12:00:00.123456Z``,
    or with an offset), aware datetimes, or None. Naive values are taken as UTC. Anything else
    (another type, a malformed string, a time that leaves datetime's range in UTC) raises a
    ValueError naming the problem.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value[:40]!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"expected an ISO 8601 timestamp string, got {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"timestamp {value.isoformat()!r} is out of range in UTC") from None


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that only takes aware datetimes and always returns UTC.

    SQLite has no time zones: values are stored there as naive UTC and read back as aware UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"timestamps must be timezone-aware datetimes, got {value!r}")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
