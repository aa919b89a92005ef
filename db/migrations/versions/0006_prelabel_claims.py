"""Pre-label claims: ``prelabel_claims`` rows (project, model version, Label Studio task id),
unique per triple, through which several ``labeler prelabel`` workers on one project share the
work without doing a task twice (see `db.claims`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: Union[str, Sequence[str], None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "prelabel_claims",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(length=255), nullable=False),
        sa.Column("ls_task_id", sa.BigInteger(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_prelabel_claims_project_id_projects")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prelabel_claims")),
        sa.UniqueConstraint(
            "project_id", "model_version", "ls_task_id",
            name=op.f("uq_prelabel_claims_project_id_model_version_ls_task_id"),
        ),
    )


def downgrade() -> None:
    op.drop_table("prelabel_claims")
