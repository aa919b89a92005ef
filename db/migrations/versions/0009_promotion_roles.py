"""``promotions.role``: a project keeps two promotion stacks, "prelabel" (the segmenter that
pre-labels its tasks, as before) and "clicks" (the click model that answers its annotators'
clicks). Every existing promotion is a "prelabel" one.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""
from __future__ import annotations

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: Union[str, Sequence[str], None] = "0008"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("promotions") as batch:
        batch.add_column(sa.Column("role", sa.String(length=16), nullable=False, server_default="prelabel"))
        batch.create_check_constraint(op.f("ck_promotions_role"), "role IN ('prelabel', 'clicks')")


def downgrade() -> None:
    with op.batch_alter_table("promotions") as batch:
        batch.drop_constraint(op.f("ck_promotions_role"), type_="check")
        batch.drop_column("role")
