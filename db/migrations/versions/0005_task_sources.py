"""Tasks record where they came from: ``patient_key`` (the task data's keyed ``patient`` value)
and ``source_name`` (the original file's path as imported), so that exports, training splits and
imports read them from this database instead of asking Label Studio once per task; indexes for
the import's "already imported?" lookups by content hash and by source name.

Existing tasks get NULL in both: the next webhook, /predict, ``labeler prelabel`` or ``labeler
sync`` that sees the task's data fills them in.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

INDEXES = {
    "ix_tasks_project_id_content_hash": ["project_id", "content_hash"],
    "ix_tasks_project_id_source_name": ["project_id", "source_name"],
}


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("patient_key", sa.String(64), nullable=True))
        batch.add_column(sa.Column("source_name", sa.String(1024), nullable=True))
    for name, columns in INDEXES.items():
        op.create_index(name, "tasks", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("source_name")
        batch.drop_column("patient_key")
