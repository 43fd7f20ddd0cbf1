"""Batches: attempts that run together in one process record their batch; clips are
indexed by discovery time for the watcher-lag gauge.

Revision ID: 0004_batches
Revises: 0003_cluster_actions
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004_batches"
down_revision: str | None = "0003_cluster_actions"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("stage_attempts") as batch:
        batch.add_column(sa.Column("batch", sa.String(length=64), nullable=True))
    op.create_index("ix_clips_discovered", "clips", ["discovered_at"])


def downgrade() -> None:
    op.drop_index("ix_clips_discovered", table_name="clips")
    with op.batch_alter_table("stage_attempts") as batch:
        batch.drop_column("batch")
