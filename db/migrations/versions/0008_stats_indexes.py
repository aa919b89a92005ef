"""An index for ``labeler stats``' chunked reads: per chunk of tasks it lists the candidate
predictions' ids, versions and times (index-only through predictions(task_id, model_version_id,
created_at); without it SQLite may walk every prediction of the model version for each chunk).
Its revision counts per annotation use 0007's annotation_revisions(task_id, ls_annotation_id).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""
from __future__ import annotations

from typing import Sequence, Union

from alembic import op

revision: str = "0008"
down_revision: Union[str, Sequence[str], None] = "0007"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

INDEXES = {
    "ix_predictions_task_id_model_version_id_created_at": ("predictions", ["task_id", "model_version_id", "created_at"]),
}


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _) in INDEXES.items():
        op.drop_index(name, table_name=table)
