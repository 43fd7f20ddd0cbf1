"""Webhooks: endpoints and the delivery outbox.

Revision ID: 0005_webhooks
Revises: 0004_batches
Create Date: 2026-12-01
"""

from __future__ import annotations

revision: str = "0005_webhooks"
down_revision: str | None = "0004_batches"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
