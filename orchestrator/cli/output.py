"""Rendering for the CLI: tables for people, JSON for scripts."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from orchestrator.store import Clip, Run
from orchestrator.store.models import as_utc, iso


def faces_found(result: dict[str, Any]) -> int | None:
    summary = result.get("summary") or {}
    labels = summary.get("labels") or {}
    if not result.get("frames") and not summary:
        return None
    return int(labels.get("face", 0))


def result_row(name: str, result: dict[str, Any]) -> list[str | Text]:
    summary = result.get("summary") or {}
    faces = faces_found(result)
    status = str(result.get("status", "?"))
    colour = {"succeeded": "green", "failed": "red"}.get(status, "yellow")
    return [
        Text(name),  # a file or key name: text, not markup
        Text(status, style=colour),
        str(summary.get("frames", "-")),
        "-" if faces is None else str(faces),
        f"{result.get('seconds', 0):.1f}",
    ]


def results_table(rows: list[tuple[str, dict[str, Any]]], title: str | None = None) -> Group:
    """A row per clip; errors follow the table in full, as they are too long for a cell."""
    table = Table(title=title)
    for column in ("clip", "status", "frames", "faces", "seconds"):
        table.add_column(column, overflow="fold", justify="left" if column == "clip" else "right")
    errors = []
    for name, result in rows:
        table.add_row(*result_row(name, result))
        if result.get("error"):
            errors.append(Text(f"{name}: {result['error']}", style="red"))
    return Group(table, *errors)


def runs_table(rows: list[tuple[Run, Clip]]) -> Group:
    table = Table()
    for column in ("clip", "key", "pipeline", "status", "created"):
        table.add_column(column, no_wrap=column != "key", overflow="fold")
    errors = []
    for run, clip in rows:
        # Text, not markup: a camera chose the key's name ("[/]" is a valid S3 key).
        table.add_row(
            clip.id,
            Text(clip.key),
            run.pipeline,
            str(run.status),
            as_utc(run.created_at).strftime("%Y-%m-%d %H:%M:%S"),
        )
        if run.error:
            errors.append(Text(f"{clip.id} {run.pipeline}: {run.error}", style="red"))
    return Group(table, *errors)


def run_json(run: Run, clip: Clip) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "clip_id": clip.id,
        "bucket": clip.bucket,
        "key": clip.key,
        "tenant": clip.tenant,
        "camera": clip.camera,
        "pipeline": run.pipeline,
        "status": str(run.status),
        "error": run.error,
        "created_at": iso(run.created_at),
        "finished_at": iso(run.finished_at),
        "result_uri": run.result_uri,
    }


def print_json(console: Console, payload: Any) -> None:
    console.file.write(json.dumps(payload, indent=2, default=str) + "\n")
    console.file.flush()
