"""P4's engine ceiling: clips planned, dispatched and recorded through the 4-stage faces
pipeline with an executor that completes every attempt at once, on SQLite and on
PostgreSQL. S3 is moto in-process (no HTTP), so the figure is camflow's own cost: the
store, the engine's decisions, and its S3 requests (botocore's work, and moto's in
place of a server's; over HTTP to a moto server on this machine, botocore and urllib3
cost the engine more CPU than moto does here)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

from bench.environment import bench_settings
from bench.report import Figure, median_round, spread
from orchestrator.domain.discovery import FoundObject
from orchestrator.domain.layout import upload_key
from orchestrator.executors.base import (
    Capacity,
    ExecState,
    ExecStatus,
    Placement,
    StageLaunch,
    Submission,
)
from orchestrator.service import open_runtime
from orchestrator.watcher import to_clip
from tests.postgres import fresh_schema

MANIFEST = {"outputs": {}, "metrics": {}}


class InstantExecutor:
    """Every attempt succeeds the moment it is submitted, and hands its manifest over
    as the SDK's stages do (so the engine reads none back), so that the figure holds
    what camflow does, not what a stage does. It takes batches and fused chains as both
    real executors do, so the engine dispatches the way it does in production: each
    stage still has its own attempt, recorded from start to end."""

    name = "instant"
    retries_itself = False
    batches = True
    fuses = True
    durable_before_submit = False

    def __init__(self) -> None:
        self.submitted = 0

    def capacity(self) -> Capacity:
        return Capacity(slots=1_000_000, gpu_slots=1_000_000)

    def place(self, launches: Sequence[StageLaunch]) -> dict[str, Placement]:
        return {
            launch.attempt_id: Placement(placement="instant", accelerator=launch.accelerator)
            for launch in launches
        }

    def submit(self, launches: Sequence[StageLaunch]) -> dict[str, Submission]:
        launches = [member for launch in launches for member in launch.members]
        self.submitted += len(launches)
        return {
            launch.attempt_id: Submission(
                handle=launch.attempt_id, accelerator=launch.accelerator, placement="instant"
            )
            for launch in launches
        }

    def poll(self, handles: Sequence[str]) -> dict[str, ExecStatus]:
        now = datetime.now(UTC)
        return {
            # Handed over as well, as the local executor's stages do.
            handle: ExecStatus(
                state=ExecState.SUCCEEDED,
                exit_code=0,
                started_at=now,
                finished_at=now,
                manifest=MANIFEST,
            )
            for handle in handles
        }

    def cancel(self, handles: Sequence[str]) -> None:
        return None

    def log_uri(self, handle: str) -> str:
        return f"instant://{handle}"

    def close(self) -> None:
        return None


@contextmanager
def postgres_schema() -> Iterator[str | None]:
    """A fresh schema in the local PostgreSQL (None when there is none), dropped after."""
    from sqlalchemy.exc import OperationalError

    try:
        with fresh_schema("camflow_bench") as url:
            yield url
    except OperationalError:
        yield None


def clips_per_minute(store_url: str, clips: int) -> tuple[float, int, float]:
    """Clips/min through the faces pipeline with the instant executor, ticks taken, and
    clips per minute of this process's CPU time: on a machine others are using too, the
    wall-clock figure swings with their load, the CPU one much less."""
    from moto import mock_aws

    with TemporaryDirectory(prefix="camflow-bench-") as tmp, mock_aws():
        settings = bench_settings(Path(tmp) / "home", None, store={"url": store_url})
        with open_runtime(settings, executor=InstantExecutor()) as runtime:
            now = datetime.now(UTC)
            found = [
                FoundObject(
                    settings.s3.ingest_bucket,
                    upload_key("bench", f"cam{n % 100}", now, ".mp4", n),
                    uuid.uuid4().hex,
                    1000,
                    now,
                )
                for n in range(clips)
            ]
            runtime.store.record_clips([c for c in map(to_clip, found, ["upload"] * clips) if c])
            start, cpu = time.perf_counter(), time.process_time()
            ticks = 0
            while True:
                runtime.reconciler.tick()
                ticks += 1
                _, runs = runtime.store.counts()
                if runs.get("succeeded", 0) + runs.get("failed", 0) >= clips:
                    break
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu
            if runs.get("failed"):
                raise RuntimeError(f"{runs['failed']} runs failed with an instant executor")
    return clips / wall * 60, ticks, clips / cpu * 60


def _note(clips: int, rounds: list[tuple[float, int, float]]) -> str:
    _, ticks, cpu = median_round(rounds)
    note = f"{clips} clips in {ticks} ticks; {cpu:,.0f} per CPU minute"
    return "; ".join(filter(None, (note, spread(r[0] for r in rounds))))


def measure(clips: int, rounds: int = 1) -> list[Figure]:
    """Each store ``rounds`` times, each round on a fresh database, and the median."""
    figures = []
    sqlite = []
    for _ in range(rounds):
        with TemporaryDirectory(prefix="camflow-bench-") as tmp:
            sqlite.append(clips_per_minute(f"sqlite:///{Path(tmp) / 'camflow.db'}", clips))
    figures.append(
        Figure(
            key="P4",
            name="engine ceiling, faces pipeline, instant executor, SQLite",
            unit="clips/min",
            ours=median_round(sqlite)[0],
            better="higher",
            note=_note(clips, sqlite),
        )
    )
    postgres = []
    for _ in range(rounds):
        with postgres_schema() as url:
            if url is None:
                return figures
            postgres.append(clips_per_minute(url, clips))
    figures.append(
        Figure(
            key="P4",
            name="engine ceiling, faces pipeline, instant executor, PostgreSQL",
            unit="clips/min",
            ours=median_round(postgres)[0],
            better="higher",
            goal=10_000,
            note=_note(clips, postgres),
        )
    )
    return figures
