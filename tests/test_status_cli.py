"""``camflow status``: one screen for an operator, and the same as JSON, read from a
real store (SQLite and PostgreSQL) and the engine's heartbeat."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.domain.layout import clip_id, run_id
from orchestrator.leadership import LEASE
from orchestrator.service import write_heartbeat
from orchestrator.store import Clip, Run, StageAttempt, Store
from orchestrator.store.models import AttemptState, RunStatus

BAD_VIDEO = (
    "stage decode failed: the clip is not a readable video ({} bytes that no demuxer accepts)"
)


def _run(store: Store, name: str, discovered: datetime) -> str:
    key = f"acme/door/{name}.mp4"
    clip = Clip(
        id=clip_id("ingest", key, "e"),
        bucket="ingest",
        key=key,
        etag="e",
        size=1,
        tenant="acme",
        camera="door",
        discovered_at=discovered,
    )
    store.record_clips([clip])
    [run] = store.plan(
        clip.id, [Run(id=run_id(clip.id, "faces"), clip_id=clip.id, pipeline="faces")]
    )
    return run.id


def _busy_store(url: str, now: datetime) -> dict[str, str]:
    """Runs queued, running and finished (in the last hour and before it), and
    attempts in flight at three places."""
    store = Store(url)
    ids = {name: _run(store, name, now - timedelta(minutes=5)) for name in ("q1", "q2", "r1")}
    _run(store, "newest", now - timedelta(seconds=30))  # queued too: the watcher's last
    store.mark_run_started(ids["r1"], now - timedelta(minutes=2))
    finished = [
        ("ok1", RunStatus.SUCCEEDED, None, 10),
        ("ok2", RunStatus.SUCCEEDED, None, 20),
        ("ok3", RunStatus.SUCCEEDED, None, 50),
        ("bad1", RunStatus.FAILED, BAD_VIDEO.format(33456), 5),
        ("bad2", RunStatus.FAILED, BAD_VIDEO.format(1024), 15),
        ("gone", RunStatus.CANCELLED, "cancelled", 25),
        ("old", RunStatus.FAILED, "an old failure, over an hour ago", 90),
    ]
    # In the order they end, as the engine would finish them.
    for name, status, error, minutes_ago in sorted(finished, key=lambda f: -f[3]):
        ids[name] = _run(store, name, now - timedelta(hours=2))
        store.finish_run(ids[name], status, error, None, None, now - timedelta(minutes=minutes_ago))
    with store.session() as session:
        for n, (placement, accelerator, state, started) in enumerate(
            [
                ("dev", "gpu", AttemptState.RUNNING, True),
                ("dev", "gpu", AttemptState.RUNNING, False),
                ("local", "cpu", AttemptState.RUNNING, True),
                (None, "cpu", AttemptState.PENDING, False),
            ]
        ):
            session.add(
                StageAttempt(
                    id=f"{ids['r1']}-s{n}-1",
                    run_id=ids["r1"],
                    stage=f"s{n}",
                    attempt=1,
                    algorithm="faces@1.2.0",
                    accelerator=accelerator,
                    executor="kubernetes" if placement == "dev" else "local",
                    state=state,
                    placement=placement,
                    started_at=now if started else None,
                )
            )
        session.commit()
    store.hold_lease(LEASE, "replica-a", now, now + timedelta(seconds=15))
    store.close()
    return ids


def _status(home: Path, url: str, *args: str) -> Any:
    done = CliRunner().invoke(
        app, ["status", *args], env={"CAMFLOW_HOME": str(home), "CAMFLOW_STORE__URL": url}
    )
    assert done.exit_code == 0, done.output
    return done


def test_status_summarises_a_busy_system(store_url: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ids = _busy_store(store_url, now)
    write_heartbeat(tmp_path)
    shown = json.loads(_status(tmp_path, store_url, "--json").stdout)
    engine = shown["engine"]
    assert engine["healthy"] is True and 0 <= engine["tick_age_seconds"] < 30
    assert engine["leader"] == "replica-a" and engine["lease_expires_at"]
    assert 30 <= shown["watcher_lag_seconds"] < 90
    # Queued and running now; finished within the hour (the failure 90 min ago is not).
    assert shown["runs"] == {
        "queued": 3,
        "running": 1,
        "succeeded": 3,
        "failed": 2,
        "cancelled": 1,
    }
    assert shown["in_flight"] == [
        {"placement": "dev", "accelerator": "gpu", "queued": 1, "running": 1},
        {"placement": "local", "accelerator": "cpu", "queued": 0, "running": 1},
        {"placement": "unplaced", "accelerator": "cpu", "queued": 1, "running": 0},
    ]
    # One cause, whatever the sizes in its messages; the newest run first.
    [failure] = shown["failures"]
    assert failure["count"] == 2 and "not a readable video" in failure["reason"]
    assert failure["run_ids"] == [ids["bad1"], ids["bad2"]]
    assert shown["rejected_objects"] == 0

    screen = " ".join(_status(tmp_path, store_url).stdout.split())
    for says in (
        "engine ticking: last tick",
        "leader replica-a",
        "last new clip found 3",  # 30-odd seconds ago
        "3 queued, 1 running; last hour: 3 succeeded, 2 failed, 1 cancelled",
        "attempts in flight",
        "2 x stage decode failed: the clip is not a readable video",
    ):
        assert says in screen, screen
    assert "an old failure" not in screen


def test_status_of_a_store_where_nothing_ran_yet(store_url: str, tmp_path: Path) -> None:
    Store(store_url).close()
    shown = json.loads(_status(tmp_path, store_url, "--json").stdout)
    assert shown["engine"] == {
        "tick_age_seconds": None,
        "healthy": False,
        "leader": None,
        "lease_expires_at": None,
    }
    assert shown["watcher_lag_seconds"] is None
    assert shown["runs"] == dict.fromkeys(
        ("queued", "running", "succeeded", "failed", "cancelled"), 0
    )
    assert shown["in_flight"] == [] and shown["failures"] == []
    screen = " ".join(_status(tmp_path, store_url).stdout.split())
    assert "engine not ticking: last tick never; no replica holds the lease" in screen
    assert "last new clip found never" in screen
    assert "in flight no stage attempts" in screen


def test_status_and_export_have_help() -> None:
    for command, says in (("status", "--json"), ("export", "--format")):
        done = CliRunner().invoke(app, [command, "--help"])
        assert done.exit_code == 0 and says in done.output, done.output
