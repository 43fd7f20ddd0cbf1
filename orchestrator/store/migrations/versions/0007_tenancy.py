"""Tenancy of pipelines and algorithms.

Revision ID: 0007_tenancy
Revises: 0006_dashboard_sessions
Create Date: 2026-12-01
"""

from __future__ import annotations

revision: str = "0007_tenancy"
down_revision: str | None = "0006_dashboard_sessions"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
