"""The store's Alembic migrations, on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, text
from sqlmodel import SQLModel

from orchestrator.store import Store, migrate
from orchestrator.store.models import AttemptState, RunStatus


@contextmanager
def _connect(url: str) -> Iterator[Connection]:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


def _differences(url: str) -> list[Any]:
    with _connect(url) as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def _revision(url: str) -> tuple[str, ...]:
    with _connect(url) as connection:
        return tuple(MigrationContext.configure(connection).get_current_heads())


def _previous_release_store(url: str) -> None:
    """A store exactly as the last release without migrations left it: the baseline's
    tables, and no alembic_version."""
    with _connect(url) as connection:
        command.upgrade(migrate.alembic_config(connection), migrate.BASELINE)
        connection.execute(text("DROP TABLE alembic_version"))


def test_a_new_store_is_built_by_the_migrations_and_equals_the_models(store_url: str) -> None:
    Store(store_url).close()
    assert _revision(store_url) == (migrate.head(),)
    assert _differences(store_url) == []


def test_a_store_made_by_the_previous_release_is_upgraded_keeping_its_data(
    store_url: str,
) -> None:
    _previous_release_store(store_url)
    assert "alembic_version" not in _tables(store_url)
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with _connect(store_url) as connection:
        connection.execute(
            text(
                "INSERT INTO clips (id, bucket, key, etag, size, tenant, camera, discovered_at,"
                " planned) VALUES ('c-1', 'b', 'acme/door/1.mp4', 'e1', 10, 'acme', 'door',"
                " :now, :yes)"
            ),
            {"now": now, "yes": True},
        )
        connection.execute(
            text(
                "INSERT INTO runs (id, clip_id, pipeline, status, created_at, finished_at,"
                " result) VALUES ('r-1', 'c-1', 'faces', 'SUCCEEDED', :now, :now, :result)"
            ),
            {"now": now, "result": '{"faces": 2}'},
        )
        connection.execute(
            text(
                "INSERT INTO stage_attempts (id, run_id, stage, attempt, algorithm,"
                " accelerator, executor, state, permanent, timed_out, exhausted, created_at,"
                " finished_at) VALUES ('r-1/decode/1', 'r-1', 'decode', 1, 'decode@1',"
                " 'cpu', 'local', 'SUCCEEDED', :no, :no, :no, :now, :now)"
            ),
            {"now": now, "no": False},
        )

    store = Store(store_url)
    try:
        run = store.get_run("r-1")
        assert (run.status, run.result, run.created_at) == (
            RunStatus.SUCCEEDED,
            {"faces": 2},
            now,
        )
        # Runs that ended before are numbered, so the event stream misses none.
        assert (run.owner, run.finished_seq) == (None, 1)
        clip = store.find_clip("c-1")
        assert (clip.key, clip.planned, clip.discovered_by) == ("acme/door/1.mp4", True, None)
        [attempt] = store.attempts_of_run("r-1")
        assert (attempt.state, attempt.finished_at) == (AttemptState.SUCCEEDED, now)
    finally:
        store.close()
    assert {"leases", "counters", "rejected_objects"} <= _tables(store_url)
    assert _revision(store_url) == (migrate.head(),)
    assert _differences(store_url) == []


def test_a_database_shared_with_other_applications_gets_a_new_store(store_url: str) -> None:
    with _connect(store_url) as connection:
        connection.execute(text("CREATE TABLE invoices (id INTEGER PRIMARY KEY)"))
    Store(store_url).close()
    assert "invoices" in _tables(store_url)
    assert _revision(store_url) == (migrate.head(),)


def test_the_migrations_go_down_to_nothing_and_up_again(store_url: str) -> None:
    Store(store_url).close()
    with _connect(store_url) as connection:
        command.downgrade(migrate.alembic_config(connection), "base")
    assert _tables(store_url) <= {"alembic_version"}
    Store(store_url).close()
    assert _differences(store_url) == []


def test_replicas_starting_at_once_migrate_one_at_a_time(store_url: str) -> None:
    """Separate processes, as `camflow serve` replicas are: each opens the empty store."""
    opener = (
        "import sys; from orchestrator.store import Store; Store(sys.argv[1]).close(); print('ok')"
    )
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", opener, store_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [replica.communicate(timeout=120) for replica in replicas]
    assert [out.strip() for out, _ in outcomes] == ["ok"] * 3, [err for _, err in outcomes]
    assert _revision(store_url) == (migrate.head(),)
    assert _differences(store_url) == []


def _tables(url: str) -> set[str]:
    with _connect(url) as connection:
        return set(inspect(connection).get_table_names())
