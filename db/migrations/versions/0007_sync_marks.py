"""``sync_marks``: per project, how far ``labeler sync`` has read Label Studio (the newest task
``updated_at`` it can vouch for), so that the next sync asks only for the tasks changed since; an index on annotation revisions
by (task_id, ls_annotation_id) for its count of current annotations per task.

A project without a row gets a full sync, as before this table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: Union[str, Sequence[str], None] = "0006"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

INDEX = "ix_annotation_revisions_task_id_ls_annotation_id"


def upgrade() -> None:
    op.create_table(
        "sync_marks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("mark", sa.DateTime(timezone=True), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_sync_marks_project_id_projects")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_marks")),
        sa.UniqueConstraint("project_id", name=op.f("uq_sync_marks_project_id")),
    )
    op.create_index(INDEX, "annotation_revisions", ["task_id", "ls_annotation_id"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="annotation_revisions")
    op.drop_table("sync_marks")
