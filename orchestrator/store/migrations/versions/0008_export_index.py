"""Indexes for three reads: an export walks one camera's clips in recording order, the
operations page reads the last day's finished runs, and the webhook worker prunes old
delivered deliveries.

Revision ID: 0008_export_index
Revises: 0007_tenancy
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision: str = "0008_export_index"
down_revision: str | None = "0007_tenancy"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_clips_camera_recorded", "clips", ["tenant", "camera", "recorded_at"])
    op.create_index("ix_runs_finished_at", "runs", ["finished_at"])
    op.create_index(
        "ix_webhook_deliveries_delivered", "webhook_deliveries", ["state", "delivered_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_delivered", table_name="webhook_deliveries")
    op.drop_index("ix_runs_finished_at", table_name="runs")
    op.drop_index("ix_clips_camera_recorded", table_name="clips")
