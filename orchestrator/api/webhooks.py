"""Webhook endpoints and deliveries over HTTP, for customers (their tenant's) and
admins (every tenant's). An endpoint's secret is in the answer that creates it and in
no other; another tenant's endpoint or delivery answers as one that does not exist.

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations,
and ``Caller`` is local to ``router``."""

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from orchestrator.api.cursors import CURSOR_MAX_LENGTH, CURSOR_PATTERN, page_after, page_cursor
from orchestrator.api.problems import Problem, problems
from orchestrator.domain.layout import NAME
from orchestrator.settings import WebhookSettings
from orchestrator.store import ApiKey, Store
from orchestrator.store.models import Role, as_utc
from orchestrator.store.webhooks import EVENT_TYPES, DeliveryState, WebhookDelivery, WebhookEndpoint
from orchestrator.webhooks.delivery import policy_of
from orchestrator.webhooks.outbox import EndpointLimit, Outbox
from orchestrator.webhooks.targets import MAX_URL_LENGTH, Resolver, TargetRefused, check, resolve

#: The names in orchestrator.store.webhooks.EVENT_TYPES (a test keeps them equal).
EventType = Literal["run.succeeded", "run.failed"]
ALL_EVENTS: tuple[EventType, ...] = ("run.succeeded", "run.failed")


class EndpointRequest(BaseModel):
    url: str = Field(
        max_length=MAX_URL_LENGTH,
        pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://",
        description="Where deliveries are POSTed: https:// (or http://), a public address",
        examples=["https://hooks.example.com/camflow"],
    )
    events: list[EventType] = Field(
        default_factory=lambda: list(ALL_EVENTS),
        min_length=1,
        max_length=len(EVENT_TYPES),
        description="The events to deliver; all of them if not given",
    )
    description: str = Field(default="", max_length=255)
    tenant: str | None = Field(
        default=None,
        pattern=NAME.pattern,
        description="Admins only: the tenant whose endpoint this is (default: the key's)",
    )


class Endpoint(BaseModel):
    endpoint_id: str
    tenant: str
    url: str
    events: list[str]
    description: str
    created_at: datetime

    @classmethod
    def of(cls, row: WebhookEndpoint) -> "Endpoint":
        return cls(
            endpoint_id=row.id,
            tenant=row.tenant,
            url=row.url,
            events=list(row.events),
            description=row.description,
            created_at=as_utc(row.created_at),
        )


class CreatedEndpoint(Endpoint):
    secret: str = Field(
        description="Verifies deliveries (`whsec_…`, Standard Webhooks). Shown only here: "
        "store it now"
    )


class Delivery(BaseModel):
    delivery_id: str = Field(description="The `webhook-id` header: the same on every attempt")
    endpoint_id: str
    event_type: str
    run_id: str
    state: Literal["pending", "delivered", "failed"]
    attempts: int = Field(description="Attempts since it was queued, or last replayed")
    created_at: datetime
    next_attempt_at: datetime | None = Field(
        description="When it is tried next; null unless pending"
    )
    last_attempt_at: datetime | None
    last_status: int | None = Field(description="The HTTP status the endpoint last answered")
    last_error: str | None
    delivered_at: datetime | None

    @classmethod
    def of(cls, row: WebhookDelivery) -> "Delivery":
        def at(value: datetime | None) -> datetime | None:
            return as_utc(value) if value else None

        pending = row.state == DeliveryState.PENDING
        return cls(
            delivery_id=row.id,
            endpoint_id=row.endpoint_id,
            event_type=row.event_type,
            run_id=row.run_id,
            state=DeliveryState(row.state).value,  # type: ignore[arg-type]
            attempts=row.attempts,
            created_at=as_utc(row.created_at),
            next_attempt_at=at(row.next_attempt_at) if pending else None,
            last_attempt_at=at(row.last_attempt_at),
            last_status=row.last_status,
            last_error=row.last_error,
            delivered_at=at(row.delivered_at),
        )


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next: str | None = Field(
        description="Opaque: pass it as `cursor` for the next page, as is; null on the last page"
    )


def router(
    store: Store,
    settings: WebhookSettings,
    caller: Callable[..., ApiKey],
    clock: Callable[[], datetime],
    resolver: Resolver = resolve,
) -> APIRouter:
    outbox = Outbox(store)
    policy = policy_of(settings)
    routes = APIRouter(tags=["webhooks"])
    Caller = Annotated[ApiKey, Depends(caller)]

    def scope(key: ApiKey) -> str | None:
        """The tenant whose webhooks this key manages; None: an admin's, every one."""
        if key.role not in (Role.CUSTOMER, Role.ADMIN):
            raise Problem(403, f"a {key.role} key cannot manage webhooks; use a customer key")
        return None if key.role == Role.ADMIN else key.tenant

    @routes.post("/v1/webhook-endpoints", status_code=201, responses=problems(400, 401, 403, 422))
    def create_endpoint(body: EndpointRequest, key: Caller) -> CreatedEndpoint:
        """Registers a URL for the events named. The answer holds the endpoint's secret,
        which no other answer shows: a receiver verifies each delivery with it."""
        tenant = scope(key) or body.tenant or key.tenant
        if body.tenant is not None and body.tenant != tenant:
            raise Problem(403, "only an admin key registers endpoints for another tenant")
        try:
            check(body.url, policy, resolver)
        except TargetRefused as exc:
            raise Problem(400, str(exc)) from None
        try:
            row = outbox.add_endpoint(tenant, body.url, body.events, body.description, clock())
        except EndpointLimit as exc:
            raise Problem(400, str(exc)) from None
        return CreatedEndpoint(**Endpoint.of(row).model_dump(), secret=row.secret)

    @routes.get("/v1/webhook-endpoints", responses=problems(401, 403))
    def list_endpoints(key: Caller) -> list[Endpoint]:
        """Your tenant's endpoints (an admin's: every tenant's), never their secrets."""
        return [Endpoint.of(row) for row in outbox.endpoints(scope(key))]

    @routes.delete(
        "/v1/webhook-endpoints/{endpoint_id}",
        status_code=204,
        response_class=Response,
        responses=problems(401, 403, 404),
    )
    def delete_endpoint(endpoint_id: str, key: Caller) -> Response:
        """Removes the endpoint and its deliveries: nothing more is sent to it."""
        if not outbox.remove_endpoint(endpoint_id, scope(key)):
            raise Problem(404, f"no webhook endpoint {endpoint_id!r} in your tenant")
        return Response(status_code=204)

    @routes.get("/v1/webhook-deliveries", responses=problems(400, 401, 403, 422))
    def list_deliveries(
        key: Caller,
        state: Literal["pending", "delivered", "failed"] | None = None,
        endpoint: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[
            str | None,
            Query(
                description="Opaque: the `next` of the previous page, as is.",
                max_length=CURSOR_MAX_LENGTH,
                pattern=CURSOR_PATTERN,
            ),
        ] = None,
    ) -> DeliveryPage:
        """Deliveries, newest first: `state=failed` lists those that were retried until
        the horizon and can be replayed."""
        found = outbox.deliveries(
            scope(key),
            DeliveryState(state) if state else None,
            endpoint,
            page_after(cursor),
            limit,
        )
        last = found[-1] if len(found) == limit else None
        return DeliveryPage(
            items=[Delivery.of(row) for row in found],
            next=page_cursor(as_utc(last.created_at), last.id) if last else None,
        )

    @routes.post(
        "/v1/webhook-deliveries/{delivery_id}/replay",
        status_code=202,
        responses=problems(401, 403, 404),
    )
    def replay_delivery(delivery_id: str, key: Caller) -> Delivery:
        """Sends a delivery again, with the same `webhook-id`, now and with a new day
        of retries: for failed ones, or any a receiver lost."""
        row = outbox.replay(delivery_id, clock(), scope(key))
        if row is None:
            raise Problem(404, f"no webhook delivery {delivery_id!r} in your tenant")
        return Delivery.of(row)

    return routes
