"""Per-attempt storage credentials, so a restart can revoke what it issued.

Revision ID: 0008_stage_credentials
Revises: 0007_tenancy
Create Date: 2026-12-01
"""

from __future__ import annotations

revision: str = "0008_stage_credentials"
down_revision: str | None = "0007_tenancy"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
