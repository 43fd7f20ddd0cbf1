"""``camflow export``: a camera's detections over a time range, as ``GET /v1/exports``
streams them, read straight from the store (an operator's command: any tenant)."""

from __future__ import annotations

import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import TypeAdapter, ValidationError

from orchestrator.errors import CamflowError
from orchestrator.exports import ExportQuery, camera_known, count_runs, export_lines
from orchestrator.exports.lines import ExportFormat


class Format(StrEnum):
    jsonl = "jsonl"
    csv = "csv"


def _time(option: str, text: str | None) -> datetime | None:
    from orchestrator.api.schemas import Timestamp

    if text is None:
        return None
    try:
        return TypeAdapter(Timestamp).validate_python(text)
    except ValidationError as exc:
        why = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise CamflowError(f"{option} {text!r}: {why}") from None


def export(
    ctx: typer.Context,
    tenant: Annotated[str, typer.Option(help="The tenant whose camera it is.")],
    camera: Annotated[str, typer.Option(help="The camera.")],
    since: Annotated[
        str | None,
        typer.Option(help="Clips recorded at or after this RFC 3339 time (with an offset)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Clips recorded before this RFC 3339 time.")
    ] = None,
    fmt: Annotated[
        Format, typer.Option("--format", help="jsonl: a JSON object a line; csv: a header row.")
    ] = Format.jsonl,
    pipeline: Annotated[str | None, typer.Option(help="Only this pipeline's runs.")] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="A file to write, or - for standard output.")
    ] = "-",
) -> None:
    """Export a camera's detections over a time range: a line per detection, and one
    with empty detection fields for a frame where nothing was found (as GET /v1/exports).
    Streams run by run, so memory stays flat however long the range."""
    from orchestrator.cli.main import _fail, _progress, settings_from
    from orchestrator.store import Store

    chosen: ExportFormat = fmt.value  # type: ignore[assignment]
    try:
        query = ExportQuery(
            tenant=tenant,
            camera=camera,
            since=_time("--since", since),
            until=_time("--until", until),
            pipeline=pipeline,
        )
        store = Store(settings_from(ctx).store_url)
        if not camera_known(store, tenant, camera):
            raise CamflowError(
                f"no camera {camera!r} in tenant {tenant!r}: it has uploaded nothing"
            )
        if output == "-":
            for chunk in export_lines(store, query, chosen):
                sys.stdout.write(chunk)
            sys.stdout.flush()
            return
        target = Path(output)
        # Written aside and renamed when complete: a file by the name asked for is
        # always a whole export, never what an interrupted one left.
        partial = target.with_name(target.name + ".partial")
        with _progress() as progress, partial.open("w", encoding="utf-8", newline="") as sink:
            task = progress.add_task(f"{camera}: exporting runs", total=count_runs(store, query))
            for chunk in export_lines(store, query, chosen, on_run=lambda: progress.advance(task)):
                sink.write(chunk)
        partial.replace(target)
    except (CamflowError, OSError) as exc:
        raise _fail(exc) from exc
