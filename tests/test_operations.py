"""The operations view: the store's 24-hour summaries (SQLite and PostgreSQL), the
charts they draw, the admin-only page, the dashboard's event stream, and the GPU
queue the engine reports."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlmodel import select

from orchestrator import operations, telemetry
from orchestrator.api import charts, live
from orchestrator.api.app import create_app
from orchestrator.api.charts import Series
from orchestrator.api.keys import create_key
from orchestrator.domain.layout import clip_id, upload_key
from orchestrator.operations import (
    UNPLACED,
    PlacementLoad,
    gpu_capacity,
    load_rows,
    overview,
    per_minute,
    percentile,
    reason_class,
    top_reasons,
)
from orchestrator.service import Runtime, drive, open_runtime
from orchestrator.settings import PROJECT_ROOT, Settings, load_settings
from orchestrator.store import Clip, Run, StageAttempt, Store
from orchestrator.store.models import AttemptState, Role, RunStatus, as_utc

NOW = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)
STAGES = PROJECT_ROOT / "tests" / "stages"


# --- pure parts -----------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 10, 50, 95, 99, 100])
def test_percentiles_match_numpy(q: float) -> None:
    values = [0.3, 7.0, 1.5, 2.25, 9.75, 4.0, 4.0, 0.01]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], q) is None


def test_every_minute_of_the_window_is_a_bucket_and_each_run_lands_in_its_own() -> None:
    since = NOW - timedelta(hours=24)
    finished = [
        ("succeeded", NOW - timedelta(seconds=10)),
        ("succeeded", NOW - timedelta(seconds=25)),
        ("failed", NOW - timedelta(minutes=3, seconds=1)),
        ("cancelled", NOW - timedelta(minutes=3)),
        ("succeeded", since - timedelta(minutes=1)),  # before the window
    ]
    minutes = per_minute(finished, since, NOW)
    assert len(minutes) == 24 * 60 + 1
    assert minutes[0].at == since.replace(second=0) and minutes[-1].at == NOW.replace(second=0)
    assert (minutes[-1].succeeded, minutes[-1].failed) == (2, 0)
    assert (minutes[-4].succeeded, minutes[-4].failed) == (0, 1)
    assert sum(m.succeeded + m.failed for m in minutes) == 3


def test_a_reason_is_its_message_without_particulars() -> None:
    one = (
        "stage decode failed: the clip is not a readable video (33456 bytes that no demuxer "
        "accepts) for c-4f51e1697785c914 in s3://bucket/acme/door/x.mp4 'lobby'"
    )
    other = one.replace("33456", "1024").replace("4f51e1697785c914", "0123456789abcdef")
    assert reason_class(one) == reason_class(other)
    assert "33456" not in reason_class(one) and "lobby" not in reason_class(one)
    assert reason_class(one) != reason_class("stage faces failed: exited with code 1")
    assert reason_class("") == "no reason recorded"


def test_top_reasons_count_each_cause_once_with_its_newest_runs() -> None:
    at = NOW - timedelta(minutes=5)
    failed = [(f"r-{n:016x}", f"decode: {n} bytes unreadable", at) for n in range(7)]
    failed.insert(0, ("r-ffffffffffffffff", "faces: exited with code 1", NOW))
    top = top_reasons(failed)
    assert [(r.reason, r.count) for r in top] == [
        ("decode: N bytes unreadable", 7),
        ("faces: exited with code N", 1),
    ]
    assert top[0].run_ids == [f"r-{n:016x}" for n in range(5)]
    assert top[0].example == "decode: 0 bytes unreadable"
    assert top[1].last_at == NOW


def test_load_counts_unstarted_attempts_as_queued() -> None:
    rows = [
        (None, "cpu", "pending", False, 2),
        ("prod", "gpu", "running", False, 3),  # a Job pending for a node
        ("prod", "gpu", "running", True, 1),
        ("local", "cpu", "running", True, 4),
    ]
    assert load_rows(rows) == [
        PlacementLoad(placement="local", accelerator="cpu", queued=0, running=4),
        PlacementLoad(placement="prod", accelerator="gpu", queued=3, running=1),
        PlacementLoad(placement=UNPLACED, accelerator="cpu", queued=2, running=0),
    ]


def test_gpu_capacity_is_what_the_configuration_offers() -> None:
    assert gpu_capacity(load_settings(local={"gpus": 2})) == {"local": 2}
    clusters = load_settings(
        executor="kubernetes",
        kubernetes={
            "clusters": [
                {"name": "dev", "environment": "dev"},
                {"name": "prod", "environment": "prod", "gpu": {"slots": 4}},
            ]
        },
    )
    assert gpu_capacity(clusters) == {"dev": 0, "prod": 4}


# --- the store's summaries --------------------------------------------------------------


def _clip(
    store: Store,
    n: int,
    recorded: datetime,
    uploaded: datetime | None,
    by: str,
    tenant: str = "acme",
) -> Clip:
    key = upload_key(tenant, "door", recorded, n=100_000 + n)
    clip = Clip(
        id=clip_id("ingest", key, "e"),
        bucket="ingest",
        key=key,
        etag="e",
        size=1,
        tenant=tenant,
        camera="door",
        last_modified=uploaded,
        discovered_at=recorded,
        discovered_by=by,
    )
    store.record_clips([clip])
    return clip


def _run(store: Store, clip: Clip, created: datetime) -> Run:
    run = Run(id=f"r-{clip.id[2:18]}", clip_id=clip.id, pipeline="faces", created_at=created)
    store.plan(clip.id, [run])
    return run


def _attempt(store: Store, run: Run, stage: str, **values: Any) -> StageAttempt:
    attempt = StageAttempt(
        id=f"{run.id}-{stage}-{values.get('attempt', 1)}",
        run_id=run.id,
        stage=stage,
        attempt=values.pop("attempt", 1),
        algorithm=f"{stage}@1.0.0",
        accelerator=values.pop("accelerator", "cpu"),
        executor="local",
        created_at=values.pop("created_at", NOW - timedelta(minutes=30)),
        **values,
    )
    with store.session() as session:
        session.add(attempt)
        session.commit()
    return attempt


@dataclass
class History:
    store: Store
    runs: list[Run]


@pytest.fixture
def history(store_url: str) -> Iterator[History]:
    """A day of work: runs that succeeded and failed at known minutes, stage attempts
    with known run times, a GPU stage that waited, attempts in flight, and clips
    found by events, by the sweep and by `camflow process`."""
    store = Store(store_url)
    t = NOW - timedelta(minutes=10)
    clips = [
        _clip(store, 1, t, t - timedelta(seconds=2), "event"),
        _clip(store, 2, t, t - timedelta(seconds=4), "event"),
        _clip(store, 3, t, t - timedelta(seconds=50), "sweep"),
        _clip(store, 4, t, None, "upload"),
        _clip(store, 5, NOW - timedelta(hours=30), NOW - timedelta(hours=30), "event"),
    ]
    runs = [_run(store, c, t) for c in clips]
    # Outcomes: two succeeded at minute -2, one failed at minute -1; one long ago.
    store.finish_run(runs[0].id, RunStatus.SUCCEEDED, None, None, None, NOW - timedelta(minutes=2))
    store.finish_run(runs[1].id, RunStatus.SUCCEEDED, None, None, None, NOW - timedelta(minutes=2))
    store.finish_run(
        runs[2].id,
        RunStatus.FAILED,
        "stage decode failed: the clip is not a readable video (33456 bytes)",
        None,
        None,
        NOW - timedelta(minutes=1),
    )
    store.finish_run(runs[4].id, RunStatus.SUCCEEDED, None, None, None, NOW - timedelta(hours=29))
    # decode ran 1, 2 and 3 s; faces on a GPU 10 s, after waiting 40 s for it.
    for n, seconds in enumerate((1, 2, 3)):
        start = t + timedelta(seconds=n)
        _attempt(
            store,
            runs[n],
            "decode",
            state=AttemptState.SUCCEEDED,
            started_at=start,
            finished_at=start + timedelta(seconds=seconds),
        )
    decoded = t + timedelta(seconds=1)
    _attempt(
        store,
        runs[0],
        "faces",
        accelerator="gpu",
        placement="local",
        state=AttemptState.SUCCEEDED,
        created_at=decoded + timedelta(seconds=39),
        started_at=decoded + timedelta(seconds=40),
        finished_at=decoded + timedelta(seconds=50),
    )
    # In flight: one GPU batch of two clips running, one GPU attempt placed and not
    # started, one CPU attempt not placed yet.
    for n in (1, 2):
        _attempt(
            store,
            runs[3],
            f"batched{n}",
            accelerator="gpu",
            placement="local",
            state=AttemptState.RUNNING,
            batch="b-1",
            handle="h",
            created_at=NOW - timedelta(seconds=20),
            started_at=NOW - timedelta(seconds=10),
        )
    _attempt(
        store,
        runs[3],
        "waiting",
        accelerator="gpu",
        placement="local",
        state=AttemptState.RUNNING,
        handle="h2",
    )
    _attempt(store, runs[3], "unplaced", state=AttemptState.PENDING)
    yield History(store, runs)
    store.close()


def test_the_overview_of_a_day(history: History) -> None:
    o = overview(history.store, NOW, {"local": 2})

    minutes = {m.at: m for m in o.throughput.minutes}
    assert (minutes[NOW.replace(second=0) - timedelta(minutes=2)].succeeded) == 2
    assert (minutes[NOW.replace(second=0) - timedelta(minutes=1)].failed) == 1
    assert (o.throughput.succeeded, o.throughput.failed, o.throughput.truncated) == (2, 1, False)

    latency = {s.stage: s for s in o.stages}
    assert latency["decode"].count == 3
    assert latency["decode"].p50 == pytest.approx(2.0)
    assert latency["decode"].p95 == pytest.approx(2.9)
    assert latency["faces"].p50 == pytest.approx(10.0)

    assert [row.model_dump() for row in o.load] == [
        {"placement": "local", "accelerator": "gpu", "queued": 1, "running": 2},
        {"placement": UNPLACED, "accelerator": "cpu", "queued": 1, "running": 0},
    ]
    # The batch of two holds one slot; the placed, unstarted attempt holds another.
    assert [(s.placement, s.in_use, s.total) for s in o.gpu_slots] == [("local", 2, 2)]
    # faces waited 40 s from decode's end to its start; the batch's two attempts 590 s
    # from their run's creation; the placed one has not started.
    waits = o.gpu_waits
    assert (waits.count, waits.waiting_now) == (3, 1)
    assert (waits.p50, waits.longest) == (pytest.approx(590.0), pytest.approx(590.0))

    [failure] = o.failures
    assert failure.count == 1 and failure.reason.startswith("stage decode failed")
    assert "33456" in failure.example and failure.run_ids == [history.runs[2].id]

    w = o.watcher
    assert w.clips == 3 and w.by_source == {"event": 2, "sweep": 1}
    assert w.longest == pytest.approx(50.0) and w.p50 == pytest.approx(4.0)
    assert w.seconds_since_last == pytest.approx(600.0)
    assert max(b.longest for b in w.buckets) == pytest.approx(50.0)


def test_a_gpu_stage_is_ready_when_the_stages_before_it_are_done(history: History) -> None:
    with history.store.session() as session:
        attempts = list(
            session.exec(select(StageAttempt).where(StageAttempt.run_id == history.runs[0].id))
        )
    [faces] = [a for a in attempts if a.stage == "faces"]
    ready = operations.ready_at(faces, history.runs[0].created_at, attempts)
    assert (as_utc(faces.started_at) - ready).total_seconds() == pytest.approx(40.0)


def test_the_discovery_delay_reads_one_aggregate_on_both_dialects(history: History) -> None:
    store = history.store
    # Clip 3, found by the sweep 50 s after its upload, is the longest of the last 15 min;
    # `camflow process`'s upload (no LastModified) does not count.
    assert operations.discovery_delay(store, NOW, timedelta(minutes=15)) == pytest.approx(
        50.0, abs=0.01
    )
    assert operations.discovery_delay(store, NOW, timedelta(minutes=5)) == 0.0


def test_every_read_is_bounded(history: History) -> None:
    store = history.store
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.lower().split()))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        overview(store, NOW, {})
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    reads = [s for s in statements if s.startswith("select")]
    assert len(reads) >= 6
    for read in reads:
        # A LIMIT, an aggregate, or only the unfinished attempts or one batch of runs.
        bounded = (
            " limit " in read
            or "count(" in read
            or "stage_attempts.state in" in read
            or "runs.id in" in read
            or "stage_attempts.run_id in" in read
        )
        assert bounded, read


# --- charts ---------------------------------------------------------------------------


def _svg(markup: str) -> ET.Element:
    return ET.fromstring(markup)


def test_charts_are_accessible_svg_with_their_data_escaped() -> None:
    times = [NOW - timedelta(minutes=n) for n in range(5, 0, -1)]
    line = _svg(
        charts.time_lines("Clips <per> minute", times, [Series("succeeded", [0, 1, 3, 0, 2])])
    )
    ns = "{http://www.w3.org/2000/svg}"
    assert line.get("role") == "img"
    title, desc = line.find(f"{ns}title"), line.find(f"{ns}desc")
    assert title is not None and title.text == "Clips <per> minute"
    assert desc is not None and line.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
    [polyline] = line.findall(f"{ns}polyline")
    ys = [float(p.split(",")[1]) for p in (polyline.get("points") or "").split()]
    assert ys.index(min(ys)) == 2  # the highest point is the minute with 3

    bars = _svg(
        charts.bars(
            "Stages",
            ["decode", "<script>alert(1)</script>"],
            [Series("p50", [1.0, 2.0]), Series("p95", [3.0, 8.0])],
            unit=" s",
        )
    )
    rects = bars.findall(f"{ns}rect[@class='bar']")
    assert [r.get("data-value") for r in rects] == ["1", "3", "2", "8"]
    widths = [float(r.get("width") or 0) for r in rects]
    assert widths[3] == max(widths) and widths[0] < widths[1]
    assert "<script>" not in charts.bars("x", ["<script>"], [Series("p50", [1.0])])
    assert _svg(charts.bars("Nothing", [], [])).find(f"{ns}text") is not None


def test_axis_labels_are_short_and_distinct() -> None:
    ticks = [0.02 * k / 4 for k in range(5)]
    assert [charts.number(t) for t in ticks] == ["0", "0.005", "0.01", "0.015", "0.02"]
    assert [charts.number(v) for v in (2.5, 1200, 15000)] == ["2.5", "1.2k", "15k"]


def test_axis_tops_are_round() -> None:
    assert [charts.nice_ceiling(v) for v in (0, 0.3, 1, 3, 7, 11, 4100)] == [
        1.0,
        0.5,
        1.0,
        5.0,
        10.0,
        20.0,
        5000.0,
    ]


# --- the page and its stream ------------------------------------------------------------


def _sign_in(client: httpx.Client | TestClient, key: str) -> None:
    page = client.get("/dashboard/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text
    answer = client.post("/dashboard/login", data={"key": key, "csrf": token.group(1)})
    assert answer.status_code in (200, 303), answer.text


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    with open_runtime(settings) as runtime:
        yield runtime


def test_the_page_is_for_admins_and_has_no_meta_refresh(runtime: Runtime) -> None:
    _, admin = create_key(runtime.store, "ops", Role.ADMIN)
    _, customer = create_key(runtime.store, "acme", Role.CUSTOMER)
    anonymous = TestClient(create_app(runtime), follow_redirects=False)
    assert anonymous.get("/dashboard/operations").headers["location"] == "/dashboard/login"

    client = TestClient(create_app(runtime))
    _sign_in(client, customer)
    assert client.get("/dashboard/operations").status_code == 403
    runs = client.get("/dashboard").text
    assert 'http-equiv="refresh"' not in runs and "/dashboard/operations" not in runs
    assert 'src="/dashboard/live.js" data-stream="/dashboard/events"' in runs

    client = TestClient(create_app(runtime))
    _sign_in(client, admin)
    page = client.get("/dashboard/operations")
    assert page.status_code == 200
    assert 'http-equiv="refresh"' not in page.text
    assert 'data-stream="/dashboard/events?operations=true"' in page.text
    for section in ("throughput", "stages", "load", "gpu", "watcher", "failures"):
        assert f'id="{section}"' in page.text
    assert page.text.count('role="img"') >= 6
    script = client.get("/dashboard/live.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "new EventSource(stream)" in script.text


def test_the_dashboard_stream_needs_a_session_and_tells_of_finished_runs(
    settings: Settings,
) -> None:
    from orchestrator.cli import start_api
    from tests.serving import free_port

    settings = settings.model_copy(
        update={"api": settings.api.model_copy(update={"port": free_port()})}
    )
    with open_runtime(settings) as runtime:
        server = start_api(runtime)
        base = f"http://127.0.0.1:{settings.api.port}"
        try:
            _, customer = create_key(runtime.store, "acme", Role.CUSTOMER)
            with httpx.Client(base_url=base, timeout=10) as client:
                refused = client.get("/dashboard/events")
                assert refused.status_code == 401
                _sign_in(client, customer)
                with client.stream("GET", "/dashboard/events") as stream:
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    lines = stream.iter_lines()
                    assert next(lines).startswith(": camflow")
                    # A run of the customer's tenant finishes, and one of another's.
                    for tenant in ("other", "acme"):
                        n = 9 if tenant == "acme" else 8
                        clip = _clip(runtime.store, n, NOW, NOW, "event", tenant)
                        run = _run(runtime.store, clip, NOW)
                        runtime.store.finish_run(run.id, RunStatus.SUCCEEDED, None, None, None, NOW)
                    seen = []
                    for line in lines:
                        seen.append(line)
                        if line.startswith("data:") and "run.finished" in "".join(seen):
                            break
                    assert "event: run.finished" in seen
                    assert seen[seen.index("event: run.finished") + 1] == (
                        f'data: {{"id": "{run.id}", "status": "succeeded"}}'
                    )
        finally:
            server.should_exit = True


def test_a_page_follows_only_a_run_its_key_may_see(history: History) -> None:
    store = history.store
    run = history.runs[0].id  # tenant acme's
    mine, _ = create_key(store, "acme", Role.CUSTOMER)
    theirs, _ = create_key(store, "other", Role.CUSTOMER)
    admin, _ = create_key(store, "ops", Role.ADMIN)
    assert live.watched_run(store, mine, run) == run
    assert live.watched_run(store, admin, run) == run
    assert live.watched_run(store, theirs, run) is None
    assert live.watched_run(store, mine, None) is None


# --- the GPU queue the engine reports ---------------------------------------------------


def test_the_gpu_queue_is_reported_while_the_engine_reports_it() -> None:
    clock = [100.0]
    queue = telemetry.GpuQueue(clock=lambda: clock[0])
    queue.update([("faces", "faces", 30.0, 60.0), ("faces", "faces", 90.0, 60.0)])
    families = {f.name: f for f in queue.collect()}
    [count] = families["camflow_gpu_waiting"].samples
    [oldest] = families["camflow_gpu_wait_oldest_seconds"].samples
    [after] = families["camflow_gpu_fallback_after_seconds"].samples
    assert (count.value, oldest.value, after.value) == (2, 90.0, 60.0)
    assert count.labels == {"pipeline": "faces", "stage": "faces"}
    clock[0] += telemetry.GPU_QUEUE_FRESH_SECONDS + 1  # the engine stopped reporting
    assert all(not f.samples for f in queue.collect())


def test_the_engine_reports_gpu_waits_and_fallbacks(settings: Settings, tmp_path: Path) -> None:
    """Three clips of a GPU stage on one GPU, one at a time: one starts on the GPU at
    once, the others wait and, past the stage's one-second fallback, run on the CPU."""
    settings = settings.model_copy(
        update={
            "algorithm_dirs": [STAGES],
            "pipeline_dirs": [STAGES / "pipelines"],
            "local": settings.local.model_copy(update={"gpus": 1, "max_parallel": 2}),
            "engine": settings.engine.model_copy(update={"batch_max_size": 1}),
        }
    )

    def count(accelerator: str) -> float:
        samples = telemetry.GPU_WAIT.collect()[0].samples
        return sum(
            s.value
            for s in samples
            if s.name.endswith("_count")
            and s.labels == {"stage": "probe", "accelerator": accelerator}
        )

    before = {a: count(a) for a in ("gpu", "cpu")}
    queued: list[float] = []
    with open_runtime(settings) as runtime:
        for n in range(3):
            key = upload_key("gpu", "cam", NOW, n=100_000 + n)
            runtime.s3.client.put_object(Bucket=settings.s3.ingest_bucket, Key=key, Body=b"x")
        runtime.watcher.tick()
        runtime.reconciler.plan_new_clips()
        runs = [r.id for r, _ in runtime.store.list_runs() if r.pipeline == "probe-gpu"]
        assert len(runs) == 3

        def look(*_: Any) -> None:
            for family in telemetry.GPU_QUEUE.collect():
                if family.name == "camflow_gpu_waiting":
                    queued.extend(s.value for s in family.samples)

        drive(runtime, runs, timeout=60, interval=0.1, on_tick=look)
    assert count("gpu") - before["gpu"] >= 1
    assert count("gpu") + count("cpu") - before["gpu"] - before["cpu"] == 3
    assert queued and max(queued) >= 1  # someone waited for the GPU


def test_the_dashboard_stream_ends_with_its_sign_in(settings: Settings) -> None:
    """Not only a revoked key: a session that expires (or is signed out) while its
    stream is open ends that stream too."""
    from sqlmodel import update

    from orchestrator.cli import start_api
    from orchestrator.store.sessions import DashboardSession
    from tests.serving import free_port

    settings = settings.model_copy(
        update={"api": settings.api.model_copy(update={"port": free_port()})}
    )
    with open_runtime(settings) as runtime:
        server = start_api(runtime)
        try:
            _, customer = create_key(runtime.store, "acme", Role.CUSTOMER)
            base = f"http://127.0.0.1:{settings.api.port}"
            with httpx.Client(base_url=base, timeout=10) as client:
                _sign_in(client, customer)
                with client.stream("GET", "/dashboard/events") as stream:
                    lines = stream.iter_lines()
                    assert next(lines).startswith(": camflow")
                    with runtime.store.session() as session:
                        session.exec(update(DashboardSession).values(expires_at=NOW))  # type: ignore[call-overload]
                        session.commit()
                    seen = []
                    for line in lines:
                        seen.append(line)
                        if line.startswith("data:"):
                            break
                    assert "event: key.revoked" in seen
        finally:
            server.should_exit = True


def test_a_reason_keeps_names_with_numbers_in_them() -> None:
    text = "the clip is not a readable video (33456 bytes): upload an MP4 (H.264), exit 2"
    assert operations.reason_class(text) == (
        "the clip is not a readable video (N bytes): upload an MP4 (H.264), exit N"
    )
