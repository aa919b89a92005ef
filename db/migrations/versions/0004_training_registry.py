"""Training queue and segmenter registry: training_jobs, segmenters, promotions.

A project has at most one queued and one running training job (partial unique indexes, which
the queue's concurrent enqueues and claims rely on). training_jobs.segmenter_id and
segmenters.job_id point at each other, so the first of the two is added once both tables exist.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

JOB_FK = "fk_training_jobs_segmenter_id_segmenters"


def _timestamp(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _project(table: str) -> tuple[sa.Column, sa.ForeignKeyConstraint]:
    return (
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f(f"fk_{table}_project_id_projects")),
    )


def upgrade() -> None:
    op.create_table(
        "training_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        *_project("training_jobs"),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        _timestamp("requested_at"),
        _timestamp("started_at", nullable=True),
        _timestamp("finished_at", nullable=True),
        _timestamp("heartbeat_at", nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("progress", sa.String(length=200), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("revision_mark", sa.Integer(), nullable=True),
        sa.Column("segmenter_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "state IN ('queued', 'running', 'done', 'failed')", name=op.f("ck_training_jobs_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_jobs")),
    )
    op.create_table(
        "segmenters",
        sa.Column("id", sa.Integer(), nullable=False),
        *_project("segmenters"),
        sa.Column("job_id", sa.Integer(), nullable=True),
        _timestamp("created_at"),
        sa.Column("weights_id", sa.String(length=64), nullable=False),
        sa.Column("weights", sa.LargeBinary(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["training_jobs.id"], name=op.f("fk_segmenters_job_id_training_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segmenters")),
    )
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        *_project("promotions"),
        sa.Column("segmenter_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        _timestamp("created_at"),
        sa.CheckConstraint(
            "reason IN ('trained', 'promote', 'rollback')", name=op.f("ck_promotions_reason")
        ),
        sa.ForeignKeyConstraint(
            ["segmenter_id"], ["segmenters.id"], name=op.f("fk_promotions_segmenter_id_segmenters")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promotions")),
    )
    # SQLite rebuilds the table here (batch mode): its indexes are created after
    with op.batch_alter_table("training_jobs") as batch:
        batch.create_foreign_key(op.f(JOB_FK), "segmenters", ["segmenter_id"], ["id"])
    op.create_index(op.f("ix_training_jobs_project_id"), "training_jobs", ["project_id"], unique=False)
    for state in ("queued", "running"):
        where = sa.text(f"state = '{state}'")
        op.create_index(
            f"uq_training_jobs_project_id_{state}",
            "training_jobs",
            ["project_id"],
            unique=True,
            sqlite_where=where,
            postgresql_where=where,
        )
    op.create_index(op.f("ix_segmenters_project_id"), "segmenters", ["project_id"], unique=False)
    op.create_index(op.f("ix_promotions_project_id"), "promotions", ["project_id"], unique=False)


def downgrade() -> None:
    op.drop_table("promotions")
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_constraint(op.f(JOB_FK), type_="foreignkey")
    op.drop_table("segmenters")
    op.drop_table("training_jobs")
