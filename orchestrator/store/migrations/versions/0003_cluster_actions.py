"""Cluster actions: Job deletes camflow decided on and a cluster has not done yet.

Revision ID: 0003_cluster_actions
Revises: 0002_discovery_leases_events
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003_cluster_actions"
down_revision: str | None = "0002_discovery_leases_events"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "cluster_actions",
        sa.Column("id", sa.String(length=600), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("cluster", sa.String(length=64), nullable=False),
        sa.Column("handle", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_cluster_actions_cluster", "cluster_actions", ["cluster"])


def downgrade() -> None:
    op.drop_index("ix_cluster_actions_cluster", table_name="cluster_actions")
    op.drop_table("cluster_actions")
