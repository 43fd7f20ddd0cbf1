"""Webhook tables: tenants' endpoints, and the outbox of deliveries to them.

The outbox row is written in the transaction that finishes a run (``enqueue_run_event``),
so an event is never lost between the run's end and its delivery, and a restart finds
every delivery still to make. The body is not stored: it is rendered from the finished
run and its clip, which never change again, so every attempt sends the same bytes.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, bindparam, cast, literal, select
from sqlalchemy.sql import Insert
from sqlmodel import Field, SQLModel, col, insert

from orchestrator.store.models import Clip, Run, RunStatus, utcnow

#: The events an endpoint may ask for: a run's end, by its outcome.
RUN_EVENTS = {RunStatus.SUCCEEDED: "run.succeeded", RunStatus.FAILED: "run.failed"}
EVENT_TYPES = tuple(RUN_EVENTS.values())


class DeliveryState(StrEnum):
    #: To be sent (again) at ``next_attempt_at``.
    PENDING = "pending"
    DELIVERED = "delivered"
    #: Retried until the horizon and never accepted: listed for replay.
    FAILED = "failed"


class WebhookEndpoint(SQLModel, table=True):
    """A tenant's URL and the events it wants. The secret is kept as is, because the
    server must sign with it; it is shown once, when the endpoint is made, and is
    never logged or listed."""

    __tablename__ = "webhook_endpoints"

    id: str = Field(primary_key=True, max_length=32)  # ep_<hex>
    tenant: str = Field(index=True, max_length=255)
    url: str = Field(max_length=2048)
    #: Names from EVENT_TYPES; matched in SQL by their quoted form (see enqueue_run_event).
    events: list[str] = Field(sa_column=Column(JSON, nullable=False))
    secret: str = Field(max_length=128)  # whsec_<base64>
    description: str = Field(default="", max_length=255)
    created_at: datetime = Field(default_factory=utcnow)


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint: its ``id`` is the ``webhook-id`` header, the same on
    every attempt and on a replay, so a receiver can drop what it has seen."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # The worker's query: pending deliveries that are due, oldest first.
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        # A tenant's deliveries, newest first (the API and the CLI list them).
        Index("ix_webhook_deliveries_tenant", "tenant", "created_at"),
        # The prune: delivered ones older than the settings keep, a range not a scan.
        Index("ix_webhook_deliveries_delivered", "state", "delivered_at"),
    )

    id: str = Field(primary_key=True, max_length=96)  # msg_<run id>_<endpoint id>
    endpoint_id: str = Field(foreign_key="webhook_endpoints.id", index=True, max_length=32)
    tenant: str = Field(max_length=255)
    event_type: str = Field(max_length=64)
    run_id: str = Field(foreign_key="runs.id", max_length=32)
    state: DeliveryState = Field(default=DeliveryState.PENDING, max_length=16)
    #: Attempts since it was queued, or last replayed.
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    #: Retries stop once a retry would come later than horizon after this: the
    #: enqueueing, or the last replay.
    window_started_at: datetime = Field(default_factory=utcnow)
    next_attempt_at: datetime = Field(default_factory=utcnow)
    #: A replica sending it holds it until then (and ``claim`` names that send): a
    #: replica that dies mid-send leaves it to be taken again once this has passed.
    claimed_until: datetime | None = None
    claim: str | None = Field(default=None, max_length=32)
    last_attempt_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    delivered_at: datetime | None = None


def enqueue_run_event(run_id: str, status: RunStatus, at: datetime) -> Insert | None:
    """The one statement that queues a finished run's event for each endpoint of its
    tenant that asked for it: an INSERT ... SELECT that inserts nothing (one probe of
    the endpoints' tenant index) when the tenant has none, so finishing a run costs
    one statement more whatever the webhooks. None for an outcome no event names."""
    event = RUN_EVENTS.get(status)
    if event is None:
        return None
    table = WebhookDelivery.__table__  # type: ignore[attr-defined]
    return _enqueue(event, literal(run_id), literal(at, type_=table.c.next_attempt_at.type))


def enqueue_run_events(status: RunStatus) -> Insert | None:
    """``enqueue_run_event`` for any run, with the run and time as bind parameters
    (``run_id``, ``at``): one statement to prepare once and send for many runs."""
    event = RUN_EVENTS.get(status)
    if event is None:
        return None
    table = WebhookDelivery.__table__  # type: ignore[attr-defined]
    return _enqueue(
        event,
        bindparam("run_id", type_=table.c.run_id.type),
        bindparam("at", type_=table.c.next_attempt_at.type),
    )


def _enqueue(event: str, run_id: Any, at: Any) -> Insert:
    endpoint = WebhookEndpoint
    tenant = (
        select(col(Clip.tenant))
        .join(Run, col(Run.clip_id) == col(Clip.id))
        .where(col(Run.id) == run_id)
        .scalar_subquery()
    )
    # JSON has no portable "contains" in SQL; the stored list's text holds each name in
    # double quotes, and names are from EVENT_TYPES (no quotes, no wildcards).
    wanted = cast(col(endpoint.events), Text).like(f'%"{event}"%')
    table = WebhookDelivery.__table__  # type: ignore[attr-defined]
    # Typed as the columns are, so that the state is stored as the ORM stores it.
    state_type = table.c.state.type
    values: dict[str, Any] = {
        "id": literal("msg_").concat(run_id).concat("_").concat(col(endpoint.id)),
        "endpoint_id": col(endpoint.id),
        "tenant": col(endpoint.tenant),
        "event_type": literal(event),
        "run_id": run_id,
        "state": literal(DeliveryState.PENDING, type_=state_type),
        "attempts": literal(0),
        "created_at": at,
        "window_started_at": at,
        "next_attempt_at": at,
    }
    rows = select(*values.values()).where(col(endpoint.tenant) == tenant, wanted)
    return insert(WebhookDelivery).from_select(list(values), rows)
