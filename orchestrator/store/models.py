"""Tables. All progress lives here, so a restarted orchestrator just continues.

Datetimes are timezone-aware UTC throughout.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Aware UTC, whatever a database driver handed back."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat().replace("+00:00", "Z") if value else None


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class AttemptState(StrEnum):
    #: Recorded, not yet handed to an executor (or the hand-over was interrupted).
    PENDING = "pending"
    #: Handed to an executor: queued or running there.
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: A fused stage that never ran: an earlier stage of its process failed first. Not
    #: a failure of its own: the stage is started again with that one.
    SKIPPED = "skipped"


class Clip(SQLModel, table=True):
    __tablename__ = "clips"
    __table_args__ = (
        UniqueConstraint("bucket", "key", "etag", name="uq_clip_identity"),
        # The API lists a tenant's clips newest first.
        Index("ix_clips_tenant_discovered", "tenant", "discovered_at"),
        # The newest discovery (the watcher-lag gauge) without a scan of every clip.
        Index("ix_clips_discovered", "discovered_at"),
        # An export walks one camera's clips in recording order (keyset pages).
        Index("ix_clips_camera_recorded", "tenant", "camera", "recorded_at"),
    )

    id: str = Field(primary_key=True, max_length=32)
    bucket: str = Field(max_length=255)
    key: str = Field(max_length=1024)
    etag: str = Field(max_length=128)
    size: int
    tenant: str = Field(index=True, max_length=255)
    camera: str = Field(index=True, max_length=255)
    recorded_at: datetime | None = None
    last_modified: datetime | None = None
    discovered_at: datetime = Field(default_factory=utcnow)
    #: What found it: "event" (an S3 notification), "sweep" (the reconciliation pass)
    #: or "upload" (`camflow process`, `camflow algorithms try`).
    discovered_by: str | None = Field(default=None, max_length=16)
    #: Runs have been created for every pipeline whose trigger matches.
    planned: bool = Field(default=False, index=True)


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("clip_id", "pipeline", name="uq_run_clip_pipeline"),
        Index("ix_runs_created", "created_at", "id"),
        # The engine's active runs: status and owner together, else SQLite walks every
        # run `camflow serve` owns (owner NULL), finished ones included, on each tick.
        Index("ix_runs_status_owner", "status", "owner"),
        # The operations page reads the last day's finished runs: a range, not history.
        Index("ix_runs_finished_at", "finished_at"),
    )

    id: str = Field(primary_key=True, max_length=32)
    clip_id: str = Field(foreign_key="clips.id", index=True, max_length=32)
    pipeline: str = Field(max_length=64)
    status: RunStatus = Field(default=RunStatus.PENDING, max_length=16)
    error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result_uri: str | None = Field(default=None, max_length=2048)
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    #: stage -> name@version this run uses, fixed when it was created.
    algorithms: dict[str, str] | None = Field(default=None, sa_column=Column(JSON))
    #: Who drives it: None for `camflow serve` (whichever replica leads), else the
    #: one-shot process (`camflow process`, `algorithms try`) that made it.
    owner: str | None = Field(default=None, index=True, max_length=64)
    #: Position in the stream of finished runs (the event stream's cursor): given
    #: in the transaction that finishes the run, in commit order.
    finished_seq: int | None = Field(default=None, unique=True)


class StageAttempt(SQLModel, table=True):
    __tablename__ = "stage_attempts"
    __table_args__ = (
        UniqueConstraint("run_id", "stage", "attempt", name="uq_attempt_run_stage_number"),
    )

    id: str = Field(primary_key=True, max_length=128)
    run_id: str = Field(foreign_key="runs.id", index=True, max_length=32)
    stage: str = Field(max_length=64)
    attempt: int
    algorithm: str = Field(max_length=128)  # name@version
    image: str | None = Field(default=None, max_length=512)  # exactly what ran
    accelerator: str = Field(max_length=8)
    executor: str = Field(max_length=64)
    state: AttemptState = Field(default=AttemptState.PENDING, index=True, max_length=16)
    handle: str | None = Field(default=None, max_length=512)
    exit_code: int | None = None
    reason: str | None = Field(default=None, sa_column=Column(Text))
    #: Failed in a way that retrying cannot fix (exit 2: bad input).
    permanent: bool = False
    timed_out: bool = False
    #: The executor retried it by itself and used up the retries (a Job's backoffLimit).
    exhausted: bool = False
    #: Runs the executor made of it (pods of a Job); None when it ran once.
    tries: int | None = None
    #: Where it ran: "local", or the cluster's name.
    placement: str | None = Field(default=None, max_length=64)
    #: The batch it ran in, with other clips' attempts of the same stage, in one
    #: process; None when it ran alone. A batch takes one of the executor's slots.
    batch: str | None = Field(default=None, max_length=64)
    #: Fused with its consumers, it handed its outputs to them in its process instead
    #: of writing them to S3: if one of them must run again, so must this stage.
    keep_local: bool = False
    log_uri: str | None = Field(default=None, max_length=2048)
    metrics: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    outputs: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(default_factory=utcnow)
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    #: Indexed for the event stream and the newest finished attempts.
    finished_at: datetime | None = Field(default=None, index=True)


class Checkpoint(SQLModel, table=True):
    """The last key seen under one listing prefix (``s3://bucket/tenant/camera/``)."""

    __tablename__ = "checkpoints"

    id: str = Field(primary_key=True, max_length=1300)
    last_key: str = Field(max_length=1024)
    updated_at: datetime = Field(default_factory=utcnow)


class Lease(SQLModel, table=True):
    """Leadership among `camflow serve` replicas: one holder at a time, until it expires.

    ``epoch`` grows with each new holder, so a holder that lost the lease while paused
    can tell (fencing).
    """

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    epoch: int = 0
    acquired_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class Counter(SQLModel, table=True):
    """Named monotonic counters, bumped inside the transaction that uses the value: the
    row lock orders the commits, so readers never see a gap fill in later."""

    __tablename__ = "counters"

    name: str = Field(primary_key=True, max_length=64)
    value: int = 0


class RejectedObject(SQLModel, table=True):
    """An object a trigger matches that cannot be a clip (no tenant/camera in its key):
    reported once, never silently dropped."""

    __tablename__ = "rejected_objects"
    __table_args__ = (UniqueConstraint("bucket", "key", "etag", name="uq_rejected_identity"),)

    id: str = Field(primary_key=True, max_length=32)
    bucket: str = Field(max_length=255)
    key: str = Field(max_length=1024)
    etag: str = Field(max_length=128)
    size: int
    reason: str = Field(sa_column=Column(Text, nullable=False))
    seen_at: datetime = Field(default_factory=utcnow)


class ClusterAction(SQLModel, table=True):
    """Something camflow decided to do on a cluster (delete a cancelled or expired Job)
    and has not seen done yet: kept until the cluster did it, so that neither a
    restart nor the cluster being away makes camflow forget it."""

    __tablename__ = "cluster_actions"

    #: ``<kind>:<handle>``: recording the same action twice is one row.
    id: str = Field(primary_key=True, max_length=600)
    kind: str = Field(max_length=16)  # "delete"
    cluster: str = Field(index=True, max_length=64)
    #: The executor's handle: ``<cluster>/<namespace>/<job name>``.
    handle: str = Field(max_length=512)
    created_at: datetime = Field(default_factory=utcnow)


class Channel(StrEnum):
    DEV = "dev"
    STABLE = "stable"


class AlgorithmVersion(SQLModel, table=True):
    """An immutable registered version of an algorithm, and the channel it is on."""

    __tablename__ = "algorithm_versions"

    id: str = Field(primary_key=True, max_length=128)  # name@version
    name: str = Field(index=True, max_length=64)
    version: str = Field(max_length=64)
    channel: Channel = Field(default=Channel.DEV, max_length=16)
    manifest: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    #: sha256 of the manifest and image digest: the same version may never change.
    content_digest: str = Field(max_length=80)
    image_digest: str | None = Field(default=None, max_length=80)
    #: The folder it was registered from, where local runs find its code.
    source: str | None = Field(default=None, max_length=2048)
    #: The tenant whose author registered it over the API; None: the operator's.
    owner: str | None = Field(default=None, index=True, max_length=255)
    registered_at: datetime = Field(default_factory=utcnow)
    promoted_at: datetime | None = None
    #: When an admin published it; a version with an owner runs on other tenants'
    #: clips only once published (the operator's run on every tenant's anyway).
    published_at: datetime | None = None
    #: accelerator -> digest of that accelerator's own image (``accelerators.<acc>.image``).
    image_digests: dict[str, str] | None = Field(default=None, sa_column=Column(JSON))

    @property
    def published(self) -> bool:
        return self.published_at is not None


class Role(StrEnum):
    CAMERA = "camera"  # uploads, for its own camera only
    CUSTOMER = "customer"  # reads its tenant's clips, runs and results
    AUTHOR = "author"  # registers and promotes its tenant's algorithms
    ADMIN = "admin"  # everything, every tenant


class ApiKey(SQLModel, table=True):
    """An API key: only a hash of its secret is kept."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(default="", max_length=255)
    tenant: str = Field(index=True, max_length=255)
    role: Role = Field(max_length=16)
    camera: str | None = Field(default=None, max_length=255)
    secret_hash: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
