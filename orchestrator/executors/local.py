"""The local executor: each stage attempt is a process on this machine.

State lives in ``<home>/attempts/<attempt-id>/`` (launch.json, runner.json,
status.json, stdout.log, stderr.log), not in this object, so an orchestrator that
restarts finds running and finished attempts where it left them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from algorithms import contract
from algorithms.spare import READY
from orchestrator.errors import CamflowError, ExecutorError
from orchestrator.executors import local_runner as files
from orchestrator.executors.base import (
    Capacity,
    ExecState,
    ExecStatus,
    Placement,
    StageLaunch,
    Submission,
)
from orchestrator.fileio import write_json_atomic, write_private
from orchestrator.grants.brokers import Broker, StageCredentials, without_credentials
from orchestrator.grants.policy import grant_for

log = logging.getLogger("camflow.local")

#: A runner that has not written runner.json this long after launch is presumed dead.
START_GRACE_SECONDS = 30.0
#: How often ``wait`` looks for a finished attempt: a few stat calls each time.
WAIT_STEP_SECONDS = 0.02
#: The largest status.json read (a batch clip's report carries its manifest).
MAX_STATUS_BYTES = 4 * 2**20


#: Clips one warm process serves at most: under a steady stream it would never go
#: idle long enough to close, and its supervisor rereads every clip it was handed, so
#: after this many the next clips start a fresh process.
WARM_MAX_CLIPS = 256
#: The thread pools of the BLAS libraries numpy may use (OpenBLAS, MKL, OpenMP).
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
#: How long cancelling a clip of a batch waits for the stage to say it skipped it.
CANCEL_WAIT_SECONDS = 0.5


def _reported_soon(status: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not status.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(WAIT_STEP_SECONDS)
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


#: How far a process's start time may read from the recorded one and still be it:
#: psutil adds the boot time, which /proc gives in whole seconds, so two reads of one
#: process can differ by a second. A pid is not reused within that (the runner would
#: have to exit and the pids wrap around in between).
START_TIME_TOLERANCE_SECONDS = 1.5


class _Unverifiable(Exception):
    """The pid is alive but runner.json has no start time to tell whose it is."""


def _runner_process(runner: Mapping[str, Any]) -> psutil.Process | None:
    """The runner's process if it is still running; None once it is gone, including
    when its pid now belongs to a process started since (pids are recycled)."""
    try:
        process = psutil.Process(runner["pid"])
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        recorded = runner.get("pid_create_time")
        if recorded is None:
            raise _Unverifiable
        if abs(process.create_time() - float(recorded)) > START_TIME_TOLERANCE_SECONDS:
            return None
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        # Another user's process: never the runner, which runs as this user.
        return None
    return process


def _runner_alive(runner: Mapping[str, Any]) -> bool:
    try:
        return _runner_process(runner) is not None
    except _Unverifiable:
        # runner.json from before start times were recorded: almost surely a runner
        # still going since before an upgrade. Calling it lost would start the stage a
        # second time beside it; calling it running at worst waits for the engine's run
        # limit, which expires an attempt that runs past its timeout.
        return True


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass
class _Warm:
    batch: str
    directory: Path
    child: subprocess.Popen
    #: Every attempt folder it was given.
    members: list[Path]
    #: The batches it was started with, each one of the engine's slots: clips added
    #: later run under these ids, at most one group of clips per lane.
    lanes: list[str]


@dataclass
class _Spare:
    """A stage process started ahead, idle until a batch is given to it."""

    folder: Path
    child: subprocess.Popen
    #: What it was started with (a batch's order carries only what differs).
    env: dict[str, str]


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def _env_of(credentials: StageCredentials | None) -> dict[str, str]:
    return credentials.env() if credentials is not None else {}


#: Batches that start together as one process: (batch id, its launches) per lane.
Lanes = list[tuple[str, list[StageLaunch]]]


def _interleaved(lanes: Lanes) -> list[tuple[str, StageLaunch]]:
    """The clips of ``lanes`` in the order they were dealt to them (round-robin, oldest
    first), each with its lane: threads that take them in turn finish the lanes
    together."""
    longest = max(len(launches) for _, launches in lanes)
    return [
        (lane, launches[n]) for n in range(longest) for lane, launches in lanes if n < len(launches)
    ]


def _shares_threads(launch: StageLaunch) -> bool:
    """Its batches may share one process, on threads: CPU only (a GPU process holds
    one GPU) and every stage it runs thread-safe."""
    return launch.accelerator == "cpu" and all(m.thread_safe for m in launch.members)


def _followed(launch: StageLaunch) -> list[str]:
    """The attempts of a fused execution whose every reader runs after them in it."""
    stages = [member.stage for member in launch.members]
    return [
        member.attempt_id
        for n, member in enumerate(launch.members[:-1])
        if set(member.readers) <= set(stages[n + 1 :])
    ]


def _warm_key(launch: StageLaunch) -> tuple[str, ...]:
    """What a warm process runs: launches that share it may join it (never another
    tenant's: one process, one tenant). Fused stages: what each of them runs."""
    parts = [launch.tenant, launch.accelerator]
    for member in launch.members:
        parts += [
            member.algorithm,
            member.env.get(contract.ENV_PARAMS, ""),
            member.env.get(contract.ENV_KEEP_LOCAL, ""),
            str(member.timeout_seconds),
            json.dumps(member.command),
            member.workdir or "",
        ]
    return tuple(parts)


#: The SDK's runner of fused stages: each stage's main(ctx), in one process.
CHAIN_COMMAND = ["python", "-m", "algorithms.chain"]


class LocalExecutor:
    name = "local"
    retries_itself = False
    batches = True
    durable_before_submit = False
    fuses = True
    #: Batches that start in one tick come in one submit: a thread-safe stage's share
    #: one process.
    submits_together = True

    def __init__(
        self,
        root: Path,
        max_parallel: int = 2,
        gpus: int = 0,
        kill_grace_seconds: float = 5.0,
        base_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        batch_linger_seconds: float = 0.0,
        broker: Broker | None = None,
        spare: bool = False,
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_parallel = max_parallel
        self.gpus = gpus
        self.kill_grace_seconds = kill_grace_seconds
        #: S3 access and the like, added to every stage's contract variables.
        self.base_env = dict(base_env or {})
        self.cwd = cwd
        self._children: dict[str, subprocess.Popen] = {}
        #: status.json of the attempts the last poll saw queued or running.
        self._unfinished: list[Path] = []
        #: Fused stages whose every reader runs after them in their process: their
        #: finish frees no slot, ends no run and readies no stage the engine starts, so
        #: it does not wake wait() (a tick for each stage of each clip would cost the
        #: engine's CPU, which the stages share).
        self._quiet: set[str] = set()
        self.batch_linger_seconds = batch_linger_seconds
        #: Batch processes this executor started that may take more clips, by what
        #: they run (a restart forgets them: they then run out their linger alone).
        self._warm: dict[tuple[str, ...], _Warm] = {}
        #: Mints each process's storage credentials (None: stages use base_env's).
        self.broker = broker
        #: Credentials handed to processes still running: revoked once each exits.
        self._issued: list[tuple[subprocess.Popen, StageCredentials]] = []
        #: Processes started on a GPU, until they exit: one whose GPU stage is done may
        #: still run CPU stages that joined it (placement.join_gpu), holding the GPU's
        #: memory, while the engine's count of GPU attempts already says it is free.
        self._on_gpu: list[subprocess.Popen] = []
        #: Keep a stage process started ahead for the next batch (see _keep_spare).
        self.spare = spare
        self._spare: _Spare | None = None
        self._keep_spare()

    def capacity(self) -> Capacity:
        return Capacity(slots=self.max_parallel, gpu_slots=min(self.gpus, self.max_parallel))

    def _command(self, command: list[str]) -> list[str]:
        # Algorithm manifests say `python`; locally that is this interpreter (the venv).
        if command and command[0] in ("python", "python3"):
            return [sys.executable, *command[1:]]
        return command

    def place(self, launches: Sequence[StageLaunch]) -> dict[str, Placement]:
        """One machine: every launch goes here, on the accelerator the engine admitted,
        but a GPU launch only while fewer processes than GPUs hold one (none: no place
        now, and the engine decides again next tick)."""
        self._on_gpu = [child for child in self._on_gpu if child.poll() is None]
        free_gpus = self.gpus - len(self._on_gpu)
        placed = {}
        for launch in launches:
            if launch.accelerator == "gpu":
                if free_gpus <= 0:
                    continue
                free_gpus -= 1
            placed[launch.attempt_id] = Placement(placement="local", accelerator=launch.accelerator)
        return placed

    def submit(self, launches: Sequence[StageLaunch]) -> dict[str, Submission]:
        """Starts each launch in a process of its own, or each batch (launches sharing
        ``batch``) in one process that takes the clips one after another."""
        handles: dict[str, Submission] = {}
        batches: dict[str, list[StageLaunch]] = {}
        for launch in launches:
            if launch.batch or launch.chain:
                # Fused stages run as a batch (of one clip, if alone): the SDK's form. A
                # chain resubmitted alone gets a process of its own, named after its
                # first attempt (its recorded batch's process may hold other clips).
                batch = launch.batch or f"b-{launch.attempt_id}"
                batches.setdefault(batch, []).append(launch)
            else:
                handles.update(self._submit_one(launch))
        # Batches of a thread-safe stage that start together share one process.
        processes: dict[tuple[Any, ...], Lanes] = {}
        for batch, members in batches.items():
            first = members[0]
            key = ("threads", *_warm_key(first)) if _shares_threads(first) else ("alone", batch)
            processes.setdefault(key, []).append((batch, members))
        for lanes in processes.values():
            handles.update(self._submit_lanes(lanes))
        self._quiet.update(attempt for launch in launches for attempt in _followed(launch))
        # Watched by wait() from now on, not only from the next poll.
        watched = [s.handle for s in handles.values() if s.handle not in self._quiet]
        self._unfinished += [self.root / handle / files.STATUS for handle in watched]
        return handles

    @property
    def _share(self) -> int:
        """A slot's share of the cores."""
        return max(1, (os.cpu_count() or 1) // self.max_parallel)

    def _base_env(self, accelerator: str) -> dict[str, str]:
        """What every stage process on ``accelerator`` gets, whatever it runs (a spare
        starts with it)."""
        # The orchestrator's own settings (a database URL with its password, say)
        # are none of a stage's business.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CAMFLOW_")}
        env = {**inherited, **self.base_env}
        if self.broker is not None:
            # Nor are the orchestrator's keys: each process gets its own, minted below.
            env = without_credentials(env)
        if accelerator == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        # numpy's BLAS starts a thread per core at import, which spin while the stage
        # goes on importing: 0.2 s of CPU per process here. A clip's BLAS calls come
        # from its own thread, so a slot's share each (unless the environment says).
        for pool in BLAS_THREADS:
            env.setdefault(pool, str(self._share))
        return env

    def _stage_env(self, launch: StageLaunch, lanes: int = 1) -> dict[str, str]:
        env = self._base_env(launch.accelerator)
        workdirs = list(dict.fromkeys(m.workdir for m in launch.members if m.workdir))
        if workdirs:
            # A registered algorithm's own modules import from its folder's parent.
            env["PYTHONPATH"] = os.pathsep.join(p for p in (*workdirs, env.get("PYTHONPATH")) if p)
        # Its share of the cores: a slot's (per lane), so that stages side by side do
        # not each start a thread per core and fight over them.
        env[contract.ENV_CPUS] = str(self._share * lanes)
        if lanes > 1:
            env[contract.ENV_BATCH_THREADS] = str(lanes)
        return env

    def _runner_launch(self, launch: StageLaunch, timeout: float) -> dict[str, Any]:
        return {
            "command": self._command(CHAIN_COMMAND if launch.chain else launch.command),
            "timeout_seconds": timeout,
            "kill_grace_seconds": self.kill_grace_seconds,
            "cwd": launch.workdir or (str(self.cwd) if self.cwd else None),
            "stage": launch.stage,
            "algorithm": launch.algorithm,
        }

    def _submit_one(self, launch: StageLaunch) -> dict[str, Submission]:
        directory = self.root / launch.attempt_id
        if (directory / files.LAUNCH).exists():
            # Submitted before a crash: adopt it rather than start it twice.
            return {launch.attempt_id: self._submission(launch)}
        directory.mkdir(parents=True, exist_ok=True)
        spec = self._runner_launch(launch, launch.timeout_seconds) | {"run_id": launch.run_id}
        # Minted before the claim: a failure leaves nothing claimed that never ran.
        credentials = self._issue([launch])
        if not files.create_json_exclusive(directory / files.LAUNCH, spec):
            # Another engine claimed it in between: adopt, never start it twice.
            if credentials is not None:
                self._revoke(credentials)
            return {launch.attempt_id: self._submission(launch)}
        env = {**self._stage_env(launch), **launch.env, **_env_of(credentials)}
        env[contract.ENV_MANIFEST_COPY] = str(directory / files.MANIFEST_COPY)
        child = self._start_runner(directory, env, credentials)
        self._children[launch.attempt_id] = child
        if launch.accelerator == "gpu":
            self._on_gpu.append(child)
        return {launch.attempt_id: self._submission(launch)}

    def _submit_lanes(self, lanes: Lanes) -> dict[str, Submission]:
        """One process for the clips of ``lanes`` (one batch each, or several of a
        thread-safe stage, which its threads share), or an idle warm one of the same
        stage. Each attempt folder is claimed as for a single attempt (pointing at its
        batch), so none is ever started twice; the stage reports each clip into its
        attempt's status.json as it finishes."""
        claimed: Lanes = []
        for batch, launches in lanes:
            mine = [launch for launch in launches if self._claim(batch, launch)]
            if mine:
                claimed.append((batch, mine))
        recorded = {batch: batch for batch, _ in lanes}
        if claimed:
            first = claimed[0][1][0]
            key = _warm_key(first)
            warm = self._warm.get(key)
            if warm is not None and self._add_to_warm(warm, claimed):
                log.info(
                    "batch %s: %d more clips of stage %s, in its warm process",
                    warm.batch,
                    sum(len(launches) for _, launches in claimed),
                    first.stage,
                )
                # Each group runs as one of its lanes, and is counted as that slot.
                recorded |= {b: lane for (b, _), lane in zip(claimed, warm.lanes, strict=False)}
            else:
                self._start_batch(claimed, key)
        return {
            member.attempt_id: self._submission(member, recorded[batch])
            for batch, launches in lanes
            for launch in launches
            for member in launch.members
        }

    def _claim(self, batch: str, launch: StageLaunch) -> bool:
        """Claims the attempt folders of a clip of ``batch`` (its fused stages with it:
        its process runs them all, or none); False: claimed before (a replay)."""
        attempt_dir = self.root / launch.attempt_id
        attempt_dir.mkdir(parents=True, exist_ok=True)
        pointer = {"batch": batch, "stage": launch.stage, "run_id": launch.run_id}
        if not files.create_json_exclusive(attempt_dir / files.LAUNCH, pointer):
            return False
        for follower in launch.chain:
            folder = self.root / follower.attempt_id
            folder.mkdir(parents=True, exist_ok=True)
            files.create_json_exclusive(
                folder / files.LAUNCH, pointer | {"stage": follower.stage, "fused": True}
            )
        return True

    def _start_batch(self, lanes: Lanes, key: tuple[str, ...]) -> None:
        try:
            self._start_batch_process(lanes, key)
        except (OSError, ExecutorError) as exc:
            # Nothing started: the claims go, so that a Resubmit starts them for real
            # rather than adopting attempts that never ran.
            clips = [launch for _, launches in lanes for launch in launches]
            for launch in clips:
                for member in launch.members:
                    (self.root / member.attempt_id / files.LAUNCH).unlink(missing_ok=True)
            raise ExecutorError(f"could not start a batch of {len(clips)} clips: {exc}") from exc

    def _start_batch_process(self, lanes: Lanes, key: tuple[str, ...]) -> None:
        batch = lanes[0][0]
        directory = self.root / "batches" / batch
        dealt = _interleaved(lanes)
        claimed = [launch for _, launch in dealt]
        first = claimed[0]
        # The stage's timeout is per clip: the batch has one for each of its clips (and
        # each fused stage of a clip has its own).
        per_clip = sum(member.timeout_seconds for member in first.members)
        spec = self._runner_launch(first, per_clip * len(claimed)) | {
            "batch": batch,
            "attempts": [
                str(self.root / member.attempt_id)
                for launch in claimed
                for member in launch.members
            ],
            "timeout_per_clip": max(member.timeout_seconds for member in first.members),
            "linger_seconds": self.batch_linger_seconds,
        }
        if (directory / files.LAUNCH).exists():
            return  # a replay of a batch already started
        # Minted before the batch is claimed: a failure leaves no claim that never ran.
        credentials = self._issue(claimed)
        env = (
            self._stage_env(first, len(lanes))
            | _env_of(credentials)
            | {contract.ENV_BATCH_FILE: str(directory / files.BATCH_ITEMS)}
        )
        # GPU processes do not linger: an idle one holds no slot in the engine's count
        # but would hold its GPU's memory while another stage is given that GPU.
        linger = self.batch_linger_seconds if first.accelerator == "cpu" else 0.0
        if linger > 0:
            env[contract.ENV_BATCH_MORE] = str(directory / files.MORE)
            env[contract.ENV_BATCH_LINGER] = str(linger)
        # Owner-only: the items carry the batch's credentials.
        items = json.dumps(self._items(dealt, credentials))
        child = self._give_to_spare(directory, claimed, spec, env, items, credentials)
        if child is None:
            directory.mkdir(parents=True, exist_ok=True)
            if not files.create_json_exclusive(directory / files.LAUNCH, spec):
                if credentials is not None:
                    self._revoke(credentials)
                return  # a replay of a batch already started
            write_private(directory / files.BATCH_ITEMS, items)
            if linger > 0:
                (directory / files.MORE).mkdir(exist_ok=True)
            child = self._start_runner(directory, env, credentials)
        for lane, _ in lanes[1:]:
            # Every batch the store records has its folder: the others' are this one.
            with contextlib.suppress(FileExistsError):
                (self.root / "batches" / lane).symlink_to(batch, target_is_directory=True)
        if first.accelerator == "gpu":
            self._on_gpu.append(child)
        for launch in claimed:
            for member in launch.members:
                self._children[member.attempt_id] = child
        if linger > 0:
            members = [self.root / m.attempt_id for launch in claimed for m in launch.members]
            self._warm[key] = _Warm(batch, directory, child, members, [b for b, _ in lanes])
        log.info(
            "batch %s: %d clips of stage%s %s in one process%s",
            batch,
            len(claimed),
            "s" if first.chain else "",
            ", ".join(m.stage for m in first.members),
            f", on {len(lanes)} threads" if len(lanes) > 1 else "",
        )

    def _give_to_spare(
        self,
        directory: Path,
        claimed: list[StageLaunch],
        spec: dict[str, Any],
        env: dict[str, str],
        items: str,
        credentials: StageCredentials | None,
    ) -> subprocess.Popen | None:
        """Gives the batch to the spare process if one is ready and the batch is an SDK
        stage's ``python -m MODULE`` on CPU whose code is where the spare started (it
        has imported from there already): its folder becomes the batch's. None: start
        a process for it instead."""
        spare = self._spare
        command = spec["command"]
        workdirs = {m.workdir for launch in claimed for m in launch.members} - {None}
        if (
            spare is None
            or spec.get("cwd") != _str(self.cwd)
            or not workdirs <= {spec.get("cwd")}
            or claimed[0].accelerator != "cpu"  # the spare sees no GPU
            or command[:2] != [sys.executable, "-m"]
            or len(command) != 3
            or directory.exists()
            or directory.is_symlink()
        ):
            return None
        self._spare = None
        if spare.child.poll() is not None:
            return None
        if not files.create_json_exclusive(spare.folder / files.LAUNCH, spec):
            return None  # it gave up meanwhile (its process died, say)
        linked = False
        try:
            write_private(spare.folder / files.BATCH_ITEMS, items)
            if contract.ENV_BATCH_MORE in env:
                (spare.folder / files.MORE).mkdir(exist_ok=True)
            directory.parent.mkdir(parents=True, exist_ok=True)
            directory.symlink_to(spare.folder, target_is_directory=True)
            linked = True
            # Last: the spare starts on it. Owner-only, and only what the spare's own
            # environment lacks: the batch's variables and credentials.
            extra = {k: v for k, v in env.items() if spare.env.get(k) != v}
            order = {"module": command[2], "cwd": spec.get("cwd"), "env": extra}
            write_private(spare.folder / files.SPARE_ORDER, json.dumps(order))
        except OSError:
            # No order, no start: its runner gives up waiting and touches no clip.
            if linked:
                with contextlib.suppress(OSError):
                    directory.unlink()
            if credentials is not None:
                self._revoke(credentials)
            raise
        if credentials is not None:
            self._issued.append((spare.child, credentials))
        log.info("batch %s: given to the spare process started ahead", directory.name)
        return spare.child

    def _keep_spare(self) -> None:
        """Starts a spare process if none is ready, while this machine runs no stage:
        its imports would take CPU from the stages running, and a batch that comes
        meanwhile would find a warm process or a slot anyway."""
        if not self.spare or (self._spare is not None and self._spare.child.poll() is None):
            return
        if any(child.poll() is None for child in self._children.values()):
            return
        folder = self.root / "spares" / uuid.uuid4().hex
        folder.mkdir(parents=True)
        spare_command = [sys.executable, "-m", "algorithms.spare"]
        write_json_atomic(
            folder / files.SPARE,
            {
                "command": spare_command,
                "cwd": _str(self.cwd),
                "order_wait_seconds": files.SPARE_ORDER_WAIT_SECONDS,
            },
        )
        env = self._base_env("cpu") | {contract.ENV_SPARE: str(folder / files.SPARE_ORDER)}
        try:
            child = self._popen(folder, env, "--spare")
        except ExecutorError as exc:
            log.warning("could not start a spare stage process: %s", exc)
            self.spare = False
            return
        self._spare = _Spare(folder, child, env)

    def spare_ready(self) -> bool:
        """A spare process is waiting with its imports done."""
        spare = self._spare
        return spare is not None and spare.child.poll() is None and (spare.folder / READY).exists()

    def _items(
        self, dealt: list[tuple[str, StageLaunch]], credentials: StageCredentials | None
    ) -> list[dict[str, Any]]:
        # Each clip's stderr goes to its own attempt's log as well as the batch's.
        def item(launch: StageLaunch) -> dict[str, Any]:
            return {
                # A clip's share of the cores is a slot's: clips side by side on threads
                # each keep one slot's worth busy, and one alone no more than its slot.
                "env": launch.env | {contract.ENV_CPUS: str(self._share)} | _env_of(credentials),
                "report": str(self.root / launch.attempt_id / files.STATUS),
                "log": str(self.root / launch.attempt_id / files.STDERR),
            }

        return [
            (
                {contract.CHAIN: [item(m) | {"module": m.command[2]} for m in launch.members]}
                if launch.chain
                else item(launch)
            )
            | {contract.LANE: lane}
            for lane, launch in dealt
        ]

    def _add_to_warm(self, warm: _Warm, lanes: Lanes) -> bool:
        """Hands the clips to a warm process of their stage if it is alive, open and
        idle (every clip it had is reported: a busy one would queue them behind its
        own while a slot may be free) and has a lane for each of their batches. False:
        start a process for them instead."""
        more = warm.directory / files.MORE
        if (
            len(lanes) > len(warm.lanes)
            or len(warm.members) >= WARM_MAX_CLIPS
            or warm.child.poll() is not None
            or (more / contract.BATCH_CLOSED).exists()
            or not all((member / files.STATUS).exists() for member in warm.members)
        ):
            return False
        runner = json.loads((warm.directory / files.RUNNER).read_text())
        # Minted before any clip points at that process: a failure leaves none of them
        # waiting on a process that never heard of it.
        dealt = _interleaved(
            [(lane, launches) for lane, (_, launches) in zip(warm.lanes, lanes, strict=False)]
        )
        claimed = [launch for _, launch in dealt]
        credentials = self._issue(claimed)
        added = [member for launch in claimed for member in launch.members]
        for launch in added:
            # They read as running in that process, with its log as theirs.
            folder = self.root / launch.attempt_id
            with contextlib.suppress(FileExistsError):
                (folder / files.STDOUT).symlink_to(warm.directory / files.STDOUT)
            write_json_atomic(folder / files.RUNNER, runner | {"batch": warm.batch})
        name = f"{time.time_ns():020d}-{os.getpid()}.json"
        write_private(more / name, json.dumps(self._items(dealt, credentials)))
        if credentials is not None:
            self._issued.append((warm.child, credentials))
        if (more / contract.BATCH_CLOSED).exists():
            # It closed meanwhile: take them back, unless its last look took them. Taken
            # back under a suffix of their own, which its supervisor does not count as
            # its clips (it would fail them while their new process runs them).
            try:
                (more / name).rename(more / (name + files.RETURNED))
            except FileNotFoundError:
                if not (more / (name + contract.BATCH_TAKEN)).exists():
                    # Its supervisor gave them back as it ended: they never ran there
                    # and it reports them; starting them elsewhere would run them twice
                    # in the store's eyes. They are retried from its report.
                    warm.members += [self.root / launch.attempt_id for launch in added]
                    return True
            else:
                for launch in added:
                    folder = self.root / launch.attempt_id
                    (folder / files.RUNNER).unlink(missing_ok=True)
                    (folder / files.STDOUT).unlink(missing_ok=True)
                return False
        warm.members += [self.root / launch.attempt_id for launch in added]
        for launch in added:
            self._children[launch.attempt_id] = warm.child
        return True

    def _issue(self, launches: list[StageLaunch]) -> StageCredentials | None:
        if self.broker is None:
            return None
        try:
            return self.broker.issue(grant_for([m for launch in launches for m in launch.members]))
        except CamflowError as exc:
            raise ExecutorError(str(exc)) from exc

    def _revoke(self, credentials: StageCredentials) -> None:
        if self.broker is not None:
            try:
                self.broker.revoke(credentials)
            except Exception as exc:  # the sweep ends them at their expiry anyway
                log.warning("could not revoke stage credentials %s: %s", credentials.handle, exc)

    def _start_runner(
        self, directory: Path, env: dict[str, str], credentials: StageCredentials | None = None
    ) -> subprocess.Popen:
        try:
            child = self._popen(directory, env)
        except ExecutorError:
            if credentials is not None:
                self._revoke(credentials)
            raise
        if credentials is not None:
            self._issued.append((child, credentials))
        return child

    def _popen(self, directory: Path, env: dict[str, str], *mode: str) -> subprocess.Popen:
        runner = [sys.executable, "-m", "orchestrator.executors.local_runner", *mode]
        try:
            with (directory / "runner.log").open("ab") as runner_log:
                return subprocess.Popen(
                    [*runner, str(directory)],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=runner_log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            raise ExecutorError(f"could not start the local runner: {exc}") from exc

    def _submission(self, launch: StageLaunch, batch: str | None = None) -> Submission:
        return Submission(
            handle=launch.attempt_id, accelerator=launch.accelerator, placement="local", batch=batch
        )

    def _reap(self) -> None:
        for key, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[key]
        ended = [(child, c) for child, c in self._issued if child.poll() is not None]
        if ended:
            self._issued = [(child, c) for child, c in self._issued if child.poll() is None]
            for _child, credentials in ended:
                self._revoke(credentials)

    def poll(self, handles: Sequence[str]) -> dict[str, ExecStatus]:
        self._reap()
        self._keep_spare()
        statuses = {handle: self._status(handle) for handle in handles}
        unfinished = {
            handle
            for handle, status in statuses.items()
            if status.state in (ExecState.QUEUED, ExecState.RUNNING)
        }
        self._quiet -= set(handles) - unfinished
        self._unfinished = [
            self.root / handle / files.STATUS for handle in unfinished - self._quiet
        ]
        return statuses

    def wait(self, timeout: float) -> None:
        """Returns when an attempt the last poll saw unfinished has finished, or after
        ``timeout``: a foreground engine (camflow process) then starts the next stage
        at once instead of at its next interval."""
        deadline = time.monotonic() + timeout
        while True:
            finished = [path for path in self._unfinished if path.exists()]
            if finished:
                # Each finish wakes once: one the engine will not poll again (its run
                # ended) must not keep waking it.
                self._unfinished = [p for p in self._unfinished if p not in finished]
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(WAIT_STEP_SECONDS, left))

    def _status(self, handle: str) -> ExecStatus:
        directory = self.root / handle
        status_file = directory / files.STATUS
        if status_file.exists():
            if status_file.stat().st_size > MAX_STATUS_BYTES:
                # The stage writes a batch clip's report: it must not cost the engine
                # its memory at every poll.
                return ExecStatus(
                    state=ExecState.FAILED,
                    exit_code=1,
                    reason=f"its report is over {MAX_STATUS_BYTES} bytes (a manifest that "
                    "large breaks the stage contract)",
                )
            status = json.loads(status_file.read_text())
            code = status["exit_code"]
            if status.get("skipped") or (code != 0 and self._fused_not_begun(directory)):
                return ExecStatus(
                    state=ExecState.SKIPPED,
                    reason=status.get("reason")
                    if status.get("skipped")
                    else ("not run: its process ended before this stage began"),
                    finished_at=_parse_time(status.get("finished_at")),
                )
            return ExecStatus(
                state=ExecState.SUCCEEDED if code == 0 else ExecState.FAILED,
                exit_code=code,
                reason=status.get("reason"),
                timed_out=bool(status.get("timed_out")),
                started_at=_parse_time(status.get("started_at")),
                finished_at=_parse_time(status.get("finished_at")),
                manifest=status.get("manifest") if code == 0 else None,
            )
        runner_file = directory / files.RUNNER
        if runner_file.exists():
            runner = json.loads(runner_file.read_text())
            if _runner_alive(runner):
                if runner.get("batch"):
                    # A clip of a batch runs from when the stage started it, not when its
                    # batch did (its timeout counts from then); until then it waits.
                    started = _read_json(directory / contract.BATCH_STARTED)
                    if started is None:
                        return ExecStatus(state=ExecState.QUEUED)
                    return ExecStatus(
                        state=ExecState.RUNNING, started_at=_parse_time(started.get("started_at"))
                    )
                return ExecStatus(
                    state=ExecState.RUNNING, started_at=_parse_time(runner.get("started_at"))
                )
            if status_file.exists():  # finished between the two checks
                return self._status(handle)
            return ExecStatus(
                state=ExecState.LOST,
                reason="the local runner died without recording an exit status",
            )
        launch_file = directory / files.LAUNCH
        if launch_file.exists():
            age = datetime.now().timestamp() - launch_file.stat().st_mtime
            if handle in self._children or age < START_GRACE_SECONDS:
                return ExecStatus(state=ExecState.QUEUED)
        return ExecStatus(state=ExecState.LOST, reason="no trace of this attempt on this machine")

    def _fused_not_begun(self, directory: Path) -> bool:
        """A stage fused after another that its process never began (it ended first)."""
        if (directory / contract.BATCH_STARTED).exists():
            return False
        pointer = _read_json(directory / files.LAUNCH)
        return bool(pointer and pointer.get("fused"))

    def cancel(self, handles: Sequence[str]) -> None:
        self._quiet -= set(handles)
        for handle in handles:
            runner_file = self.root / handle / files.RUNNER
            if not runner_file.exists():
                continue
            runner = json.loads(runner_file.read_text())
            try:
                process = _runner_process(runner)
            except _Unverifiable:
                # The pid may be anyone's by now; the runner's own timeout stops it.
                log.warning("not cancelling %s: runner.json has no start time", handle)
                continue
            if process is None:
                continue
            folder = self.root / handle
            if runner.get("batch"):
                # A clip of a batch: the stage skips it if it has not begun it (it marks
                # a clip started, then looks for the cancel), and the batch's other
                # clips go on. Only one it is running stops the process.
                (folder / contract.BATCH_CANCELLED).touch()
                if not (folder / contract.BATCH_STARTED).exists() or _reported_soon(
                    folder / files.STATUS, CANCEL_WAIT_SECONDS
                ):
                    continue
            # The runner stops the stage's process group and records "cancelled" (for a
            # batch, the clip it was running: the clips after it end with it).
            # psutil checks the pid still names that process just before signalling.
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGTERM)

    def log_uri(self, handle: str) -> str:
        return (self.root / handle).as_uri()

    def close(self) -> None:
        self._reap()
        if self._spare is not None:
            # Claimed as abandoned: its runner stops it, and no batch can go to it. Its
            # folder is gone if its runner ended it already.
            with contextlib.suppress(OSError):
                files.create_json_exclusive(self._spare.folder / files.LAUNCH, {"abandoned": True})
            self._spare = None
