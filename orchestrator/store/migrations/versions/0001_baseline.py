"""Baseline: the schema of the release before migrations, which made it with create_all.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-23

Frozen: types and enum members are spelled out here rather than taken from models.py,
so later edits to the models cannot change what this revision builds.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001_baseline"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# SQLModel stores enum members by name: PostgreSQL gets native enum types of the names.
RUN_STATUS = sa.Enum("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", name="runstatus")
ATTEMPT_STATE = sa.Enum("PENDING", "RUNNING", "SUCCEEDED", "FAILED", name="attemptstate")
CHANNEL = sa.Enum("DEV", "STABLE", name="channel")
ROLE = sa.Enum("CAMERA", "CUSTOMER", "AUTHOR", "ADMIN", name="role")


def _time(name: str, nullable: bool = True) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "algorithm_versions",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("channel", CHANNEL, nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("content_digest", sa.String(length=80), nullable=False),
        sa.Column("image_digest", sa.String(length=80), nullable=True),
        sa.Column("source", sa.String(length=2048), nullable=True),
        sa.Column("owner", sa.String(length=255), nullable=True),
        _time("registered_at", nullable=False),
        _time("promoted_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_algorithm_versions_name", "algorithm_versions", ["name"])
    op.create_index("ix_algorithm_versions_owner", "algorithm_versions", ["owner"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("tenant", sa.String(length=255), nullable=False),
        sa.Column("role", ROLE, nullable=False),
        sa.Column("camera", sa.String(length=255), nullable=True),
        sa.Column("secret_hash", sa.String(length=128), nullable=False),
        _time("created_at", nullable=False),
        _time("revoked_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"])

    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(length=1300), nullable=False),
        sa.Column("last_key", sa.String(length=1024), nullable=False),
        _time("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )

    op.create_table(
        "clips",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("bucket", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column("etag", sa.String(length=128), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(length=255), nullable=False),
        sa.Column("camera", sa.String(length=255), nullable=False),
        _time("recorded_at"),
        _time("last_modified"),
        _time("discovered_at", nullable=False),
        sa.Column("planned", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bucket", "key", "etag", name="uq_clip_identity"),
    )
    op.create_index("ix_clips_camera", "clips", ["camera"])
    op.create_index("ix_clips_planned", "clips", ["planned"])
    op.create_index("ix_clips_tenant", "clips", ["tenant"])

    op.create_table(
        "runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("clip_id", sa.String(length=32), nullable=False),
        sa.Column("pipeline", sa.String(length=64), nullable=False),
        sa.Column("status", RUN_STATUS, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _time("created_at", nullable=False),
        _time("started_at"),
        _time("finished_at"),
        sa.Column("result_uri", sa.String(length=2048), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("algorithms", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["clip_id"], ["clips.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("clip_id", "pipeline", name="uq_run_clip_pipeline"),
    )
    op.create_index("ix_runs_clip_id", "runs", ["clip_id"])
    op.create_index("ix_runs_status", "runs", ["status"])

    op.create_table(
        "stage_attempts",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("algorithm", sa.String(length=128), nullable=False),
        sa.Column("image", sa.String(length=512), nullable=True),
        sa.Column("accelerator", sa.String(length=8), nullable=False),
        sa.Column("executor", sa.String(length=64), nullable=False),
        sa.Column("state", ATTEMPT_STATE, nullable=False),
        sa.Column("handle", sa.String(length=512), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("permanent", sa.Boolean(), nullable=False),
        sa.Column("timed_out", sa.Boolean(), nullable=False),
        sa.Column("exhausted", sa.Boolean(), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=True),
        sa.Column("placement", sa.String(length=64), nullable=True),
        sa.Column("log_uri", sa.String(length=2048), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("outputs", sa.JSON(), nullable=True),
        _time("created_at", nullable=False),
        _time("submitted_at"),
        _time("started_at"),
        _time("finished_at"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "stage", "attempt", name="uq_attempt_run_stage_number"),
    )
    op.create_index("ix_stage_attempts_run_id", "stage_attempts", ["run_id"])
    op.create_index("ix_stage_attempts_state", "stage_attempts", ["state"])


def downgrade() -> None:
    for table in (
        "stage_attempts",
        "runs",
        "clips",
        "checkpoints",
        "api_keys",
        "algorithm_versions",
    ):
        op.drop_table(table)
    # Dropping a table leaves PostgreSQL's enum types behind.
    for enum in (ATTEMPT_STATE, RUN_STATUS, ROLE, CHANNEL):
        enum.drop(op.get_bind(), checkfirst=True)
