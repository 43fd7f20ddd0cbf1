"""``camflow keys ...``: API keys for cameras, customers, authors and admins."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from orchestrator.api import keys
from orchestrator.cli import output as cli_output
from orchestrator.domain.layout import NAME
from orchestrator.errors import CamflowError
from orchestrator.store import Store
from orchestrator.store.models import Role, iso

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


def _store(ctx: typer.Context) -> Store:
    from orchestrator.cli.main import settings_from

    return Store(settings_from(ctx).store_url)


@app.command()
def create(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    role: Annotated[Role, typer.Option(help="camera, customer, author or admin.")],
    camera: Annotated[str | None, typer.Option(help="For camera keys: its camera.")] = None,
    name: Annotated[str, typer.Option(help="A note on what the key is for.")] = "",
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Create a key. Its text is shown once: only a hash is kept."""
    for label, value in (("tenant", tenant), ("camera", camera)):
        if value is not None and not NAME.fullmatch(value):
            err.print(f"[red]error:[/] {label} {value!r}: use 1-63 letters, digits, '-' or '_'")
            raise typer.Exit(code=1)
    try:
        row, text = keys.create_key(_store(ctx), tenant, role, camera, name)
    except CamflowError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=1) from exc
    if json_output:
        cli_output.print_json(
            out,
            {
                "id": row.id,
                "tenant": row.tenant,
                "role": str(row.role),
                "camera": row.camera,
                "key": text,
            },
        )
        return
    out.print(text, markup=False, highlight=False)
    err.print(
        f"key {row.id}: {row.role} of tenant {row.tenant}"
        + (f", camera {row.camera}" if row.camera else "")
        + ". Store it now: it is not shown again."
    )


@app.command("list")
def list_(
    ctx: typer.Context,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List keys (never their secrets)."""
    rows = _store(ctx).api_keys(tenant)
    payload = [
        {
            "id": r.id,
            "name": r.name,
            "tenant": r.tenant,
            "role": str(r.role),
            "camera": r.camera,
            "created_at": iso(r.created_at),
            "revoked_at": iso(r.revoked_at),
        }
        for r in rows
    ]
    if json_output:
        cli_output.print_json(out, payload)
        return
    table = Table()
    for column in ("id", "tenant", "role", "camera", "name", "created", "revoked"):
        table.add_column(column)
    for item in payload:
        table.add_row(
            item["id"],
            item["tenant"],
            item["role"],
            item["camera"] or "",
            item["name"],
            item["created_at"] or "",
            item["revoked_at"] or "",
        )
    out.print(table)


@app.command()
def revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id (from `camflow keys list`).")],
) -> None:
    """Revoke a key: it stops working at once."""
    if not keys.revoke(_store(ctx), key_id):
        err.print(f"[red]error:[/] no live key {key_id!r}")
        raise typer.Exit(code=1)
    out.print(f"revoked {key_id}")
