"""``camflow status``: one screen for an operator: is the engine ticking, is the
watcher finding clips, what the runs did in the last hour, where attempts are in
flight, and why runs failed. Read from the store and the engine's heartbeat; the
summaries are orchestrator.operations' (the operations page's), over one hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from orchestrator.errors import CamflowError
from orchestrator.operations import (
    FailureReason,
    PlacementLoad,
    attempt_load,
    finished_runs,
    top_reasons,
)
from orchestrator.store import Store
from orchestrator.store.models import RunStatus, as_utc

WINDOW = timedelta(hours=1)
#: Failure reasons shown: the screen is one screen.
REASONS = 5


class Engine(BaseModel):
    #: Seconds since `camflow serve`'s engine last finished a tick; None: never here.
    tick_age_seconds: float | None
    healthy: bool
    #: The replica holding the engine's lease, and until when.
    leader: str | None
    lease_expires_at: datetime | None


class Runs(BaseModel):
    queued: int
    running: int
    #: Runs that finished in the last hour, by how.
    succeeded: int
    failed: int
    cancelled: int


class Status(BaseModel):
    now: datetime
    engine: Engine
    #: Seconds since the watcher last recorded a new clip; None: it never did.
    watcher_lag_seconds: float | None
    rejected_objects: int
    runs: Runs
    in_flight: list[PlacementLoad]
    failures: list[FailureReason]


def gather(store: Store, beat_age: float | None, max_age: float, now: datetime) -> Status:
    from orchestrator.leadership import LEASE

    lease = store.lease(LEASE)
    leading = lease is not None and as_utc(lease.expires_at) > now
    active = store.active_run_counts()
    rows, _ = finished_runs(store, now - WINDOW)
    by_status = [str(row[1]) for row in rows]
    newest = store.newest_discovery()
    return Status(
        now=now,
        engine=Engine(
            tick_age_seconds=None if beat_age is None else round(beat_age, 1),
            healthy=beat_age is not None and beat_age <= max_age,
            leader=lease.holder if lease and leading else None,
            lease_expires_at=as_utc(lease.expires_at) if lease and leading else None,
        ),
        watcher_lag_seconds=None if newest is None else _seconds(now - as_utc(newest)),
        rejected_objects=store.count_rejected(),
        runs=Runs(
            queued=active.get(RunStatus.PENDING, 0),
            running=active.get(RunStatus.RUNNING, 0),
            succeeded=by_status.count(RunStatus.SUCCEEDED),
            failed=by_status.count(RunStatus.FAILED),
            cancelled=by_status.count(RunStatus.CANCELLED),
        ),
        in_flight=attempt_load(store),
        failures=top_reasons(
            ((row[0], row[3], row[2]) for row in rows if str(row[1]) == RunStatus.FAILED),
            limit=REASONS,
        ),
    )


def _seconds(delta: timedelta) -> float:
    return round(delta.total_seconds(), 1)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.1f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render(status: Status) -> Group:
    engine = status.engine
    state = "[green]ticking[/]" if engine.healthy else "[red]not ticking[/]"
    leader = f"; leader {engine.leader}" if engine.leader else "; no replica holds the lease"
    runs = status.runs
    lines: list[RenderableType] = [
        Text.from_markup(
            f"[bold]engine[/]     {state}: last tick {_ago(engine.tick_age_seconds)}{leader}"
        ),
        Text.from_markup(
            f"[bold]watcher[/]    last new clip found {_ago(status.watcher_lag_seconds)}; "
            f"{status.rejected_objects} object(s) rejected"
        ),
        Text.from_markup(
            f"[bold]runs[/]       {runs.queued} queued, {runs.running} running; last hour: "
            f"[green]{runs.succeeded} succeeded[/], [red]{runs.failed} failed[/], "
            f"{runs.cancelled} cancelled"
        ),
    ]
    if status.in_flight:
        table = Table(title="attempts in flight", title_justify="left")
        for column in ("placement", "accelerator", "queued", "running"):
            table.add_column(
                column, justify="left" if column in ("placement", "accelerator") else "right"
            )
        for row in status.in_flight:
            table.add_row(row.placement, row.accelerator, str(row.queued), str(row.running))
        lines.append(table)
    else:
        lines.append(Text.from_markup("[bold]in flight[/]  no stage attempts"))
    if status.failures:
        lines.append(Text.from_markup("[bold]failures in the last hour[/]"))
        for reason in status.failures:
            lines.append(
                Text(
                    f"  {reason.count} x {reason.reason}",
                    style="red",
                    overflow="ellipsis",
                    no_wrap=True,
                )
            )
    return Group(*lines)


def status(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """One screen for operators: engine heartbeat, watcher lag, runs queued and running
    and those finished in the last hour, attempts in flight per cluster and
    accelerator, and the commonest recent failure reasons."""
    from orchestrator.cli import output as cli_output
    from orchestrator.cli.main import _fail, out, settings_from
    from orchestrator.service import heartbeat_age

    try:
        settings = settings_from(ctx)
        store = Store(settings.store_url)
        summary = gather(
            store,
            heartbeat_age(settings.home),
            settings.api.ready_max_age_seconds,
            datetime.now(UTC),
        )
        store.close()
    except CamflowError as exc:
        raise _fail(exc) from exc
    if json_output:
        cli_output.print_json(out, summary.model_dump(mode="json"))
    else:
        out.print(render(summary))
