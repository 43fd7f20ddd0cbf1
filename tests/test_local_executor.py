"""The local executor knows a runner by pid and start time: a recycled pid is not it."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from orchestrator.executors import local_runner as files
from orchestrator.executors.base import ExecState, StageLaunch
from orchestrator.executors.local import LocalExecutor
from tests.test_batching import _launch as batch_launch


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that has nothing to do with camflow."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def _record(executor: LocalExecutor, handle: str, runner: dict[str, object]) -> None:
    directory = executor.root / handle
    directory.mkdir()
    (directory / files.LAUNCH).write_text("{}")
    (directory / files.RUNNER).write_text(json.dumps(runner))


def _launch(attempt: str, accelerator: str, command: list[str]) -> StageLaunch:
    """A lone launch of ``command`` (any program: the runner only runs it)."""
    launch = batch_launch(0, command, batch=None)
    update = {"attempt_id": attempt, "run_id": f"r-{attempt}", "accelerator": accelerator}
    return launch.model_copy(update=update | {"timeout_seconds": 60})


def _still_running(process: subprocess.Popen[bytes]) -> bool:
    try:
        process.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        return True
    return False


def test_a_recycled_pid_is_read_as_dead_and_never_signalled(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    executor = LocalExecutor(tmp_path)
    started = psutil.Process(bystander.pid).create_time()
    # The runner that had this pid started an hour before the process that has it now.
    _record(
        executor,
        "a-1",
        {"pid": bystander.pid, "pid_create_time": started - 3600, "started_at": None},
    )
    assert executor.poll(["a-1"])["a-1"].state == ExecState.LOST
    executor.cancel(["a-1"])
    assert _still_running(bystander)


def test_a_record_without_a_start_time_is_never_signalled(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    executor = LocalExecutor(tmp_path)
    # Written by a runner from before start times were recorded: the pid cannot be
    # verified, so it still reads as running (the engine's run limit bounds that) ...
    _record(executor, "a-1", {"pid": bystander.pid, "child_pid": 1, "started_at": None})
    assert executor.poll(["a-1"])["a-1"].state == ExecState.RUNNING
    # ... but it is not signalled, since it may be anyone's.
    executor.cancel(["a-1"])
    assert _still_running(bystander)


def test_a_real_runner_records_its_start_time_and_is_cancelled(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path, kill_grace_seconds=0.5)
    executor.submit([_launch("a-1", "cpu", ["sleep", "60"])])
    deadline = time.monotonic() + 20
    while executor.poll(["a-1"])["a-1"].state != ExecState.RUNNING:
        assert time.monotonic() < deadline, "the runner never started"
        time.sleep(0.05)
    runner = json.loads((tmp_path / "a-1" / files.RUNNER).read_text())
    assert runner["pid_create_time"] == pytest.approx(
        psutil.Process(runner["pid"]).create_time(), abs=1.5
    )
    executor.cancel(["a-1"])
    while (status := executor.poll(["a-1"])["a-1"]).state == ExecState.RUNNING:
        assert time.monotonic() < deadline, "the runner was not stopped"
        time.sleep(0.05)
    assert status.state == ExecState.FAILED and status.reason == "cancelled"
    executor.close()


def test_a_gpu_is_placed_again_only_once_the_process_that_held_it_has_exited(
    tmp_path: Path,
) -> None:
    """A GPU process may outlive its GPU stage (CPU stages that joined it run on): its
    GPU gets no second process until it exits, whatever the engine's count says."""
    executor = LocalExecutor(tmp_path, gpus=1)
    first = _launch("g-1", "gpu", ["sleep", "0.5"])
    assert set(executor.place([first])) == {"g-1"}
    executor.submit([first])
    second, on_cpu = _launch("g-2", "gpu", ["true"]), _launch("c-1", "cpu", ["true"])
    # Its GPU is held: no place for another GPU launch; CPU ones are placed as ever.
    assert set(executor.place([second, on_cpu])) == {"c-1"}
    deadline = time.monotonic() + 20
    while executor.poll(["g-1"])["g-1"].state != ExecState.SUCCEEDED:
        assert time.monotonic() < deadline, "the GPU process never ended"
        time.sleep(0.05)
    deadline = time.monotonic() + 5
    while "g-2" not in executor.place([second]):
        assert time.monotonic() < deadline, "the GPU was never given again"
        time.sleep(0.05)
    executor.close()


def test_a_fused_stage_wakes_the_engine_unless_every_reader_runs_after_it() -> None:
    from orchestrator.domain.catalog import load_catalog
    from orchestrator.executors.local import _followed
    from orchestrator.settings import PROJECT_ROOT
    from tests.kube_fixtures import launch_for

    faces = load_catalog([PROJECT_ROOT / "algorithms"], [PROJECT_ROOT / "pipelines"]).pipeline(
        "faces"
    )
    decode, detect, thumbnails, publish = (
        launch_for(faces, stage, "cpu") for stage in ["decode", "faces", "thumbnails", "publish"]
    )
    assert decode.readers == ["faces", "thumbnails", "publish"]
    assert publish.readers == []
    # The whole pipeline in one process: only its last stage's finish wakes the engine.
    whole = decode.model_copy(update={"chain": [detect, thumbnails, publish]})
    assert _followed(whole) == [decode.attempt_id, detect.attempt_id, thumbnails.attempt_id]
    # thumbnails and publish run apart (not fused): decode's and faces' finishes ready
    # them, so each wakes the engine.
    split = decode.model_copy(update={"chain": [detect]})
    assert _followed(split) == []
    # decode's readers do not all follow it either when publish runs apart.
    most = decode.model_copy(update={"chain": [detect, thumbnails]})
    assert _followed(most) == []
