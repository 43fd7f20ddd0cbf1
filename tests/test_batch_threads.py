"""Clips of a thread-safe stage side by side on threads of one batch process: how the
SDK hands them out (never more at once than the lanes it was counted for), each clip's
own log, and the local executor starting the batches of one tick as one process."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from algorithms import contract
from algorithms.sdk import _clip_stderr, _serve
from orchestrator.executors.base import ExecState, StageLaunch
from orchestrator.executors.local import LocalExecutor


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

#: A stage whose main(ctx) notes which process and thread ran each clip, and how many
#: clips of its process ran at that moment.
THREADED_STAGE = """
import os, threading, time
from algorithms.sdk import StageReport, run_stage
running = []
lock = threading.Lock()
def main(ctx):
    with lock:
        running.append(ctx.run_id)
        beside = len(running) - 1
    time.sleep(float(os.environ.get('THREADED_SLEEP', '0.3')))
    with lock:
        running.remove(ctx.run_id)
    return StageReport(metrics={"pid": os.getpid(), "beside": beside,
                                "cpus": ctx.cpus, "thread": threading.get_ident()})
if __name__ == "__main__":
    run_stage(main)
"""


def _launch(n: int, command: list[str], batch: str, thread_safe: bool = True) -> StageLaunch:
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
        env={
            contract.ENV_RUN_ID: f"r{n}",
            contract.ENV_INPUTS: "{}",
            contract.ENV_OUTPUT: f"s3://results/r{n}/s",
        },
        accelerator="cpu",
        resources={"cpu": "1", "memory": "1Gi"},  # type: ignore[arg-type]
        timeout_seconds=30,
        batch=batch,
        thread_safe=thread_safe,
    )


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


def _threaded_stage(folder: Path) -> list[str]:
    script = folder / "threaded_stage.py"
    # The manifest goes nowhere (no S3 here): the report carries it.
    script.write_text(
        "import algorithms.sdk as sdk\n"
        "sdk._write_manifest = lambda ctx, report, started: dict(report.metrics)\n" + THREADED_STAGE
    )
    return [sys.executable, str(script)]


def test_batches_of_a_thread_safe_stage_that_start_together_share_one_process(
    tmp_path: Path,
) -> None:
    command = _threaded_stage(tmp_path)
    executor = LocalExecutor(tmp_path / "attempts", max_parallel=2)
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
    # Its share of the cores is both slots'.
    assert {r["cpus"] for r in reports} == {2 * max(1, (os.cpu_count() or 1) // 2)}
    assert len(list((tmp_path / "attempts" / "batches").iterdir())) == 1
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
    executor = LocalExecutor(tmp_path / "attempts", max_parallel=2, kill_grace_seconds=1)
    command = _threaded_stage(tmp_path)
    executor.submit([_launch(0, command, "b-one"), _launch(1, command, "b-two")])
    deadline = time.monotonic() + 30
    while {s.state for s in executor.poll(["a0", "a1"]).values()} != {ExecState.RUNNING}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    executor.cancel(["a0"])
    while not all(s.state == ExecState.FAILED for s in executor.poll(["a0", "a1"]).values()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    statuses = executor.poll(["a0", "a1"])
    assert statuses["a0"].reason == "cancelled"
    # Stopped with the process, it was not itself cancelled: the engine runs it again.
    assert "another clip was cancelled" in (statuses["a1"].reason or ""), statuses["a1"]
    assert statuses["a1"].exit_code == 1
