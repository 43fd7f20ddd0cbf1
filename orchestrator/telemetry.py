"""What this process did, as Prometheus counters and histograms, observed where it
happens: the watcher counts the clips it records, the engine the attempts and runs it
settles and its own ticks. `/metrics` (orchestrator.api.metrics) exports them with
gauges it reads from the store at scrape time.

Why in-process rather than figures derived from the store: a counter must never go
down except when its process restarts (which Prometheus detects and `rate()` bridges),
and reading cumulative totals from the store would cost a scan that grows with the
history at every scrape. Each replica therefore exports what it did itself: only the
leader watches and runs the engine, so a follower's counters stay at zero and a new
leader's start from zero, and ``sum(rate(...))`` over the pods is the whole service's
rate. Scrape every pod (a PodMonitor or pod discovery), not one through the Service.

Each event is counted once across replicas because it is counted only after the
store's conditional update that settles it succeeded (the loser of a race, a deposed
leader, counts nothing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.store.models import AttemptState, StageAttempt, as_utc

if TYPE_CHECKING:
    from orchestrator.domain.catalog import Pipeline
    from orchestrator.engine.batching import Candidate
    from orchestrator.engine.decide import StartAttempt

# The text format would add a `_created` gauge series next to each counter and
# histogram: Prometheus stores them as series of their own, for nothing.
disable_created_metrics()

#: Seconds; stages run from a fraction of a second (publish) to many minutes (models).
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Seconds; a GPU is free at once, or after other stages' minutes, or never (then the
#: stage's fallback, 300 s by default, ends the wait).
WAIT_BUCKETS = (0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600)
#: The engine's GPU queue is reported while the engine reports it at least this often:
#: a replica that stopped leading (or an engine that stopped) must not go on showing
#: the queue it last saw.
GPU_QUEUE_FRESH_SECONDS = 60.0

CLIPS_DISCOVERED = Counter(
    "camflow_clips_discovered_total",
    "New clips this process's watcher recorded, by what found them (event: an S3 "
    "notification; sweep: the reconciliation pass, a sign that events were missed).",
    ["source"],
)
RUNS_FINISHED = Counter(
    "camflow_runs_finished_total",
    "Runs this process's engine finished, by pipeline and final status.",
    ["pipeline", "status"],
)
ATTEMPTS_FINISHED = Counter(
    "camflow_stage_attempts_finished_total",
    "Stage attempts this process's engine saw end, by stage and outcome (succeeded; "
    "failed: retried while tries are left; failed_permanently: bad input or a broken "
    "stage contract, never retried; timed_out).",
    ["stage", "outcome"],
)
STAGE_DURATION = Histogram(
    "camflow_stage_duration_seconds",
    "Run time of the stage attempts this process's engine saw end, from start to end.",
    ["stage"],
    buckets=DURATION_BUCKETS,
)
ENGINE_TICKS = Counter("camflow_engine_ticks_total", "Engine ticks this process ran.")
ENGINE_TICK_FAILURES = Counter(
    "camflow_engine_tick_failures_total",
    "Engine ticks that raised (the store or S3 away); the next tick tries again.",
)
ENGINE_LAST_TICK = Gauge(
    "camflow_engine_last_tick_timestamp_seconds",
    "Unix time this process's engine last finished a tick (0: never, as on a follower).",
)

GPU_WAIT = Histogram(
    "camflow_gpu_wait_seconds",
    "How long stage attempts that ask for a GPU waited, from the engine seeing them ready "
    "to starting them: on a GPU (accelerator=gpu) or, after the stage's fallback time, on "
    "the CPU (accelerator=cpu).",
    ["stage", "accelerator"],
    buckets=WAIT_BUCKETS,
)

# Known label values exist from the start, so the first clip is a rise rate() sees.
for _source in ("event", "sweep"):
    CLIPS_DISCOVERED.labels(_source)


def clip_discovered(source: str | None) -> None:
    CLIPS_DISCOVERED.labels(source or "unknown").inc()


def run_finished(pipeline: str, status: str) -> None:
    RUNS_FINISHED.labels(pipeline, str(status)).inc()


def outcome(attempt: StageAttempt) -> str:
    if attempt.state in (AttemptState.SUCCEEDED, AttemptState.SKIPPED):
        return attempt.state.value
    if attempt.timed_out:
        return "timed_out"
    return "failed_permanently" if attempt.permanent else "failed"


def attempt_finished(attempt: StageAttempt, ran: bool = True) -> None:
    """Counts an attempt the caller has just settled in the store. ``ran``: its start
    and end are its run time (not so for one the engine gave up on, say)."""
    ATTEMPTS_FINISHED.labels(attempt.stage, outcome(attempt)).inc()
    if ran and attempt.started_at is not None and attempt.finished_at is not None:
        STAGE_DURATION.labels(attempt.stage).observe(
            max(0.0, _seconds(attempt.started_at, attempt.finished_at))
        )


def _seconds(start: datetime, end: datetime) -> float:
    # A database driver may hand back naive datetimes; the executor's are aware.
    return (as_utc(end) - as_utc(start)).total_seconds()


class GpuQueue(Collector):
    """The stage attempts waiting for a GPU at the engine's last tick, by pipeline and
    stage: how many, the longest wait, and the stage's fallback time, so that an alert
    can say "waited past its fallback" (a stage whose CPU fallback cannot start either,
    or one with no fallback). Reported only while the engine keeps reporting it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seen_at: float | None = None
        self._waiting: dict[tuple[str, str], tuple[int, float, float]] = {}

    def update(self, waiting: Iterable[tuple[str, str, float, float]]) -> None:
        """(pipeline, stage, seconds waited, fallback after seconds) of each attempt
        still waiting now."""
        merged: dict[tuple[str, str], tuple[int, float, float]] = {}
        for pipeline, stage, waited, fallback_after in waiting:
            count, longest, _ = merged.get((pipeline, stage), (0, 0.0, fallback_after))
            merged[(pipeline, stage)] = (count + 1, max(longest, waited), fallback_after)
        with self._lock:
            self._waiting, self._seen_at = merged, self._clock()

    def collect(self) -> Iterator[Metric]:
        labels = ["pipeline", "stage"]
        count = GaugeMetricFamily(
            "camflow_gpu_waiting",
            "Stage attempts ready and waiting for a GPU at the engine's last tick.",
            labels=labels,
        )
        oldest = GaugeMetricFamily(
            "camflow_gpu_wait_oldest_seconds",
            "The longest of those waits so far, in seconds.",
            labels=labels,
        )
        fallback = GaugeMetricFamily(
            "camflow_gpu_fallback_after_seconds",
            "The stage's placement.fallback_after_seconds, for the stages waiting: after "
            "this long it may run on the CPU (when its placement has a fallback).",
            labels=labels,
        )
        with self._lock:
            fresh = (
                self._seen_at is not None
                and self._clock() - self._seen_at <= GPU_QUEUE_FRESH_SECONDS
            )
            waiting = dict(self._waiting) if fresh else {}
        for (pipeline, stage), (n, longest, after) in sorted(waiting.items()):
            count.add_metric([pipeline, stage], n)
            oldest.add_metric([pipeline, stage], longest)
            fallback.add_metric([pipeline, stage], after)
        yield from (count, oldest, fallback)


GPU_QUEUE = GpuQueue()
REGISTRY.register(GPU_QUEUE)


def gpu_admission(
    candidates: Sequence[Candidate],
    executions: Iterable[Sequence[StartAttempt]],
    pipeline_of: Callable[[StartAttempt], Pipeline],
) -> None:
    """What one tick's admission did for the attempts that ask for a GPU: the wait of
    each one started (on a GPU, or on its CPU fallback) goes into the histogram, and
    those left waiting are the GPU queue. Called at every tick, so that an empty queue
    is reported as empty."""
    started = {(s.run_id, s.stage, s.attempt): s.accelerator for e in executions for s in e}
    waiting = []
    for candidate in candidates:
        start = candidate.start
        if start.accelerator != "gpu":
            continue  # a CPU stage, or one that fell back before it waited at all
        got = started.get((start.run_id, start.stage, start.attempt))
        if got is not None:
            GPU_WAIT.labels(start.stage, got).observe(candidate.waited_seconds)
            continue
        placement = pipeline_of(start).stages[start.stage].spec.placement
        waiting.append(
            (
                pipeline_of(start).name,
                start.stage,
                candidate.waited_seconds,
                placement.fallback_after_seconds,
            )
        )
    GPU_QUEUE.update(waiting)
