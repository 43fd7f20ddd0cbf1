"""Brings a store's schema to the newest revision (``migrations/``) when camflow opens it.

Several `camflow serve` replicas may open one store at once; exactly one of them migrates
while the others wait, then find nothing left to do.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, event, func, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from orchestrator.errors import StorageError

MIGRATIONS = Path(__file__).with_name("migrations")
#: The schema of the last release without migrations (it ran create_all).
BASELINE = "0001_baseline"
#: Names camflow's migrations among PostgreSQL's database-wide advisory locks.
_LOCK_KEY = int.from_bytes(b"camflow", "big")
#: Alembic's `op` and `context` are process-wide: one migration at a time per process.
_IN_PROCESS = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's settings, built here so that no alembic.ini has to ship."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    found = _scripts().get_current_head()
    assert found is not None, "migrations/versions holds no revision"
    return found


def upgrade(engine: Engine) -> None:
    """Upgrades the store behind ``engine`` to the newest revision, creating it if empty."""
    with engine.connect() as connection:
        # The usual case, answered without a lock or a write.
        if _current(connection) == (head(),):
            return
    where = engine.url.render_as_string(hide_password=True)
    migrating = _migration_engine(engine)
    try:
        with _IN_PROCESS, migrating.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Held until this transaction ends, so a replica that dies mid-way
                # releases it; DDL is transactional there, so it leaves nothing half done.
                connection.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
            current = _current(connection)
            unknown = [rev for rev in current if rev not in _known()]
            if unknown:
                raise StorageError(
                    f"the store at {where} has schema revision {', '.join(unknown)}, which this "
                    f"camflow does not know (it knows up to {head()}): a newer camflow has "
                    "upgraded it. Run that camflow version or a later one against it, or point "
                    "store.url at another store"
                )
            if not current and _made_before_migrations(connection, where):
                command.stamp(alembic_config(connection), BASELINE)
            command.upgrade(alembic_config(connection), "head")
    finally:
        migrating.dispose()


def _current(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


@cache
def _known() -> frozenset[str]:
    return frozenset(script.revision for script in _scripts().walk_revisions())


def _migration_engine(engine: Engine) -> Engine:
    """A connection of its own, with the whole migration in one transaction."""
    if engine.dialect.name != "sqlite":
        return create_engine(engine.url, poolclass=NullPool)
    # Foreign keys stay off (SQLite's default): batch mode drops and renames tables that
    # others reference. pysqlite would commit before each DDL statement, so it is told to
    # leave transactions alone, and BEGIN IMMEDIATE both makes the DDL transactional and
    # takes the write lock, so concurrent openers migrate one after the other.
    migrating = create_engine(engine.url, poolclass=NullPool, connect_args={"timeout": 30})

    @event.listens_for(migrating, "connect")
    def _manual_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(migrating, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return migrating


def _made_before_migrations(connection: Connection, where: str) -> bool:
    """True for a store that the last release without migrations made: its tables, and
    no alembic_version. Refuses one that an even older pre-release made."""
    inspector = inspect(connection)
    # Only camflow's own: a database may hold other applications' tables too.
    tables = set(inspector.get_table_names()) & set(_baseline_columns())
    if not tables:
        return False
    problems = []
    for table, columns in sorted(_baseline_columns().items()):
        if table in tables:
            have = {column["name"] for column in inspector.get_columns(table)}
            if missing := sorted(columns - have):
                problems.append(f"table {table} lacks {missing}")
    if absent := sorted(set(_baseline_columns()) - tables):
        problems.append(f"it has no table {', '.join(absent)}")
    if problems:
        raise StorageError(
            f"the store at {where} was made by a camflow older than the first release with "
            f"migrations: {'; '.join(problems)}. Move the old store aside (or point store.url "
            "elsewhere) to start a fresh one"
        )
    return True


@cache
def _baseline_columns() -> dict[str, frozenset[str]]:
    """Each table's columns at the baseline, found by building it in memory."""
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as connection:  # under _IN_PROCESS: only upgrade() calls this
            command.upgrade(alembic_config(connection), BASELINE)
            inspector = inspect(connection)
            return {
                table: frozenset(c["name"] for c in inspector.get_columns(table))
                for table in inspector.get_table_names()
                if table != "alembic_version"
            }
    finally:
        engine.dispose()
