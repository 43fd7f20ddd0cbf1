"""The Store: every read and write of camflow's state, in short transactions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import event, func, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, create_engine, select

from orchestrator.errors import NotFound, StorageError
from orchestrator.store.models import (
    AlgorithmVersion,
    ApiKey,
    AttemptState,
    Channel,
    Checkpoint,
    Clip,
    Run,
    RunStatus,
    StageAttempt,
    utcnow,
)

ACTIVE = (RunStatus.PENDING, RunStatus.RUNNING)
Row = TypeVar("Row", StageAttempt, AlgorithmVersion)


@dataclass(frozen=True)
class RunWithAttempts:
    run: Run
    clip: Clip
    attempts: tuple[StageAttempt, ...]


def _before(at_column: Any, id_column: Any, cursor: tuple[datetime, str]) -> Any:
    """Keyset pagination, newest first: rows strictly after the cursor's (time, id)."""
    at, ident = cursor
    return or_(at_column < at, (at_column == at) & (id_column < ident))


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            # WAL lets the watcher write while the engine and the CLI read.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            from pathlib import Path

            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = _make_engine(url)
        SQLModel.metadata.create_all(self.engine)
        self._check_schema()

    def _check_schema(self) -> None:
        """create_all adds missing tables, not missing columns: say so plainly rather
        than fail later with an SQL error."""
        from sqlalchemy import inspect

        inspector = inspect(self.engine)
        for table in SQLModel.metadata.sorted_tables:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            missing = sorted(c.name for c in table.columns if c.name not in have)
            if missing:
                raise StorageError(
                    f"the store at {self.engine.url.render_as_string(hide_password=True)} was "
                    f"made by an older camflow: table {table.name} lacks {missing}. This "
                    "pre-release has no migrations: move the old store aside (or point "
                    "store.url elsewhere) to start a fresh one"
                )

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # --- watcher ----------------------------------------------------------------------

    def checkpoint(self, checkpoint_id: str) -> str | None:
        with self.session() as session:
            row = session.get(Checkpoint, checkpoint_id)
            return row.last_key if row else None

    def record_clips(
        self, clips: Sequence[Clip], checkpoint_id: str, last_key: str | None
    ) -> list[Clip]:
        """Adds the clips not seen before and moves the checkpoint, in one transaction:
        a crash leaves either both or neither, so no clip is skipped or doubled."""
        with self.session() as session:
            ids = [clip.id for clip in clips]
            known = set(
                session.exec(select(Clip.id).where(col(Clip.id).in_(ids))).all() if ids else []
            )
            new = [clip for clip in clips if clip.id not in known]
            session.add_all(new)
            if last_key is not None:
                row = session.get(Checkpoint, checkpoint_id)
                if row is None:
                    session.add(Checkpoint(id=checkpoint_id, last_key=last_key))
                elif last_key > row.last_key:
                    row.last_key, row.updated_at = last_key, utcnow()
                    session.add(row)
            session.commit()
            return new

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

    def plan(self, clip_id: str, runs: Iterable[Run]) -> list[Run]:
        """Creates the clip's runs (unless they exist) and marks it planned, atomically."""
        with self.session() as session:
            existing = set(session.exec(select(Run.pipeline).where(Run.clip_id == clip_id)).all())
            created = [run for run in runs if run.pipeline not in existing]
            session.add_all(created)
            session.exec(update(Clip).where(col(Clip.id) == clip_id).values(planned=True))
            session.commit()
            return created

    # --- engine -----------------------------------------------------------------------

    def active_runs(self, limit: int = 10_000) -> list[RunWithAttempts]:
        with self.session() as session:
            rows = session.exec(
                select(Run, Clip)
                .join(Clip, col(Clip.id) == col(Run.clip_id))
                .where(col(Run.status).in_(ACTIVE))
                .order_by(col(Run.created_at), col(Run.id))
                .limit(limit)
            ).all()
            run_ids = [run.id for run, _ in rows]
            attempts: dict[str, list[StageAttempt]] = {rid: [] for rid in run_ids}
            if run_ids:
                for attempt in session.exec(
                    select(StageAttempt)
                    .where(col(StageAttempt.run_id).in_(run_ids))
                    .order_by(col(StageAttempt.stage), col(StageAttempt.attempt))
                ).all():
                    attempts[attempt.run_id].append(attempt)
            return [RunWithAttempts(run, clip, tuple(attempts[run.id])) for run, clip in rows]

    def count_attempts(self, executor: str, accelerator: str | None = None) -> int:
        """Attempts handed to ``executor`` and not finished: its slots in use."""
        with self.session() as session:
            query = select(func.count()).where(
                col(StageAttempt.executor) == executor,
                col(StageAttempt.state).in_((AttemptState.PENDING, AttemptState.RUNNING)),
            )
            if accelerator:
                query = query.where(col(StageAttempt.accelerator) == accelerator)
            return int(session.exec(query).one())

    def _insert_or_get(self, row: Row) -> Row:
        """Inserts ``row``; if one with its key exists already, returns that one."""
        with self.session() as session:
            session.add(row)
            try:
                session.commit()
                return row
            except IntegrityError:
                session.rollback()
                existing = session.get(type(row), row.id)  # type: ignore[attr-defined]
                if existing is None:
                    raise
                return existing

    def add_attempt(self, attempt: StageAttempt) -> StageAttempt:
        """Inserts the attempt, or returns the one a crash-interrupted tick inserted (the
        unique key is run, stage, attempt number)."""
        return self._insert_or_get(attempt)

    def update_attempt(self, attempt_id: str, **values: Any) -> None:
        with self.session() as session:
            session.exec(
                update(StageAttempt).where(col(StageAttempt.id) == attempt_id).values(**values)
            )
            session.commit()

    def delete_attempt(self, attempt_id: str) -> None:
        """Withdraws an attempt no executor took, so the engine may decide afresh."""
        with self.session() as session:
            row = session.get(StageAttempt, attempt_id)
            if row is not None and row.state == AttemptState.PENDING:
                session.delete(row)
                session.commit()

    def mark_run_started(self, run_id: str, at: datetime) -> None:
        with self.session() as session:
            session.exec(
                update(Run)
                .where(col(Run.id) == run_id, col(Run.status) == RunStatus.PENDING)
                .values(status=RunStatus.RUNNING, started_at=at)
            )
            session.commit()

    def finish_run(
        self,
        run_id: str,
        status: RunStatus,
        error: str | None,
        result: dict[str, Any] | None,
        result_uri: str | None,
        at: datetime,
    ) -> bool:
        """Moves an active run to its terminal status exactly once; False if it was
        already finished (a replayed tick after a crash)."""
        with self.session() as session:
            changed = session.exec(
                update(Run)
                .where(col(Run.id) == run_id, col(Run.status).in_(ACTIVE))
                .values(
                    status=status,
                    error=error,
                    result=result,
                    result_uri=result_uri,
                    finished_at=at,
                )
            )
            session.commit()
            return bool(changed.rowcount)

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
            return list(
                session.exec(
                    select(StageAttempt)
                    .where(StageAttempt.run_id == run_id)
                    .order_by(col(StageAttempt.created_at), col(StageAttempt.attempt))
                ).all()
            )

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

    def registry_stamp(self) -> tuple[int, datetime | None, datetime | None]:
        """Changes whenever a version is registered or promoted: cheap to poll."""
        with self.session() as session:
            count, registered, promoted = session.exec(
                select(
                    func.count(),
                    func.max(AlgorithmVersion.registered_at),
                    func.max(AlgorithmVersion.promoted_at),
                )
            ).one()
            return int(count), registered, promoted

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
        """Clips discovered, and runs by status: for /metrics."""
        with self.session() as session:
            clips = int(session.exec(select(func.count()).select_from(Clip)).one())
            by_status = {
                str(status): int(count)
                for status, count in session.exec(
                    select(Run.status, func.count()).group_by(Run.status)
                ).all()
            }
            return clips, by_status

    def in_flight(self) -> dict[tuple[str | None, str], int]:
        with self.session() as session:
            rows = session.exec(
                select(StageAttempt.placement, StageAttempt.accelerator, func.count())
                .where(col(StageAttempt.state).in_((AttemptState.PENDING, AttemptState.RUNNING)))
                .group_by(StageAttempt.placement, StageAttempt.accelerator)
            ).all()
            return {(placement, accelerator): int(n) for placement, accelerator, n in rows}

    def recent_durations(self, limit: int = 1000) -> dict[str, list[float]]:
        with self.session() as session:
            rows = session.exec(
                select(StageAttempt.stage, StageAttempt.started_at, StageAttempt.finished_at)
                .where(
                    col(StageAttempt.finished_at).is_not(None),
                    col(StageAttempt.started_at).is_not(None),
                )
                .order_by(col(StageAttempt.finished_at).desc())
                .limit(limit)
            ).all()
        found: dict[str, list[float]] = {}
        for stage, started, finished in rows:
            found.setdefault(stage, []).append((finished - started).total_seconds())
        return found

    def newest_checkpoint(self) -> datetime | None:
        with self.session() as session:
            return session.exec(select(func.max(Checkpoint.updated_at))).one()

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
