"""``camflow egress-policy``: the stage NetworkPolicy of each cluster, from its
``stage_egress`` settings, as YAML to apply or keep in an overlay."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from orchestrator.errors import CamflowError, ConfigError
from orchestrator.settings import ClusterSettings, Settings

err = Console(stderr=True)


def _settings(ctx: typer.Context, configmap: Path | None, scratch: Path) -> Settings:
    from orchestrator.cli.main import settings_from
    from orchestrator.settings import load_settings

    if configmap is None:
        return settings_from(ctx)
    try:
        text = yaml.safe_load(configmap.read_text())["data"]["camflow.yaml"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ConfigError(
            str(configmap), "data.camflow.yaml", f"is not a camflow ConfigMap ({exc!r})"
        ) from exc
    config = scratch / "camflow.yaml"
    config.write_text(text)
    return load_settings(config)


def _resolved(clusters: list[ClusterSettings]) -> dict[str, dict[str, list[str]]]:
    """cluster -> prefix list -> CIDRs, asked of EC2 in each cluster's region."""
    import boto3

    from orchestrator.kube.prefix_lists import resolve

    resolved = {}
    for cluster in clusters:
        names = cluster.stage_egress.prefix_lists if cluster.stage_egress else []
        if names:
            resolved[cluster.name] = resolve(
                boto3.client("ec2", region_name=cluster.s3_region), names
            )
    return resolved


def egress_policy(
    ctx: typer.Context,
    cluster: Annotated[
        str | None, typer.Option(help="Only this cluster's (default: every cluster's).")
    ] = None,
    configmap: Annotated[
        Path | None,
        typer.Option(
            help="Read the settings from this ConfigMap manifest's camflow.yaml (an "
            "overlay's config.yaml) instead of --config.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Print the camflow-stage NetworkPolicy of each cluster that has `stage_egress`:
    stage pods reach DNS and S3 only. Prefix lists are looked up in the EC2 API (AWS
    credentials and region as boto3 finds them). Keep the output as the overlay's
    patch, e.g. `camflow egress-policy --configmap manifests/overlays/prod/config.yaml
    > manifests/overlays/prod/s3-egress.yaml`."""
    import tempfile

    from orchestrator.kube.egress import stage_network_policy

    try:
        with tempfile.TemporaryDirectory() as scratch:
            settings = _settings(ctx, configmap, Path(scratch))
        clusters = [
            c
            for c in settings.kubernetes.clusters
            if (cluster is None and c.stage_egress) or c.name == cluster
        ]
        if not clusters:
            known = [c.name for c in settings.kubernetes.clusters if c.stage_egress]
            raise CamflowError(
                f"no cluster {cluster!r} with stage_egress; those with it: {known}"
                if cluster
                else "no cluster has stage_egress: set kubernetes.clusters[].stage_egress"
            )
        resolved = _resolved(clusters)
        documents: list[dict[str, Any]] = [
            stage_network_policy(c, resolved.get(c.name)) for c in clusters
        ]
    except (CamflowError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(code=1) from exc
    command = "camflow egress-policy" + (f" --configmap {configmap}" if configmap else "")
    typer.echo(
        f"# Rendered by `{command}`:\n"
        "# change stage_egress there and render again rather than editing this file.\n"
        + yaml.safe_dump_all(documents, sort_keys=False),
        nl=False,
    )
