"""P2 and P4 through the local executor: no-op stages, so what is measured is camflow."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

import boto3

from bench.environment import bench_settings, counted_s3
from bench.report import Figure, median_round, spread
from orchestrator.cli.oneshot import one_shot_owner, run_files
from orchestrator.service import open_runtime
from orchestrator.store.models import RunStatus


def _files(folder: Path, count: int) -> list[Path]:
    # The probe stage never reads its clip: any bytes do.
    paths = []
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        path = folder / f"clip{n:04d}.mp4"
        path.write_bytes(uuid.uuid4().bytes)
        paths.append(path)
    return paths


def _bare_stage_seconds(endpoint_url: str, bucket: str, repeat: int) -> float:
    """The probe stage's own S3 work done in-process: a marker, a listing, its result
    and its manifest."""
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    start = time.perf_counter()
    for n in range(repeat):
        prefix = f"bare/{n}/"
        s3.put_object(Bucket=bucket, Key=f"{prefix}executions/x", Body=b"")
        s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}executions/")
        s3.put_object(Bucket=bucket, Key=f"{prefix}result.json", Body=b"{}")
        s3.put_object(Bucket=bucket, Key=f"{prefix}_manifest.json", Body=b"{}")
    return (time.perf_counter() - start) / repeat


def measure(clips_for_overhead: int, clips_for_throughput: int, rounds: int = 1) -> list[Figure]:
    figures: list[Figure] = []
    with TemporaryDirectory(prefix="camflow-bench-") as tmp, counted_s3() as (s3, counter):
        settings = bench_settings(Path(tmp) / "home", s3.endpoint_url)
        files = _files(Path(tmp) / "chain", clips_for_overhead)
        with open_runtime(settings) as runtime:
            runtime.reconciler.owner = one_shot_owner()
            chain = runtime.catalog.pipeline("noop-chain")
            stages = len(chain.spec.stages)
            # One clip at a time, as a camera's clip would go: latency per stage.
            start = time.perf_counter()
            for path in files[:clips_for_overhead]:
                [(_, run)] = run_files(runtime, chain, [path], "bench", "chain", 600)
                assert run.status == RunStatus.SUCCEEDED, run.error
            per_stage = (time.perf_counter() - start) / (clips_for_overhead * stages)
            bare = _bare_stage_seconds(s3.endpoint_url, settings.s3.results_bucket, 20)
            figures.append(
                Figure(
                    key="P2",
                    name="seconds per no-op stage, through camflow vs its S3 work in-process",
                    unit="s",
                    ours=per_stage,
                    baseline=bare,
                    better="lower",
                    note=f"{clips_for_overhead} clips x {stages} stages, one clip at a time",
                )
            )
            figures.append(
                Figure(
                    key="P2",
                    name="orchestration overhead per stage",
                    unit="s",
                    ours=per_stage - bare,
                    better="lower",
                    goal=0.1,
                    note="the row above, minus the stage's own S3 work",
                )
            )
            # All at once, as a backlog would go: throughput and S3 requests, the
            # round with the median throughput (each round new clips: fresh bytes).
            noop = runtime.catalog.pipeline("noop")
            backlogs = []
            for n in range(rounds):
                batch = _files(Path(tmp) / f"backlog{n}", clips_for_throughput)
                before = counter.total()
                start = time.perf_counter()
                done = run_files(runtime, noop, batch, "bench", f"backlog{n}", 1800)
                wall = time.perf_counter() - start
                failed = [run.error for _, run in done if run.status != RunStatus.SUCCEEDED]
                assert not failed, failed[:3]
                backlogs.append((clips_for_throughput / wall * 60, counter.total() - before))
            per_minute, requests = median_round(backlogs)
            how = f"{clips_for_throughput} clips, max_parallel {settings.local.max_parallel}"
            figures.append(
                Figure(
                    key="P4",
                    name="clips/min, local executor, one no-op stage, embedded S3",
                    unit="clips/min",
                    ours=per_minute,
                    better="higher",
                    goal=600,
                    note="; ".join(filter(None, (how, spread(b[0] for b in backlogs)))),
                )
            )
            figures.append(
                Figure(
                    key="P4",
                    name="S3 requests per clip, local executor, one no-op stage",
                    unit="requests",
                    ours=requests / clips_for_throughput,
                    better="lower",
                    note="counted at the S3 server: camflow's and the stage's, upload included",
                )
            )
    return figures
