"""``camflow demo``: the whole path on one machine, with real clips and a real model."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from orchestrator.cli import output as cli_output
from orchestrator.cli.samples import make_clip
from orchestrator.domain.layout import upload_key
from orchestrator.errors import NotFound
from orchestrator.service import Runtime, Service, open_runtime
from orchestrator.settings import Settings
from orchestrator.store.models import RunStatus

TENANT = "demo"
#: camera -> photograph panned over (astronaut and camera show a face).
CAMERAS = {"lobby": "astronaut", "office": "camera", "kitchen": "coffee", "garden": "chelsea"}
DAMAGED = "entrance"


def make_sample_clips(folder: Path) -> dict[str, Path]:
    """Four real H.264 clips and one damaged upload (a clip cut off mid-file)."""
    clips = {}
    for camera, photo in CAMERAS.items():
        clips[camera] = folder / f"{camera}-{photo}.mp4"
        make_clip(clips[camera], photo)
    damaged = folder / f"{DAMAGED}-truncated.mp4"
    data = clips["lobby"].read_bytes()
    damaged.write_bytes(data[: len(data) // 3])
    clips[DAMAGED] = damaged
    return clips


def _finished(runtime: Runtime, keys: list[str]) -> int:
    done = 0
    for key in keys:
        try:
            clip = runtime.store.find_clip(key)
        except NotFound:
            continue
        runs = runtime.store.runs_of_clip(clip.id)
        if runs and all(RunStatus(r.status).terminal for r in runs):
            done += 1
    return done


def run_demo(
    settings: Settings,
    out: Console,
    err: Console,
    progress: Callable[[], Progress],
    timeout: float,
) -> None:
    home = settings.home
    # The demo owns its folder: start from a clean store every time.
    for stale in ["camflow.db", "camflow.db-wal", "camflow.db-shm", "attempts", "results"]:
        path = home / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    settings = settings.model_copy(
        update={
            "watcher": settings.watcher.model_copy(
                update={"wait_seconds": 1, "reconcile_interval_seconds": 5.0}
            ),
            "engine": settings.engine.model_copy(update={"interval_seconds": 0.5}),
        }
    )
    started = time.monotonic()
    with err.status("making real H.264 sample clips from photographs..."):
        clips = make_sample_clips(home / "clips")
    with open_runtime(settings) as runtime:
        where = runtime.s3.access.endpoint_url or "AWS"
        kind = "embedded, in memory" if runtime.embedded else "configured"
        err.print(f"S3: {where} ({kind}); store: {settings.store_url_shown}")
        err.print(
            f"pipelines: {', '.join(sorted(runtime.catalog.pipelines))}; stages run as "
            f"local processes, {settings.local.max_parallel} at a time"
        )
        service = Service(runtime)
        service.start()
        bucket = settings.s3.ingest_bucket
        now = datetime.now(UTC)
        keys: dict[str, str] = {}
        for n, (camera, path) in enumerate(clips.items()):
            key = upload_key(TENANT, camera, now - timedelta(seconds=n))
            runtime.s3.upload_file(path, bucket, key)
            keys[camera] = key
        err.print(
            f"uploaded {len(keys)} clips to s3://{bucket}/{TENANT}/<camera>/..., as cameras would"
        )
        try:
            with progress() as bar:
                task = bar.add_task("processing clips", total=len(keys))
                deadline = time.monotonic() + timeout
                while (done := _finished(runtime, list(keys.values()))) < len(keys):
                    bar.update(task, completed=done)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the demo did not finish within {timeout:g} s")
                    time.sleep(0.5)
                bar.update(task, completed=done)
        finally:
            service.stop()
        rows, fps = [], []
        results_dir = home / "results"
        for camera, key in keys.items():
            clip = runtime.store.find_clip(key)
            for run in runtime.store.runs_of_clip(clip.id):
                result: dict[str, Any] = run.result or {}
                rows.append((f"{camera} ({clips[camera].name})", result))
                target = results_dir / clip.tenant / clip.camera / clip.id / run.pipeline
                target.mkdir(parents=True, exist_ok=True)
                (target / "result.json").write_text(json.dumps(result, indent=2))
                for stage in result.get("stages", []):
                    if stage["name"] == "faces" and stage["metrics"].get("fps"):
                        fps.append(stage["metrics"]["fps"])
    out.print(cli_output.results_table(rows, title="camflow demo"))
    if fps:
        out.print(
            f"faces stage: {sum(fps) / len(fps):.1f} frames/s on CPU (CenterFace, onnxruntime)"
        )
    out.print(f"done in {time.monotonic() - started:.1f} s. Results: {results_dir}/")
    out.print(
        f"Inspect: CAMFLOW_HOME={home} camflow runs   |   "
        f"CAMFLOW_HOME={home} camflow results <clip-id>"
    )
