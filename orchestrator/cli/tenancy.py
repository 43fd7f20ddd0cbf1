"""``camflow skipped``: the pipelines tenancy kept off clips, and why."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from orchestrator.cli import output as cli_output
from orchestrator.errors import CamflowError
from orchestrator.store.models import iso

out = Console()
err = Console(stderr=True)


def skipped(
    ctx: typer.Context,
    clip: Annotated[str | None, typer.Option(help="Only this clip's (its id, c-…).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List pipelines whose trigger matched a clip but that may not run on it (the
    pipeline does not serve the clip's tenant, or uses another tenant's unpublished
    algorithm), and why."""
    from orchestrator.cli.main import settings_from
    from orchestrator.store import Store

    try:
        rows = Store(settings_from(ctx).store_url).skipped_runs(limit, clip)
    except CamflowError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=1) from exc
    payload = [
        {
            "clip": row.clip_id,
            "tenant": row.tenant,
            "pipeline": row.pipeline,
            "skipped_at": iso(row.skipped_at),
            "reason": row.reason,
        }
        for row in rows
    ]
    if json_output:
        cli_output.print_json(out, payload)
    elif payload:
        for item in payload:
            out.print(
                f"{item['clip']} (tenant {item['tenant']}): pipeline {item['pipeline']} "
                f"not run, {item['skipped_at']}",
                highlight=False,
            )
            out.print(f"  {item['reason']}", highlight=False, markup=False)
    else:
        out.print("nothing skipped: every pipeline a clip's trigger matched ran on it")
