"""The Store: every read and write of camflow's state, in short transactions, or in
one per engine phase (``Store.batch``) where a tick writes many rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    ARRAY,
    CursorResult,
    String,
    Table,
    any_,
    bindparam,
    event,
    func,
    literal,
    or_,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, OperationalError
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.expression import Executable
from sqlmodel import Session, col, create_engine, select

from orchestrator.errors import NotFound, StorageError, StoreUnavailable
from orchestrator.store import migrate
from orchestrator.store.models import (
    AlgorithmVersion,
    ApiKey,
    AttemptState,
    Channel,
    Checkpoint,
    Clip,
    Counter,
    Lease,
    RejectedObject,
    Run,
    RunStatus,
    StageAttempt,
    utcnow,
)
from orchestrator.store.tenancy import SkippedRun
from orchestrator.store.webhooks import enqueue_run_event, enqueue_run_events

ACTIVE = (RunStatus.PENDING, RunStatus.RUNNING)
#: Attempts not ended yet: they hold an executor's slots.
IN_FLIGHT_STATES = (AttemptState.PENDING, AttemptState.RUNNING)
#: The counter behind ``Run.finished_seq``, the event stream's cursor.
FINISHED_RUNS = "finished_runs"
Row = TypeVar("Row", StageAttempt, AlgorithmVersion)


class RunFinish(NamedTuple):
    """How one run ends (``Store.finish_runs``)."""

    run_id: str
    status: RunStatus
    error: str | None
    result: dict[str, Any] | None
    result_uri: str | None
    at: datetime
    #: Ends its attempts still in flight with this reason, in the same transaction:
    #: a finished run's leftovers must not hold the executor's slots.
    settle: str | None = None

    def values(self) -> dict[str, Any]:
        """The run's columns it sets."""
        return {
            "status": self.status,
            "error": self.error,
            "result": self.result,
            "result_uri": self.result_uri,
            "finished_at": self.at,
        }


@dataclass(frozen=True)
class ClipPlan:
    """A clip's runs to create and the pipelines tenancy refused it (see ``plan``)."""

    clip_id: str
    runs: list[Run]
    skipped: list[SkippedRun]


class AttemptChange(NamedTuple):
    """One ``update_attempt``: ``values`` set on the attempt, only while it is in one of
    the ``expect`` states (None: any) and, with ``expect_handle``, has that handle."""

    attempt_id: str
    values: dict[str, Any]
    expect: Collection[AttemptState] | None = None
    expect_handle: str | None = None


@dataclass(frozen=True)
class RunWithAttempts:
    run: Run
    clip: Clip
    attempts: tuple[StageAttempt, ...]


def _before(at_column: Any, id_column: Any, cursor: tuple[datetime, str]) -> Any:
    """Keyset pagination, newest first: rows strictly after the cursor's (time, id)."""
    at, ident = cursor
    return or_(at_column < at, (at_column == at) & (id_column < ident))


#: A parameter a prepared statement takes from its caller (not fixed when it was built).
_GIVEN = object()


class _Prepared:
    """A statement compiled once for the store's dialect, then sent to the driver with
    only its parameters converted: through SQLAlchemy, each call builds, keys, looks up
    and processes the statement again, which was most of what an engine tick cost (a
    write per attempt and stage). Parameters are given by their bind names."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        #: The names in the order the driver wants them (qmark: SQLite); None: by name.
        self._positions = compiled.positiontup
        self._binds: list[tuple[str, str, Any, Callable[[Any], Any] | None]] = []
        for bind, name in compiled.bind_names.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            fixed = _GIVEN if bind.required else bind.effective_value
            self._binds.append((name, bind.key, fixed, processor))

    def _bound(self, params: dict[str, Any]) -> Any:
        values: dict[str, Any] = {}
        for name, key, fixed, processor in self._binds:
            value = params[key] if fixed is _GIVEN else fixed
            values[name] = value if processor is None else processor(value)
        if self._positions is None:
            return values
        return tuple(values[n] for n in self._positions)

    def run(self, connection: Connection, params: dict[str, Any]) -> CursorResult[Any]:
        return connection.exec_driver_sql(self.sql, self._bound(params))

    def many(self, connection: Connection, params: Sequence[dict[str, Any]]) -> list[int]:
        """The statement once per parameter set, and the rows each changed. PostgreSQL
        takes them all in one round trip (psycopg's pipeline: SQLAlchemy's executemany
        sums the counts, and each is needed to know which rows moved)."""
        if connection.dialect.driver != "psycopg" or len(params) < 2:
            return [int(self.run(connection, p).rowcount or 0) for p in params]
        return [count for count, _ in self._pipelined(connection, params)]

    def first_rows(self, connection: Connection, params: Sequence[dict[str, Any]]) -> list[Any]:
        """``many`` for a statement that answers a row: each one's first row."""
        if connection.dialect.driver != "psycopg" or len(params) < 2:
            return [self.run(connection, p).one() for p in params]
        return [row for _, row in self._pipelined(connection, params)]

    def _pipelined(
        self, connection: Connection, params: Sequence[dict[str, Any]]
    ) -> list[tuple[int, Any]]:
        dialect = connection.dialect
        raw = connection.connection.driver_connection
        assert raw is not None
        try:
            with raw.cursor() as cursor:
                cursor.executemany(self.sql, [self._bound(p) for p in params], returning=True)
                counts = [(cursor.rowcount, cursor.fetchone() if cursor.description else None)]
                while cursor.nextset():
                    row = cursor.fetchone() if cursor.description else None
                    counts.append((cursor.rowcount, row))
        except dialect.loaded_dbapi.Error as exc:
            # Raised as SQLAlchemy raises it, so callers tell an outage from a refusal.
            if dialect.is_disconnect(exc, raw, None):
                connection.invalidate(exc)
            raise DBAPIError.instance(
                self.sql, None, exc, dialect.loaded_dbapi.Error, dialect=dialect
            ) from exc
        return counts


def _table(model: Any) -> Table:
    return model.__table__  # type: ignore[no-any-return]


def _insert_ignoring(table: Table, dialect: str) -> Executable:
    """INSERT of a whole row that inserts nothing, without failing, if the row clashes
    with one there on a unique key (a failed statement would abort a batch's whole
    transaction on PostgreSQL)."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    values = {c: bindparam(f"new_{c.name}", type_=c.type) for c in table.columns}
    return insert(table).values(values).on_conflict_do_nothing()


def _attempt_update(
    keys: tuple[str, ...], expect: tuple[AttemptState, ...] | None, by_handle: bool
) -> Executable:
    table = _table(StageAttempt)
    query = update(table).where(table.c.id == bindparam("attempt_id", type_=table.c.id.type))
    if expect is not None:
        query = query.where(table.c.state.in_([literal(s, table.c.state.type) for s in expect]))
    if by_handle:
        query = query.where(table.c.handle == bindparam("expect_handle", type_=table.c.handle.type))
    return query.values({table.c[k]: bindparam(f"new_{k}", type_=table.c[k].type) for k in keys})


def _run_started() -> Executable:
    table = _table(Run)
    return (
        update(table)
        .where(
            table.c.id == bindparam("run_id", type_=table.c.id.type),
            table.c.status == literal(RunStatus.PENDING, table.c.status.type),
        )
        .values(
            status=literal(RunStatus.RUNNING, table.c.status.type),
            started_at=bindparam("at", type_=table.c.started_at.type),
        )
    )


def _settle_in_flight() -> Executable:
    """A run's attempts still pending or running, ended with a reason."""
    table = _table(StageAttempt)
    live = [literal(state, table.c.state.type) for state in IN_FLIGHT_STATES]
    return (
        update(table)
        .where(
            table.c.run_id == bindparam("of_run", type_=table.c.run_id.type),
            table.c.state.in_(live),
        )
        .values(
            {
                table.c.state: bindparam("new_state", type_=table.c.state.type),
                table.c.reason: bindparam("new_reason", type_=table.c.reason.type),
                table.c.finished_at: bindparam("new_finished_at", type_=table.c.finished_at.type),
            }
        )
    )


def _settle_params(finish: RunFinish) -> dict[str, Any]:
    return {
        "of_run": finish.run_id,
        "new_state": AttemptState.FAILED,
        "new_reason": finish.settle,
        "new_finished_at": finish.at,
    }


def _clip_planned() -> Executable:
    table = _table(Clip)
    return (
        update(table)
        .where(table.c.id == bindparam("clip_id", type_=table.c.id.type))
        .values(planned=literal(True, table.c.planned.type))
    )


def _finish_on_postgres() -> Executable:
    """Finishes an active run and gives it the next number of the finished-runs counter,
    in one statement: the run's row is locked first, so the counter is bumped only for
    a run this transaction finishes (no savepoint to give a number back), and stays
    locked until the commit as ``Store._bump`` explains. Answers whether the run was
    active, and whether it was finished (not: the counter has no row yet)."""
    runs = _table(Run)
    active = ", ".join(f"'{status.name}'" for status in ACTIVE)
    return text(
        f"""
        WITH target AS (
            SELECT id FROM runs WHERE id = :run_id AND status IN ({active}) FOR UPDATE
        ), bumped AS (
            UPDATE counters SET value = value + 1
            WHERE name = :counter AND EXISTS (SELECT FROM target)
            RETURNING value
        ), finished AS (
            UPDATE runs SET status = :status, error = :error, result = :result,
                result_uri = :result_uri, finished_at = :finished_at,
                finished_seq = (SELECT value FROM bumped)
            WHERE id = (SELECT id FROM target) AND EXISTS (SELECT FROM bumped)
            RETURNING id
        )
        SELECT EXISTS (SELECT FROM target), EXISTS (SELECT FROM finished)
        """
    ).bindparams(
        bindparam("run_id", type_=runs.c.id.type),
        bindparam("counter", type_=String()),
        bindparam("status", type_=runs.c.status.type),
        bindparam("error", type_=runs.c.error.type),
        bindparam("result", type_=runs.c.result.type),
        bindparam("result_uri", type_=runs.c.result_uri.type),
        bindparam("finished_at", type_=runs.c.finished_at.type),
    )


def _savepoint_name(depth: int) -> str:
    return f"camflow_{depth}"


class _BatchState(threading.local):
    """This thread's ``Store.batch``: its session and connection, and the savepoint
    blocks (``Store.savepoint``) it is in, innermost last.

    The savepoints are plain SQL on the batch's connection, one name per depth, kept
    here rather than by the session, so that they cost as few round trips as they can:
    a block's SAVEPOINT is sent only when a store method first runs in it (most of a
    tick's blocks write nothing), and its RELEASE waits to go with the next SAVEPOINT
    in one query (or is done by the COMMIT). A block that writes costs one round trip
    more than its statements, not two. The session does not know of them: a flush that
    failed in one would roll the whole batch back, so the store methods an engine
    calls in a batch write with statements (prepared or Core), never by a flush."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.connection: Connection | None = None
        #: Per block: whether its SAVEPOINT was sent in the current transaction.
        self.frames: list[bool] = []
        #: The shallowest depth whose block ended well and whose savepoint (and those
        #: deeper) is still to be released.
        self.unreleased: int | None = None

    def begin(self, session: Session) -> None:
        self.session, self.connection, self.frames, self.unreleased = session, None, [], None

    def committed(self) -> None:
        """The transaction ended, and every savepoint with it."""
        self.connection, self.unreleased = None, None
        self.frames = [False] * len(self.frames)

    def ready(self, session: Session) -> Connection:
        """The batch's connection, inside a savepoint for each block it is in."""
        if self.connection is None:
            self.connection = session.connection()
        queries = []
        for depth, sent in enumerate(self.frames):
            if sent:
                continue
            if self.unreleased is not None:  # never deeper than this block
                queries.append(f"RELEASE SAVEPOINT {_savepoint_name(self.unreleased)}")
                self.unreleased = None
            queries.append(f"SAVEPOINT {_savepoint_name(depth)}")
            self.frames[depth] = True
        if queries:
            self.connection.exec_driver_sql("; ".join(queries))
        return self.connection

    def leave(self, failed: bool) -> None:
        """Ends the innermost block: what it wrote is undone if it ``failed``."""
        depth = len(self.frames) - 1
        if not self.frames.pop():
            return  # no store method ran in it (since the last commit): nothing to undo
        if not failed:
            if self.unreleased is None or self.unreleased > depth:
                self.unreleased = depth
            return
        assert self.connection is not None and self.session is not None
        name = _savepoint_name(depth)
        # Also what a failed statement left: PostgreSQL refuses all else until then.
        self.connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
        self.unreleased = None  # the deeper ones went with it
        # Rows it read may hold what was undone: they are read afresh if asked again.
        self.session.expunge_all()


#: Built once: the engine reads a run's attempts each time it finishes one.
_ATTEMPTS_OF_RUN = (
    select(StageAttempt)
    .where(col(StageAttempt.run_id) == bindparam("run_id"))
    .order_by(col(StageAttempt.created_at), col(StageAttempt.attempt))
)


class _Borrowed:
    """The session of the ``Store.batch`` this thread is in, lent to one store method:
    its commit only flushes (the batch commits once, at its end) and closing it leaves
    it open for the next method."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def commit(self) -> None:
        self._session.flush()

    def rollback(self) -> None:
        # It would undo the whole batch, other runs' writes included.
        raise RuntimeError("a store method rolled back inside Store.batch: use a savepoint")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _all_or_nothing(session: Session, work: Callable[[], bool | None]) -> bool | None:
    """Keeps what ``work`` wrote if it answers True, undoes it otherwise: a transaction
    of its own, or a savepoint in a batch (whose other writes must stay)."""
    if isinstance(session, _Borrowed):
        savepoint = session.begin_nested()
        try:
            done = work()
        except BaseException:
            savepoint.rollback()
            raise
        (savepoint.commit if done else savepoint.rollback)()
        return done
    done = work()
    (session.commit if done else session.rollback)()
    return done


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # No pre-ping: a file has no server to restart under an idle connection, and
        # a ping per checkout was a round trip for every short transaction.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            # WAL lets the watcher write while the engine and the CLI read.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    engine = create_engine(url)
    _ping_when_idle(engine)
    return engine


#: A pooled connection unused for longer than this is pinged before it is lent again.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Pings a pooled connection before it is lent only if it sat idle: one the engine
    gave back a moment ago (a tick checks one out per short transaction, hundreds a
    second) met the server just now, and a ping each was a round trip per
    transaction. A server that restarted under an idle connection is still found out
    before use: the connection is replaced instead of failing the caller."""

    @event.listens_for(engine, "checkin")
    def _given_back(_dbapi: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _lent(dbapi: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return  # new, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi)
        except Exception as exc:
            # The pool drops this connection and lends another (a new one if need be).
            raise DisconnectionError(f"a pooled connection no longer answers: {exc}") from exc


class Store:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = _make_engine(url)
        self._batch = _BatchState()
        self._statements: dict[tuple[Any, ...], _Prepared] = {}
        self._statements_lock = threading.Lock()
        try:
            migrate.upgrade(self.engine)
        except OperationalError as exc:
            self.engine.dispose()
            reason = str(exc.orig or exc).strip().splitlines()[0]
            shown = make_url(url).render_as_string(hide_password=True)
            raise StoreUnavailable(
                f"cannot reach the store at {shown}: {reason}; check store.url "
                "(CAMFLOW_STORE__URL) and that the database is running"
            ) from exc
        except BaseException:
            self.engine.dispose()
            raise

    def session(self) -> Session:
        shared = self._shared()
        if shared is not None:
            return _Borrowed(shared)  # type: ignore[return-value]
        return Session(self.engine, expire_on_commit=False)

    def _shared(self) -> Session | None:
        """This thread's batch session, inside the savepoints of the blocks it is in
        (sent now if not yet, or again after a checkpoint ended them); None outside a
        batch."""
        shared = self._batch.session
        if shared is not None:
            self._batch.ready(shared)
        return shared

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        """Where a prepared statement runs: the batch's transaction, or one of its own
        that commits when the block ends (and is rolled back if it raises)."""
        shared = self._batch.session
        if shared is not None:
            yield self._batch.ready(shared)
            return
        with self.engine.begin() as connection:
            yield connection

    def _prepared(self, key: tuple[Any, ...], build: Callable[[], Executable]) -> _Prepared:
        statement = self._statements.get(key)
        if statement is None:
            with self._statements_lock:
                statement = self._statements.get(key)
                if statement is None:
                    statement = _Prepared(build(), self.engine.dialect)
                    self._statements[key] = statement
        return statement

    def _held(self, model: Any, ident: str, values: dict[str, Any]) -> None:
        """Brings a row the batch's session read earlier (and would answer from its
        identity map) in step with what a prepared statement just wrote to it."""
        shared = self._batch.session
        if shared is None:
            return
        held = shared.identity_map.get(shared.identity_key(model, ident))
        if held is not None:
            for key, value in values.items():
                set_committed_value(held, key, value)

    def checkpoint(self) -> None:
        """Commits what this thread's batch wrote so far (and goes on batching): for
        writes that must be durable before an outside effect, such as an attempt's
        placement before a create on a cluster that may land even if its answer is
        lost. Outside a batch, every write is committed already."""
        shared = self._batch.session
        if shared is not None:
            shared.commit()
            self._batch.committed()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a batch on PostgreSQL, a block whose writes are undone alone when it
        raises: an error there aborts the whole transaction otherwise, and every later
        statement of the phase would fail with it. (SQLite undoes just the failing
        statement, and its driver commits at a savepoint's release: nothing to do.)
        The SAVEPOINT is sent when a store method first runs in the block: a block
        that touches no store costs no round trip."""
        state = self._batch
        if state.session is None or self.engine.dialect.name != "postgresql":
            yield
            return
        state.frames.append(False)
        try:
            yield
        except BaseException:
            state.leave(failed=True)
            raise
        state.leave(failed=False)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The store writes of this thread, until the block ends, in one transaction:
        one commit for a tick's hundreds of attempt updates instead of one each. Other
        threads (the API, the watcher) keep their own short transactions. A crash
        before the commit loses the block's writes together, which the engine's
        replay handles as it handles a crash between two of them. On SQLite, whose
        Python driver begins a transaction only at a write and commits one at a
        savepoint's release when the savepoint began it, a block may commit in a few
        pieces instead: fewer commits all the same, and nothing the replay cannot
        handle."""
        if self._batch.session is not None:
            yield  # already in one: the outer block commits
            return
        session = Session(self.engine, expire_on_commit=False)
        self._batch.begin(session)
        try:
            yield
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            self._batch.session = self._batch.connection = None
            session.close()

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raises if the database does not answer."""
        with self.session() as session:
            session.exec(select(literal(1))).one()

    # --- watcher ----------------------------------------------------------------------

    def cursor(self, name: str) -> str | None:
        """Where the reconciliation sweep named ``name`` resumes (None: at the start)."""
        with self.session() as session:
            row = session.get(Checkpoint, name)
            return row.last_key or None if row else None

    def record_clips(
        self,
        clips: Sequence[Clip],
        rejected: Sequence[RejectedObject] = (),
        cursor: tuple[str, str | None] | None = None,
    ) -> list[Clip]:
        """Adds the clips (and rejected objects) not recorded before and, with
        ``cursor``, moves a sweep's cursor, in one transaction: a crash leaves all or
        none. Returns the clips that are new. Safe against another writer adding the
        same clip at the same moment (a unique key, and a retry row by row)."""
        with self.session() as session:
            new = self._new_rows(session, Clip, clips)
            rejects = self._new_rows(session, RejectedObject, rejected)
            try:
                # Read before anything is added: a read autoflushes the session, and a
                # clip another writer recorded since would clash there, not at the
                # commit this retries from.
                row = None
                if cursor is not None:
                    name, key = cursor
                    row = session.get(Checkpoint, name) or Checkpoint(id=name, last_key="")
                    row.last_key, row.updated_at = key or "", utcnow()
                session.add_all(new)
                session.add_all(rejects)
                if row is not None:
                    session.add(row)
                session.commit()
                return new
            except IntegrityError:
                session.rollback()
        # Someone recorded one of them in between: go one by one, the cursor last.
        added = [clip for clip in clips if self._insert_new(Clip(**clip.model_dump()))]
        for row in rejected:
            self._insert_new(RejectedObject(**row.model_dump()))
        if cursor is not None:
            self.record_clips([], (), cursor)
        return added

    def _insert_new(self, row: Any) -> bool:
        """Inserts ``row``; False if a row with its key exists already."""
        if self.engine.dialect.name in ("postgresql", "sqlite"):
            try:
                with self._connection() as connection:
                    return self._insert_many(connection, [row])[0]
            except IntegrityError:
                if self._batch.session is not None:
                    raise
                return False  # outside a batch, as a clash: another key (a foreign one)
        with self.session() as session:
            if isinstance(session, _Borrowed):
                # Elsewhere a savepoint, so that a clash undoes this insert only.
                try:
                    with session.begin_nested():
                        session.add(row)
                    return True
                except IntegrityError:
                    return False
            session.add(row)
            try:
                session.commit()
                return True
            except IntegrityError:
                session.rollback()
                return False

    @staticmethod
    def _new_rows(session: Session, table: Any, rows: Sequence[Any]) -> list[Any]:
        ids = list({row.id for row in rows})
        if not ids:
            return []
        known = set(session.exec(select(table.id).where(col(table.id).in_(ids))).all())
        fresh: dict[str, Any] = {}
        for row in rows:
            if row.id not in known:
                fresh.setdefault(row.id, row)
        return list(fresh.values())

    def rejected_objects(self, limit: int = 100) -> list[RejectedObject]:
        with self.session() as session:
            query = select(RejectedObject).order_by(col(RejectedObject.seen_at).desc())
            return list(session.exec(query.limit(limit)).all())

    def skipped_runs(self, limit: int = 100, clip_id: str | None = None) -> list[SkippedRun]:
        """Pipelines that tenancy kept off clips, newest first (or one clip's)."""
        with self.session() as session:
            query = select(SkippedRun).order_by(col(SkippedRun.skipped_at).desc())
            if clip_id is not None:
                query = query.where(col(SkippedRun.clip_id) == clip_id)
            return list(session.exec(query.limit(limit)).all())

    # --- leadership -------------------------------------------------------------------

    def hold_lease(self, name: str, holder: str, now: datetime, until: datetime) -> int | None:
        """Takes or renews lease ``name`` for ``holder`` until ``until`` if it is free,
        expired or already ``holder``'s; returns its epoch (which grows with each new
        holder), or None while another holder has it. One conditional UPDATE, atomic on
        SQLite and PostgreSQL alike."""
        with self.session() as session:
            renewed = session.exec(
                update(Lease)
                .where(col(Lease.name) == name, col(Lease.holder) == holder)
                .values(expires_at=until)
            )
            if not renewed.rowcount:
                taken = session.exec(
                    update(Lease)
                    .where(col(Lease.name) == name, col(Lease.expires_at) < now)
                    .values(
                        holder=holder,
                        expires_at=until,
                        acquired_at=now,
                        epoch=col(Lease.epoch) + 1,
                    )
                )
                if not taken.rowcount:
                    if session.get(Lease, name) is not None:
                        session.rollback()
                        return None
                    session.add(
                        Lease(name=name, holder=holder, epoch=1, acquired_at=now, expires_at=until)
                    )
            try:
                session.commit()
            except IntegrityError:  # another replica created it at the same moment
                session.rollback()
                return None
            row = session.get(Lease, name)
            return row.epoch if row is not None and row.holder == holder else None

    def release_lease(self, name: str, holder: str) -> None:
        """Gives the lease up at once (a clean shutdown), so a follower need not wait
        for it to expire."""
        with self.session() as session:
            session.exec(
                update(Lease)
                .where(col(Lease.name) == name, col(Lease.holder) == holder)
                .values(expires_at=datetime(1970, 1, 1, tzinfo=UTC))
            )
            session.commit()

    def lease(self, name: str) -> Lease | None:
        with self.session() as session:
            return session.get(Lease, name)

    # --- planning ---------------------------------------------------------------------

    def unplanned_clips(self, limit: int = 500) -> list[Clip]:
        with self.session() as session:
            query = (
                select(Clip)
                .where(col(Clip.planned).is_(False))
                .order_by(col(Clip.discovered_at))
                .limit(limit)
            )
            return list(session.exec(query).all())

    def plan(
        self, clip_id: str, runs: Iterable[Run], skipped: Iterable[SkippedRun] = ()
    ) -> list[Run]:
        """Creates the clip's runs (unless they exist), records the pipelines tenancy
        refused (``skipped``) and marks the clip planned, atomically."""
        return self.plan_many([ClipPlan(clip_id, list(runs), list(skipped))])[0]

    def plan_many(self, plans: Sequence[ClipPlan]) -> list[list[Run]]:
        """``plan`` for several clips in one transaction (one round trip per kind of
        row on PostgreSQL); each clip's runs created. All or none: a caller whose group
        is refused plans the clips one by one, so that only the one at fault waits."""
        if self.engine.dialect.name not in ("postgresql", "sqlite"):
            return [self._plan_in_session(plan) for plan in plans]
        # Prepared statements: a clash (planned before) inserts nothing.
        planned = self._prepared(("clip_planned",), _clip_planned)
        with self._connection() as connection:
            created = self._insert_many(connection, [run for p in plans for run in p.runs])
            self._insert_many(connection, [row for p in plans for row in p.skipped])
            planned.many(connection, [{"clip_id": p.clip_id} for p in plans])
        made = iter(created)
        return [[run for run in p.runs if next(made)] for p in plans]

    def _plan_in_session(self, plan: ClipPlan) -> list[Run]:
        with self.session() as session:
            existing = set(
                session.exec(select(Run.pipeline).where(Run.clip_id == plan.clip_id)).all()
            )
            created = [run for run in plan.runs if run.pipeline not in existing]
            session.add_all(created)
            session.add_all(self._new_rows(session, SkippedRun, plan.skipped))
            session.exec(update(Clip).where(col(Clip.id) == plan.clip_id).values(planned=True))
            session.commit()
            return created

    def _insert_many(self, connection: Connection, rows: Sequence[Any]) -> list[bool]:
        """Inserts rows of one table, each with a prepared statement that inserts
        nothing on a clash (in one round trip on PostgreSQL); which were inserted."""
        if not rows:
            return []
        table = _table(type(rows[0]))
        dialect = self.engine.dialect.name
        statement = self._prepared(("insert", table.name), lambda: _insert_ignoring(table, dialect))
        params = [{f"new_{c.name}": getattr(row, c.name) for c in table.columns} for row in rows]
        return [bool(count) for count in statement.many(connection, params)]

    # --- engine -----------------------------------------------------------------------

    def active_runs(self, owner: str | None = None, limit: int = 10_000) -> list[RunWithAttempts]:
        """Active runs driven by ``owner``: None is `camflow serve`, anything else one
        `camflow process` or `algorithms try` (which drive only their own runs)."""
        owned = col(Run.owner).is_(None) if owner is None else col(Run.owner) == owner
        with self.session() as session:
            runs = session.exec(
                select(Run)
                .where(col(Run.status).in_(ACTIVE), owned)
                .order_by(col(Run.created_at), col(Run.id))
                .limit(limit)
            ).all()
            # Clips and attempts by id, not joined: PostgreSQL joins ten thousand runs
            # to clips by hashing the whole clips table, which grows with the history.
            clips: dict[str, Clip] = {}
            for among in self._among(col(Clip.id), list({run.clip_id for run in runs})):
                clips.update((clip.id, clip) for clip in session.exec(select(Clip).where(among)))
            attempts: dict[str, list[StageAttempt]] = {run.id: [] for run in runs}
            for among in self._among(col(StageAttempt.run_id), list(attempts)):
                for attempt in session.exec(
                    select(StageAttempt)
                    .where(among)
                    .order_by(col(StageAttempt.stage), col(StageAttempt.attempt))
                ).all():
                    attempts[attempt.run_id].append(attempt)
            return [
                RunWithAttempts(run, clips[run.clip_id], tuple(attempts[run.id])) for run in runs
            ]

    def _among(self, column: Any, values: list[str]) -> list[Any]:
        """Conditions that together select ``column IN values``, for up to `active_runs`'
        ten thousand values. PostgreSQL takes them as one array parameter: as many bound
        parameters cost more to send and plan than the rows. SQLite before 3.32 allows
        999 parameters a statement."""
        if not values:
            return []
        if self.engine.dialect.name == "postgresql":
            return [column == any_(bindparam("among", values, type_=ARRAY(String)))]
        return [column.in_(values[i : i + 500]) for i in range(0, len(values), 500)]

    def count_attempts(
        self, executor: str, accelerator: str | None = None, owner: str | None = None
    ) -> int:
        """Executions of ``owner``'s runs handed to ``executor`` and not finished: its
        slots in use. A batch (several clips' attempts in one process) is one execution.
        Per owner, because an engine can only ever see its own runs' attempts finish: a
        one-shot command that died must not hold `serve`'s slots forever."""
        owned = col(Run.owner).is_(None) if owner is None else col(Run.owner) == owner
        execution = func.coalesce(col(StageAttempt.batch), col(StageAttempt.id))
        with self.session() as session:
            query = (
                select(func.count(func.distinct(execution)))
                .select_from(StageAttempt)
                .join(Run, col(Run.id) == col(StageAttempt.run_id))
                .where(
                    col(StageAttempt.executor) == executor,
                    col(StageAttempt.state).in_((AttemptState.PENDING, AttemptState.RUNNING)),
                    owned,
                )
            )
            if accelerator:
                query = query.where(col(StageAttempt.accelerator) == accelerator)
            return int(session.exec(query).one())

    def _insert_or_get(self, row: Row) -> Row:
        """Inserts ``row``; if one with its key exists already, returns that one."""
        if self._insert_new(row):
            return row
        with self.session() as session:
            existing = session.get(type(row), row.id)  # type: ignore[attr-defined]
            if existing is None:
                raise StorageError(f"{type(row).__name__} {row.id} clashes with another row")
            return existing

    def add_attempt(self, attempt: StageAttempt) -> StageAttempt:
        """Inserts the attempt, or returns the one a crash-interrupted tick inserted (the
        unique key is run, stage, attempt number)."""
        return self._insert_or_get(attempt)

    def update_attempt(
        self,
        attempt_id: str,
        expect: Collection[AttemptState] | None = None,
        expect_handle: str | None = None,
        **values: Any,
    ) -> bool:
        """Updates an attempt; with ``expect``, only while it is in one of those states,
        so an engine acting on a stale view (a deposed leader) can never move an
        attempt backwards. False when nothing was updated. One prepared statement per
        shape (the columns set, the states expected, whether the handle is): the
        engine's most frequent write, a few per attempt."""
        # With expect_handle, the status read was of this handle, not a newer one.
        return self.update_attempts([AttemptChange(attempt_id, values, expect, expect_handle)])[0]

    @property
    def in_batch(self) -> bool:
        """Whether this thread writes in a ``batch`` (whose savepoints can undo)."""
        return self._batch.session is not None

    @property
    def writes_in_bulk(self) -> bool:
        """Whether ``update_attempts`` and ``add_attempts`` cost one round trip however
        many rows (PostgreSQL); elsewhere each row is a statement of its own."""
        return self.engine.dialect.driver == "psycopg"

    def update_attempts(self, changes: Sequence[AttemptChange]) -> list[bool]:
        """``update_attempt`` for each change, in one round trip per shape of change
        on PostgreSQL; what each did, in order. A statement that fails fails them all
        (on PostgreSQL, call it in a savepoint and go one by one after)."""
        done = [False] * len(changes)
        shapes: dict[tuple[Any, ...], list[int]] = {}
        for n, change in enumerate(changes):
            states = None if change.expect is None else tuple(sorted(change.expect))
            shape = (tuple(sorted(change.values)), states, change.expect_handle is not None)
            shapes.setdefault(shape, []).append(n)
        with self._connection() as connection:
            for (keys, states, by_handle), indexes in shapes.items():
                statement = self._prepared(
                    ("update_attempt", keys, states, by_handle),
                    lambda k=keys, s=states, h=by_handle: _attempt_update(k, s, h),
                )
                params = []
                for n in indexes:
                    change = changes[n]
                    values = {f"new_{key}": value for key, value in change.values.items()}
                    values["attempt_id"] = change.attempt_id
                    values["expect_handle"] = change.expect_handle
                    params.append(values)
                for n, count in zip(indexes, statement.many(connection, params), strict=True):
                    done[n] = bool(count)
        for change, ok in zip(changes, done, strict=True):
            if ok:
                self._held(StageAttempt, change.attempt_id, change.values)
        return done

    def add_attempts(self, attempts: Sequence[StageAttempt]) -> list[bool]:
        """Inserts the attempts, in one round trip on PostgreSQL; False for each that
        was not inserted because one with its key exists already (a replay)."""
        with self._connection() as connection:
            return self._insert_many(connection, attempts)

    def mark_runs_started(self, run_ids: Sequence[str], at: datetime) -> None:
        """``mark_run_started`` for many, in one round trip on PostgreSQL."""
        statement = self._prepared(("run_started",), _run_started)
        with self._connection() as connection:
            counts = statement.many(connection, [{"run_id": r, "at": at} for r in run_ids])
        for run_id, count in zip(run_ids, counts, strict=True):
            if count:
                self._held(Run, run_id, {"status": RunStatus.RUNNING, "started_at": at})

    def delete_attempt(self, attempt_id: str) -> None:
        """Withdraws an attempt no executor took, so the engine may decide afresh."""
        with self.session() as session:
            row = session.get(StageAttempt, attempt_id)
            if row is not None and row.state == AttemptState.PENDING:
                session.delete(row)
                session.commit()

    def mark_run_started(self, run_id: str, at: datetime) -> None:
        self.mark_runs_started([run_id], at)

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        error: str | None,
        result: dict[str, Any] | None,
        result_uri: str | None,
        at: datetime,
        settle: str | None = None,
    ) -> bool:
        """Moves an active run to its terminal status exactly once; False if it was
        already finished (a replayed tick after a crash). It takes the next number of
        the finished-runs sequence in the same transaction (the event stream's cursor)."""
        finish = RunFinish(run_id, status, error, result, result_uri, at, settle)
        return self.finish_runs([finish])[0]

    def finish_runs(self, finishes: Sequence[RunFinish]) -> list[bool]:
        """``finish_run`` for each, in order, with the run's webhooks queued in the same
        transaction (a run never ends without them); on PostgreSQL in two round trips
        however many runs."""
        done = [False] * len(finishes)
        todo = list(range(len(finishes)))
        for _ in range(2):
            if self.engine.dialect.name == "postgresql":
                with self._connection() as connection:
                    outcomes = self._finish_on_postgres(connection, [finishes[n] for n in todo])
            else:
                outcomes = []
                for n in todo:
                    with self.session() as session:
                        outcomes.append(
                            _all_or_nothing(
                                session, lambda f=finishes[n]: self._finish_once(session, f)
                            )
                        )
            again = []
            for n, outcome in zip(todo, outcomes, strict=True):
                if outcome is None:
                    again.append(n)  # the first run to finish in this store
                    continue
                done[n] = outcome
                if outcome:
                    self._held(Run, finishes[n].run_id, finishes[n].values())
            if not again:
                return done
            todo = again
            self._create_counter(FINISHED_RUNS)
        raise StorageError(f"counter {FINISHED_RUNS!r} vanished while in use")

    def _finish_on_postgres(
        self, connection: Connection, finishes: Sequence[RunFinish]
    ) -> list[bool | None]:
        """``_finish_once`` for each, as prepared statements sent together: the runs'
        and then their webhooks'."""
        statement = self._prepared(("finish_run",), _finish_on_postgres)
        params = [
            {**finish.values(), "run_id": finish.run_id, "counter": FINISHED_RUNS}
            for finish in finishes
        ]
        outcomes: list[bool | None] = []
        events: dict[RunStatus, list[dict[str, Any]]] = {}
        settles: list[dict[str, Any]] = []
        for finish, (active, finished) in zip(
            finishes, statement.first_rows(connection, params), strict=True
        ):
            outcomes.append(True if finished else None if active else False)
            if finished:
                events.setdefault(finish.status, []).append(
                    {"run_id": finish.run_id, "at": finish.at}
                )
                if finish.settle is not None:
                    settles.append(_settle_params(finish))
        if settles:
            self._prepared(("settle_in_flight",), _settle_in_flight).many(connection, settles)
        for status, runs in events.items():
            enqueue = enqueue_run_events(status)
            if enqueue is not None:
                queued = self._prepared(("enqueue_run_events", status), lambda e=enqueue: e)
                queued.many(connection, runs)
        return outcomes

    def _finish_once(self, session: Session, finish: RunFinish) -> bool | None:
        """None: no counter yet; False: not active (and the number is given back, so a
        replay leaves no gap)."""
        seq = self._bump(session, FINISHED_RUNS)
        if seq is None:
            return None
        changed = session.exec(
            update(Run)
            .where(col(Run.id) == finish.run_id, col(Run.status).in_(ACTIVE))
            .values(**finish.values(), finished_seq=seq)
        )
        if not changed.rowcount:
            return False
        # Its webhooks, in the same transaction: a run never ends without them.
        enqueue = enqueue_run_event(finish.run_id, finish.status, finish.at)
        if enqueue is not None:
            session.exec(enqueue)  # type: ignore[call-overload]
        if finish.settle is not None:
            settle = self._prepared(("settle_in_flight",), _settle_in_flight)
            settle.run(session.connection(), _settle_params(finish))
        return True

    @staticmethod
    def _bump(session: Session, name: str) -> int | None:
        """The counter's next value, or None if it has no row yet. The row stays locked
        until the caller's commit, so transactions commit in the order of their values:
        a reader that has seen N never later sees a smaller number appear."""
        bumped = session.exec(
            update(Counter)
            .where(col(Counter.name) == name)
            .values(value=Counter.value + 1)
            .returning(Counter.value)
        )
        value = bumped.scalar_one_or_none()
        return None if value is None else int(value)

    def _create_counter(self, name: str) -> None:
        """Creates the finished-runs counter, after the numbers already given (should
        its row ever be lost); a concurrent creator wins, harmlessly."""
        with self.session() as session:
            highest = session.exec(select(func.max(Run.finished_seq))).one()
        self._insert_new(Counter(name=name, value=int(highest or 0)))

    def tenant_finished_runs(
        self, tenant: str, after_seq: int, limit: int = 200, since: datetime | None = None
    ) -> list[tuple[Run, Clip]]:
        """A tenant's runs that finished after sequence number ``after_seq``, in the
        order they finished (and at or after ``since``, if given)."""
        with self.session() as session:
            query = (
                select(Run, Clip)
                .join(Clip, col(Clip.id) == col(Run.clip_id))
                .where(col(Clip.tenant) == tenant, col(Run.finished_seq) > after_seq)
            )
            if since is not None:
                query = query.where(col(Run.finished_at) >= since)
            query = query.order_by(col(Run.finished_seq)).limit(limit)
            return list(session.exec(query).all())

    def last_finished_seq(self) -> int:
        """The sequence number of the run that finished last (0: none yet)."""
        with self.session() as session:
            return int(session.exec(select(func.max(Run.finished_seq))).one() or 0)

    # --- inspection -------------------------------------------------------------------

    def list_runs(
        self,
        status: str | None = None,
        pipeline: str | None = None,
        tenant: str | None = None,
        limit: int = 50,
    ) -> list[tuple[Run, Clip]]:
        with self.session() as session:
            query = select(Run, Clip).join(Clip, col(Clip.id) == col(Run.clip_id))
            if status:
                query = query.where(col(Run.status) == status)
            if pipeline:
                query = query.where(col(Run.pipeline) == pipeline)
            if tenant:
                query = query.where(col(Clip.tenant) == tenant)
            query = query.order_by(col(Run.created_at).desc(), col(Run.id)).limit(limit)
            return list(session.exec(query).all())

    def find_clip(self, ref: str) -> Clip:
        """A clip by id, by key, or by ``s3://bucket/key``; the newest if a key repeats."""
        with self.session() as session:
            clip = session.get(Clip, ref)
            if clip:
                return clip
            bucket, key = None, ref
            if ref.startswith("s3://"):
                bucket, _, key = ref.removeprefix("s3://").partition("/")
            query = select(Clip).where(or_(col(Clip.key) == key, col(Clip.key).endswith(key)))
            if bucket:
                query = query.where(col(Clip.bucket) == bucket)
            found = session.exec(query.order_by(col(Clip.discovered_at).desc())).first()
            if found is None:
                raise NotFound(
                    f"no clip {ref!r}: give a clip id (c-...), a key or s3://bucket/key; "
                    "`camflow runs` lists them"
                )
            return found

    def runs_of_clip(self, clip_id: str) -> list[Run]:
        with self.session() as session:
            return list(
                session.exec(
                    select(Run).where(Run.clip_id == clip_id).order_by(col(Run.pipeline))
                ).all()
            )

    def attempts_of_run(self, run_id: str) -> list[StageAttempt]:
        with self.session() as session:
            return list(session.exec(_ATTEMPTS_OF_RUN, params={"run_id": run_id}).all())

    def attempts_of_runs(self, run_ids: Sequence[str]) -> dict[str, list[StageAttempt]]:
        """``attempts_of_run`` for each, in one query (or one per 500 on SQLite)."""
        attempts: dict[str, list[StageAttempt]] = {run_id: [] for run_id in run_ids}
        with self.session() as session:
            for among in self._among(col(StageAttempt.run_id), list(attempts)):
                query = select(StageAttempt).where(among)
                for attempt in session.exec(
                    query.order_by(col(StageAttempt.created_at), col(StageAttempt.attempt))
                ).all():
                    attempts[attempt.run_id].append(attempt)
        return attempts

    def unfinished_runs(self, run_ids: Iterable[str]) -> set[str]:
        """Those of ``run_ids`` that exist and have not finished, in one query (or one
        per 500 on SQLite)."""
        terminal = [status for status in RunStatus if status.terminal]
        unfinished: set[str] = set()
        with self.session() as session:
            for among in self._among(col(Run.id), list(run_ids)):
                query = select(Run.id).where(among, col(Run.status).not_in(terminal))
                unfinished.update(session.exec(query).all())
        return unfinished

    def get_run(self, run_id: str) -> Run:
        with self.session() as session:
            run = session.get(Run, run_id)
            if run is None:
                raise NotFound(f"no run {run_id!r}")
            return run

    # --- algorithm registry -------------------------------------------------------------

    def algorithm_versions(self, name: str | None = None) -> list[AlgorithmVersion]:
        with self.session() as session:
            query = select(AlgorithmVersion)
            if name:
                query = query.where(col(AlgorithmVersion.name) == name)
            return list(session.exec(query.order_by(col(AlgorithmVersion.id))).all())

    def get_algorithm_version(self, ref: str) -> AlgorithmVersion | None:
        with self.session() as session:
            return session.get(AlgorithmVersion, ref)

    def add_algorithm_version(self, row: AlgorithmVersion) -> AlgorithmVersion:
        """Inserts ``row``; if that version exists already, returns the stored one."""
        return self._insert_or_get(row)

    def set_channel(self, ref: str, channel: Channel, at: datetime) -> AlgorithmVersion | None:
        with self.session() as session:
            row = session.get(AlgorithmVersion, ref)
            if row is None:
                return None
            row.channel, row.promoted_at = channel, at
            session.add(row)
            session.commit()
            return row

    def set_published(self, ref: str, at: datetime) -> AlgorithmVersion | None:
        """Marks a version published (first time only: ``at`` is kept as it was)."""
        with self.session() as session:
            row = session.get(AlgorithmVersion, ref)
            if row is None:
                return None
            if row.published_at is None:
                row.published_at = at
                session.add(row)
                session.commit()
            return row

    def registry_stamp(self) -> tuple[int, datetime | None, datetime | None, datetime | None]:
        """Changes whenever a version is registered, promoted or published: cheap to poll."""
        with self.session() as session:
            count, registered, promoted, published = session.exec(
                select(
                    func.count(),
                    func.max(AlgorithmVersion.registered_at),
                    func.max(AlgorithmVersion.promoted_at),
                    func.max(AlgorithmVersion.published_at),
                )
            ).one()
            return int(count), registered, promoted, published

    # --- API keys -----------------------------------------------------------------------

    def add_api_key(self, key: ApiKey) -> ApiKey:
        with self.session() as session:
            session.add(key)
            session.commit()
            return key

    def api_key(self, key_id: str) -> ApiKey | None:
        with self.session() as session:
            return session.get(ApiKey, key_id)

    def api_keys(self, tenant: str | None = None) -> list[ApiKey]:
        with self.session() as session:
            query = select(ApiKey)
            if tenant:
                query = query.where(col(ApiKey.tenant) == tenant)
            return list(session.exec(query.order_by(col(ApiKey.created_at))).all())

    def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        with self.session() as session:
            changed = session.exec(
                update(ApiKey)
                .where(col(ApiKey.id) == key_id, col(ApiKey.revoked_at).is_(None))
                .values(revoked_at=at)
            )
            session.commit()
            return bool(changed.rowcount)

    # --- tenant-scoped reading (the API) -----------------------------------------------

    def tenant_clips(
        self,
        tenant: str,
        camera: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[Clip]:
        """A tenant's clips, newest first, from after the ``after`` cursor."""
        with self.session() as session:
            query = select(Clip).where(col(Clip.tenant) == tenant)
            if camera:
                query = query.where(col(Clip.camera) == camera)
            if since:
                query = query.where(col(Clip.discovered_at) >= since)
            if until:
                query = query.where(col(Clip.discovered_at) < until)
            if after:
                query = query.where(_before(col(Clip.discovered_at), col(Clip.id), after))
            query = query.order_by(col(Clip.discovered_at).desc(), col(Clip.id).desc())
            return list(session.exec(query.limit(limit)).all())

    def tenant_runs(
        self,
        tenant: str,
        status: str | None = None,
        pipeline: str | None = None,
        camera: str | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[tuple[Run, Clip]]:
        with self.session() as session:
            query = (
                select(Run, Clip)
                .join(Clip, col(Clip.id) == col(Run.clip_id))
                .where(col(Clip.tenant) == tenant)
            )
            if status:
                query = query.where(col(Run.status) == status)
            if pipeline:
                query = query.where(col(Run.pipeline) == pipeline)
            if camera:
                query = query.where(col(Clip.camera) == camera)
            if after:
                query = query.where(_before(col(Run.created_at), col(Run.id), after))
            query = query.order_by(col(Run.created_at).desc(), col(Run.id).desc())
            return list(session.exec(query.limit(limit)).all())

    def counts(self) -> tuple[int, dict[str, int]]:
        """Clips recorded, and runs by status (every one: a scan of the history)."""
        with self.session() as session:
            clips = int(session.exec(select(func.count()).select_from(Clip)).one())
            by_status = {
                str(status): int(count)
                for status, count in session.exec(
                    select(Run.status, func.count()).group_by(Run.status)
                ).all()
            }
            return clips, by_status

    def active_run_counts(self) -> dict[str, int]:
        """Runs pending and running, by status, for /metrics: a range of the status
        index, so the cost follows the work in hand, never the finished history."""
        with self.session() as session:
            rows = session.exec(
                select(Run.status, func.count())
                .where(col(Run.status).in_(ACTIVE))
                .group_by(Run.status)
            ).all()
            return {str(status): int(count) for status, count in rows}

    def in_flight(self) -> dict[tuple[str | None, str], int]:
        """Attempts not finished, by placement (None: not placed yet) and accelerator."""
        with self.session() as session:
            rows = session.exec(
                select(StageAttempt.placement, StageAttempt.accelerator, func.count())
                .where(col(StageAttempt.state).in_((AttemptState.PENDING, AttemptState.RUNNING)))
                .group_by(StageAttempt.placement, StageAttempt.accelerator)
            ).all()
            return {(placement, accelerator): int(n) for placement, accelerator, n in rows}

    def newest_discovery(self) -> datetime | None:
        """When the newest clip was recorded: the watcher's lag, for /metrics."""
        with self.session() as session:
            return session.exec(select(func.max(Clip.discovered_at))).one()

    def count_rejected(self) -> int:
        with self.session() as session:
            return int(session.exec(select(func.count()).select_from(RejectedObject)).one())

    def tenant_run(self, run_id: str, tenant: str | None) -> tuple[Run, Clip] | None:
        """A run and its clip, if it is ``tenant``'s (any tenant's when None)."""
        with self.session() as session:
            query = (
                select(Run, Clip)
                .join(Clip, col(Clip.id) == col(Run.clip_id))
                .where(col(Run.id) == run_id)
            )
            if tenant is not None:
                query = query.where(col(Clip.tenant) == tenant)
            return session.exec(query).first()
