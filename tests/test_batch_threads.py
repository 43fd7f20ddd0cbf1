"""Clips of a thread-safe stage side by side on threads of one batch process: how the
SDK hands them out (never more at once than the lanes it was counted for), each clip's
own log, and the local executor starting the batches of one tick as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from algorithms import contract
from algorithms.sdk import _clip_stderr, _serve
from orchestrator.errors import ExecutorError
from orchestrator.executors.base import ExecState, StageLaunch
from orchestrator.executors.local import LocalExecutor
from orchestrator.settings import PROJECT_ROOT
from tests.test_batching import _launch as _plain_launch


class _Recorder:
    """A run_one that sleeps as long as each item says and records who ran what."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[str] = set()
        #: (item, clips running beside it when it started, lanes unfinished then)
        self.starts: list[tuple[str, int]] = []
        self.ends: list[str] = []
        self.threads: dict[str, int] = {}

    def __call__(self, item: dict, _clients: object, _position: str) -> int:
        name = item["name"]
        with self.lock:
            self.starts.append((name, len(self.running)))
            self.running.add(name)
            self.threads[name] = threading.get_ident()
        time.sleep(item["seconds"])
        with self.lock:
            self.running.discard(name)
            self.ends.append(name)
        return 0


def _items(lane: str, *seconds: float) -> list[dict]:
    return [
        {"name": f"{lane}{n}", "seconds": s, contract.LANE: lane} for n, s in enumerate(seconds)
    ]


def _interleave(*lanes: list[dict]) -> list[dict]:
    return [item for row in zip(*lanes, strict=True) for item in row]


def test_threads_take_the_next_clip_as_they_free_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(contract.ENV_BATCH_THREADS, "2")
    monkeypatch.delenv(contract.ENV_BATCH_MORE, raising=False)
    recorder = _Recorder()
    # Lane a's first clip is slow: dealt up front, b's thread would idle after its
    # own four; taken as threads free up, the other thread runs the rest meanwhile.
    a, b = _items("a", 0.6, 0.02, 0.02, 0.02), _items("b", 0.02, 0.02, 0.02, 0.02)
    assert _serve(_interleave(a, b), recorder) == contract.EXIT_OK
    assert sorted(recorder.ends) == sorted(item["name"] for item in a + b)  # each once
    assert max(beside for _, beside in recorder.starts) == 1  # two at once, never three
    slow = recorder.threads["a0"]
    assert [name for name, ident in recorder.threads.items() if ident == slow] == ["a0"]


def test_no_more_clips_run_at_once_than_lanes_have_clips_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(contract.ENV_BATCH_THREADS, "2")
    monkeypatch.delenv(contract.ENV_BATCH_MORE, raising=False)
    recorder = _Recorder()
    # Lane b is done after its one short clip: from then on the engine counts one slot,
    # and lane a's clips run one at a time, though a thread is free.
    items = [*_interleave(_items("a", 0.3), _items("b", 0.02)), *_items("a", 0.3, 0.05, 0.05)[1:]]
    assert _serve(items, recorder) == contract.EXIT_OK
    assert [name for name, _ in recorder.starts] == ["a0", "b0", "a1", "a2"]
    assert [beside for _, beside in recorder.starts[2:]] == [0, 0], recorder.starts
    # Without lanes (an executor that says nothing of them): one at a time.
    recorder = _Recorder()
    assert _serve([{"name": f"x{n}", "seconds": 0.02} for n in range(4)], recorder) == 0
    assert max(beside for _, beside in recorder.starts) == 0


def test_each_thread_s_clip_keeps_its_own_log_and_reason(tmp_path: Path) -> None:
    lasts: dict[str, str] = {}
    gate = threading.Barrier(2)

    def clip(name: str) -> None:
        with _clip_stderr(str(tmp_path / f"{name}.log")) as errors:
            for n in range(50):
                print(f"{name} line {n}", file=sys.stderr)
                if n == 10:
                    gate.wait()  # both write at the same time
            lasts[name] = errors.last

    workers = [threading.Thread(target=clip, args=(name,)) for name in ("one", "two")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for name in ("one", "two"):
        lines = (tmp_path / f"{name}.log").read_text().splitlines()
        assert lines == [f"{name} line {n}" for n in range(50)]
        assert lasts[name] == f"{name} line 49"


# --- the local executor -------------------------------------------------------------------


def _launch(n: int, command: list[str], batch: str, thread_safe: bool = True) -> StageLaunch:
    """test_batching's launch, of an SDK stage (it needs its input and output named)."""
    launch = _plain_launch(n, command, batch)
    env = launch.env | {contract.ENV_INPUTS: "{}", contract.ENV_OUTPUT: f"s3://results/r{n}/s"}
    return launch.model_copy(update={"env": env, "thread_safe": thread_safe})


def _run_to_end(executor: LocalExecutor, handles: list[str]) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 60
    while True:
        statuses = executor.poll(handles)
        if all(s.state == ExecState.SUCCEEDED for s in statuses.values()):
            return statuses
        going = (ExecState.QUEUED, ExecState.RUNNING, ExecState.SUCCEEDED)
        assert all(s.state in going for s in statuses.values()), statuses
        assert time.monotonic() < deadline
        time.sleep(0.05)


#: A stage (see the module) that notes which process and thread ran each clip.
THREADED_STAGE = ["python", "-m", "tests.threaded_stage"]


def test_batches_of_a_thread_safe_stage_that_start_together_share_one_process(
    tmp_path: Path,
) -> None:
    command = THREADED_STAGE
    executor = LocalExecutor(tmp_path / "attempts", max_parallel=2, cwd=PROJECT_ROOT)
    launches = [_launch(n, command, "b-one" if n % 2 == 0 else "b-two") for n in range(4)]
    submitted = executor.submit(launches)
    # Each clip is counted in its own batch's slot, as the engine planned them.
    assert {h: s.batch for h, s in submitted.items()} == {
        "a0": "b-one",
        "a1": "b-two",
        "a2": "b-one",
        "a3": "b-two",
    }
    statuses = _run_to_end(executor, list(submitted))
    reports = [
        json.loads((tmp_path / "attempts" / h / "status.json").read_text())["manifest"]
        for h in submitted
    ]
    assert len({r["pid"] for r in reports}) == 1  # one process
    assert len({r["thread"] for r in reports}) == 2  # two threads
    assert max(r["beside"] for r in reports) == 1  # two clips at once
    # Each clip's share of the cores is a slot's (the process's, both slots').
    assert {r["cpus"] for r in reports} == {max(1, (os.cpu_count() or 1) // 2)}
    # One process folder; the second batch's name points at it.
    batches = tmp_path / "attempts" / "batches"
    assert (batches / "b-two").resolve() == (batches / "b-one").resolve()
    assert all(s.state == ExecState.SUCCEEDED for s in statuses.values())

    # A stage that does not say it is thread-safe: a process per batch, as before.
    others = [_launch(n, command, f"b-{n % 2}", thread_safe=False) for n in range(10, 14)]
    statuses = _run_to_end(executor, list(executor.submit(others)))
    metrics = [
        json.loads((tmp_path / "attempts" / h / "status.json").read_text())["manifest"]
        for h in statuses
    ]
    assert len({m["pid"] for m in metrics}) == 2
    assert max(m["beside"] for m in metrics) == 0


def test_cancelling_a_clip_retries_the_one_running_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THREADED_SLEEP", "30")
    executor = LocalExecutor(
        tmp_path / "attempts", max_parallel=2, kill_grace_seconds=1, cwd=PROJECT_ROOT
    )
    command = THREADED_STAGE
    executor.submit([_launch(0, command, "b-one"), _launch(1, command, "b-two")])
    deadline = time.monotonic() + 30
    while {s.state for s in executor.poll(["a0", "a1"]).values()} != {ExecState.RUNNING}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    executor.cancel(["a0"])
    ended = (ExecState.FAILED, ExecState.SKIPPED, ExecState.SUCCEEDED)
    while not all(s.state in ended for s in executor.poll(["a0", "a1"]).values()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    statuses = executor.poll(["a0", "a1"])
    assert (statuses["a0"].state, statuses["a0"].reason) == (ExecState.FAILED, "cancelled")
    # Stopped with the process, it did nothing wrong: skipped, it runs again without
    # using one of its retries.
    assert statuses["a1"].state == ExecState.SKIPPED, statuses["a1"]
    assert "another clip was cancelled" in (statuses["a1"].reason or "")


# --- the spare process --------------------------------------------------------------------


def _until(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _ended(process: psutil.Process) -> bool:
    """Gone, or a zombie whoever adopted it has not reaped yet."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_batch_goes_to_the_spare_started_ahead_and_another_is_kept_when_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("THREADED_SLEEP", "0.05")
    root = tmp_path / "attempts"
    executor = LocalExecutor(root, max_parallel=2, cwd=PROJECT_ROOT, spare=True)
    _until(executor.spare_ready)
    [first] = list((root / "spares").iterdir())
    submitted = executor.submit([_launch(n, THREADED_STAGE, "b-one") for n in range(3)])
    _run_to_end(executor, list(submitted))
    # The batch ran in the spare's process, from its folder.
    assert (root / "batches" / "b-one").resolve() == first.resolve()
    reports = [json.loads((root / h / "status.json").read_text())["manifest"] for h in submitted]
    assert {r["cwd"] for r in reports} == {str(PROJECT_ROOT)}
    assert {r["cpus"] for r in reports} == {max(1, (os.cpu_count() or 1) // 2)}
    assert not (first / "order.json").exists()  # the batch's credentials do not stay
    # Idle again: a new spare is started for the next batch.
    _until(lambda: executor.poll([]) == {} and executor.spare_ready())
    [second] = [f for f in (root / "spares").iterdir() if f != first]
    executor.close()
    # Closed: the spare's runner stops it and leaves nothing behind.
    _until(lambda: not second.exists())


#: Starts an executor with a spare, says the spare runner's pid once it is ready, and
#: dies without closing it (an orchestrator killed -9).
ORPHANING = """
import os, sys, time
from pathlib import Path
from orchestrator.executors.local import LocalExecutor
executor = LocalExecutor(Path(sys.argv[1]), spare=True)
while not executor.spare_ready():
    time.sleep(0.02)
print(executor._spare.child.pid, flush=True)
os._exit(9)
"""


def test_a_spare_whose_orchestrator_died_ends_and_takes_no_batch(tmp_path: Path) -> None:
    root = tmp_path / "attempts"
    done = subprocess.run(
        [sys.executable, "-c", ORPHANING, str(root)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        runner = psutil.Process(int(done.stdout.strip()))
    except psutil.NoSuchProcess:
        pass  # gone already
    else:
        _until(lambda: _ended(runner), 10)  # it saw its orchestrator gone
    _until(lambda: list((root / "spares").iterdir()) == [], 10)
    # Another orchestrator on the same folders starts its batches afresh.
    executor = LocalExecutor(root, cwd=PROJECT_ROOT)
    submitted = executor.submit([_launch(0, THREADED_STAGE, "b-later")])
    _run_to_end(executor, list(submitted))
    assert not (root / "batches" / "b-later").is_symlink()


def test_a_spare_claimed_but_never_given_its_order_touches_no_clip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.executors import local as local_module

    monkeypatch.setattr(local_module.files, "SPARE_ORDER_WAIT_SECONDS", 0.5)
    root = tmp_path / "attempts"
    executor = LocalExecutor(root, max_parallel=2, cwd=PROJECT_ROOT, spare=True)
    _until(executor.spare_ready)
    spare = executor._spare
    assert spare is not None
    real = local_module.write_private

    def no_order(path: Path, data: str | bytes) -> None:
        if path.name == "order.json":
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(local_module, "write_private", no_order)
    with pytest.raises(ExecutorError, match="No space left"):
        executor.submit([_launch(0, THREADED_STAGE, "b-one")])
    spare.child.wait(timeout=10)  # its runner gave up waiting for the order
    assert not (root / "a0" / "runner.json").exists()
    assert not (root / "a0" / "launch.json").exists()  # unclaimed: it can start again
    monkeypatch.setattr(local_module, "write_private", real)
    _run_to_end(executor, list(executor.submit([_launch(0, THREADED_STAGE, "b-again")])))


def test_a_batch_past_its_own_deadline_times_its_clips_out_rather_than_skipping_them(
    tmp_path: Path,
) -> None:
    # No clip began (none ran past its own timeout, none was cancelled): no other clip is
    # to blame, so each uses a retry, and a stage that hangs cannot come back for ever.
    executor = LocalExecutor(tmp_path / "attempts", kill_grace_seconds=0.2)
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    launches = [
        _launch(n, hang, "b-hang").model_copy(update={"timeout_seconds": 1}) for n in (0, 1)
    ]
    handles = list(executor.submit(launches))
    deadline = time.monotonic() + 30
    while any(
        s.state in (ExecState.QUEUED, ExecState.RUNNING) for s in executor.poll(handles).values()
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    statuses = executor.poll(handles)
    assert {s.state for s in statuses.values()} == {ExecState.FAILED}, statuses
    assert all(s.timed_out for s in statuses.values())


def test_a_spare_whose_process_died_is_closed_quietly_and_one_whose_runner_died_ends(
    tmp_path: Path,
) -> None:
    executor = LocalExecutor(tmp_path / "attempts", cwd=PROJECT_ROOT, spare=True)
    _until(executor.spare_ready)
    assert executor._spare is not None
    runner = psutil.Process(executor._spare.child.pid)
    [stage] = runner.children()
    stage.kill()
    executor._spare.child.wait(timeout=10)  # its runner saw it die, and removed its folder
    executor.close()  # nothing to claim: no error
    # A runner killed while its spare still imports: the spare does not outlive it.
    other = LocalExecutor(tmp_path / "other", cwd=PROJECT_ROOT, spare=True)
    assert other._spare is not None
    runner = psutil.Process(other._spare.child.pid)
    _until(lambda: bool(runner.children()), 10)
    [stage] = runner.children()
    runner.kill()
    _until(lambda: _ended(stage), 10)
