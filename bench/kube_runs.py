"""P4 through Kubernetes: clips/min with the probe stage through the Kubernetes executor
and the API server emulator (pods are real processes), and API writes per clip."""

from __future__ import annotations

import time
from pathlib import Path
from tempfile import TemporaryDirectory

from bench.environment import bench_settings, counted_s3
from bench.local_runs import _files
from bench.report import Figure
from orchestrator.cli.oneshot import one_shot_owner, run_files
from orchestrator.service import open_runtime
from orchestrator.settings import ClusterSettings
from orchestrator.store.models import RunStatus
from tests.kube_emulator import Emulator, JobRunner, node

WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def measure(clips: int) -> list[Figure]:
    with TemporaryDirectory(prefix="camflow-bench-") as tmp, counted_s3() as (s3, _):
        emulator = Emulator("bench", nodes=[node("bench-cpu-1")], namespaces={"camflow-jobs"})
        emulator.start()
        runner = JobRunner(emulator).start()
        try:
            cluster = ClusterSettings(
                name="bench",
                environment="dev",
                kubeconfig=emulator.kubeconfig(Path(tmp)),  # type: ignore[arg-type]
                namespace="camflow-jobs",
                budget=8,
                s3_endpoint=s3.endpoint_url,
            )
            base = bench_settings(Path(tmp) / "home", s3.endpoint_url)
            settings = base.model_copy(
                update={
                    "executor": "kubernetes",
                    "kubernetes": base.kubernetes.model_copy(update={"clusters": [cluster]}),
                }
            )
            with open_runtime(settings) as runtime:
                runtime.reconciler.owner = one_shot_owner()
                before = len(emulator.calls)
                start = time.perf_counter()
                done = run_files(
                    runtime,
                    runtime.catalog.pipeline("noop"),
                    _files(Path(tmp), clips),
                    "bench",
                    "kube",
                    1800,
                )
                wall = time.perf_counter() - start
                with emulator.lock:
                    writes = sum(1 for c in emulator.calls[before:] if c.verb in WRITES)
        finally:
            runner.stop()
            emulator.stop()
    failed = [run.error for _, run in done if run.status != RunStatus.SUCCEEDED]
    if failed:
        raise RuntimeError(f"{len(failed)} probe runs failed on the emulator: {failed[:2]}")
    return [
        Figure(
            key="P4",
            name="clips/min, Kubernetes executor (emulator), one probe stage",
            unit="clips/min",
            ours=clips / wall * 60,
            better="higher",
            note=f"{clips} clips, budget {cluster.budget} Jobs",
        ),
        Figure(
            key="P4",
            name="Kubernetes API writes per clip, one probe stage",
            unit="writes",
            ours=writes / clips,
            better="lower",
            note="creates and deletes of Jobs, per clip; goal is for faces at batch 16",
        ),
    ]
