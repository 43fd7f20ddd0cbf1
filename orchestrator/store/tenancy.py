"""What tenancy refused: a pipeline a clip's trigger matched but that may not run on it
(the pipeline does not serve the clip's tenant, or uses an algorithm version of another
tenant that no admin published). Recorded once, with the reason, in the transaction
that plans the clip's runs, so a refusal is never silent and never lost in a crash."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel

from orchestrator.store.models import utcnow


class SkippedRun(SQLModel, table=True):
    __tablename__ = "skipped_runs"

    #: The id the run would have had (clip + pipeline): planning again adds nothing.
    id: str = Field(primary_key=True, max_length=32)
    clip_id: str = Field(foreign_key="clips.id", index=True, max_length=32)
    pipeline: str = Field(max_length=64)
    tenant: str = Field(index=True, max_length=255)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    skipped_at: datetime = Field(default_factory=utcnow, index=True)
