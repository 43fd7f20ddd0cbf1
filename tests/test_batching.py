"""Batches: which ready attempts share a process (pure), the local executor running a
batch in one process with a report per clip, and the engine putting them together."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.domain.layout import upload_key
from orchestrator.engine.batching import Candidate, plan_executions
from orchestrator.engine.decide import StartAttempt
from orchestrator.executors.base import ExecState, StageLaunch
from orchestrator.executors.local import LocalExecutor
from orchestrator.service import Runtime, drive, open_runtime
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store.models import AttemptState, RunStatus

STAGES = PROJECT_ROOT / "tests" / "stages"


def _start(n: int, accelerator: str = "cpu", fallback: str | None = None) -> StartAttempt:
    return StartAttempt(f"r{n}", "decode", 1, accelerator, fallback)


def _candidates(count: int, key: object = "k", **kw: float) -> list[Candidate]:
    return [Candidate(_start(n), key, **kw) for n in range(count)]  # type: ignore[arg-type]


def _runs(executions: list[list[StartAttempt]]) -> list[list[str]]:
    return [[s.run_id for s in e] for e in executions]


# --- which attempts share a process --------------------------------------------------------


def test_a_batch_is_dealt_over_the_free_slots_oldest_first() -> None:
    executions = plan_executions(_candidates(8, max_size=8), free_slots=2, free_gpu_slots=0)
    # Dealt, not cut: the two oldest start at once, and alike neighbours are shared out.
    assert _runs(executions) == [[f"r{n}" for n in (0, 2, 4, 6)], [f"r{n}" for n in (1, 3, 5, 7)]]


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
        assert statuses[handle].exit_code == 3
        # Its own reason, never the batch log's last line (another clip's words).
        reason = statuses[handle].reason or ""
        assert "ended (exit 3) before this clip was done" in reason
        assert "segfault" not in reason
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
        # 6 clips, 2 slots: 2 batches of 3 clips, not 6 processes. The probe is
        # thread-safe: both batches run in one process, on a thread each.
        assert sorted(batches.values()) == [3, 3] and None not in batches
        folders = {(probe.home / "attempts" / "batches" / b).resolve() for b in batches}
        [folder] = folders
        launch = json.loads((folder / "launch.json").read_text())
        assert launch["timeout_seconds"] == 6 * 60 and len(launch["attempts"]) == 6


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
def report(item):
    with open(item["report"] + ".tmp", "w") as out:
        json.dump({"exit_code": 0, "reason": None}, out)
    os.replace(item["report"] + ".tmp", item["report"])
for item in json.load(open(os.environ["CAMFLOW_BATCH_FILE"])):
    report(item)
more = os.environ.get("CAMFLOW_BATCH_MORE")
if more:
    for item in _more_items(Path(more), float(os.environ["CAMFLOW_BATCH_LINGER"])):
        report(item)
"""


# --- a clip that brings its batch down, and what it must not take with it -----------------


def _keyed(settings: Settings, **local: object) -> Settings:
    return settings.model_copy(
        update={
            "algorithm_dirs": [STAGES],
            "pipeline_dirs": [STAGES / "pipelines"],
            "local": settings.local.model_copy(update=local),
        }
    )


def _upload_mixed(runtime: Runtime, cameras: list[str], pipeline: str = "keyed") -> list[str]:
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    for n, camera in enumerate(cameras):
        key = upload_key("acme", camera, at, n=n + 1).replace("acme/", "mixed/", 1)
        runtime.s3.client.put_object(Bucket=runtime.settings.s3.ingest_bucket, Key=key, Body=b"x")
    runtime.watcher.tick()
    runtime.reconciler.plan_new_clips()
    return [run.id for run, _ in runtime.store.list_runs(pipeline=pipeline)]


def test_a_clip_that_kills_its_batch_takes_no_other_clip_down_for_good(
    settings: Settings,
) -> None:
    keyed = _keyed(settings, max_parallel=1)
    with open_runtime(keyed) as runtime:
        run_ids = _upload_mixed(runtime, ["crash1", "ok1", "ok2", "ok3"])
        assert len(run_ids) == 4
        drive(runtime, run_ids, timeout=120, interval=0.1)
        for run_id in run_ids:
            run = runtime.store.get_run(run_id)
            clip = runtime.store.find_clip(run.clip_id)
            # The crash took its batch's process, once: every clip is done the second
            # time, each alone; no clip's error quotes another clip's words.
            assert run.status == "succeeded", (clip.camera, run.error)
            for attempt in runtime.store.attempts_of_run(run_id):
                assert "decoder crashed" not in (attempt.reason or "") or clip.camera == "crash1"
                if attempt.attempt > 1:
                    assert attempt.batch is None  # a retry runs alone


def test_each_clip_of_a_batch_is_timed_from_its_own_start(settings: Settings) -> None:
    with open_runtime(_keyed(settings, max_parallel=1)) as runtime:
        run_ids = _upload_mixed(runtime, ["ok1", "ok2", "ok3"])
        drive(runtime, run_ids, timeout=120, interval=0.1)
        attempts = [runtime.store.attempts_of_run(run_id)[0] for run_id in run_ids]
        assert len({a.batch for a in attempts}) == 1
        starts = sorted(a.started_at for a in attempts)  # type: ignore[type-var]
        assert starts[0] < starts[1] < starts[2]
        for attempt in attempts:
            assert attempt.started_at <= attempt.finished_at  # type: ignore[operator]


def test_one_run_whose_write_the_store_refuses_fails_alone_on_postgresql(
    settings: Settings, postgres_url: str
) -> None:
    keyed = _keyed(settings).model_copy(
        update={"store": settings.store.model_copy(update={"url": postgres_url})}
    )
    with open_runtime(keyed) as runtime:
        runtime.reconciler.max_erroring_ticks = 3
        run_ids = _upload_mixed(runtime, ["nan1", "ok1", "ok2", "ok3"])
        drive(runtime, run_ids, timeout=120, interval=0.1)
        outcomes = {
            runtime.store.find_clip(runtime.store.get_run(r).clip_id).camera: runtime.store.get_run(
                r
            )
            for r in run_ids
        }
        assert outcomes["nan1"].status == "failed"
        for camera in ("ok1", "ok2", "ok3"):
            assert outcomes[camera].status == "succeeded", outcomes[camera].error


def test_a_finished_stage_wakes_a_waiting_engine_once(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "attempts")
    [submitted] = executor.submit([_launch(0, [sys.executable, "-c", "pass"], batch=None)]).values()
    started = time.monotonic()
    executor.wait(10)
    assert time.monotonic() - started < 5  # woken by the finish, not the timeout
    started = time.monotonic()
    executor.wait(0.3)  # nothing new finished: no spin, the whole wait
    assert time.monotonic() - started >= 0.3
    assert executor.poll([submitted.handle])[submitted.handle].state == ExecState.SUCCEEDED


def test_a_failed_runs_stages_in_flight_stop_holding_slots(settings: Settings) -> None:
    probe = _keyed(settings)
    with open_runtime(probe) as runtime:
        run_ids = _upload_mixed(runtime, ["hang1"])
        runtime.reconciler.tick()
        [attempt] = runtime.store.attempts_of_run(run_ids[0])
        assert runtime.store.count_attempts("local", None, None) == 1
        # Settled with the run's end, in its transaction.
        assert runtime.store.finish_run(
            run_ids[0],
            RunStatus.FAILED,
            "given up",
            None,
            None,
            attempt.created_at,
            settle="cancelled: the run ended",
        )
        assert runtime.store.count_attempts("local", None, None) == 0
        [settled] = runtime.store.attempts_of_run(run_ids[0])
        assert (settled.state, settled.reason) == (AttemptState.FAILED, "cancelled: the run ended")
        runtime.executor.cancel([runtime.store.attempts_of_run(run_ids[0])[0].handle or ""])


def _tenant_launch(n: int, tenant: str, batch: str) -> StageLaunch:
    launch = _launch(n, [sys.executable, "-c", REPORT_ALL], batch=batch)
    return launch.model_copy(update={"tenant": tenant})


def test_a_warm_process_never_takes_another_tenants_clip(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "attempts", batch_linger_seconds=30)
    executor.submit([_tenant_launch(0, "acme", "b-acme")])
    _wait(executor, ["a0"])
    later = executor.submit([_tenant_launch(1, "globex", "b-globex")])
    _wait(executor, ["a1"])
    assert later["a1"].batch == "b-globex"
    again = executor.submit([_tenant_launch(2, "acme", "b-acme-2")])
    _wait(executor, ["a2"])
    assert again["a2"].batch == "b-acme"  # its own tenant's warm process takes it


def test_a_clip_taken_back_from_a_closing_process_is_not_failed_by_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.executors import local as local_module

    executor = LocalExecutor(tmp_path / "attempts", batch_linger_seconds=0.3)
    executor.submit([_launch(0, [sys.executable, "-c", SLOW_REPORT_ALL], batch="b-first")])
    _wait(executor, ["a0"])
    real = local_module.write_private

    def late_write(path: Path, data: str | bytes) -> None:
        if path.parent.name == "more":
            # The executor saw it open; it closes and takes its last look before the
            # clip's file lands, so the executor takes the clip back.
            while not (path.parent / "closed").exists():
                time.sleep(0.005)
            time.sleep(0.02)
        real(path, data)

    monkeypatch.setattr(local_module, "write_private", late_write)
    monkeypatch.setenv("SLOW", "1.0")  # the new process takes a moment to start
    submitted = executor.submit(
        [_launch(1, [sys.executable, "-c", SLOW_REPORT_ALL], batch="b-later")]
    )
    assert submitted["a1"].batch == "b-later"
    seen: set[ExecState] = set()
    deadline = time.monotonic() + 30
    while True:
        state = executor.poll(["a1"])["a1"].state
        seen.add(state)
        if state in (ExecState.SUCCEEDED, ExecState.FAILED):
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # The closed process's supervisor never reported it: only its new process did.
    assert state == ExecState.SUCCEEDED and ExecState.FAILED not in seen


#: REPORT_ALL, slow to start when $SLOW says so.
SLOW_REPORT_ALL = "import os, time\ntime.sleep(float(os.environ.get('SLOW', '0')))\n" + REPORT_ALL


def test_a_run_that_fails_settles_its_other_stage_still_running(
    settings: Settings, tmp_path: Path
) -> None:
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "split.yaml").write_text(
        "name: split\ntrigger: {prefix: mixed/, suffix: .mp4}\nstages:\n"
        "  - {name: refuse, algorithm: probe@1.0.0, inputs: {video: clip}, params: {mode: bad}}\n"
        "  - {name: linger, algorithm: keyed@1.0.0, inputs: {video: clip}}\n"
    )
    split = _keyed(settings).model_copy(update={"pipeline_dirs": [pipelines]})
    with open_runtime(split) as runtime:
        [run_id] = _upload_mixed(runtime, ["hang1"], "split")
        drive(runtime, [run_id], timeout=60, interval=0.1)
        assert runtime.store.get_run(run_id).status == RunStatus.FAILED
        linger = next(a for a in runtime.store.attempts_of_run(run_id) if a.stage == "linger")
        assert linger.state == AttemptState.FAILED
        assert linger.reason == "cancelled: the run ended"
        assert runtime.store.count_attempts("local", None, None) == 0


#: Fused stages in a warm process: reports the first clips' stages, takes the clips
#: added later, and dies before reporting them (as a stage killed mid-clip does).
CHAIN_DIES_ON_MORE = """
import json, os, sys
from pathlib import Path
from algorithms.sdk import _more_items
for item in json.load(open(os.environ["CAMFLOW_BATCH_FILE"])):
    for stage in item["chain"]:
        with open(stage["report"] + ".tmp", "w") as out:
            json.dump({"exit_code": 0, "reason": None}, out)
        os.replace(stage["report"] + ".tmp", stage["report"])
for item in _more_items(Path(os.environ["CAMFLOW_BATCH_MORE"]), 30):
    os._exit(9)
"""


def _fused_launch(n: int, batch: str) -> StageLaunch:
    first = _launch(n, ["python", "-m", "first"], batch=batch)
    second = first.model_copy(update={"attempt_id": f"a{n}-second", "stage": "second"})
    return first.model_copy(update={"chain": [second]})


def test_fused_clips_handed_to_a_warm_process_that_dies_end_failed_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A warm process's supervisor once crashed on fused clips added to it (it looked for
    # one report per item, a chain has one per stage): it died without reporting them,
    # and they read as lost and were started again while its stage process ran them on.
    from orchestrator.executors import local as local_module

    monkeypatch.setattr(local_module, "CHAIN_COMMAND", [sys.executable, "-c", CHAIN_DIES_ON_MORE])
    executor = LocalExecutor(tmp_path / "attempts", batch_linger_seconds=30)
    executor.submit([_fused_launch(0, "b-warm")])
    assert {s.state for s in _wait(executor, ["a0", "a0-second"]).values()} == {ExecState.SUCCEEDED}
    later = executor.submit([_fused_launch(1, "b-later")])
    assert later["a1"].batch == "b-warm"  # handed to the warm process
    ended = {ExecState.SUCCEEDED, ExecState.FAILED, ExecState.SKIPPED, ExecState.LOST}
    deadline = time.monotonic() + 30
    while True:
        statuses = executor.poll(["a1", "a1-second"])
        if {status.state for status in statuses.values()} <= ended:
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.1)
    # The clip's first stage failed with the process; the one after it never began.
    assert statuses["a1"].state == ExecState.FAILED, statuses
    assert "its batch's process ended (exit 9)" in (statuses["a1"].reason or "")
    assert statuses["a1-second"].state == ExecState.SKIPPED, statuses
    batch = tmp_path / "attempts" / "batches" / "b-warm"
    assert json.loads((batch / "status.json").read_text())["exit_code"] == 9
    assert "Traceback" not in (batch / "runner.log").read_text()
