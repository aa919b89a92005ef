"""Installation-wide values kept in the database's one `Installation` row."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .schema import Installation


def patient_key_secret(session: Session) -> str:
    """This database's patient-key secret: 64 hex characters made by migration 0002.

    Raises ValueError when the row is missing (the database was not migrated by `db.migrate`).
    """
    secret = session.scalar(select(Installation.patient_key_secret).where(Installation.id == 1))
    if not secret:
        raise ValueError("the database has no installation row (migrate it with db.migrate)")
    return secret
