"""Webhooks: endpoints and the delivery outbox.

Revision ID: 0005_webhooks
Revises: 0004_batches
Create Date: 2026-12-01
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005_webhooks"
down_revision: str | None = "0004_batches"
branch_labels: str | None = None
depends_on: str | None = None

DELIVERY_STATE = sa.Enum("PENDING", "DELIVERED", "FAILED", name="deliverystate")


def _time(name: str, nullable: bool = True) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=255), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("description", sa.String(length=255), nullable=False),
        _time("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhook_endpoints_tenant", "webhook_endpoints", ["tenant"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=96), nullable=False),
        sa.Column("endpoint_id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("state", DELIVERY_STATE, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _time("created_at", nullable=False),
        _time("window_started_at", nullable=False),
        _time("next_attempt_at", nullable=False),
        _time("claimed_until"),
        sa.Column("claim", sa.String(length=32), nullable=True),
        _time("last_attempt_at"),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _time("delivered_at"),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhook_deliveries_endpoint_id", "webhook_deliveries", ["endpoint_id"])
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["state", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_tenant", "webhook_deliveries", ["tenant", "created_at"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")  # its indexes go with it
    op.drop_index("ix_webhook_endpoints_tenant", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
    # Dropping a table leaves PostgreSQL's enum types behind.
    DELIVERY_STATE.drop(op.get_bind(), checkfirst=True)
