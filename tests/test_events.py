"""The event stream: every finished run once, in the order runs finished, resumable
exactly where a client left off, per tenant, and ended by revoking the key."""

from __future__ import annotations

import itertools
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn

from orchestrator.api.app import create_app
from orchestrator.api.keys import create_key, revoke
from orchestrator.service import Runtime, open_runtime
from orchestrator.settings import Settings
from orchestrator.store import Clip, Run, Store
from orchestrator.store.models import Role, RunStatus, utcnow

_numbers = itertools.count()


def _finish(store: Store, tenant: str, at: datetime | None = None) -> str:
    """One run of ``tenant`` made and finished; its id."""
    n = next(_numbers)
    clip = Clip(
        id=f"c-{uuid.uuid4().hex[:16]}",
        bucket="ingest",
        key=f"{tenant}/cam/{n}.mp4",
        etag=str(n),
        size=1,
        tenant=tenant,
        camera="cam",
    )
    store.record_clips([clip])
    run = Run(id=f"r-{uuid.uuid4().hex[:16]}", clip_id=clip.id, pipeline="faces")
    store.plan(clip.id, [run])
    assert store.finish_run(
        run.id, RunStatus.SUCCEEDED, None, {"status": "succeeded"}, None, at or utcnow()
    )
    return run.id


# --- the sequence, in the store ------------------------------------------------------


def test_finishing_numbers_runs_in_order_without_gaps_or_repeats(store_url: str) -> None:
    store = Store(store_url)
    first = [_finish(store, "acme") for _ in range(3)]
    assert [store.get_run(r).finished_seq for r in first] == [1, 2, 3]
    # A replayed finish changes nothing and uses up no number.
    assert not store.finish_run(first[0], RunStatus.FAILED, "late", None, None, utcnow())
    assert store.get_run(first[0]).finished_seq == 1
    assert store.get_run(_finish(store, "acme")).finished_seq == 4
    assert store.last_finished_seq() == 4
    store.close()


def test_runs_finishing_at_once_get_distinct_consecutive_numbers(store_url: str) -> None:
    store = Store(store_url)
    errors: list[BaseException] = []
    finished: list[str] = []

    def finish_some() -> None:
        try:
            finished.extend(_finish(store, "acme") for _ in range(15))
        except BaseException as exc:  # reported below, with the others' results
            errors.append(exc)

    workers = [threading.Thread(target=finish_some) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    numbers = sorted(store.get_run(r).finished_seq or 0 for r in finished)
    assert numbers == list(range(1, 61))
    store.close()


def test_the_finished_runs_of_a_tenant_page_in_order(store_url: str) -> None:
    store = Store(store_url)
    old = datetime(2026, 1, 1, tzinfo=UTC)
    mine = [_finish(store, "a", old if i < 2 else None) for i in range(5)]
    _finish(store, "b")
    page = store.tenant_finished_runs("a", 0, limit=3)
    assert [run.id for run, _clip in page] == mine[:3]
    rest = store.tenant_finished_runs("a", page[-1][0].finished_seq or 0, limit=3)
    assert [run.id for run, _clip in rest] == mine[3:]
    recent = store.tenant_finished_runs("a", 0, since=old + timedelta(days=1))
    assert [run.id for run, _clip in recent] == mine[2:]
    store.close()


# --- the stream, over HTTP -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def api(settings: Settings) -> Iterator[dict[str, Any]]:
    from orchestrator.cli import start_api

    settings = settings.model_copy(
        update={
            "api": settings.api.model_copy(
                update={"port": _free_port(), "events_poll_seconds": 0.1}
            )
        }
    )
    with open_runtime(settings) as runtime:
        server = start_api(runtime)
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        keys = {}
        for tenant in ("tenant-a", "tenant-b"):
            row, text = create_key(runtime.store, tenant, Role.CUSTOMER)
            keys[tenant] = {"Authorization": f"Bearer {text}"}
            keys[tenant + "_id"] = row.id
        yield {
            "runtime": runtime,
            "base": f"http://127.0.0.1:{settings.api.port}",
            "keys": keys,
        }
        server.should_exit = True


class EventReader:
    """One open stream, read event by event (the first comment says it is open)."""

    def __init__(self, base: str, headers: dict[str, str], query: str = "") -> None:
        self._context = httpx.stream("GET", f"{base}/v1/events{query}", headers=headers, timeout=15)
        self.response = self._context.__enter__()
        assert self.response.status_code == 200, self.response.read()
        self._lines = self.response.iter_lines()
        assert next(self._lines).startswith(": camflow events")

    def events(self, count: int) -> list[dict[str, str]]:
        """The next ``count`` events (fields as sent), or fewer if the stream ends."""
        found: list[dict[str, str]] = []
        current: dict[str, str] = {}
        for line in self._lines:
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                current[name] = value
                continue
            if current:
                found.append(current)
                current = {}
            if len(found) == count:
                break
        return found

    def close(self) -> None:
        self._context.__exit__(None, None, None)


def _run_ids(events: list[dict[str, str]]) -> list[str]:
    import json

    return [json.loads(event["data"])["run_id"] for event in events]


def test_a_client_that_was_away_gets_every_run_once_in_order(api: dict[str, Any]) -> None:
    runtime: Runtime = api["runtime"]
    store, a_key, b_key = runtime.store, api["keys"]["tenant-a"], api["keys"]["tenant-b"]
    _finish(store, "tenant-a")  # before the first connection: not news to it
    reader = EventReader(api["base"], a_key)
    seen = _finish(store, "tenant-a")
    [event] = reader.events(1)
    assert _run_ids([event]) == [seen] and event["event"] == "run.finished"
    reader.close()

    # Away: 450 of tenant-a's runs finish, and others' in between.
    missed, others = [], []
    for i in range(450):
        missed.append(_finish(store, "tenant-a"))
        if i % 9 == 0:
            others.append(_finish(store, "tenant-b"))

    # Back, where it left off (as EventSource does): all 450, in order, once each.
    reader = EventReader(api["base"], {**a_key, "Last-Event-ID": event["id"]})
    events = reader.events(450)
    assert _run_ids(events) == missed
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids)) and ids[0] > int(event["id"])
    # Nothing more is pending; the next run to finish is the next event.
    latest = _finish(store, "tenant-a")
    assert _run_ids(reader.events(1)) == [latest]
    reader.close()

    # ?after= resumes exactly after the id given.
    reader = EventReader(api["base"], a_key, f"?after={ids[299]}")
    assert _run_ids(reader.events(3)) == missed[300:303]
    reader.close()

    # Tenant-b's stream from the start of time holds only tenant-b's runs.
    reader = EventReader(api["base"], b_key, "?after=0")
    assert _run_ids(reader.events(len(others))) == others
    reader.close()


def test_since_starts_a_first_connection_at_a_time(api: dict[str, Any]) -> None:
    store = api["runtime"].store
    then = datetime(2026, 1, 1, tzinfo=UTC)
    _finish(store, "tenant-a", then)
    later = [_finish(store, "tenant-a", then + timedelta(hours=h)) for h in (2, 3)]
    since = (then + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    reader = EventReader(api["base"], api["keys"]["tenant-a"], f"?since={since}")
    assert _run_ids(reader.events(2)) == later
    reader.close()


def test_a_revoked_keys_stream_ends(api: dict[str, Any]) -> None:
    runtime: Runtime = api["runtime"]
    reader = EventReader(api["base"], api["keys"]["tenant-a"])
    assert revoke(runtime.store, api["keys"]["tenant-a_id"])
    _finish(runtime.store, "tenant-a")  # too late: the key is gone
    started = time.monotonic()
    events = reader.events(10)
    assert [e["event"] for e in events] == ["key.revoked"]
    assert time.monotonic() - started < 5
    reader.close()
    again = httpx.get(f"{api['base']}/v1/events", headers=api["keys"]["tenant-a"])
    assert again.status_code == 401


@pytest.mark.parametrize("bad", ["r-0123456789abcdef", "-1", "1.5", "9" * 30])
def test_a_last_event_id_we_never_sent_is_a_400(api: dict[str, Any], bad: str) -> None:
    response = httpx.get(
        f"{api['base']}/v1/events", headers={**api["keys"]["tenant-a"], "Last-Event-ID": bad}
    )
    assert response.status_code == 400
    assert "Last-Event-ID" in response.json()["detail"]


@contextmanager
def _serving(app: Any) -> Iterator[str]:
    """``app`` on a free port over real HTTP; its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_an_idle_stream_pings_within_the_keepalive_interval(settings: Settings) -> None:
    keepalive = 0.5
    # Polls far apart: the pings keep their own time.
    settings = settings.model_copy(
        update={"api": settings.api.model_copy(update={"events_poll_seconds": 30.0})}
    )
    with open_runtime(settings) as runtime:
        _, text = create_key(runtime.store, "tenant-a", Role.CUSTOMER)
        app = create_app(runtime, events_keepalive_seconds=keepalive)
        with (
            _serving(app) as base,
            httpx.stream(
                "GET", f"{base}/v1/events", headers={"Authorization": f"Bearer {text}"}, timeout=5
            ) as response,
        ):
            # What proxies read to leave the stream alone: not cached, not buffered.
            assert response.headers["cache-control"] == "no-cache"
            assert response.headers["x-accel-buffering"] == "no"
            lines = response.iter_lines()
            assert next(lines) == ": camflow events"
            last, gaps = time.monotonic(), []
            for line in lines:
                if not line:
                    continue
                assert line == ": ping"
                gaps.append(time.monotonic() - last)
                last = time.monotonic()
                if len(gaps) == 3:
                    break
    # Each within the interval (and the time it takes to send), none much sooner.
    assert all(keepalive * 0.8 <= gap < keepalive + 0.5 for gap in gaps), gaps
