"""Exports walk one camera's clips in recording order: an index for that walk.

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


def downgrade() -> None:
    op.drop_index("ix_clips_camera_recorded", table_name="clips")
