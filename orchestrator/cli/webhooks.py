"""``camflow webhooks ...``: tenants' webhook endpoints and their deliveries, on the
store directly (the operator's view; customers use the API)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from orchestrator.cli import output as cli_output
from orchestrator.domain.layout import NAME
from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.models import iso, utcnow
from orchestrator.store.webhooks import EVENT_TYPES, DeliveryState, WebhookDelivery
from orchestrator.webhooks.delivery import policy_of
from orchestrator.webhooks.outbox import EndpointLimit, Outbox
from orchestrator.webhooks.targets import TargetRefused, check

app = typer.Typer(
    help="Signed webhooks: register endpoints, list and replay deliveries.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)
JsonOption = Annotated[bool, typer.Option("--json", help="Print as JSON.")]


def _open(ctx: typer.Context) -> tuple[Settings, Outbox]:
    from orchestrator.cli.main import settings_from

    settings = settings_from(ctx)
    return settings, Outbox(Store(settings.store_url))


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/] {escape(message)}", markup=True, highlight=False)
    return typer.Exit(code=1)


def _delivery_json(row: WebhookDelivery) -> dict[str, Any]:
    pending = row.state == DeliveryState.PENDING
    return {
        "id": row.id,
        "endpoint_id": row.endpoint_id,
        "tenant": row.tenant,
        "event_type": row.event_type,
        "run_id": row.run_id,
        "state": DeliveryState(row.state).value,
        "attempts": row.attempts,
        "created_at": iso(row.created_at),
        "next_attempt_at": iso(row.next_attempt_at) if pending else None,
        "last_attempt_at": iso(row.last_attempt_at),
        "last_status": row.last_status,
        "last_error": row.last_error,
        "delivered_at": iso(row.delivered_at),
    }


@app.command()
def add(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="Where deliveries are POSTed (https://…).")],
    tenant: Annotated[str, typer.Option(help="The tenant whose runs it hears about.")],
    event: Annotated[
        list[str] | None,
        typer.Option(
            help=f"An event to deliver, repeatable: {', '.join(EVENT_TYPES)} (default: all)."
        ),
    ] = None,
    description: Annotated[str, typer.Option(help="A note on what it is for.")] = "",
    json_output: JsonOption = False,
) -> None:
    """Register an endpoint. Its secret is printed once: the receiver verifies each
    delivery with it (Standard Webhooks)."""
    if not NAME.fullmatch(tenant):
        raise _fail(f"tenant {tenant!r}: use 1-63 letters, digits, '-' or '_'")
    events = event or list(EVENT_TYPES)
    if unknown := sorted(set(events) - set(EVENT_TYPES)):
        raise _fail(f"no event {', '.join(unknown)}: choose from {', '.join(EVENT_TYPES)}")
    settings, outbox = _open(ctx)
    try:
        check(url, policy_of(settings.webhooks))
        row = outbox.add_endpoint(tenant, url, events, description, utcnow())
    except (TargetRefused, EndpointLimit) as exc:
        raise _fail(str(exc)) from exc
    if json_output:
        cli_output.print_json(
            out,
            {
                "id": row.id,
                "tenant": row.tenant,
                "url": row.url,
                "events": row.events,
                "secret": row.secret,
            },
        )
        return
    out.print(row.secret, markup=False, highlight=False)
    err.print(
        f"endpoint {row.id} of tenant {row.tenant}: {', '.join(row.events)} to {row.url}. "
        "The line above is its secret: store it now, it is not shown again.",
        markup=False,
        highlight=False,
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's endpoints.")] = None,
    json_output: JsonOption = False,
) -> None:
    """List endpoints (never their secrets)."""
    _, outbox = _open(ctx)
    payload: list[dict[str, Any]] = [
        {
            "id": r.id,
            "tenant": r.tenant,
            "url": r.url,
            "events": list(r.events),
            "description": r.description,
            "created_at": iso(r.created_at),
        }
        for r in outbox.endpoints(tenant)
    ]
    if json_output:
        cli_output.print_json(out, payload)
        return
    table = Table()
    for column in ("id", "tenant", "url", "events", "description", "created"):
        table.add_column(column, overflow="fold")
    for item in payload:
        # Text, not markup: a tenant wrote the URL and description.
        table.add_row(
            *map(
                Text,
                (
                    item["id"],
                    item["tenant"],
                    item["url"],
                    ", ".join(item["events"]),
                    item["description"],
                    item["created_at"] or "",
                ),
            )
        )
    out.print(table)


@app.command()
def remove(
    ctx: typer.Context,
    endpoint_id: Annotated[
        str, typer.Argument(help="The endpoint's id (`camflow webhooks list`).")
    ],
) -> None:
    """Remove an endpoint and its deliveries: nothing more is sent to it."""
    _, outbox = _open(ctx)
    if not outbox.remove_endpoint(endpoint_id):
        raise _fail(f"no webhook endpoint {endpoint_id!r}: `camflow webhooks list` shows them")
    out.print(f"removed {endpoint_id}", markup=False)


@app.command()
def deliveries(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's deliveries.")] = None,
    state: Annotated[
        DeliveryState | None,
        typer.Option(help="pending, delivered or failed (retried for a day; replay them)."),
    ] = None,
    endpoint: Annotated[str | None, typer.Option(help="Only this endpoint's deliveries.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 50,
    json_output: JsonOption = False,
) -> None:
    """List deliveries, newest first, with their attempts and last error."""
    _, outbox = _open(ctx)
    payload = [_delivery_json(r) for r in outbox.deliveries(tenant, state, endpoint, None, limit)]
    if json_output:
        cli_output.print_json(out, payload)
        return
    table = Table()
    for column in ("id", "tenant", "event", "state", "attempts", "next / delivered", "last error"):
        table.add_column(column, overflow="fold")
    for item in payload:
        # Text, not markup: the last error quotes what the receiver answered.
        table.add_row(
            *map(
                Text,
                (
                    item["id"],
                    item["tenant"],
                    item["event_type"],
                    item["state"],
                    str(item["attempts"]),
                    item["next_attempt_at"] or item["delivered_at"] or "",
                    item["last_error"] or "",
                ),
            )
        )
    out.print(table)


@app.command()
def replay(
    ctx: typer.Context,
    delivery_id: Annotated[
        str, typer.Argument(help="The delivery's id (`camflow webhooks deliveries`).")
    ],
) -> None:
    """Send a delivery again (same webhook-id), now, with a new day of retries."""
    _, outbox = _open(ctx)
    if outbox.replay(delivery_id, utcnow()) is None:
        raise _fail(
            f"no webhook delivery {delivery_id!r}: `camflow webhooks deliveries` lists them"
        )
    out.print(f"replaying {delivery_id}: `camflow serve` sends it at its next look")
