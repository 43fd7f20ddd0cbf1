"""Batches: which ready attempts share a process (pure), the local executor running a
batch in one process with a report per clip, and the engine putting them together."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.domain.layout import upload_key
from orchestrator.engine.batching import Candidate, plan_executions
from orchestrator.engine.decide import StartAttempt
from orchestrator.executors.base import ExecState, StageLaunch
from orchestrator.executors.local import LocalExecutor
from orchestrator.service import drive, open_runtime
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store.models import AttemptState

STAGES = PROJECT_ROOT / "tests" / "stages"


def _start(n: int, accelerator: str = "cpu", fallback: str | None = None) -> StartAttempt:
    return StartAttempt(f"r{n}", "decode", 1, accelerator, fallback)


def _candidates(count: int, key: object = "k", **kw: float) -> list[Candidate]:
    return [Candidate(_start(n), key, **kw) for n in range(count)]  # type: ignore[arg-type]


def _runs(executions: list[list[StartAttempt]]) -> list[list[str]]:
    return [[s.run_id for s in e] for e in executions]


# --- which attempts share a process --------------------------------------------------------


def test_a_batch_is_spread_over_the_free_slots_oldest_first() -> None:
    executions = plan_executions(_candidates(8, max_size=8), free_slots=2, free_gpu_slots=0)
    assert _runs(executions) == [[f"r{n}" for n in range(4)], [f"r{n}" for n in range(4, 8)]]


def test_batches_never_exceed_the_stage_maximum() -> None:
    executions = plan_executions(_candidates(10, max_size=3), free_slots=2, free_gpu_slots=0)
    # 4 batches are needed; 2 slots start the 2 oldest now, the rest wait for a slot.
    assert _runs(executions) == [["r0", "r1", "r2"], ["r3", "r4", "r5"]]


def test_attempts_that_cannot_batch_run_alone_and_keep_their_order() -> None:
    mixed = [
        Candidate(_start(0), None),
        Candidate(_start(1), "k", max_size=4),
        Candidate(_start(2), "k", max_size=4),
        Candidate(_start(3), None),
    ]
    executions = plan_executions(mixed, free_slots=5, free_gpu_slots=0)
    assert _runs(executions) == [["r0"], ["r1"], ["r2"], ["r3"]]  # spread: slots are free
    executions = plan_executions(mixed, free_slots=3, free_gpu_slots=0)
    assert _runs(executions) == [["r0"], ["r1", "r2"], ["r3"]]


def test_a_batch_that_could_grow_waits_only_as_long_as_its_stage_allows() -> None:
    waiting = _candidates(3, max_size=8, max_wait_seconds=5, waited_seconds=1)
    assert plan_executions(waiting, free_slots=2, free_gpu_slots=0) == []
    waited = _candidates(3, max_size=8, max_wait_seconds=5, waited_seconds=5)
    assert len(plan_executions(waited, free_slots=1, free_gpu_slots=0)[0]) == 3
    full = _candidates(8, max_size=8, max_wait_seconds=5, waited_seconds=0)
    assert len(plan_executions(full, free_slots=1, free_gpu_slots=0)[0]) == 8


def test_a_gpu_batch_takes_one_gpu_slot_or_falls_back_together() -> None:
    gpu = [Candidate(_start(n, "gpu", "cpu"), "k", max_size=4) for n in range(4)]
    [first] = plan_executions(gpu, free_slots=1, free_gpu_slots=1)
    assert {s.accelerator for s in first} == {"gpu"} and len(first) == 4
    [fallen] = plan_executions(gpu, free_slots=1, free_gpu_slots=0)
    assert {(s.accelerator, s.fallback) for s in fallen} == {("cpu", None)}
    strict = [Candidate(_start(n, "gpu"), "k", max_size=4) for n in range(4)]
    assert plan_executions(strict, free_slots=2, free_gpu_slots=0) == []


# --- one process, a report per clip --------------------------------------------------------


def _launch(n: int, command: list[str], batch: str | None = "b-1") -> StageLaunch:
    return StageLaunch(
        attempt_id=f"a{n}",
        run_id=f"r{n}",
        stage="s",
        pipeline="p",
        tenant="t",
        clip_id=f"c{n}",
        algorithm="x@1.0.0",
        image="x",
        command=command,
        env={"CAMFLOW_RUN_ID": f"r{n}"},
        accelerator="cpu",
        resources={"cpu": "1", "memory": "1Gi"},  # type: ignore[arg-type]
        timeout_seconds=30,
        batch=batch,
    )


#: Reports the first clip of its batch as done, then crashes.
CRASH_AFTER_ONE = """
import json, os, sys
items = json.load(open(os.environ["CAMFLOW_BATCH_FILE"]))
json.dump({"exit_code": 0, "reason": None}, open(items[0]["report"], "w"))
print("segfault, say", file=sys.stderr)
sys.exit(3)
"""


def _wait(executor: LocalExecutor, handles: list[str]) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 30
    while True:
        statuses = executor.poll(handles)
        if all(s.state in (ExecState.SUCCEEDED, ExecState.FAILED) for s in statuses.values()):
            return statuses
        assert time.monotonic() < deadline, statuses
        time.sleep(0.1)


def test_a_batch_runs_in_one_process_and_clips_it_did_not_report_end_as_it_did(
    tmp_path: Path,
) -> None:
    executor = LocalExecutor(tmp_path / "attempts")
    launches = [_launch(n, [sys.executable, "-c", CRASH_AFTER_ONE]) for n in range(3)]
    handles = [s.handle for s in executor.submit(launches).values()]
    statuses = _wait(executor, handles)
    assert statuses["a0"].state == ExecState.SUCCEEDED
    for handle in ("a1", "a2"):
        assert statuses[handle].state == ExecState.FAILED
        assert statuses[handle].exit_code == 3 and statuses[handle].reason == "segfault, say"
    # One process for the three: one runner, whose log each attempt shows as its own.
    assert len(list((tmp_path / "attempts" / "batches").iterdir())) == 1
    assert (tmp_path / "attempts" / "a2" / "stderr.log").read_text().strip() == "segfault, say"
    # Submitting the batch again (a replay after a crash) starts nothing twice.
    again = executor.submit(launches)
    assert sorted(again) == ["a0", "a1", "a2"]
    assert len(list((tmp_path / "attempts" / "batches").iterdir())) == 1


def test_a_program_that_ignores_the_batch_fails_every_clip_it_did_not_report(
    tmp_path: Path,
) -> None:
    executor = LocalExecutor(tmp_path / "attempts")
    launches = [_launch(n, [sys.executable, "-c", "pass"]) for n in range(2)]
    statuses = _wait(executor, [s.handle for s in executor.submit(launches).values()])
    for status in statuses.values():
        assert status.state == ExecState.FAILED
        assert "exited before reporting this clip" in (status.reason or "")


# --- the engine puts them together ---------------------------------------------------------


def test_ready_clips_of_a_stage_run_in_batches_and_each_run_once(settings: Settings) -> None:
    probe = settings.model_copy(
        update={"algorithm_dirs": [STAGES], "pipeline_dirs": [STAGES / "pipelines"]}
    )
    with open_runtime(probe) as runtime:
        for n in range(6):
            key = upload_key("ok", f"cam{n}", datetime.now(UTC))
            runtime.s3.client.put_object(Bucket=probe.s3.ingest_bucket, Key=key, Body=b"x")
        runtime.watcher.tick()
        runtime.reconciler.plan_new_clips()
        runs = [run for run, _ in runtime.store.list_runs(pipeline="probe-ok")]
        assert len(runs) == 6
        drive(runtime, [r.id for r in runs], timeout=120, interval=0.1)
        batches: dict[str | None, int] = {}
        for run in runs:
            done = runtime.store.get_run(run.id)
            assert done.status == "succeeded", done.error
            [attempt] = runtime.store.attempts_of_run(run.id)
            assert attempt.state == AttemptState.SUCCEEDED
            assert attempt.metrics == {"executions": 1, "seconds": attempt.metrics["seconds"]}
            batches[attempt.batch] = batches.get(attempt.batch, 0) + 1
            stage = done.result["stages"][0]  # type: ignore[index]
            assert stage["started_at"] and stage["finished_at"] and stage["seconds"] >= 0
        # 6 clips, 2 slots: 2 processes of 3 clips, not 6 processes.
        assert sorted(batches.values()) == [3, 3] and None not in batches
        assert (
            json.loads(
                (
                    probe.home / "attempts" / "batches" / next(iter(batches)) / "launch.json"
                ).read_text()
            )["timeout_seconds"]
            == 3 * 60
        )


# --- warm processes ------------------------------------------------------------------------


def test_a_clip_that_comes_later_runs_in_the_warm_process_of_its_stage(
    settings: Settings,
) -> None:
    probe = settings.model_copy(
        update={
            "algorithm_dirs": [STAGES],
            "pipeline_dirs": [STAGES / "pipelines"],
            "local": settings.local.model_copy(update={"batch_linger_seconds": 30}),
        }
    )
    with open_runtime(probe) as runtime:
        batches = []
        for n in range(3):  # one after another, as a camera's clips come
            key = upload_key("ok", f"door{n}", datetime.now(UTC))
            runtime.s3.client.put_object(Bucket=probe.s3.ingest_bucket, Key=key, Body=b"x")
            runtime.watcher.tick()
            runtime.reconciler.plan_new_clips()
            [run] = runtime.store.runs_of_clip(runtime.store.find_clip(key).id)
            drive(runtime, [run.id], timeout=60, interval=0.1)
            assert runtime.store.get_run(run.id).status == "succeeded"
            [attempt] = runtime.store.attempts_of_run(run.id)
            assert attempt.metrics["executions"] == 1  # type: ignore[index]
            batches.append(attempt.batch)
            # Its own log holds its clip's lines only.
            log = Path(attempt.log_uri.removeprefix("file://")) / "stderr.log"  # type: ignore[union-attr]
            assert f"run {run.id}" in log.read_text()
            assert all(f"run {other}" not in log.read_text() for other in batches[:-1])
        # One process served all three: no interpreter, imports or model twice.
        assert len(set(batches)) == 1
        assert len(list((probe.home / "attempts" / "batches").iterdir())) == 1


def test_clips_for_a_warm_process_that_closed_meanwhile_get_a_process_of_their_own(
    tmp_path: Path,
) -> None:
    executor = LocalExecutor(tmp_path / "attempts", batch_linger_seconds=0.2)
    first = [_launch(0, [sys.executable, "-c", REPORT_ALL], batch="b-first")]
    _wait(executor, [s.handle for s in executor.submit(first).values()])
    more = tmp_path / "attempts" / "batches" / "b-first" / "more"
    deadline = time.monotonic() + 10
    while not (more / "closed").exists():  # it lingered, then closed
        assert time.monotonic() < deadline
        time.sleep(0.05)
    later = [_launch(1, [sys.executable, "-c", REPORT_ALL], batch="b-later")]
    submitted = executor.submit(later)
    assert submitted["a1"].batch == "b-later"
    assert _wait(executor, ["a1"])["a1"].state == ExecState.SUCCEEDED
    assert sorted(p.name for p in (tmp_path / "attempts" / "batches").iterdir()) == [
        "b-first",
        "b-later",
    ]


#: Reports every clip it is given, first and later ones, as the SDK does.
REPORT_ALL = """
import json, os
from pathlib import Path
from algorithms.sdk import _more_items
items = json.load(open(os.environ["CAMFLOW_BATCH_FILE"]))
more = os.environ.get("CAMFLOW_BATCH_MORE")
if more:
    items = items + list(_more_items(Path(more), float(os.environ["CAMFLOW_BATCH_LINGER"])))
for item in items:
    json.dump({"exit_code": 0, "reason": None}, open(item["report"], "w"))
"""
