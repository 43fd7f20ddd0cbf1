"""Chaos: does every clip get exactly one result when things go wrong?

Runs real `camflow serve` processes against a real S3 + SQS endpoint (a moto server in
this process) and a real store, uploads clips the way cameras do (backlogs, skewed
clocks), does harm, waits, and then counts from ground truth:

- **lost**: clips uploaded that never got a succeeded run;
- **duplicated**: stage executions that *completed* more than once for one run (two
  results for one clip);
- **re-executed**: stage executions started beyond one per run and stage, each
  explained (a retry after an S3 error, say). The stage (``tests/stages/tally``) writes
  start/done lines to a log that outlives every process, so nothing here trusts
  camflow's own bookkeeping.

Scenarios (each prints one row; exit status 1 if anything was lost or duplicated):

    python -m tests.chaos kill --clips 200 --kills 20      # SIGKILL serve at random moments
    python -m tests.chaos replicas --clips 1000 --replicas 3   # on PostgreSQL; the leader
                                                           # is SIGKILLed once midway
    python -m tests.chaos s3-outage --clips 100 --outage 60    # S3 and SQS stopped 60 s
    python -m tests.chaos sqs-loss --clips 200                 # 30 % of notifications
                                                           # dropped, 20 % duplicated
    python -m tests.chaos stage-kill --clips 100 --kills 20   # SIGKILL fused stage
                                                           # processes mid-chain
    python -m tests.chaos all --small                      # all five, small (CI-sized)

CAMFLOW_CHAOS_KEEP=FOLDER keeps each run's serve logs, the tally log and the local
executor's attempt folders there.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from urllib.parse import quote_plus

import psutil
import yaml
from botocore.config import Config

from orchestrator.domain.layout import upload_key
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.storage import S3Access
from tests.postgres import fresh_schema

ROOT = Path(__file__).resolve().parent.parent
STAGES = ROOT / "tests" / "stages"
PIPELINES = ROOT / "tests" / "chaos_pipelines"
#: Two tally stages per clip, fused in one process (stage-kill).
FUSED_PIPELINES = ROOT / "tests" / "chaos_pipelines_fused"
SERVE = [sys.executable, "-c", "from orchestrator.cli import app; app()"]


@dataclass
class Outcome:
    scenario: str
    clips: int
    succeeded: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    re_executed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0

    def row(self) -> str:
        return (
            f"{self.scenario:<11} {self.clips:>6} {self.succeeded:>9} {self.failed:>6} "
            f"{self.lost:>5} {self.duplicated:>10} {self.re_executed:>11} {self.seconds:>8.1f}"
        )


HEADER = (
    f"{'scenario':<11} {'clips':>6} {'succeeded':>9} {'failed':>6} {'lost':>5} "
    f"{'duplicated':>10} {'re-executed':>11} {'seconds':>8}"
)


def _clip_keys(n: int, rng: random.Random) -> list[str]:
    """Keys as real cameras make them: mostly now, some a backlog hours or days old,
    some from a clock years ahead, a few outside the date layout."""
    now = datetime.now(UTC)
    keys = []
    for i in range(n):
        camera = f"cam{i % 17:02d}"
        roll = rng.random()
        if roll < 0.15:
            at = now - timedelta(hours=rng.randint(1, 72))
        elif roll < 0.2:
            at = now + timedelta(days=rng.randint(365, 3 * 365))
        else:
            at = now + timedelta(milliseconds=i)
        key = upload_key(f"tenant{i % 3}", camera, at, n=i + 1)
        keys.append(key if roll < 0.97 else f"tenant{i % 3}/{camera}/export {i}.mp4")
    return keys


class World:
    """A moto S3+SQS server, a store, a home folder, and `camflow serve` processes."""

    def __init__(
        self,
        folder: Path,
        store_url: str | None = None,
        events: str = "s3",
        pipelines: Path = PIPELINES,
        linger: float | None = None,
    ) -> None:
        self.folder = folder
        self.home = folder / "home"
        self.tally = folder / "tally.log"
        self.tally.touch()
        self.s3 = EmbeddedS3().start()
        self.port = self.s3.port
        self.store_url = store_url or f"sqlite:///{folder / 'camflow.db'}"
        self.ingest, self.results = "chaos-ingest", "chaos-results"
        self.queue = f"chaos-{uuid.uuid4().hex[:6]}"
        access = S3Access(self.s3.endpoint_url, "us-east-1", "chaos", "chaos")
        self.client = access.client("s3", Config(retries={"mode": "standard"}))
        self.client.create_bucket(Bucket=self.ingest)
        self.sqs = access.client("sqs", Config(retries={"mode": "standard"}))
        self.queue_url = self.sqs.create_queue(QueueName=self.queue)["QueueUrl"]
        self.config = folder / "camflow.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "home": str(self.home),
                    "log_level": "INFO",
                    "store": {"url": self.store_url},
                    "s3": {
                        "endpoint_url": self.s3.endpoint_url,
                        "embedded": False,
                        "ingest_bucket": self.ingest,
                        "results_bucket": self.results,
                    },
                    "watcher": {
                        "queue": self.queue,
                        # "s3": S3 notifies the queue itself; "driver": this script
                        # sends the notifications, dropping and duplicating some.
                        "configure_notifications": events == "s3",
                        "wait_seconds": 1,
                        "reconcile_interval_seconds": 3,
                    },
                    "leader": {"lease_seconds": 3, "renew_seconds": 1},
                    "engine": {
                        "interval_seconds": 0.5,
                        "retry_backoff_seconds": 2,
                        "retry_backoff_max_seconds": 30,
                    },
                    "local": {"max_parallel": 4}
                    | ({} if linger is None else {"batch_linger_seconds": linger}),
                    "api": {"enabled": False},
                    "algorithm_dirs": [str(STAGES)],
                    "pipeline_dirs": [str(pipelines)],
                }
            )
        )
        self.serves: list[subprocess.Popen[bytes]] = []
        self.uploaded: list[str] = []

    # --- processes ----------------------------------------------------------------------

    def start_serve(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "TALLY_LOG": str(self.tally),
            "AWS_ACCESS_KEY_ID": "chaos",
            "AWS_SECRET_ACCESS_KEY": "chaos",
            "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("CAMFLOW_HOME", None)
        log = (self.folder / f"serve-{len(self.serves)}.log").open("ab")
        proc = subprocess.Popen(
            [*SERVE, "--config", str(self.config), "serve"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.serves.append(proc)
        return proc

    def wait_for_leader(self, timeout: float = 60) -> None:
        """Until a replica leads: serve has started and reached the store and S3."""
        deadline = time.monotonic() + timeout
        while _lease_holder(self.store_url) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no serve process took the lease within {timeout:g} s")
            time.sleep(0.2)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        for proc in self.serves:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.serves:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill(proc)
        # Stage runners live in their own sessions, by design: end any left over.
        for runner in (self.home / "attempts").glob("*/runner.json"):
            with suppress(OSError, ValueError, KeyError):
                os.killpg(json.loads(runner.read_text())["pid"], signal.SIGKILL)
        self.s3.stop()

    # --- S3 -------------------------------------------------------------------------------

    def upload(self, key: str) -> None:
        for _ in range(100):
            try:
                self.client.put_object(Bucket=self.ingest, Key=key, Body=key.encode())
                self.uploaded.append(key)
                return
            except Exception:  # S3 is away: a camera buffers and tries again
                time.sleep(0.5)
        raise RuntimeError(f"could not upload {key}")

    def notify(self, key: str) -> None:
        """An S3 ObjectCreated notification, as S3 would send it."""
        head = self.client.head_object(Bucket=self.ingest, Key=key)
        body = {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    "eventName": "ObjectCreated:Put",
                    "s3": {
                        "bucket": {"name": self.ingest},
                        "object": {
                            "key": quote_plus(key),
                            "size": head["ContentLength"],
                            "eTag": head["ETag"].strip('"'),
                        },
                    },
                }
            ]
        }
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(body))

    def s3_down(self) -> None:
        self.s3.stop()

    def s3_up(self) -> None:
        # moto keeps its state in this process: the same port serves the same objects.
        self.s3 = EmbeddedS3(port=self.port).start()

    # --- ground truth ---------------------------------------------------------------------

    def finished(self) -> dict[str, str]:
        """Uploaded key -> its run's status, for runs that have ended."""
        from sqlalchemy import create_engine, text

        engine = create_engine(self.store_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT clips.key, runs.status FROM runs JOIN clips "
                        "ON clips.id = runs.clip_id "
                        # SQLAlchemy stores enum members by name.
                        "WHERE runs.status IN ('SUCCEEDED', 'FAILED', 'CANCELLED')"
                    )
                ).all()
        except Exception:
            return {}
        finally:
            engine.dispose()
        return {key: status.lower() for key, status in rows}

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if set(self.uploaded) <= set(self.finished()):
                return
            time.sleep(1)

    def outcome(self, scenario: str, started: float) -> Outcome:
        finished = self.finished()
        statuses = Counter(finished.get(key, "missing") for key in self.uploaded)
        starts: Counter[tuple[str, str]] = Counter()
        dones: Counter[tuple[str, str]] = Counter()
        for line in self.tally.read_text().splitlines():
            event, run, stage, _pid = line.split()
            (starts if event == "start" else dones)[(run, stage)] += 1
        return Outcome(
            scenario,
            len(self.uploaded),
            succeeded=statuses["succeeded"],
            failed=statuses["failed"],
            lost=len(self.uploaded) - statuses["succeeded"],
            duplicated=sum(n - 1 for n in dones.values() if n > 1),
            re_executed=sum(n - 1 for n in starts.values() if n > 1),
            seconds=time.monotonic() - started,
        )


@contextmanager
def _world(
    store_url: str | None = None,
    events: str = "s3",
    pipelines: Path = PIPELINES,
    linger: float | None = None,
) -> Iterator[World]:
    with TemporaryDirectory(prefix="camflow-chaos-") as folder:
        world = World(Path(folder), store_url, events, pipelines, linger)
        try:
            yield world
        finally:
            world.close()
            if os.environ.get("CAMFLOW_CHAOS_KEEP"):
                keep = Path(os.environ["CAMFLOW_CHAOS_KEEP"])
                keep.mkdir(parents=True, exist_ok=True)
                for log in [*Path(folder).glob("serve-*.log"), world.tally]:
                    if log.exists():
                        (keep / log.name).write_bytes(log.read_bytes())
                # Each attempt's runner.json, status.json and batch folders: what the
                # local executor saw, to tell why an attempt ended as it did.
                attempts = world.home / "attempts"
                if attempts.is_dir():
                    shutil.rmtree(keep / "attempts", ignore_errors=True)
                    shutil.copytree(attempts, keep / "attempts", symlinks=True)


def _uploader(
    world: World, keys: list[str], gap: float, hook: Callable[[int], None] | None = None
) -> threading.Thread:
    def run() -> None:
        for i, key in enumerate(keys):
            if hook:
                hook(i)
            world.upload(key)
            time.sleep(gap)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- scenarios ------------------------------------------------------------------------


def kill_scenario(clips: int, kills: int, seed: int = 1) -> Outcome:
    """(a) SIGKILL `camflow serve` at random moments while clips arrive."""
    rng = random.Random(seed)
    started = time.monotonic()
    with _world() as world:
        serve = world.start_serve()
        world.wait_for_leader()
        uploads = _uploader(world, _clip_keys(clips, rng), gap=0.05)
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 4.0))
            world.kill(serve)
            serve = world.start_serve()
        uploads.join()
        world.wait(timeout=120 + clips)
        outcome = world.outcome("kill", started)
        outcome.notes.append(f"{kills} SIGKILLs of serve")
        return outcome


def replicas_scenario(clips: int, replicas: int, seed: int = 2) -> Outcome:
    """(b) N replicas on one PostgreSQL store; the leader is SIGKILLed once midway and
    the time until another replica leads is measured."""
    rng = random.Random(seed)
    started = time.monotonic()
    with fresh_schema("chaos") as url, _world(url) as world:
        procs = [world.start_serve() for _ in range(replicas)]
        keys = _clip_keys(clips, rng)
        world.wait_for_leader()
        killed: dict[str, float] = {}

        def kill_leader(i: int) -> None:
            if i != len(keys) // 2:
                return
            holder = _lease_holder(url)
            victim = next((p for p in procs if holder and f"-{p.pid}-" in holder), None)
            if victim is not None:
                world.kill(victim)
                killed["at"], killed["holder"] = time.monotonic(), holder  # type: ignore[assignment]
                procs.append(world.start_serve())  # the pod comes back, as a follower

        uploads = _uploader(world, keys, gap=0.03, hook=kill_leader)
        takeover = None
        while uploads.is_alive() or ("at" in killed and takeover is None):
            holder = _lease_holder(url)
            if "at" in killed and holder and holder != killed["holder"] and takeover is None:
                takeover = time.monotonic() - killed["at"]
            time.sleep(0.2)
        world.wait(timeout=300 + clips)
        outcome = world.outcome("replicas", started)
        outcome.notes.append(
            f"{replicas} replicas; leader SIGKILLed midway, another led after "
            + (f"{takeover:.1f} s" if takeover is not None else "? s")
        )
        return outcome


def _lease_holder(url: str) -> str | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT holder FROM leases WHERE name = 'engine' AND expires_at > :now"),
                {"now": datetime.now(UTC)},
            ).first()
            return row[0] if row else None
    except Exception:
        return None
    finally:
        engine.dispose()


def s3_outage_scenario(clips: int, outage: float, seed: int = 3) -> Outcome:
    """(c) S3 (and SQS, the same endpoint) stopped for ``outage`` seconds mid-stream."""
    rng = random.Random(seed)
    started = time.monotonic()
    with _world() as world:
        world.start_serve()
        world.wait_for_leader()
        keys = _clip_keys(clips, rng)
        half = len(keys) // 2

        def outage_at_half(i: int) -> None:
            if i == half:
                world.s3_down()
                time.sleep(outage)
                world.s3_up()

        _uploader(world, keys, gap=0.05, hook=outage_at_half).join()
        world.wait(timeout=180 + clips)
        outcome = world.outcome("s3-outage", started)
        outcome.notes.append(
            f"S3 and SQS away {outage:g} s; re-executions are stages retried after S3 errors"
        )
        return outcome


def sqs_loss_scenario(clips: int, drop: float, dup: float, seed: int = 4) -> Outcome:
    """(d) Notifications sent by this script: ``drop`` of them lost, ``dup`` sent twice
    (the second copy later, out of order); the sweep must find the lost ones."""
    rng = random.Random(seed)
    started = time.monotonic()
    with _world(events="driver") as world:
        world.start_serve()
        world.wait_for_leader()
        late: list[str] = []
        dropped = 0
        for key in _clip_keys(clips, rng):
            world.upload(key)
            if rng.random() < drop:
                dropped += 1
                continue
            world.notify(key)
            if rng.random() < dup:
                late.append(key)
            time.sleep(0.02)
        for key in late:
            world.notify(key)
        world.wait(timeout=120 + clips)
        outcome = world.outcome("sqs-loss", started)
        outcome.notes.append(f"{dropped} notifications dropped, {len(late)} duplicated")
        return outcome


def _busy_stage_pids(world: World, killed_at: dict[int, int]) -> list[int]:
    """Stage processes in the middle of a stage: a pid whose last line in the log is a
    start. A pid killed earlier (``killed_at``: pid -> lines in the log then) counts only
    with a start written since: its old start stays open forever, and its pid may name
    another process by now (a supervisor, whose stage would then finish unsupervised
    and be lost to camflow: a duplicate the scenario did not mean)."""
    last: dict[int, tuple[int, str]] = {}
    for n, line in enumerate(world.tally.read_text().splitlines()):
        event, _run, _stage, pid = line.split()
        last[int(pid)] = (n, event)
    return [
        pid
        for pid, (n, event) in last.items()
        if event == "start" and n >= killed_at.get(pid, 0) and psutil.pid_exists(pid)
    ]


def _kill_mid_stage(world: World, rng: random.Random, killed_at: dict[int, int]) -> bool:
    """SIGKILLs one stage process that is in the middle of a stage, if one is. It is
    stopped first and looked at again: between reading the log and the kill, a stage
    may have finished (this process's threads serve S3 too, and hold it up), and a kill
    then would land after its last line, before its outcome is stored."""
    victims = _busy_stage_pids(world, killed_at)
    if not victims:
        return False
    pid = rng.choice(victims)
    try:
        os.kill(pid, signal.SIGSTOP)
        if pid in _busy_stage_pids(world, killed_at):
            os.kill(pid, signal.SIGKILL)
            killed_at[pid] = len(world.tally.read_text().splitlines())
            return True
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    return False


def stage_kill_scenario(
    clips: int, kills: int, seed: int = 5, linger: float | None = None
) -> Outcome:
    """(e) SIGKILL the stage processes themselves at random moments: each clip's two
    stages run fused in one process, so a kill ends a stage mid-run and leaves the one
    after it unstarted. The first must run again; the second must be started, once.
    ``linger``: how long a batch process stays warm for more clips (None: camflow's
    default). With warm processes, a kill also ends the clips handed to that process
    since it started, which must run again once."""
    rng = random.Random(seed)
    started = time.monotonic()
    with _world(pipelines=FUSED_PIPELINES, linger=linger) as world:
        world.start_serve()
        world.wait_for_leader()
        uploads = _uploader(world, _clip_keys(clips, rng), gap=0.05)
        killed_at: dict[int, int] = {}
        killed = 0
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 1.5))
            killed += _kill_mid_stage(world, rng, killed_at)
        uploads.join()
        world.wait(timeout=120 + clips)
        outcome = world.outcome("stage-kill", started)
        outcome.notes.append(f"{killed} SIGKILLs of fused stage processes mid-stage")
        return outcome


def report(outcomes: list[Outcome]) -> bool:
    print(HEADER)
    for outcome in outcomes:
        print(outcome.row())
    for outcome in outcomes:
        for note in outcome.notes:
            print(f"  {outcome.scenario}: {note}")
    return all(o.ok for o in outcomes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "scenario", choices=["kill", "replicas", "s3-outage", "sqs-loss", "stage-kill", "all"]
    )
    parser.add_argument("--clips", type=int, default=None)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--outage", type=float, default=60)
    parser.add_argument(
        "--linger",
        type=float,
        default=None,
        help="stage-kill: seconds a batch process stays warm (default: camflow's)",
    )
    parser.add_argument("--drop", type=float, default=0.3)
    parser.add_argument("--dup", type=float, default=0.2)
    parser.add_argument("--small", action="store_true", help="CI-sized runs")
    args = parser.parse_args(argv)
    small = args.small
    plans: dict[str, Callable[[], Outcome]] = {
        "kill": lambda: kill_scenario(
            args.clips or (30 if small else 200), 4 if small else args.kills
        ),
        "replicas": lambda: replicas_scenario(args.clips or (60 if small else 1000), args.replicas),
        "s3-outage": lambda: s3_outage_scenario(
            args.clips or (20 if small else 100), 10 if small else args.outage
        ),
        "sqs-loss": lambda: sqs_loss_scenario(
            args.clips or (40 if small else 200), args.drop, args.dup
        ),
        "stage-kill": lambda: stage_kill_scenario(
            args.clips or (30 if small else 100), 4 if small else args.kills, linger=args.linger
        ),
    }
    chosen = list(plans) if args.scenario == "all" else [args.scenario]
    outcomes = [plans[name]() for name in chosen]
    return 0 if report(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
