"""Clusters and launches shared by the Kubernetes tests."""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrator.domain.catalog import Pipeline
from orchestrator.engine.launches import build_launch
from orchestrator.executors.base import StageLaunch
from orchestrator.settings import ClusterSettings, GpuNodes
from orchestrator.store import Clip, Run

KUBERNETES_VERSION = "1.34"

DEV = ClusterSettings(
    name="dev",
    environment="dev",
    namespace="camflow-dev",
    budget=4,
    s3_endpoint="http://minio.camflow-dev:9000",
)
PROD = ClusterSettings(
    name="prod",
    environment="prod",
    namespace="camflow-jobs",
    budget=8,
    gpu=GpuNodes(node_selector={"nvidia.com/gpu.present": "true"}, slots=2),
)

CLIP = Clip(
    id="c-0123456789abcdef",
    bucket="camflow-ingest",
    key="acme/door/2026/03/01/120000.mp4",
    etag="e",
    size=1,
    tenant="acme",
    camera="door",
)
RUN = Run(
    id="r-fedcba9876543210",
    clip_id=CLIP.id,
    pipeline="faces",
    created_at=datetime(2026, 3, 1, tzinfo=UTC),
)


def launch_for(
    pipeline: Pipeline, stage: str, accelerator: str, attempt: int = 1, channel: str = "stable"
) -> StageLaunch:
    return build_launch(
        RUN.model_copy(update={"pipeline": pipeline.name}),
        CLIP,
        pipeline,
        stage,
        attempt,
        accelerator,
        "camflow-results",
        channel=channel,
    )
