"""The system as a whole over the last 24 hours, summarised from the store: what the
operations page draws and what /metrics reads of current load.

Each summary is one or two reads followed by a pure function of the rows. Every read
is bounded however long the history: it walks an index range newest first and stops
after ``MAX_ROWS`` rows (a summary built from fewer rows than the window held says so
with ``truncated``), or it reads only unfinished attempts, whose number follows the
work in hand. The indexes each read relies on are named next to it.

Everything is across tenants: this is the operator's view (admin keys only).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import case, func
from sqlmodel import col, select

from orchestrator.settings import Settings
from orchestrator.store import Store
from orchestrator.store.models import AttemptState, Clip, Run, RunStatus, StageAttempt, as_utc

WINDOW = timedelta(hours=24)
#: The most rows one summary reads: a day of a busy system is summarised from its
#: newest rows rather than read whole at every page view.
MAX_ROWS = 100_000
#: Failure reasons listed, and runs linked for each.
TOP_REASONS = 8
RUNS_PER_REASON = 5
#: The placement label of an attempt that no executor has placed yet.
UNPLACED = "unplaced"
IN_FLIGHT = (AttemptState.PENDING, AttemptState.RUNNING)
#: Clips recorded by `camflow process` and `algorithms try` were never waited for.
UPLOADED = "upload"


# --- what the page shows ----------------------------------------------------------------


class MinuteCount(BaseModel):
    at: datetime
    succeeded: int = 0
    failed: int = 0


class Throughput(BaseModel):
    minutes: list[MinuteCount]
    succeeded: int
    failed: int
    cancelled: int
    truncated: bool


class StageLatency(BaseModel):
    stage: str
    count: int
    p50: float
    p95: float


class PlacementLoad(BaseModel):
    """Unfinished attempts at one place on one accelerator: ``queued`` ones are
    recorded or handed over and not started (waiting for a slot, a node, an image);
    ``running`` ones have started their code."""

    placement: str
    accelerator: str
    queued: int = 0
    running: int = 0


class GpuSlots(BaseModel):
    placement: str
    in_use: int
    #: What the configuration offers there; None: a place it names no GPUs for.
    total: int | None


class GpuWaits(BaseModel):
    """How long stage attempts that ran on a GPU waited for one: from when the stage
    was ready (its run made, its earlier stages done) until its code started."""

    count: int
    p50: float | None
    p95: float | None
    longest: float | None
    #: GPU attempts placed and not started yet.
    waiting_now: int
    truncated: bool


class FailureReason(BaseModel):
    #: The reason with its particulars (ids, sizes, names in quotes) blanked out, so
    #: that one cause is one row.
    reason: str
    #: One whole message, as a person reads it.
    example: str
    count: int
    run_ids: list[str]
    last_at: datetime


class DelayBucket(BaseModel):
    at: datetime
    clips: int
    longest: float


class WatcherLag(BaseModel):
    """From an upload (its S3 LastModified) to the clip's record in the store."""

    last_recorded_at: datetime | None
    seconds_since_last: float | None
    clips: int
    by_source: dict[str, int]
    p50: float | None
    p95: float | None
    longest: float | None
    buckets: list[DelayBucket]
    truncated: bool


class Overview(BaseModel):
    now: datetime
    since: datetime
    throughput: Throughput
    stages: list[StageLatency]
    load: list[PlacementLoad]
    gpu_slots: list[GpuSlots]
    gpu_waits: GpuWaits
    failures: list[FailureReason]
    watcher: WatcherLag


# --- pure parts -----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks,
    as numpy's default; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _minute(at: datetime) -> datetime:
    return as_utc(at).replace(second=0, microsecond=0)


def per_minute(
    finished: Iterable[tuple[str, datetime]], since: datetime, now: datetime
) -> list[MinuteCount]:
    """Runs finished per minute from ``since`` to ``now``, every minute present (a
    quiet minute is a zero, not a gap in the line)."""
    start, end = _minute(since), _minute(now)
    minutes = {}
    at = start
    while at <= end:
        minutes[at] = MinuteCount(at=at)
        at += timedelta(minutes=1)
    for status, finished_at in finished:
        bucket = minutes.get(_minute(finished_at))
        if bucket is None:
            continue
        if status == RunStatus.SUCCEEDED:
            bucket.succeeded += 1
        elif status == RunStatus.FAILED:
            bucket.failed += 1
    return list(minutes.values())


_PARTICULARS = [
    (re.compile(r"\b[crb]-[0-9a-f]{8,}\b"), "…"),  # clip, run and batch ids
    (re.compile(r"s3://\S+"), "s3://…"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "'…'"),
    # Counts and sizes, not names with numbers in them ("H.264", "v2", "cam7").
    (re.compile(r"(?<![\w.])\d+(\.\d+)?\b"), "N"),
]


def reason_class(text: str) -> str:
    """A failure message with its particulars blanked: "the clip is not a readable
    video (33456 bytes …)" and the same with 1024 bytes are one reason."""
    first = (text or "no reason recorded").strip().splitlines()[0]
    for pattern, blank in _PARTICULARS:
        first = pattern.sub(blank, first)
    return first[:300]


def top_reasons(
    failed: Iterable[tuple[str, str | None, datetime]], limit: int = TOP_REASONS
) -> list[FailureReason]:
    """The commonest reasons among failed runs (id, error, finished at; newest first),
    each with its newest runs."""
    grouped: dict[str, FailureReason] = {}
    for run_id, error, finished_at in failed:
        reason = reason_class(error or "")
        row = grouped.get(reason)
        if row is None:
            row = grouped[reason] = FailureReason(
                reason=reason,
                example=(error or "no reason recorded")[:1000],
                count=0,
                run_ids=[],
                last_at=as_utc(finished_at),
            )
        row.count += 1
        if len(row.run_ids) < RUNS_PER_REASON:
            row.run_ids.append(run_id)
        row.last_at = max(row.last_at, as_utc(finished_at))
    return sorted(grouped.values(), key=lambda r: (-r.count, r.reason))[:limit]


def latencies(rows: Iterable[tuple[str, datetime, datetime]]) -> list[StageLatency]:
    """p50 and p95 of each stage's run time, from (stage, started, finished)."""
    by_stage: dict[str, list[float]] = defaultdict(list)
    for stage, started, finished in rows:
        by_stage[stage].append(max(0.0, (as_utc(finished) - as_utc(started)).total_seconds()))
    return [
        StageLatency(
            stage=stage,
            count=len(seconds),
            p50=percentile(seconds, 50) or 0.0,
            p95=percentile(seconds, 95) or 0.0,
        )
        for stage, seconds in sorted(by_stage.items())
    ]


def ready_at(
    attempt: StageAttempt, run_created: datetime, siblings: Iterable[StageAttempt]
) -> datetime:
    """When a first attempt's stage became ready: its run's creation, or the last of
    the run's stages that succeeded before the attempt was recorded (the stages it
    waited on). A stage that ran beside an unrelated one may be counted ready a little
    late, which makes its wait look shorter, never longer."""
    recorded = as_utc(attempt.created_at)
    done = [
        as_utc(s.finished_at)
        for s in siblings
        if s.id != attempt.id
        and s.state == AttemptState.SUCCEEDED
        and s.finished_at is not None
        and as_utc(s.finished_at) <= recorded
    ]
    return max([as_utc(run_created), *done])


def gpu_capacity(settings: Settings) -> dict[str, int]:
    """GPU slots by placement, as the configuration offers them: the local machine's
    GPUs, or each cluster's GPU Jobs at once."""
    if settings.executor == "local":
        return {"local": settings.local.gpus}
    return {c.name: (c.gpu.slots if c.gpu else 0) for c in settings.kubernetes.clusters}


def load_rows(
    counts: Iterable[tuple[str | None, str, str, bool, int]],
) -> list[PlacementLoad]:
    """(placement, accelerator, state, started, count) rows as queued/running pairs."""
    load: dict[tuple[str, str], PlacementLoad] = {}
    for placement, accelerator, state, started, count in counts:
        key = (placement or UNPLACED, accelerator)
        row = load.setdefault(key, PlacementLoad(placement=key[0], accelerator=key[1]))
        if state == AttemptState.RUNNING and started:
            row.running += count
        else:
            row.queued += count
    return [load[key] for key in sorted(load)]


def slots_rows(in_use: Mapping[str, int], capacity: Mapping[str, int]) -> list[GpuSlots]:
    places = sorted(set(in_use) | {p for p, n in capacity.items() if n > 0})
    return [GpuSlots(placement=p, in_use=in_use.get(p, 0), total=capacity.get(p)) for p in places]


def watcher_lag(
    clips: Sequence[tuple[datetime, datetime | None, str | None]],
    since: datetime,
    now: datetime,
    truncated: bool,
    bucket: timedelta = timedelta(minutes=10),
) -> WatcherLag:
    """(recorded, uploaded, found by) of the clips recorded in the window."""
    delays: list[float] = []
    sources: Counter[str] = Counter()
    buckets: dict[datetime, DelayBucket] = {}
    start = _minute(since)
    at = start
    while at <= now:
        buckets[at] = DelayBucket(at=at, clips=0, longest=0.0)
        at += bucket
    step = bucket.total_seconds()
    for recorded, uploaded, source in clips:
        if source == UPLOADED:
            continue
        sources[source or "unknown"] += 1
        if uploaded is None:
            continue
        delay = max(0.0, (as_utc(recorded) - as_utc(uploaded)).total_seconds())
        delays.append(delay)
        offset = (as_utc(recorded) - start).total_seconds()
        slot = buckets.get(start + timedelta(seconds=step * math.floor(offset / step)))
        if slot is not None:
            slot.clips += 1
            slot.longest = max(slot.longest, delay)
    last = max((as_utc(r) for r, _, _ in clips), default=None)
    return WatcherLag(
        last_recorded_at=last,
        seconds_since_last=(now - last).total_seconds() if last else None,
        clips=sum(sources.values()),
        by_source=dict(sources),
        p50=percentile(delays, 50),
        p95=percentile(delays, 95),
        longest=max(delays, default=None),
        buckets=list(buckets.values()),
        truncated=truncated,
    )


# --- reads ----------------------------------------------------------------------------


def finished_runs(store: Store, since: datetime) -> tuple[list[tuple[Any, ...]], bool]:
    """(id, status, finished at, error if failed) of the runs finished since ``since``,
    newest first, at most ``MAX_ROWS``: a range of the finished_at index, so a quiet day
    costs less than a busy one, and a long history nothing."""
    # sqlmodel's select is typed for up to four columns; it takes any number.
    newest = (
        select(  # type: ignore[call-overload]
            col(Run.id).label("id"),
            col(Run.status).label("status"),
            col(Run.finished_at).label("finished_at"),
            case((col(Run.status) == RunStatus.FAILED, col(Run.error)), else_=None).label("error"),
            col(Run.finished_seq).label("seq"),
        )
        .where(col(Run.finished_seq).is_not(None), col(Run.finished_at) >= since)
        .order_by(col(Run.finished_seq).desc())
        .limit(MAX_ROWS)
        .subquery()
    )
    query = (
        select(  # type: ignore[call-overload]
            newest.c.id, newest.c.status, newest.c.finished_at, newest.c.error, newest.c.seq
        )
        .where(newest.c.finished_at >= since)
        .order_by(newest.c.seq.desc())
    )
    with store.session() as session:
        rows = [tuple(r) for r in session.exec(query).all()]
    return rows, len(rows) >= MAX_ROWS


def throughput(
    rows: Sequence[tuple[Any, ...]], since: datetime, now: datetime, truncated: bool
) -> Throughput:
    statuses = Counter(str(r[1]) for r in rows)
    return Throughput(
        minutes=per_minute(((str(r[1]), r[2]) for r in rows), since, now),
        succeeded=statuses[RunStatus.SUCCEEDED],
        failed=statuses[RunStatus.FAILED],
        cancelled=statuses[RunStatus.CANCELLED],
        truncated=truncated,
    )


def stage_latencies(store: Store, since: datetime) -> list[StageLatency]:
    """Succeeded attempts' run times, by stage: the newest ``MAX_ROWS`` finished since
    ``since`` (index on ``stage_attempts.finished_at``)."""
    query = (
        select(StageAttempt.stage, StageAttempt.started_at, StageAttempt.finished_at)
        .where(
            col(StageAttempt.finished_at) >= since,
            col(StageAttempt.state) == AttemptState.SUCCEEDED,
            col(StageAttempt.started_at).is_not(None),
        )
        .order_by(col(StageAttempt.finished_at).desc())
        .limit(MAX_ROWS)
    )
    with store.session() as session:
        return latencies(session.exec(query).all())  # type: ignore[arg-type]


def attempt_counts(store: Store) -> list[tuple[str | None, str, str, bool, int]]:
    """Unfinished attempts by placement, accelerator, state and whether their code has
    started (index on ``stage_attempts.state``: only the unfinished are read)."""
    started = col(StageAttempt.started_at).is_not(None)
    query = (
        select(  # type: ignore[call-overload]
            StageAttempt.placement,
            StageAttempt.accelerator,
            StageAttempt.state,
            started,
            func.count(),
        )
        .where(col(StageAttempt.state).in_(IN_FLIGHT))
        .group_by(StageAttempt.placement, StageAttempt.accelerator, StageAttempt.state, started)
    )
    with store.session() as session:
        return [(p, a, str(s), bool(b), int(n)) for p, a, s, b, n in session.exec(query).all()]


def attempt_load(store: Store) -> list[PlacementLoad]:
    return load_rows(attempt_counts(store))


def gpu_slots_in_use(store: Store) -> dict[str, int]:
    """GPU executions unfinished, by placement: a batch of clips in one process holds
    one slot, as the engine counts them (index on ``stage_attempts.state``)."""
    execution = func.coalesce(col(StageAttempt.batch), col(StageAttempt.id))
    query = (
        select(StageAttempt.placement, func.count(func.distinct(execution)))
        .where(col(StageAttempt.state).in_(IN_FLIGHT), col(StageAttempt.accelerator) == "gpu")
        .group_by(StageAttempt.placement)
    )
    with store.session() as session:
        return {p or UNPLACED: int(n) for p, n in session.exec(query).all()}


def gpu_waits(store: Store, since: datetime, limit: int = 10_000) -> GpuWaits:
    """The waits of first attempts that started on a GPU since ``since``: the newest
    ``limit`` (index on ``stage_attempts.finished_at``, and the unfinished ones by
    ``state``), then their runs' other attempts (index on ``run_id``)."""
    gpu_first = (
        col(StageAttempt.accelerator) == "gpu",
        col(StageAttempt.attempt) == 1,
        col(StageAttempt.started_at).is_not(None),
        col(StageAttempt.started_at) >= since,
    )
    with store.session() as session:
        finished = session.exec(
            select(StageAttempt)
            .where(col(StageAttempt.finished_at) >= since, *gpu_first)
            .order_by(col(StageAttempt.finished_at).desc())
            .limit(limit)
        ).all()
        running = session.exec(
            select(StageAttempt)
            .where(col(StageAttempt.state).in_(IN_FLIGHT), *gpu_first)
            .limit(limit)
        ).all()
        waiting_now = session.exec(
            select(func.count())
            .select_from(StageAttempt)
            .where(
                col(StageAttempt.state).in_(IN_FLIGHT),
                col(StageAttempt.accelerator) == "gpu",
                col(StageAttempt.started_at).is_(None),
            )
        ).one()
        attempts = list({a.id: a for a in [*finished, *running]}.values())
        run_ids = sorted({a.run_id for a in attempts})
        created: dict[str, datetime] = {}
        siblings: dict[str, list[StageAttempt]] = defaultdict(list)
        for chunk in range(0, len(run_ids), 500):
            ids = run_ids[chunk : chunk + 500]
            for run_id, at in session.exec(
                select(Run.id, Run.created_at).where(col(Run.id).in_(ids))
            ).all():
                created[run_id] = at
            for sibling in session.exec(
                select(StageAttempt).where(col(StageAttempt.run_id).in_(ids))
            ).all():
                siblings[sibling.run_id].append(sibling)
    waits = [
        max(
            0.0,
            (
                as_utc(a.started_at) - ready_at(a, created[a.run_id], siblings[a.run_id])
            ).total_seconds(),
        )
        for a in attempts
        if a.started_at is not None and a.run_id in created
    ]
    return GpuWaits(
        count=len(waits),
        p50=percentile(waits, 50),
        p95=percentile(waits, 95),
        longest=max(waits, default=None),
        waiting_now=int(waiting_now),
        truncated=len(finished) >= limit or len(running) >= limit,
    )


def recorded_clips(
    store: Store, since: datetime
) -> tuple[list[tuple[datetime, datetime | None, str | None]], bool]:
    """(recorded, uploaded, found by) of the newest ``MAX_ROWS`` clips recorded since
    ``since`` (index ``ix_clips_discovered``)."""
    query = (
        select(Clip.discovered_at, Clip.last_modified, Clip.discovered_by)
        .where(col(Clip.discovered_at) >= since)
        .order_by(col(Clip.discovered_at).desc())
        .limit(MAX_ROWS)
    )
    with store.session() as session:
        rows = [tuple(r) for r in session.exec(query).all()]
    return rows, len(rows) >= MAX_ROWS  # type: ignore[return-value]


def discovery_delay(store: Store, now: datetime, window: timedelta) -> float:
    """The longest wait, among clips recorded in the last ``window``, from upload to
    record (0 when none was recorded): one aggregate over an index range of
    ``ix_clips_discovered``, for /metrics."""
    recorded, uploaded = col(Clip.discovered_at), col(Clip.last_modified)
    if store.engine.dialect.name == "postgresql":
        seconds: Any = func.extract("epoch", recorded - uploaded)
    else:  # SQLite keeps datetimes as ISO text, which julianday() reads
        seconds = (func.julianday(recorded) - func.julianday(uploaded)) * 86400.0
    query = select(func.max(seconds)).where(
        recorded >= now - window,
        uploaded.is_not(None),
        func.coalesce(col(Clip.discovered_by), "") != UPLOADED,
    )
    with store.session() as session:
        value = session.exec(query).one()
    return max(0.0, float(value or 0.0))


def overview(store: Store, now: datetime, capacity: Mapping[str, int]) -> Overview:
    """Everything the operations page shows, as of ``now``."""
    since = now - WINDOW
    runs, runs_truncated = finished_runs(store, since)
    clips, clips_truncated = recorded_clips(store, since)
    failed = [(r[0], r[3], r[2]) for r in runs if str(r[1]) == RunStatus.FAILED]
    return Overview(
        now=now,
        since=since,
        throughput=throughput(runs, since, now, runs_truncated),
        stages=stage_latencies(store, since),
        load=attempt_load(store),
        gpu_slots=slots_rows(gpu_slots_in_use(store), capacity),
        gpu_waits=gpu_waits(store, since),
        failures=top_reasons(failed),
        watcher=watcher_lag(clips, since, now, clips_truncated),
    )
