"""Label Studio identity: projects keyed by (label_studio, ls_project_id); links learnt from
/setup shared by every backend worker; model version settings name their precision; Label
Studio's ids are 64-bit (PostgreSQL's INTEGER is 32-bit; Label Studio's ids are bigints).

Existing projects get identity "" (unknown); the first command or backend that knows its Label
Studio takes them on (db.repository.upsert_project). Model versions written by the backend
recorded ``mixed_precision`` (a bool) and those written by ``labeler prelabel`` recorded nothing:
both now record ``precision`` ("float32" or "mixed_float16"), as every writer does from now on.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
from __future__ import annotations

import json
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


#: (table, column, nullable) of every column that holds a Label Studio id
LABEL_STUDIO_IDS = (
    ("projects", "ls_project_id", False),
    ("tasks", "ls_task_id", False),
    ("annotation_revisions", "ls_annotation_id", False),
    ("annotation_revisions", "completed_by", True),
    ("annotation_revisions", "updated_by", True),
    ("annotation_revisions", "parent_prediction", True),
    ("failures", "ls_task_id", True),
)


def _widen(to, source) -> None:
    for table, column, nullable in LABEL_STUDIO_IDS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, type_=to, existing_type=source, existing_nullable=nullable)


def upgrade() -> None:
    _widen(sa.BigInteger(), sa.Integer())
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("label_studio", sa.String(255), nullable=False, server_default=""))
        batch.drop_constraint("uq_projects_ls_project_id", type_="unique")
        batch.create_unique_constraint("uq_projects_label_studio_ls_project_id", ["label_studio", "ls_project_id"])
    op.create_table(
        "label_studio_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_key", sa.String(64), nullable=False),
        sa.Column("label_studio", sa.String(255), nullable=False),
        sa.Column("url", sa.String(255), nullable=False),
        sa.Column("token", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_label_studio_links")),
        sa.UniqueConstraint("project_key", name=op.f("uq_label_studio_links_project_key")),
    )
    versions = sa.table("model_versions", sa.column("id", sa.Integer), sa.column("settings", sa.JSON))
    connection = op.get_bind()
    for row in connection.execute(sa.select(versions.c.id, versions.c.settings)).all():
        settings = row.settings if isinstance(row.settings, dict) else json.loads(row.settings)
        if "precision" in settings:
            continue
        mixed = bool(settings.pop("mixed_precision", False))
        settings["precision"] = "mixed_float16" if mixed else "float32"
        connection.execute(versions.update().where(versions.c.id == row.id).values(settings=settings))


def downgrade() -> None:
    op.drop_table("label_studio_links")
    with op.batch_alter_table("projects") as batch:
        batch.drop_constraint("uq_projects_label_studio_ls_project_id", type_="unique")
        batch.create_unique_constraint("uq_projects_ls_project_id", ["ls_project_id"])
        batch.drop_column("label_studio")
    _widen(sa.Integer(), sa.BigInteger())
