"""The bodies the HTTP API takes and answers, as the OpenAPI document describes them.

Built from the store's rows here, so that each route returns a typed value and the
document shows what a client really gets."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from orchestrator.domain.algorithm import Accelerator, AlgorithmManifest
from orchestrator.store import models as rows
from orchestrator.store.models import Channel, RunStatus, as_utc

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: object) -> object:
    # Only what the document's `format: date-time` promises: left to itself, pydantic also
    # takes numbers (as Unix times), bare dates, and times without an offset.
    if isinstance(value, datetime) or (isinstance(value, str) and RFC3339.fullmatch(value)):
        return value
    raise ValueError("not an RFC 3339 date-time with an offset, e.g. 2026-03-01T12:00:00Z")


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00, a time before year 1 in UTC
        raise ValueError("outside the years 1-9999 once in UTC") from None


#: A time a client sends: RFC 3339 with an offset, read as UTC.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_in_utc)]

# --- operations -----------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class EngineTick(BaseModel):
    """What the engine's last tick did."""

    planned: int
    started: int
    finished: int
    active: int
    errors: int = Field(description="Runs whose handling raised while the others went on")


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    engine_tick_age_seconds: float
    engine_tick: EngineTick | None = Field(description="None until a tick has reported what it did")


# --- cameras --------------------------------------------------------------------------


class UploadRequest(BaseModel):
    content_type: str = Field(default="video/mp4", pattern=r"^video/[a-z0-9.+-]+$")
    recorded_at: Timestamp | None = Field(
        default=None, description="When the clip was recorded; now if not given"
    )


class UploadGrant(BaseModel):
    """A presigned POST for exactly one object: send a `multipart/form-data` POST to
    `url` with every one of `fields` as a form field, and the clip last, as the field
    `file`. S3 refuses any other key, a body over `max_bytes` (or empty), another
    content type, and any upload once `expires_in` seconds have passed."""

    method: Literal["POST"] = "POST"
    url: str
    fields: dict[str, str] = Field(description="Form fields to send as they are, before `file`")
    bucket: str
    key: str
    max_bytes: int = Field(description="The largest clip this grant takes")
    expires_in: int = Field(description="Seconds the grant stays valid")


# --- customers ------------------------------------------------------------------------


class Clip(BaseModel):
    clip_id: str
    bucket: str
    key: str
    etag: str
    size: int
    tenant: str
    camera: str
    recorded_at: datetime | None
    discovered_at: datetime

    @classmethod
    def of(cls, clip: rows.Clip) -> Clip:
        return cls(
            clip_id=clip.id,
            bucket=clip.bucket,
            key=clip.key,
            etag=clip.etag,
            size=clip.size,
            tenant=clip.tenant,
            camera=clip.camera,
            recorded_at=as_utc(clip.recorded_at) if clip.recorded_at else None,
            discovered_at=as_utc(clip.discovered_at),
        )


class Run(BaseModel):
    run_id: str
    clip_id: str
    pipeline: str
    status: RunStatus
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    algorithms: dict[str, str] | None = Field(
        description="The algorithm version each stage ran (name → name@version)"
    )

    @classmethod
    def of(cls, run: rows.Run) -> Run:
        return cls(
            run_id=run.id,
            clip_id=run.clip_id,
            pipeline=run.pipeline,
            status=run.status,
            error=run.error,
            created_at=as_utc(run.created_at),
            finished_at=as_utc(run.finished_at) if run.finished_at else None,
            algorithms=run.algorithms,
        )


NEXT = "Opaque: pass it as `cursor` for the next page, as is; null on the last page"


class ClipPage(BaseModel):
    items: list[Clip]
    next: str | None = Field(description=NEXT)


class RunPage(BaseModel):
    items: list[Run]
    next: str | None = Field(description=NEXT)


class ClipWithRuns(Clip):
    runs: list[Run]


class RunResult(BaseModel):
    """A finished run's result.json, as written next to its clip: the run's status and
    timings around what its stages published (a stage may add keys of its own)."""

    model_config = ConfigDict(extra="allow")

    clip_id: str
    status: RunStatus
    run_id: str | None = None
    pipeline: str | None = None
    error: str | None = None
    seconds: float | None = None
    source: dict[str, Any] | None = None
    stages: list[dict[str, Any]] | None = None
    frames: list[Any] | None = None
    summary: dict[str, Any] | None = None
    artifacts: dict[str, Any] | None = None


class PendingRun(Run):
    """A run that has not finished: no result.json yet."""

    note: Literal["not finished yet"] = "not finished yet"


class Thumbnail(BaseModel):
    pipeline: str
    kind: Literal["thumbnail"] = "thumbnail"
    t: float = Field(description="Seconds into the clip")
    url: str = Field(description="A presigned GET URL")


class AnonymizedVideo(BaseModel):
    pipeline: str
    kind: Literal["anonymized_video"] = "anonymized_video"
    url: str = Field(description="A presigned GET URL")


class WithheldArtifact(BaseModel):
    """An artifact a result names that is not signed: it is not under that run's own
    results (another tenant's, another clip's or another bucket's object)."""

    pipeline: str
    kind: Literal["withheld"] = "withheld"
    reason: str


Artifact = Annotated[Thumbnail | AnonymizedVideo | WithheldArtifact, Field(discriminator="kind")]


class KeyRevoked(BaseModel):
    """The last event of a stream whose key was revoked."""

    detail: str


# --- authors --------------------------------------------------------------------------


class AlgorithmRegistration(BaseModel):
    manifest: AlgorithmManifest = Field(description="An algorithm.yaml, as JSON")
    image_digest: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    image_digests: dict[Accelerator, Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]] = (
        Field(
            default_factory=dict,
            description="Digests of the accelerators' own images (`accelerators.gpu.image`)",
        )
    )
    tenant: str | None = Field(
        default=None,
        description="The tenant it is registered for: an author's own (the default); "
        "only an admin may name another",
    )


class AlgorithmVersion(BaseModel):
    """A registered version, as `camflow algorithms list --json` prints it too."""

    name: str
    version: str
    channel: Channel
    image: str
    image_digest: str | None
    content_digest: str
    accelerators: dict[Accelerator, dict[str, Any]]
    inputs: list[str]
    optional_inputs: list[str]
    params_schema: dict[str, Any]
    timeout_seconds: int
    retries: int
    source: str | None
    registered_at: datetime
    promoted_at: datetime | None
    image_digests: dict[Accelerator, str]
    tenant: str | None = Field(
        description="The tenant that registered it (its clips alone run it unless "
        "published); null: the operator's, for every tenant"
    )
    published: bool = Field(description="An admin published it: every tenant's clips run it")
    published_at: datetime | None


class RegisteredAlgorithm(AlgorithmVersion):
    created: bool = Field(description="False when this very content was registered before")
