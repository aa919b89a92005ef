"""Installation table: one row holding this database's patient-key secret.

The secret (32 random bytes as 64 hex characters) is made here, at upgrade time, so each
database gets its own; an upgrade that has already run does not run again, so it never changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
from __future__ import annotations

import secrets
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    installation = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_key_secret", sa.String(length=64), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_installation_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installation")),
    )
    op.bulk_insert(installation, [{"id": 1, "patient_key_secret": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("installation")
