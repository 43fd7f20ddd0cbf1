"""Discovery source, run owner and finished sequence, leases, counters, rejected objects,
and indexes for the hot queries.

Revision ID: 0002_discovery_leases_events
Revises: 0001_baseline
Create Date: 2026-11-23
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002_discovery_leases_events"
down_revision: str | None = "0001_baseline"
branch_labels: str | None = None
depends_on: str | None = None


def _time(name: str, nullable: bool = True) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("clips") as batch:
        batch.add_column(sa.Column("discovered_by", sa.String(length=16), nullable=True))
        batch.create_index("ix_clips_tenant_discovered", ["tenant", "discovered_at"])

    # SQLite cannot add a UNIQUE column in place: batch mode copies the table.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("finished_seq", sa.Integer(), nullable=True))
        # The name PostgreSQL gives the unnamed constraint that create_all makes.
        batch.create_unique_constraint("runs_finished_seq_key", ["finished_seq"])
        batch.create_index("ix_runs_owner", ["owner"])
        batch.create_index("ix_runs_created", ["created_at", "id"])
        # Its prefix serves every query ix_runs_status served.
        batch.drop_index("ix_runs_status")
        batch.create_index("ix_runs_status_owner", ["status", "owner"])

    with op.batch_alter_table("stage_attempts") as batch:
        batch.create_index("ix_stage_attempts_finished_at", ["finished_at"])

    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        _time("acquired_at", nullable=False),
        _time("expires_at", nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "rejected_objects",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("bucket", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("etag", sa.String(length=128), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        _time("seen_at", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bucket", "key", "etag", name="uq_rejected_identity"),
    )
    # Runs that ended before the event stream had a sequence get one, in the order they
    # ended, so a client reading the stream from its start misses none of them.
    conn = op.get_bind()
    ended = conn.execute(
        sa.text("SELECT id FROM runs WHERE finished_at IS NOT NULL ORDER BY finished_at, id")
    ).all()
    if ended:
        conn.execute(
            sa.text("UPDATE runs SET finished_seq = :seq WHERE id = :id"),
            [{"seq": n, "id": row[0]} for n, row in enumerate(ended, 1)],
        )
    conn.execute(
        sa.text("INSERT INTO counters (name, value) VALUES ('finished_runs', :value)"),
        {"value": len(ended)},
    )


def downgrade() -> None:
    for table in ("rejected_objects", "counters", "leases"):
        op.drop_table(table)
    with op.batch_alter_table("stage_attempts") as batch:
        batch.drop_index("ix_stage_attempts_finished_at")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_status_owner")
        batch.create_index("ix_runs_status", ["status"])
        batch.drop_index("ix_runs_created")
        batch.drop_index("ix_runs_owner")
        batch.drop_column("finished_seq")
        batch.drop_column("owner")
    with op.batch_alter_table("clips") as batch:
        batch.drop_index("ix_clips_tenant_discovered")
        batch.drop_column("discovered_by")
