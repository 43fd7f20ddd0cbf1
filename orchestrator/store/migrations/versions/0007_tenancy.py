"""Tenancy of pipelines and algorithms: an admin publishes an author's algorithm
version for every tenant (published_at); a pipeline that may not run on a clip is
recorded with the reason (skipped_runs); per-accelerator image digests.

Revision ID: 0007_tenancy
Revises: 0006_dashboard_sessions
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007_tenancy"
down_revision: str | None = "0006_dashboard_sessions"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("algorithm_versions") as batch:
        batch.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("image_digests", sa.JSON(), nullable=True))
    op.create_table(
        "skipped_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("clip_id", sa.String(length=32), nullable=False),
        sa.Column("pipeline", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("skipped_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["clip_id"], ["clips.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_skipped_runs_clip_id", "skipped_runs", ["clip_id"])
    op.create_index("ix_skipped_runs_tenant", "skipped_runs", ["tenant"])
    op.create_index("ix_skipped_runs_skipped_at", "skipped_runs", ["skipped_at"])


def downgrade() -> None:
    op.drop_index("ix_skipped_runs_skipped_at", table_name="skipped_runs")
    op.drop_index("ix_skipped_runs_tenant", table_name="skipped_runs")
    op.drop_index("ix_skipped_runs_clip_id", table_name="skipped_runs")
    op.drop_table("skipped_runs")
    with op.batch_alter_table("algorithm_versions") as batch:
        batch.drop_column("image_digests")
        batch.drop_column("published_at")
