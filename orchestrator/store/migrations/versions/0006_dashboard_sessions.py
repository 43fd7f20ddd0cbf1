"""Dashboard sessions: server-side, stored hashed, with an expiry.

Revision ID: 0006_dashboard_sessions
Revises: 0005_webhooks
Create Date: 2026-12-01
"""

from __future__ import annotations

revision: str = "0006_dashboard_sessions"
down_revision: str | None = "0005_webhooks"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
