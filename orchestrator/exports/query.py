"""The runs an export covers, read from the store a page at a time (keyset paging on
when the camera recorded the clip), and each run's result one at a time: memory holds
one page of run ids and one result, however many runs the range has.

The result is the store's copy of result.json (what ``/v1/clips/{id}/results`` answers
too), written in the same step as the S3 object, so an export costs one short query
per run rather than one S3 GET."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, model_validator
from sqlalchemy import and_, func, or_
from sqlalchemy import select as sa_select
from sqlmodel import col, select

from orchestrator.domain.layout import NAME
from orchestrator.errors import CamflowError
from orchestrator.exports.lines import ExportFormat, RunSource, header, render_run
from orchestrator.logs import about
from orchestrator.store import Clip, Run, Store
from orchestrator.store.models import RunStatus, as_utc

log = logging.getLogger("camflow.exports")

#: Runs per page of the keyset walk: ids and times only, so a page is a few KB.
PAGE_SIZE = 500


class ExportError(CamflowError):
    """What an export was asked for cannot be exported (a bad camera name, a range
    that ends before it starts): the message says what to send instead."""


class ExportQuery(BaseModel):
    """One tenant's camera over [since, until): clips by when the camera recorded them
    (the key's date, else the upload's time), so a backlog uploaded a week late lands
    on the days it was filmed. Only succeeded runs: a failed run published nothing."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    camera: str
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    pipeline: str | None = None

    @model_validator(mode="after")
    def _sensible(self) -> ExportQuery:
        if not NAME.fullmatch(self.camera):
            raise ExportError(
                f"{self.camera!r} is not a camera name: 1-63 letters, digits, '-' or '_'"
            )
        if self.since and self.until and self.since >= self.until:
            raise ExportError(
                f"since ({self.since.isoformat()}) is not before until "
                f"({self.until.isoformat()}): the range is [since, until)"
            )
        return self


def _filtered(statement: Any, query: ExportQuery) -> Any:
    statement = statement.join(Clip, col(Clip.id) == col(Run.clip_id)).where(
        col(Clip.tenant) == query.tenant,
        col(Clip.camera) == query.camera,
        col(Clip.recorded_at).is_not(None),
        col(Run.status) == RunStatus.SUCCEEDED,
    )
    if query.since is not None:
        statement = statement.where(col(Clip.recorded_at) >= as_utc(query.since))
    if query.until is not None:
        statement = statement.where(col(Clip.recorded_at) < as_utc(query.until))
    if query.pipeline:
        statement = statement.where(col(Run.pipeline) == query.pipeline)
    return statement


def camera_known(store: Store, tenant: str, camera: str) -> bool:
    """The tenant has a clip from this camera (another tenant's camera of the same
    name does not count)."""
    with store.session() as session:
        found = session.exec(
            select(Clip.id).where(col(Clip.tenant) == tenant, col(Clip.camera) == camera).limit(1)
        ).first()
    return found is not None


def count_runs(store: Store, query: ExportQuery) -> int:
    """How many runs the export covers (for a progress bar)."""
    with store.session() as session:
        return int(session.exec(_filtered(select(func.count()).select_from(Run), query)).one())


def sources(store: Store, query: ExportQuery, page_size: int = PAGE_SIZE) -> Iterator[RunSource]:
    """The runs of the range, oldest recording first, a page of ids per query. Each page
    continues strictly after the last (recorded_at, run id) seen, so a run recorded
    while the export goes is neither seen twice nor makes another be skipped."""
    after: tuple[datetime, str] | None = None
    while True:
        statement = _filtered(
            # SQLAlchemy's select: sqlmodel's types it for at most four columns.
            sa_select(
                col(Run.id), col(Run.pipeline), col(Clip.id), col(Clip.key), col(Clip.recorded_at)
            ).select_from(Run),
            query,
        )
        if after is not None:
            at, run_id = after
            statement = statement.where(
                or_(
                    col(Clip.recorded_at) > at,
                    and_(col(Clip.recorded_at) == at, col(Run.id) > run_id),
                )
            )
        statement = statement.order_by(col(Clip.recorded_at), col(Run.id)).limit(page_size)
        with store.session() as session:
            page = session.exec(statement).all()
        for run_id, pipeline, clip_id, key, recorded_at in page:
            yield RunSource(query.camera, clip_id, key, run_id, pipeline, as_utc(recorded_at))
        if len(page) < page_size:
            return
        # The value as the database handed it back: compared as it is stored.
        after = (page[-1][4], page[-1][0])


def result_of(store: Store, run_id: str) -> dict[str, Any]:
    with store.session() as session:
        result = session.exec(select(Run.result).where(col(Run.id) == run_id)).first()
    return result if isinstance(result, dict) else {}


def export_lines(
    store: Store,
    query: ExportQuery,
    fmt: ExportFormat,
    on_run: Callable[[], None] | None = None,
    page_size: int = PAGE_SIZE,
) -> Iterator[str]:
    """The whole export as text chunks: the header (CSV), then one chunk per run that
    has lines; ``on_run`` is called after each run (a progress bar)."""
    if fmt == "csv":
        yield header(fmt)
    for source in sources(store, query, page_size):
        rendered = render_run(source, result_of(store, source.run_id), fmt)
        if on_run is not None:
            on_run()
        if rendered.skipped:
            log.warning(
                "export: clip %s run %s: %d frame(s) not in the results format left out",
                source.clip_id,
                source.run_id,
                rendered.skipped,
                extra=about(source.clip_id, source.run_id),
            )
        if rendered.text:
            yield rendered.text
