"""The ``camflow`` command line."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator.cli import output as cli_output
from orchestrator.errors import CamflowError
from orchestrator.settings import Settings, load_settings

app = typer.Typer(
    help="camflow: run video-analytics pipelines on every clip your cameras upload to S3.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


@dataclass(frozen=True)
class Options:
    """What the global options said, handed to each command through typer's context."""

    config: Path | None = None
    log_level: str | None = None


def settings_from(ctx: typer.Context, **overrides: Any) -> Settings:
    """Settings as the global options (``--config``, ``--log-level``) say."""
    options: Options = ctx.obj or Options()
    if options.log_level:
        overrides.setdefault("log_level", options.log_level)
    return load_settings(options.config, **overrides)


def _setup_logging(level: str, quiet: bool = False, log_format: str = "text") -> None:
    handler: logging.Handler
    if log_format == "json":
        from orchestrator.logs import JsonFormatter

        # One object per line, terminal or not: log pipelines read it either way.
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
    elif err.is_terminal:
        handler = RichHandler(console=err, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("camflow").setLevel("WARNING" if quiet else level.upper())


def quiet_logging(level: str, log_format: str = "text") -> None:
    """For commands that show progress: only warnings and errors get through."""
    _setup_logging(level, quiet=True, log_format=log_format)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/] {exc}")
    return typer.Exit(code=1)


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML config file (default: $CAMFLOW_CONFIG or ./camflow.yaml).",
            envvar="CAMFLOW_CONFIG",
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")
    ] = None,
) -> None:
    ctx.obj = Options(config, log_level)


@app.command()
def serve(
    ctx: typer.Context,
    host: str | None = typer.Option(
        None, "--host", help="Address the API listens on (default: api.host, 127.0.0.1)."
    ),
    port: int | None = typer.Option(
        None, "--port", min=0, max=65535, help="Port of the API (default: api.port, 8080)."
    ),
) -> None:
    """Watch S3 for new clips and run their pipelines until interrupted (Ctrl-C)."""
    from orchestrator.service import Service, open_runtime

    try:
        settings = settings_from(ctx)
        given = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
        if given:
            settings = settings.model_copy(update={"api": settings.api.model_copy(update=given)})
        _setup_logging(settings.log_level, log_format=settings.log_format)
        runtime = open_runtime(settings, durable_s3=True)
    except CamflowError as exc:
        raise _fail(exc) from exc
    stop = threading.Event()
    # Explicit handlers: a shell may start us with SIGINT ignored (a background job).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    service = Service(runtime)
    log = logging.getLogger("camflow.service")
    log.info(
        "serving: store %s, S3 %s, pipelines %s; stages run as local processes "
        "(at most %d at once)",
        settings.store_url_shown,
        runtime.s3.access.endpoint_url or "AWS",
        sorted(runtime.catalog.pipelines),
        settings.local.max_parallel,
    )
    if runtime.embedded:
        log.info(
            "upload clips to s3://%s/<tenant>/<camera>/... at %s",
            settings.s3.ingest_bucket,
            runtime.embedded.endpoint_url,
        )
    service.start()
    api = start_api(runtime) if settings.api.enabled else None
    try:
        stop.wait()
    finally:
        if api is not None:
            api.should_exit = True
        if runtime.embedded:
            log.info(
                "stopping: the embedded S3 keeps its objects in %s for the next start",
                runtime.embedded.directory,
            )
        else:
            log.info("stopping: running stages keep going and are picked up at the next start")
        service.stop()
        runtime.close()


def start_api(runtime: Any) -> Any:
    """The HTTP API in a thread of this process (uvicorn); returns its server."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from orchestrator.api.app import create_app

    settings = runtime.settings
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(runtime),
            host=settings.api.host,
            port=settings.api.port,
            log_level="warning",
            access_log=False,
            # JSON logs: uvicorn's own lines go through camflow's handler, not its own.
            log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
        )
    )
    threading.Thread(target=server.run, name="api", daemon=True).start()
    logging.getLogger("camflow.api").info(
        "API at http://%s:%d (OpenAPI at /openapi.json)", settings.api.host, settings.api.port
    )
    return server


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


@app.command()
def process(
    ctx: typer.Context,
    pipeline: Annotated[str, typer.Argument(help="Pipeline name, e.g. faces.")],
    files: Annotated[
        list[Path],
        typer.Argument(help="Video files to process.", exists=True, dir_okay=False, readable=True),
    ],
    json_output: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    tenant: Annotated[str, typer.Option(help="Tenant the clips are filed under.")] = "local",
    camera: Annotated[str, typer.Option(help="Camera the clips are filed under.")] = "cli",
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Where each clip's result.json and artifacts (videos, "
            "thumbnails) are saved, in a folder per clip.",
        ),
    ] = Path("camflow-output"),
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 3600,
) -> None:
    """Run PIPELINE once on local FILES through the same engine, and print the results."""
    from orchestrator.cli.oneshot import process_files

    try:
        settings = settings_from(ctx)
        _setup_logging(settings.log_level, quiet=True, log_format=settings.log_format)
        with _progress() as progress:
            task = progress.add_task(f"{pipeline}: processing", total=len(files))
            results = process_files(
                settings,
                pipeline,
                files,
                tenant,
                camera,
                timeout,
                on_progress=lambda done: progress.update(task, completed=done),
                out_dir=out_dir.resolve(),
            )
    except (CamflowError, KeyError, TimeoutError) as exc:
        raise _fail(exc) from exc
    if json_output:
        cli_output.print_json(out, results)
    else:
        out.print(cli_output.results_table([(r["clip"], r) for r in results]))
    err.print(f"results and artifacts saved under {out_dir}/<clip-id>/")
    if any(r["status"] != "succeeded" for r in results):
        raise typer.Exit(code=3)


@app.command()
def demo(
    ctx: typer.Context,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where the demo keeps its store, logs and results.")
    ] = Path("camflow-demo"),
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900,
) -> None:
    """Make real H.264 sample clips, upload them as cameras would, and watch camflow
    find the faces in them: embedded S3, SQLite and local processes, nothing else."""
    from orchestrator.cli.demo import run_demo

    try:
        settings = settings_from(ctx, home=out_dir.resolve())
        _setup_logging(settings.log_level, quiet=True, log_format=settings.log_format)
        run_demo(settings, out, err, _progress, timeout)
    except (CamflowError, TimeoutError) as exc:
        raise _fail(exc) from exc


@app.command()
def runs(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Only runs of this pipeline.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only clips of this tenant.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List recent runs and their status."""
    from orchestrator.store import Store

    try:
        store = Store(settings_from(ctx).store_url)
        rows = store.list_runs(status, pipeline, tenant, limit)
    except CamflowError as exc:
        raise _fail(exc) from exc
    if json_output:
        cli_output.print_json(out, [cli_output.run_json(run, clip) for run, clip in rows])
    elif rows:
        out.print(cli_output.runs_table(rows))
    else:
        out.print("no runs yet")


@app.command()
def rejected(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List objects a pipeline's trigger matches that cannot be clips, and why."""
    from orchestrator.store import Store
    from orchestrator.store.models import iso

    try:
        rows = Store(settings_from(ctx).store_url).rejected_objects(limit)
    except CamflowError as exc:
        raise _fail(exc) from exc
    payload = [
        {
            "uri": f"s3://{row.bucket}/{row.key}",
            "etag": row.etag,
            "size": row.size,
            "seen_at": iso(row.seen_at),
            "reason": row.reason,
        }
        for row in rows
    ]
    if json_output:
        cli_output.print_json(out, payload)
    elif payload:
        for item in payload:
            out.print(f"{item['uri']} ({item['size']} bytes, seen {item['seen_at']})")
            out.print(f"  {item['reason']}", highlight=False)
    else:
        out.print("nothing rejected: every object a trigger matched became a clip")


@app.command()
def results(
    ctx: typer.Context,
    clip: Annotated[str, typer.Argument(help="Clip id (c-...), object key or s3://bucket/key.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show what happened to a clip: each pipeline's result, stages and errors."""
    from orchestrator.store import Store

    try:
        store = Store(settings_from(ctx).store_url)
        found = store.find_clip(clip)
        runs_of_clip = store.runs_of_clip(found.id)
    except CamflowError as exc:
        raise _fail(exc) from exc
    payload = [
        run.result or {**cli_output.run_json(run, found), "note": "not finished yet"}
        for run in runs_of_clip
    ]
    if json_output:
        cli_output.print_json(out, payload)
        return
    out.print(f"clip {found.id}: s3://{found.bucket}/{found.key} ({found.size} bytes)")
    if not runs_of_clip:
        out.print("no runs: no pipeline's trigger matches this clip")
    for run, result in zip(runs_of_clip, payload, strict=True):
        out.print(cli_output.results_table([(run.pipeline, result)], title=f"run {run.id}"))
        for stage in result.get("stages", []):
            out.print(
                f"  {stage['name']:<10} {stage['status']:<10} attempts={stage['attempts']} "
                f"{stage['accelerator']} {stage['seconds'] or 0:.2f}s "
                f"{stage.get('reason') or ''}"
            )


@app.command()
def pipelines(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List the pipelines and algorithms camflow has loaded, checking every file."""
    from orchestrator.service import open_catalogs
    from orchestrator.store import Store

    try:
        settings = settings_from(ctx)
        store = Store(settings.store_url)
        catalog = open_catalogs(store, settings).current()
        store.close()
    except CamflowError as exc:
        raise _fail(exc) from exc
    listing = {
        name: {
            "source": p.source,
            "trigger": p.spec.trigger.model_dump(),
            "stages": [
                {
                    "name": s,
                    "algorithm": r.algorithm.ref,
                    "params": r.params,
                    "accelerator": r.spec.placement.accelerator,
                }
                for s, r in p.stages.items()
            ],
        }
        for name, p in sorted(catalog.pipelines.items())
    }
    if json_output:
        cli_output.print_json(out, listing)
        return
    for name, info in listing.items():
        chain = " → ".join(
            f"{s['name']} ({s['algorithm']}, {s['accelerator']})" for s in info["stages"]
        )
        out.print(f"[bold]{name}[/]: {chain}")


@app.command()
def health(
    ctx: typer.Context,
    max_age: Annotated[
        float, typer.Option(help="Healthy if the engine finished a tick this recently (s).")
    ] = 120,
) -> None:
    """Exit 0 if `camflow serve` is alive (its engine ticked recently), else 1. For
    liveness and readiness probes."""
    from orchestrator.service import heartbeat_age

    settings = settings_from(ctx)
    age = heartbeat_age(settings.home)
    if age is None or age > max_age:
        seen = "never" if age is None else f"{age:.0f} s ago"
        err.print(f"unhealthy: the engine last finished a tick {seen} (limit {max_age:g} s)")
        raise typer.Exit(code=1)
    out.print(f"healthy: the engine finished a tick {age:.1f} s ago")


@app.command()
def clusters(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show each configured cluster: reachable or not, GPU nodes, Jobs running and queued."""
    from orchestrator.kube.executor import KubernetesExecutor

    try:
        settings = settings_from(ctx)
        executor = KubernetesExecutor(settings.kubernetes.clusters)
        rows = executor.describe()
        executor.close()
    except CamflowError as exc:
        raise _fail(exc) from exc
    if json_output:
        cli_output.print_json(out, rows)
        return
    table = Table()
    for column in (
        "cluster",
        "env",
        "namespace",
        "reachable",
        "gpu nodes",
        "running",
        "queued",
        "budget",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            row["environment"],
            row["namespace"],
            "yes" if row["reachable"] else "[red]no[/]",
            str(row.get("gpu_nodes", "-")),
            str(row.get("running", "-")),
            str(row.get("queued", "-")),
            str(row["budget"]),
        )
    out.print(table)
    for row in rows:
        if row["error"]:
            err.print(f"[red]{row['name']}:[/] {row['error']}")


def _register_groups() -> None:
    from orchestrator.cli import algorithms as cli_algorithms
    from orchestrator.cli import keys as cli_keys
    from orchestrator.cli import webhooks as cli_webhooks

    app.add_typer(cli_algorithms.app, name="algorithms")
    app.add_typer(cli_keys.app, name="keys")
    app.add_typer(cli_webhooks.app, name="webhooks")
    from orchestrator.cli import tenancy as cli_tenancy

    app.command("skipped")(cli_tenancy.skipped)
    from orchestrator.cli import egress as cli_egress

    app.command("egress-policy")(cli_egress.egress_policy)
    from orchestrator.cli import export as cli_export
    from orchestrator.cli import status as cli_status

    app.command("export")(cli_export.export)
    app.command("status")(cli_status.status)


_register_groups()
