"""``camflow algorithms ...``: the algorithm author's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from orchestrator.cli import output as cli_output
from orchestrator.errors import CamflowError
from orchestrator.registry import Registry, version_json
from orchestrator.settings import Settings
from orchestrator.store import Store

app = typer.Typer(help="Package, try, register and promote algorithms.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


def _settings(ctx: typer.Context) -> Settings:
    from orchestrator.cli.main import settings_from

    return settings_from(ctx)


def _registry(ctx: typer.Context) -> Registry:
    settings = _settings(ctx)
    registry = Registry(Store(settings.store_url))
    registry.sync(settings.algorithm_dirs)
    return registry


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/] {exc}")
    return typer.Exit(code=1)


@app.command()
def register(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(help="An algorithm folder or its algorithm.yaml.", exists=True)
    ],
    image_digest: Annotated[
        list[str] | None,
        typer.Option(
            help="sha256:… of the pushed image; runs then use exactly that image. "
            "ACCELERATOR=sha256:… (e.g. gpu=sha256:…) for an accelerator's own image "
            "(accelerators.gpu.image). Repeatable."
        ),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Register it for this tenant: it then runs only on that tenant's clips "
            "until an admin publishes it. Default: the operator's, for every tenant."
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Validate an algorithm and record it as an immutable version on the dev channel."""
    try:
        default, per_accelerator = _digests(image_digest or [])
        row, created = _registry(ctx).register(path, default, tenant, per_accelerator)
    except CamflowError as exc:
        raise _fail(exc) from exc
    if json_output:
        cli_output.print_json(out, {**version_json(row), "created": created})
        return
    what = "registered" if created else "already registered, unchanged:"
    out.print(f"{what} {row.id} on channel {row.channel}")
    if created:
        out.print(f"promote it with: camflow algorithms promote {row.name} {row.version}")


def _digests(values: list[str]) -> tuple[str | None, dict[str, str]]:
    """``--image-digest`` values: one bare digest (the default image's) and any number
    of ACCELERATOR=digest."""
    default: str | None = None
    per_accelerator: dict[str, str] = {}
    for value in values:
        accelerator, sep, digest = value.partition("=")
        if not sep:
            if default is not None:
                raise CamflowError(
                    "two digests for the default image: give one, and ACCELERATOR=sha256:… "
                    "for an accelerator's own image"
                )
            default = value
        elif accelerator in per_accelerator:
            raise CamflowError(f"two digests for the {accelerator} image: give one")
        else:
            per_accelerator[accelerator] = digest
    return default, per_accelerator


@app.command()
def promote(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Algorithm name.")],
    version: Annotated[str, typer.Argument(help="The version to move to stable.")],
) -> None:
    """Move a registered version to the stable channel (what `name@stable` and a bare
    `name` in pipelines resolve to). Runs already started keep their versions."""
    try:
        row = _registry(ctx).promote(name, version)
    except CamflowError as exc:
        raise _fail(exc) from exc
    out.print(f"{row.id} is now on stable")


@app.command()
def publish(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Algorithm name.")],
    version: Annotated[str, typer.Argument(help="The version every tenant may run.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Publish a tenant's algorithm version (an admin's decision): pipelines then run it
    on every tenant's clips they serve, not only on its own tenant's."""
    try:
        row = _registry(ctx).publish(name, version)
    except CamflowError as exc:
        raise _fail(exc) from exc
    if json_output:
        cli_output.print_json(out, version_json(row))
        return
    whose = f"tenant {row.owner}'s" if row.owner else "the operator's"
    out.print(f"{row.id} ({whose}) is published: it runs on every tenant's clips")


@app.command("list")
def list_(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """List registered algorithm versions and their channels."""
    try:
        rows = _registry(ctx).store.algorithm_versions()
    except CamflowError as exc:
        raise _fail(exc) from exc
    if json_output:
        cli_output.print_json(out, [version_json(r) for r in rows])
        return
    table = Table()
    for column in ("algorithm", "version", "channel", "tenant", "accelerators", "image"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.name,
            row.version,
            str(row.channel),
            _whose(row.owner, row.published),
            ", ".join(row.manifest["accelerators"]),
            row.manifest["image"] + (f"@{row.image_digest[:19]}…" if row.image_digest else ""),
        )
    out.print(table)


def _whose(owner: str | None, published: bool) -> str:
    if owner is None:
        return "* (operator's)"
    return f"{owner} (published)" if published else owner


@app.command()
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Algorithm name.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show an algorithm's versions: channel, accelerators, resources, parameters."""
    try:
        rows = _registry(ctx).store.algorithm_versions(name)
    except CamflowError as exc:
        raise _fail(exc) from exc
    if not rows:
        raise _fail(
            CamflowError(
                f"no algorithm {name!r} is registered; `camflow algorithms list` shows what is"
            )
        )
    payload = [version_json(r) for r in rows]
    if json_output:
        cli_output.print_json(out, payload)
        return
    for item in payload:
        out.print(
            f"[bold]{item['name']}@{item['version']}[/] ({item['channel']}; tenant "
            f"{_whose(item['tenant'], item['published'])})"
        )
        out.print(
            yaml.safe_dump(
                {
                    k: item[k]
                    for k in (
                        "image",
                        "image_digest",
                        "image_digests",
                        "accelerators",
                        "inputs",
                        "optional_inputs",
                        "params_schema",
                        "timeout_seconds",
                        "retries",
                        "source",
                    )
                },
                sort_keys=False,
            )
        )


@app.command()
def new(
    name: Annotated[str, typer.Argument(help="The new algorithm's name, e.g. brightness.")],
    directory: Annotated[Path, typer.Option("--dir", help="Your algorithms workspace.")] = Path(
        "."
    ),
) -> None:
    """Scaffold a working algorithm: manifest, entry point, Dockerfile and a test."""
    from orchestrator.cli.scaffold import scaffold

    try:
        folder = scaffold(name, directory)
    except CamflowError as exc:
        raise _fail(exc) from exc
    out.print(f"created {folder}/ (algorithm.yaml, __main__.py, Dockerfile, test)")
    out.print(f"next: camflow algorithms try {folder} CLIP.mp4")


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"{text!r}: write --param key=value")
    return key, yaml.safe_load(value)


@app.command("try")
def try_(
    ctx: typer.Context,
    algorithm: Annotated[str, typer.Argument(help="NAME[@VERSION|@stable|@dev] or a folder.")],
    clip: Annotated[Path, typer.Argument(help="A video file.", exists=True, dir_okay=False)],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="key=value (repeatable); values are read as YAML."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Where its outputs are saved.")] = Path(
        "camflow-try"
    ),
    json_output: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900,
) -> None:
    """Run one algorithm on one clip locally (decoding first when it needs frames) and
    show what it wrote, its metrics and its log."""
    from orchestrator.cli.main import quiet_logging
    from orchestrator.cli.trial import try_algorithm

    params = dict(_param(p) for p in param or [])
    try:
        settings = _settings(ctx)
        quiet_logging(settings.log_level)
        with err.status(f"trying {algorithm} on {clip.name}..."):
            report = try_algorithm(settings, algorithm, clip, params, timeout, out_dir.resolve())
    except (CamflowError, TimeoutError) as exc:
        raise _fail(exc) from exc
    if json_output:
        cli_output.print_json(out, report)
    else:
        colour = "green" if report["status"] == "succeeded" else "red"
        out.print(
            f"{report['algorithm']}: [{colour}]{report['status']}[/] "
            f"after {report['attempts']} attempt(s)"
        )
        if report["error"]:
            out.print(f"[red]{report['error']}[/]")
        out.print("wrote:")
        for item in report["outputs"]:
            out.print(f"  {item['path']}  ({item['bytes']} bytes)")
        out.print(f"metrics: {report['metrics']}")
        out.print(f"saved to: {report['saved_to']}")
        out.print("log (stderr):")
        out.print(report["log"] or "  (empty)", markup=False, highlight=False)
    if report["status"] != "succeeded":
        raise typer.Exit(code=3)
