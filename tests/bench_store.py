"""Benchmark: an engine tick's store reads, with and without a long finished history.

    python -m tests.bench_store [--finished 50000] [--active 10000] [--explain]

Each store holds ``--active`` active runs (two attempts each: one done, one pending or
running) and a few unplanned clips; the baseline has no finished runs, the other also
``--finished`` finished ones (two attempts each). It times the reads one engine tick
makes (Store.active_runs, count_attempts, unplanned_clips) on a SQLite file and on the
PostgreSQL the tests use, and prints the ratio: near x1.00 means the tick does not grow
with history. ``--explain`` also prints each hot query's plan, with the history.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, insert, text
from sqlalchemy.exc import OperationalError

from orchestrator.store import Store
from orchestrator.store.models import AttemptState, Clip, Run, RunStatus, StageAttempt
from tests.postgres import POSTGRES_URL, fresh_schema

START = datetime(2026, 1, 1, tzinfo=UTC)
TENANTS = 20
UNPLANNED = 200


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _rows(first: int, count: int, active: bool) -> tuple[list[dict[str, Any]], ...]:
    """Clips, runs and attempts numbered ``first``.., each clip with one run."""
    clips, runs, attempts = [], [], []
    for n in range(first, first + count):
        at = START + timedelta(seconds=n)
        tenant = f"t{n % TENANTS}"
        clips.append(
            {
                "id": f"c-{n:08d}",
                "bucket": "b",
                "key": f"{tenant}/cam{n % 5}/{n:08d}.mp4",
                "etag": "e",
                "size": 1000,
                "tenant": tenant,
                "camera": f"cam{n % 5}",
                "discovered_at": at,
                "discovered_by": "sweep",
                "planned": True,
            }
        )
        status = (RunStatus.PENDING if n % 2 else RunStatus.RUNNING) if active else None
        runs.append(
            {
                "id": f"r-{n:08d}",
                "clip_id": f"c-{n:08d}",
                "pipeline": "faces",
                "status": status or RunStatus.SUCCEEDED,
                "created_at": at,
                "started_at": at,
                "finished_at": None if active else at + timedelta(seconds=20),
                "result_uri": None if active else f"s3://b/results/{n}.json",
                "algorithms": {"decode": "decode@1", "detect": "centerface@1"},
            }
        )
        last = (
            (AttemptState.PENDING if n % 2 else AttemptState.RUNNING)
            if active
            else AttemptState.SUCCEEDED
        )
        for number, (stage, state) in enumerate(
            (("decode", AttemptState.SUCCEEDED), ("detect", last)), start=1
        ):
            done = state == AttemptState.SUCCEEDED
            attempts.append(
                {
                    "id": f"r-{n:08d}-{stage}-1",
                    "run_id": f"r-{n:08d}",
                    "stage": stage,
                    "attempt": 1,
                    "algorithm": f"{stage}@1",
                    "accelerator": "gpu" if stage == "detect" else "cpu",
                    "executor": "local",
                    "state": state,
                    "handle": f"pid-{n}-{number}",
                    "permanent": False,
                    "timed_out": False,
                    "exhausted": False,
                    "placement": "local",
                    "metrics": {"frames": 20} if done else None,
                    "outputs": {"result": "x.json"} if done else None,
                    "created_at": at,
                    "started_at": at,
                    "finished_at": at + timedelta(seconds=10 * number) if done else None,
                }
            )
    return clips, runs, attempts


def seed(store: Store, finished: int, active: int) -> None:
    """Bulk inserts, in chunks (executemany), far faster than the ORM."""
    chunk = 10_000
    with store.engine.begin() as connection:
        for first, count, is_active in (
            *((n, min(chunk, finished - n), False) for n in range(0, finished, chunk)),
            *((finished + n, min(chunk, active - n), True) for n in range(0, active, chunk)),
        ):
            clips, runs, attempts = _rows(first, count, is_active)
            connection.execute(insert(Clip), clips)
            connection.execute(insert(Run), runs)
            connection.execute(insert(StageAttempt), attempts)
        unplanned, _, _ = _rows(finished + active, UNPLANNED, True)
        connection.execute(insert(Clip), [{**clip, "planned": False} for clip in unplanned])
        if connection.dialect.name == "postgresql":
            # As autovacuum would soon after such a burst of inserts.
            connection.execute(text("ANALYZE"))


def tick_reads(store: Store) -> dict[str, Callable[[], object]]:
    return {
        "active_runs": store.active_runs,
        "count_attempts": lambda: (
            store.count_attempts("local"),
            store.count_attempts("local", "gpu"),
        ),
        "unplanned_clips": store.unplanned_clips,
    }


def hot_queries(store: Store) -> dict[str, Callable[[], object]]:
    cursor = (START + timedelta(days=365), "c-99999999")
    return {
        **tick_reads(store),
        "tenant_clips": lambda: store.tenant_clips("t3"),
        "tenant_clips after": lambda: store.tenant_clips("t3", after=cursor),
        "tenant_runs": lambda: store.tenant_runs("t3"),
        "list_runs": store.list_runs,
        "list_runs by status": lambda: store.list_runs(status="failed"),
        "in_flight": store.in_flight,
        "active_run_counts": store.active_run_counts,
    }


@contextmanager
def sqlite_store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory() as folder:
        store = Store(f"sqlite:///{Path(folder) / 'camflow.db'}")
        try:
            yield store
        finally:
            store.close()


@contextmanager
def postgres_store() -> Iterator[Store]:
    with fresh_schema("camflow_bench") as url:
        store = Store(url)
        try:
            yield store
        finally:
            store.close()


def explain(store: Store) -> None:
    """The plan of each statement each hot query sends."""
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        sent.append((statement, params))

    postgres = store.engine.dialect.name == "postgresql"
    prefix = "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " if postgres else "EXPLAIN QUERY PLAN "
    for name, query in hot_queries(store).items():
        sent.clear()
        event.listen(store.engine, "before_cursor_execute", capture)
        try:
            query()
        finally:
            event.remove(store.engine, "before_cursor_execute", capture)
        with store.engine.connect() as connection:
            # One of each: SQLite reads active runs' attempts in slices of one query.
            for statement, params in dict(sent).items():
                if not statement.lstrip().upper().startswith("SELECT"):
                    continue
                plan = connection.exec_driver_sql(prefix + statement, params).all()
                print(f"--- {store.engine.dialect.name} {name}")
                for row in plan:
                    line = str(row[0] if postgres else row[3])
                    if not line.startswith("Planning"):
                        print(f"    {line[:150]}")


def bench(
    backend: str,
    open_store: Callable[[], AbstractContextManager[Store]],
    finished: int,
    active: int,
    show: bool,
    rounds: int = 5,
) -> None:
    with ExitStack() as stack:
        stores: dict[int, Store] = {}
        for history in (0, finished):
            store = stores[history] = stack.enter_context(open_store())
            start = time.perf_counter()
            seed(store, history, active)
            seeded = time.perf_counter() - start
            print(f"{backend}: seeded {history} finished + {active} active runs in {seeded:.1f}s")
        if show:
            explain(stores[finished])
        # Alternated, best of several rounds: other work on the machine then weighs on
        # both sides alike.
        timings: dict[int, dict[str, float]] = {h: {} for h in stores}
        for _ in range(rounds):
            for history, store in stores.items():
                for name, read in tick_reads(store).items():
                    took = timed(read, repeat=1)
                    timings[history][name] = min(took, timings[history].get(name, took))
    for name in timings[0]:
        base, ours = timings[0][name], timings[finished][name]
        print(
            f"{backend:<10} {name:<16} {active} active: {base:8.4f} s   "
            f"+{finished} finished: {ours:8.4f} s   x{ours / base:5.2f}"
        )
    total = [sum(timings[h].values()) for h in (0, finished)]
    print(
        f"{backend:<10} {'tick reads':<16} {active} active: {total[0]:8.4f} s   "
        f"+{finished} finished: {total[1]:8.4f} s   x{total[1] / total[0]:5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--finished", type=int, default=50_000, help="finished runs")
    parser.add_argument("--active", type=int, default=10_000, help="active runs")
    parser.add_argument("--explain", action="store_true", help="print the hot queries' plans")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], help="one backend")
    args = parser.parse_args()
    if args.only != "postgresql":
        bench("sqlite", sqlite_store, args.finished, args.active, args.explain)
    if args.only == "sqlite":
        return
    probe = create_engine(POSTGRES_URL)
    try:
        probe.connect().close()
    except OperationalError as exc:
        print(f"postgresql: skipped, not reachable at {POSTGRES_URL}: {exc.orig}")
        return
    finally:
        probe.dispose()
    bench("postgresql", postgres_store, args.finished, args.active, args.explain)


if __name__ == "__main__":
    main()
