"""/metrics as Prometheus reads it: it answers while camflow is busy, every family has
the type its name promises, and counters and histograms only ever go up."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import event

from orchestrator.api.app import create_app
from orchestrator.api.keys import create_key
from orchestrator.domain.layout import clip_id, upload_key
from orchestrator.service import Runtime, drive, open_runtime
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store import Clip, Run, StageAttempt
from orchestrator.store.models import AttemptState, Role, RunStatus, utcnow

STAGES = PROJECT_ROOT / "tests" / "stages"
#: Every camflow family and its type (the parser names a counter without `_total`).
FAMILIES = {
    "camflow_clips_discovered": "counter",
    "camflow_runs_finished": "counter",
    "camflow_stage_attempts_finished": "counter",
    "camflow_stage_duration_seconds": "histogram",
    "camflow_engine_ticks": "counter",
    "camflow_engine_tick_failures": "counter",
    "camflow_engine_last_tick_timestamp_seconds": "gauge",
    "camflow_runs_active": "gauge",
    "camflow_stage_attempts_in_flight": "gauge",
    "camflow_watcher_lag_seconds": "gauge",
    "camflow_rejected_objects": "gauge",
    "camflow_watcher_discovery_delay_seconds": "gauge",
    "camflow_gpu_slots": "gauge",
    "camflow_gpu_slots_in_use": "gauge",
    "camflow_gpu_wait_seconds": "histogram",
    "camflow_gpu_waiting": "gauge",
    "camflow_gpu_wait_oldest_seconds": "gauge",
    "camflow_gpu_fallback_after_seconds": "gauge",
    "camflow_webhook_attempts": "counter",
    "camflow_webhook_deliveries_pending": "gauge",
    "camflow_webhook_deliveries_failed": "gauge",
}
_numbers = itertools.count(1)

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _clip(runtime: Runtime, tenant: str = "acme") -> Clip:
    bucket = runtime.settings.s3.ingest_bucket
    key = upload_key(tenant, "door", datetime.now(UTC), n=100_000 + next(_numbers))
    clip = Clip(
        id=clip_id(bucket, key, "e"),
        bucket=bucket,
        key=key,
        etag="e",
        size=1,
        tenant=tenant,
        camera="door",
    )
    runtime.store.record_clips([clip])
    return clip


def _run(runtime: Runtime, status: RunStatus) -> Run:
    """A run of its own clip, moved to ``status`` as the engine would."""
    clip = _clip(runtime)
    run = Run(id=f"r-{clip.id[2:18]}", clip_id=clip.id, pipeline="faces")
    runtime.store.plan(clip.id, [run])
    if status != RunStatus.PENDING:
        runtime.store.mark_run_started(run.id, utcnow())
    if status.terminal:
        runtime.store.finish_run(run.id, status, None, None, None, utcnow())
    return run


def _attempt(runtime: Runtime, run: Run, number: int, **values: Any) -> StageAttempt:
    """Stage ``decode`` attempt ``number`` of ``run``, recorded and then updated with
    ``values`` (state, placement...) as the engine's steps would leave it."""
    attempt = runtime.store.add_attempt(
        StageAttempt(
            id=f"{run.id}-decode-{number}",
            run_id=run.id,
            stage="decode",
            attempt=number,
            algorithm="decode@1.0.0",
            accelerator=values.pop("accelerator", "cpu"),
            executor="local",
        )
    )
    if values:
        assert runtime.store.update_attempt(attempt.id, **values)
    return attempt


def _every_state(runtime: Runtime) -> Run:
    """Runs and attempts in every state the engine leaves them in; returns a running
    run for more attempts."""
    now = utcnow()
    ran = {"started_at": now - timedelta(seconds=3), "finished_at": now}
    _attempt(runtime, _run(runtime, RunStatus.PENDING), 1)  # recorded, not placed
    _attempt(  # placed on a cluster, held there (its GPU quota is full)
        runtime,
        _run(runtime, RunStatus.RUNNING),
        1,
        placement="dev",
        accelerator="gpu",
        reason="quota full",
    )
    _attempt(
        runtime,
        _run(runtime, RunStatus.RUNNING),
        1,
        state=AttemptState.RUNNING,
        placement="local",
        handle="h-1",
        started_at=now,
    )
    retried = _run(runtime, RunStatus.RUNNING)
    _attempt(runtime, retried, 1, state=AttemptState.FAILED, placement="local", exit_code=1, **ran)
    _attempt(runtime, retried, 2, state=AttemptState.RUNNING, placement="prod", handle="h-2")
    _attempt(runtime, _run(runtime, RunStatus.SUCCEEDED), 1, state=AttemptState.SUCCEEDED, **ran)
    _attempt(
        runtime,
        _run(runtime, RunStatus.FAILED),
        1,
        state=AttemptState.FAILED,
        exit_code=2,
        permanent=True,
        **ran,
    )
    _attempt(runtime, _run(runtime, RunStatus.FAILED), 1, state=AttemptState.FAILED, timed_out=True)
    _run(runtime, RunStatus.CANCELLED)
    return retried


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[Runtime, str]]:
    """A runtime and the base URL of its API, served by uvicorn as `camflow serve` does."""
    from orchestrator.cli import start_api

    settings = settings.model_copy(
        update={"api": settings.api.model_copy(update={"port": _free_port()})}
    )
    with open_runtime(settings) as runtime:
        server = start_api(runtime)
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.02)
        try:
            yield runtime, f"http://127.0.0.1:{settings.api.port}"
        finally:
            server.should_exit = True


def test_metrics_answers_under_load_with_attempts_in_every_state(
    served: tuple[Runtime, str],
) -> None:
    runtime, base = served
    busy = _every_state(runtime)
    _, text = create_key(runtime.store, "acme", Role.CUSTOMER)
    customer = {"Authorization": f"Bearer {text}"}
    stop = threading.Event()

    def churn() -> None:
        """Attempts keep arriving, being placed, running and finishing meanwhile."""
        for number in itertools.count(3):
            if stop.is_set():
                return
            attempt = _attempt(runtime, busy, number)
            for values in (
                {"placement": "prod", "accelerator": "gpu"},
                {"state": AttemptState.RUNNING, "handle": f"h-{number}"},
                {"state": AttemptState.SUCCEEDED, "finished_at": utcnow()},
            ):
                time.sleep(0.005)
                runtime.store.update_attempt(attempt.id, **values)

    def client(n: int) -> list[tuple[str, int | str, str]]:
        answers: list[tuple[str, int | str, str]] = []
        paths = ["/metrics", "/v1/runs", "/metrics", "/healthz"]
        with httpx.Client(base_url=base, headers=customer, timeout=10) as http:
            for path in itertools.islice(itertools.cycle(paths), n % 4, None):
                if stop.is_set():
                    return answers
                try:
                    response = http.get(path)
                    answers.append((path, response.status_code, response.text))
                except httpx.HTTPError as exc:  # a connection lost with a failing scrape
                    answers.append((path, type(exc).__name__, str(exc)))
        return answers

    mover = threading.Thread(target=churn, daemon=True)
    mover.start()
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client, n) for n in range(16)]
        time.sleep(2.5)
        stop.set()
        answers = [answer for future in futures for answer in future.result()]
    mover.join(timeout=10)

    failed = [(path, status, body[:200]) for path, status, body in answers if status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:3]}"
    scrapes = [body for path, _, body in answers if path == "/metrics"]
    assert len(scrapes) >= 20
    for body in scrapes:
        families = {f.name: f for f in text_string_to_metric_families(body)}
        in_flight = families["camflow_stage_attempts_in_flight"].samples
        assert {s.labels["placement"] for s in in_flight} == {"unplaced", "dev", "local", "prod"}
        active = {s.labels["status"]: s.value for s in families["camflow_runs_active"].samples}
        assert active == {"pending": 1.0, "running": 3.0}


# --- what Prometheus may rely on ----------------------------------------------------------


def _series(text: str) -> tuple[dict[str, str], Series]:
    """Each family's type, and the value of each counter and histogram sample."""
    types: dict[str, str] = {}
    values: Series = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        if family.type in ("counter", "histogram"):
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, values


def _histogram_problems(text: str) -> list[str]:
    problems = []
    for family in text_string_to_metric_families(text):
        if family.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], list[Sample]] = {}
        counts: dict[tuple[tuple[str, str], ...], float] = {}
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            if sample.name.endswith("_bucket"):
                series.setdefault(labels, []).append(sample)
            elif sample.name.endswith("_count"):
                counts[labels] = sample.value
        for labels, buckets in series.items():
            ordered = sorted(buckets, key=lambda s: float(s.labels["le"]))
            values = [s.value for s in ordered]
            if values != sorted(values):
                problems.append(f"{family.name}{dict(labels)}: buckets not cumulative {values}")
            if ordered[-1].labels["le"] != "+Inf" or values[-1] != counts.get(labels):
                problems.append(f"{family.name}{dict(labels)}: +Inf is not the count")
    return problems


def _type_problems(text: str) -> list[str]:
    problems = []
    types, _ = _series(text)
    mine = {name: kind for name, kind in types.items() if name.startswith("camflow_")}
    if mine != FAMILIES:
        problems.append(f"camflow families {mine} are not {FAMILIES}")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if (kind == "counter") != name.endswith("_total"):
                problems.append(f"{name} is a {kind}: only counters, and all, end in _total")
    return problems + _histogram_problems(text)


def _history(runtime: Runtime, attempts: int) -> None:
    """``attempts`` short attempts that finished an hour ago (another replica's, or
    before this process started)."""
    run = _run(runtime, RunStatus.SUCCEEDED)
    long_ago = utcnow() - timedelta(hours=1)
    rows = [
        StageAttempt(
            id=f"{run.id}-probe-{n}",
            run_id=run.id,
            stage="probe",
            attempt=n,
            algorithm="probe@1.0.0",
            accelerator="cpu",
            executor="local",
            state=AttemptState.SUCCEEDED,
            placement="local",
            started_at=long_ago,
            finished_at=long_ago + timedelta(seconds=0.1),
        )
        for n in range(1, attempts + 1)
    ]
    with runtime.store.session() as session:
        session.add_all(rows)
        session.commit()


def _work(runtime: Runtime) -> None:
    """Clips uploaded, found by the watcher and run through the engine: a stage that
    succeeds, one that fails once and then succeeds, one with bad input, one that
    hangs past its timeout."""
    for mode in ("ok", "flaky", "bad", "hang"):
        key = upload_key(mode, "cam", datetime.now(UTC))
        runtime.s3.client.put_object(Bucket=runtime.settings.s3.ingest_bucket, Key=key, Body=b"x")
    assert runtime.watcher.tick() == 4
    runtime.reconciler.plan_new_clips()
    runs = [run.id for run, _clip in runtime.store.list_runs() if run.pipeline != "faces"]
    drive(runtime, runs, timeout=60, interval=0.1)


def test_metrics_are_typed_and_never_go_backwards(settings: Settings) -> None:
    settings = settings.model_copy(
        update={
            "algorithm_dirs": [STAGES],
            "pipeline_dirs": [STAGES / "pipelines"],
            "local": settings.local.model_copy(
                update={"max_parallel": 4, "kill_grace_seconds": 0.5}
            ),
        }
    )
    with open_runtime(settings) as runtime:
        client = TestClient(create_app(runtime))
        _history(runtime, 1000)  # a window of "the newest 1,000" would now drop some
        before = client.get("/metrics").text
        _work(runtime)
        after = client.get("/metrics").text

    problems = _type_problems(before) + _type_problems(after)
    (_, old), (_, new) = _series(before), _series(after)
    for series, value in old.items():
        if new.get(series, -1.0) < value:
            problems.append(f"{series} went from {value} to {new.get(series)}")
    assert problems == []

    def rise(name: str, **labels: str) -> float:
        series = (name, tuple(sorted(labels.items())))
        return new[series] - old.get(series, 0.0)

    assert rise("camflow_clips_discovered_total", source="sweep") == 4
    outcomes = ("succeeded", "failed", "failed_permanently", "timed_out")
    assert [
        rise("camflow_stage_attempts_finished_total", stage="probe", outcome=o) for o in outcomes
    ] == [2, 1, 1, 1]
    assert rise("camflow_stage_duration_seconds_count", stage="probe") == 5
    assert rise("camflow_stage_duration_seconds_bucket", stage="probe", le="+Inf") == 5
    assert rise("camflow_stage_duration_seconds_sum", stage="probe") >= 2  # the hang alone
    finished = {
        (pipeline, status): rise("camflow_runs_finished_total", pipeline=pipeline, status=status)
        for pipeline, status in [
            ("probe-ok", "succeeded"),
            ("probe-flaky", "succeeded"),
            ("probe-bad", "failed"),
            ("probe-hang", "failed"),
        ]
    }
    assert set(finished.values()) == {1}
    assert rise("camflow_engine_ticks_total") >= 3
    ticked = next(
        f.samples[0].value
        for f in text_string_to_metric_families(after)
        if f.name == "camflow_engine_last_tick_timestamp_seconds"
    )
    assert abs(ticked - time.time()) < 60


def test_a_scrape_reads_aggregates_not_history(settings: Settings) -> None:
    """What a scrape costs must not grow with the attempts ever run."""
    with open_runtime(settings) as runtime:
        _every_state(runtime)
        _history(runtime, 1100)
        statements: list[str] = []

        def capture(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements.append(" ".join(statement.lower().split()))

        event.listen(runtime.store.engine, "before_cursor_execute", capture)
        try:
            body = TestClient(create_app(runtime)).get("/metrics")
        finally:
            event.remove(runtime.store.engine, "before_cursor_execute", capture)
    assert body.status_code == 200
    reads = [s for s in statements if s.startswith("select")]
    assert reads and all("count(" in s or "max(" in s for s in reads), reads
    # Finished runs are counted as they finish, not read back at each scrape.
    assert not [s for s in reads if "from runs" in s and "in (" not in s], reads
