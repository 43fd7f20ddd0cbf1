"""Supervises one stage process for the local executor: ``python -m ... ATTEMPT_DIR``.

It runs in its own session so it outlives a restart of the orchestrator, enforces
the timeout (SIGTERM to the stage's process group, SIGKILL after a grace period) and
leaves ``status.json`` behind, which is what the executor reads. The stage's
environment is this process's environment; nothing secret is written to disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import psutil

from algorithms import contract
from algorithms import spare as spare_stage
from orchestrator.fileio import write_json_atomic

LAUNCH = "launch.json"
RUNNER = "runner.json"
STATUS = "status.json"
STDOUT = "stdout.log"
STDERR = "stderr.log"
#: A batch's items (the CAMFLOW_BATCH_FILE the stage reads), in the batch's folder.
BATCH_ITEMS = "batch.json"
#: Where a lone stage leaves a copy of its manifest (CAMFLOW_MANIFEST_COPY).
MANIFEST_COPY = "manifest.json"
#: A warm batch's folder of further clips (CAMFLOW_BATCH_MORE), and the suffix of a
#: file of them given back rather than taken.
MORE = "more"
#: Further clips the supervisor gave back as its process ended (it reports them), and
#: those the executor took back to start elsewhere (not this batch's any more).
WITHDRAWN = ".withdrawn"
RETURNED = ".returned"
MAX_MANIFEST_COPY_BYTES = 2**20
#: A spare's folder: what it runs until a batch is given to it, and that batch's order.
SPARE = "spare.json"
SPARE_ORDER = "order.json"
SPARE_POLL_SECONDS = 0.05
#: How long a claimed spare waits for its order.
SPARE_ORDER_WAIT_SECONDS = 10.0


def _now() -> str:
    return datetime.now(UTC).isoformat()


def create_json_exclusive(path: Path, payload: dict) -> bool:
    """Publishes ``path`` complete, or not at all if it exists: the claim on an attempt
    folder, so two engines (a deposed leader that has not noticed yet, say) can never
    both start the same attempt. False: someone else has it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def last_line(path: Path, limit: int = 8192) -> str | None:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            lines = [ln.strip() for ln in handle.read().decode(errors="replace").splitlines()]
    except OSError:
        return None
    lines = [ln for ln in lines if ln]
    return lines[-1][:1000] if lines else None


def _stop(process: subprocess.Popen, grace: float) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _start(
    command: list[str], directory: Path, cwd: str | None, env: dict[str, str] | None = None
) -> subprocess.Popen:
    with (directory / STDOUT).open("ab") as out, (directory / STDERR).open("ab") as err:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=cwd or None,
            start_new_session=True,
            env=env,
        )


def spare(directory: Path) -> int:
    """A stage process started ahead (``python -m algorithms.spare``), supervised once
    the executor claims this folder for a batch (launch.json), as any other. Until
    then, if the executor is gone or the stage process died, it claims the folder
    itself, as abandoned, so that no batch is ever given to it, and ends."""
    spec = json.loads((directory / SPARE).read_text())
    runner = {contract.ENV_SPARE_RUNNER: str(os.getpid())}
    process = _start(spec["command"], directory, spec.get("cwd"), os.environ | runner)
    parent = os.getppid()
    while not (directory / LAUNCH).exists():
        if (os.getppid() != parent or process.poll() is not None) and create_json_exclusive(
            directory / LAUNCH, {"abandoned": True}
        ):
            break
        time.sleep(SPARE_POLL_SECONDS)
    if json.loads((directory / LAUNCH).read_text()).get("abandoned"):
        _stop(process, 1.0)
        shutil.rmtree(directory, ignore_errors=True)  # no batch's: nothing to keep
        return 0
    # Claimed: the executor writes the order next. If it never comes (the executor died
    # in between, or could not write it), this batch never began here: nothing of its
    # clips is touched, and they read as lost and start again elsewhere.
    deadline = time.monotonic() + float(spec.get("order_wait_seconds", SPARE_ORDER_WAIT_SECONDS))
    while not (directory / spare_stage.TAKEN).exists():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process, 1.0)
            # Its items and any late order carry credentials; no clip's folder points here.
            shutil.rmtree(directory, ignore_errors=True)
            return 0
        time.sleep(0.01)
    return supervise(directory, process)


def supervise(directory: Path, process: subprocess.Popen | None = None) -> int:
    """Runs the stage ``launch.json`` describes (or ``process``, a spare given this
    batch) to its end and leaves its status.json, and each unreported clip's."""
    launch = json.loads((directory / LAUNCH).read_text())
    timeout = float(launch["timeout_seconds"])
    grace = float(launch.get("kill_grace_seconds", 5))
    started = _now()
    if process is None:
        process = _start(launch["command"], directory, launch.get("cwd"))
    runner = {
        "pid": os.getpid(),
        # With the pid, names this process and no later one that reuses the pid.
        "pid_create_time": psutil.Process().create_time(),
        "child_pid": process.pid,
        "started_at": started,
    }
    members = [Path(p) for p in launch.get("attempts", [])]
    for folder in members:
        # Each clip's attempt reads as running, with the batch's output as its own (its
        # stderr the stage copies into its own log, clip by clip).
        with contextlib.suppress(FileExistsError):
            (folder / STDOUT).symlink_to(directory / STDOUT)
        write_json_atomic(folder / RUNNER, runner | {"batch": launch.get("batch")})
    write_json_atomic(directory / RUNNER, runner)
    cancelled = False

    def _on_term(_signum: int, _frame: object) -> None:
        nonlocal cancelled
        cancelled = True
        _stop(process, grace)

    signal.signal(signal.SIGTERM, _on_term)
    begun = time.monotonic()
    more = directory / MORE
    per_clip = float(launch.get("timeout_per_clip") or 0)
    linger = float(launch.get("linger_seconds") or 0)
    deadline = begun + timeout
    timed_out = False
    overran: Path | None = None  # the clip of a batch that ran past its own timeout
    while True:
        try:
            code = process.wait(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            break
        except subprocess.TimeoutExpired:
            if per_clip:
                # A batch: each clip has its own timeout, from when it started; the
                # whole process is bounded too, with the lingers between clips.
                try:
                    every = members + [
                        Path(r).parent for r in (_more_reports(more) if more.is_dir() else [])
                    ]
                    overran = _overrunning(every, per_clip)
                    deadline = begun + (len(every) + 1) * (per_clip + linger)
                except Exception:
                    # Never fatal: a supervisor gone leaves its stage running unwatched,
                    # and its clips read as lost and start again beside it.
                    traceback.print_exc()
            if overran is not None or time.monotonic() >= deadline:
                timed_out = True
                _stop(process, grace)
                code = process.returncode
                break
    if code is not None and code < 0:
        code = 128 - code  # killed by a signal, as a shell reports it
    reason = None
    if timed_out:
        reason = f"timed out after {per_clip or timeout:g} s and was killed"
    elif cancelled:
        reason = "cancelled"
    elif code != 0:
        reason = last_line(directory / STDERR) or f"exited with code {code} and printed nothing"
    status = {
        "exit_code": 124 if timed_out else code,
        "timed_out": timed_out,
        "cancelled": cancelled,
        "reason": reason,
        "started_at": started,
        "finished_at": _now(),
    }
    copy = directory / MANIFEST_COPY
    # A larger copy is left to the engine, which reads the manifest from S3 under its
    # own limit.
    if (
        code == 0
        and not timed_out
        and not cancelled
        and copy.is_file()
        and copy.stat().st_size <= MAX_MANIFEST_COPY_BYTES
    ):
        with contextlib.suppress(OSError, ValueError):
            status["manifest"] = json.loads(copy.read_text())
    if more.is_dir():
        # Clips added to a warm batch that its process never took are given back here,
        # so that nothing can take them later: they end as the batch did.
        with contextlib.suppress(FileExistsError):
            (more / contract.BATCH_CLOSED).touch(exist_ok=False)
        for path in more.glob("*.json"):
            with contextlib.suppress(FileNotFoundError):
                path.rename(path.with_name(path.name + WITHDRAWN))
        members += [Path(report).parent for report in _more_reports(more)]
    # A clip is stopped by another's doing only where that other is known: the clip
    # that ran past its own timeout, or one cancelled. Otherwise (the batch's own
    # deadline, a SIGTERM from elsewhere) each clip ends as the batch did, using a retry.
    some_cancelled = any((folder / contract.BATCH_CANCELLED).exists() for folder in members)
    for folder in members:
        # The stage reported the clips it finished; the others end as the batch did,
        # with the batch's log (where the crash is) as theirs.
        if not (folder / STATUS).exists():
            if not (folder / STDERR).exists():
                with contextlib.suppress(FileExistsError):
                    (folder / STDERR).symlink_to(directory / STDERR)
            began = (folder / contract.BATCH_STARTED).exists()
            ended = _unreported(
                status,
                folder == overran or overran is None or not per_clip,
                began,
                cancelled=(folder / contract.BATCH_CANCELLED).exists()
                or not some_cancelled
                or not per_clip,
            )
            write_json_atomic(folder / STATUS, ended)
    write_json_atomic(directory / STATUS, status)
    return 0


def _more_reports(more: Path) -> list[str]:
    """The report paths of every clip added to a warm batch (taken or given back)."""
    reports = []
    for path in more.iterdir():
        if path.name.endswith((".json" + contract.BATCH_TAKEN, ".json" + WITHDRAWN)):
            # A file it cannot read names no clip it could report (never fatal: the
            # supervisor must live to report the others).
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
                for item in json.loads(path.read_text()):
                    # Fused stages come as one item holding each stage's own.
                    reports += [one["report"] for one in item.get(contract.CHAIN, [item])]
    return reports


def _overrunning(members: list[Path], per_clip: float) -> Path | None:
    """The clip of a batch that started more than ``per_clip`` seconds ago and has not
    been reported."""
    now = datetime.now(UTC)
    for folder in members:
        if (folder / STATUS).exists():
            continue
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            started = json.loads((folder / contract.BATCH_STARTED).read_text())["started_at"]
            if (now - datetime.fromisoformat(started)).total_seconds() > per_clip:
                return folder
    return None


def _unreported(
    batch: dict, overran: bool = True, started: bool = True, cancelled: bool = True
) -> dict:
    """A clip of a batch that ended before the stage reported it. Its reason never
    quotes the batch's log, whose last line is another clip's. Only the clip that ran
    past its timeout timed out, and only the one cancelled was: the others (after it,
    or beside it on another thread) are retried."""
    batch = {k: v for k, v in batch.items() if k != "manifest"}
    why = None
    if batch["cancelled"] and not cancelled:
        why = "another clip was cancelled"
    elif batch["timed_out"] and not overran:
        why = "another clip ran past its timeout"
    if why is not None:
        # Nothing of its own doing: skipped, so it starts again without using a retry
        # (and alone: a retry never shares a process).
        return batch | {
            "exit_code": None,
            "timed_out": False,
            "cancelled": False,
            "skipped": True,
            "reason": f"its batch was stopped ({why}) before this clip "
            f"{'was done' if started else 'started'}; run again on its own",
        }
    if batch["timed_out"] or batch["cancelled"]:
        return batch
    if batch["exit_code"] != 0:
        return batch | {
            "reason": f"its batch's process ended (exit {batch['exit_code']}) before this "
            "clip was done; retried on its own"
        }
    return batch | {
        "exit_code": 1,
        "reason": "the batch's process exited before reporting this clip "
        "(does the program take batches? only SDK stages declare batch: true)",
    }


if __name__ == "__main__":
    if sys.argv[1] == "--spare":
        sys.exit(spare(Path(sys.argv[2])))
    sys.exit(supervise(Path(sys.argv[1])))
