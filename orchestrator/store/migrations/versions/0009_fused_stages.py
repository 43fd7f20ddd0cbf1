"""Fused stages: an attempt may hand its outputs to the later stages of its process
instead of writing them to S3 (keep_local), and a fused stage never reached because an
earlier one failed ends "skipped" rather than failed.

Revision ID: 0009_fused_stages
Revises: 0008_export_index
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0009_fused_stages"
down_revision: str | None = "0008_export_index"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("stage_attempts") as batch:
        batch.add_column(
            sa.Column("keep_local", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    if op.get_bind().dialect.name == "postgresql":
        # A native enum there. PostgreSQL 12+ adds a value inside a transaction, which
        # may not use it before it commits (nothing here does).
        op.execute("ALTER TYPE attemptstate ADD VALUE IF NOT EXISTS 'SKIPPED'")


def downgrade() -> None:
    # PostgreSQL cannot drop an enum value; a skipped attempt reads as failed instead.
    op.execute("UPDATE stage_attempts SET state = 'FAILED' WHERE state = 'SKIPPED'")
    with op.batch_alter_table("stage_attempts") as batch:
        batch.drop_column("keep_local")
