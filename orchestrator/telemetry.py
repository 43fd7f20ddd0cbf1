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

from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from orchestrator.store.models import AttemptState, StageAttempt, as_utc

# The text format would add a `_created` gauge series next to each counter and
# histogram: Prometheus stores them as series of their own, for nothing.
disable_created_metrics()

#: Seconds; stages run from a fraction of a second (publish) to many minutes (models).
DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

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

# Known label values exist from the start, so the first clip is a rise rate() sees.
for _source in ("event", "sweep"):
    CLIPS_DISCOVERED.labels(_source)


def clip_discovered(source: str | None) -> None:
    CLIPS_DISCOVERED.labels(source or "unknown").inc()


def run_finished(pipeline: str, status: str) -> None:
    RUNS_FINISHED.labels(pipeline, str(status)).inc()


def outcome(attempt: StageAttempt) -> str:
    if attempt.state == AttemptState.SUCCEEDED:
        return "succeeded"
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
