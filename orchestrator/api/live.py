"""Dashboard pages that keep themselves current from an event stream, not a meta
refresh that reloads the whole page every few seconds whether or not anything changed.

``/dashboard/events`` is the signed-in person's stream (the browser's EventSource sends
the session cookie; it cannot send the API's ``Authorization`` header): the
``run.finished`` events of their tenant's runs (every tenant's for an admin) as
``/v1/events`` has them, and an ``activity`` event whenever what the page shows has
moved on (a new run, an attempt started or finished). ``/dashboard/live.js`` listens
and, at each event, fetches the page again and swaps its live part in place; only if
the stream cannot be had at all does it poll instead.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse, format_sse_event
from sqlmodel import col, func, select

from orchestrator.operations import attempt_counts
from orchestrator.store import ApiKey, Store
from orchestrator.store.models import Clip, Role, Run, StageAttempt

STREAM = "/dashboard/events"
#: Finished runs read per query; the stream reads until it has them all.
PAGE = 200
OPENED = format_sse_event(comment="camflow dashboard events")
PING = format_sse_event(comment="ping")

SCRIPT = """// camflow dashboard: keeps this page current from its event stream.
(function () {
  "use strict";
  var script = document.currentScript;
  var stream = script && script.dataset.stream;
  if (!stream || !window.EventSource || !window.fetch) return;
  var busy = false, again = false, timer = null, poll = null;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, {credentials: "same-origin", cache: "no-store"})
      .then(function (response) {
        // Signed out meanwhile: the page itself says what to do.
        if (response.redirected || !response.ok) { location.reload(); return null; }
        return response.text();
      })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (part) {
          var next = fresh.getElementById(part.id);
          if (next) part.replaceWith(next);
        });
        document.documentElement.dataset.updated = String(Date.now());
        document.dispatchEvent(new CustomEvent("camflow:updated"));
      })
      .catch(function () {})
      .finally(function () {
        busy = false;
        if (again) { again = false; soon(); }
      });
  }
  // A burst of events (a batch of clips finishing) makes one fetch.
  function soon() { clearTimeout(timer); timer = setTimeout(refresh, 200); }
  var source = new EventSource(stream);
  source.addEventListener("run.finished", soon);
  source.addEventListener("activity", soon);
  source.addEventListener("key.revoked", function () { source.close(); location.reload(); });
  source.addEventListener("open", function () {
    document.documentElement.dataset.stream = "open";
  });
  source.onerror = function () {
    // EventSource reconnects by itself after a dropped connection; a stream refused
    // outright is CLOSED for good, and only then does the page poll.
    if (source.readyState === EventSource.CLOSED && poll === null) {
      document.documentElement.dataset.stream = "polling";
      poll = setInterval(refresh, 5000);
    }
  };
})();
"""


def finished_after(
    store: Store, tenant: str | None, position: int, limit: int = PAGE
) -> list[tuple[str, str, int]]:
    """(run id, status, sequence number) of the runs that finished after ``position``,
    in that order: a tenant's, or every tenant's for None (the unique index on
    ``finished_seq``)."""
    query = select(Run.id, Run.status, Run.finished_seq).where(col(Run.finished_seq) > position)
    if tenant is not None:
        query = query.join(Clip, col(Clip.id) == col(Run.clip_id)).where(col(Clip.tenant) == tenant)
    with store.session() as session:
        rows = session.exec(query.order_by(col(Run.finished_seq)).limit(limit)).all()
    return [(run_id, str(status), int(seq or 0)) for run_id, status, seq in rows]


def last_finished(store: Store) -> int:
    with store.session() as session:
        return int(session.exec(select(func.max(Run.finished_seq))).one() or 0)


def watched_run(store: Store, key: ApiKey, run_id: str | None) -> str | None:
    """The run whose progress a page follows, if the key may see it: another tenant's
    run is followed as one that does not exist (not at all), so that its progress
    cannot be learnt from the stream."""
    if run_id is None:
        return None
    tenant = None if key.role == Role.ADMIN else key.tenant
    return run_id if store.tenant_run(run_id, tenant) is not None else None


def activity(store: Store, tenant: str | None, run_id: str | None, overview: bool) -> Any:
    """A fingerprint of what a page shows, cheap to read: it changes when a run is
    made, and when an attempt of the watched run (or, for the operations page, any
    attempt) is recorded, starts or ends."""
    with store.session() as session:
        newest = select(Run.id).order_by(col(Run.created_at).desc(), col(Run.id).desc())
        if tenant is not None:
            newest = newest.join(Clip, col(Clip.id) == col(Run.clip_id)).where(
                col(Clip.tenant) == tenant
            )
        stamp: list[Any] = [session.exec(newest.limit(1)).first()]
        if run_id is not None:
            attempts = session.exec(
                select(StageAttempt.id, StageAttempt.state, StageAttempt.started_at).where(
                    col(StageAttempt.run_id) == run_id
                )
            ).all()
            stamp.append(sorted((a, str(s), str(t)) for a, s, t in attempts))
    if overview:
        stamp.append(sorted(attempt_counts(store), key=str))
    return stamp


def _event(name: str, data: dict[str, Any], ident: str | None = None) -> bytes:
    return format_sse_event(data_str=json.dumps(data), event=name, id=ident)


async def dashboard_events(
    store: Store,
    key: ApiKey,
    still_signed_in: Callable[[], ApiKey | None],
    run_id: str | None,
    overview: bool,
    poll_seconds: float,
    keepalive_seconds: float,
) -> AsyncIterator[bytes]:
    """The person's events from now on, until their sign-in ends (signed out, expired,
    or its key revoked: ``still_signed_in`` answers None); their going away ends it from
    outside."""
    tenant = None if key.role == Role.ADMIN else key.tenant
    position = await asyncio.to_thread(last_finished, store)
    seen = await asyncio.to_thread(activity, store, tenant, run_id, overview)
    yield OPENED
    ping_due = time.monotonic() + keepalive_seconds
    while True:
        poll_due = time.monotonic() + poll_seconds
        while (now := time.monotonic()) < poll_due:
            if now >= ping_due:
                yield PING
                ping_due = now + keepalive_seconds
            await asyncio.sleep(min(poll_due, ping_due) - now)
        if await asyncio.to_thread(still_signed_in) is None:
            yield _event(
                "key.revoked",
                {"detail": "this sign-in ended (signed out, expired or its key revoked)"},
            )
            return
        while True:
            found = await asyncio.to_thread(finished_after, store, tenant, position)
            for finished_id, status, seq in found:
                position = seq
                yield _event("run.finished", {"id": finished_id, "status": status}, str(seq))
                ping_due = time.monotonic() + keepalive_seconds
            if len(found) < PAGE:
                break
        now_seen = await asyncio.to_thread(activity, store, tenant, run_id, overview)
        if now_seen != seen:
            seen = now_seen
            yield _event("activity", {})
            ping_due = time.monotonic() + keepalive_seconds


def router(
    store: Store,
    signed_in: Callable[[Request], ApiKey | None],
    poll_seconds: float = 1.0,
    keepalive_seconds: float = 15.0,
) -> APIRouter:
    """``/events`` and ``/live.js``, for inclusion under ``/dashboard``."""
    pages = APIRouter(include_in_schema=False)

    @pages.get("/live.js")
    def script() -> Response:
        return Response(
            SCRIPT,
            media_type="text/javascript",
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    @pages.get("/events", response_model=None)
    async def events(
        request: Request,
        run: Annotated[str | None, Query(max_length=64, pattern=r"^r-[0-9a-f]{1,32}$")] = None,
        operations: bool = False,
    ) -> Response | EventSourceResponse:
        key = await asyncio.to_thread(signed_in, request)
        # Not a redirect: EventSource would follow it to the sign-in page and fail on
        # its content type; a 401 makes it give up, and the page fall back to polling.
        if key is None:
            return Response("sign in first", status_code=401, media_type="text/plain")
        run = await asyncio.to_thread(watched_run, store, key, run)
        stream = dashboard_events(
            store,
            key,
            lambda: signed_in(request),
            run,
            operations and key.role == Role.ADMIN,
            poll_seconds,
            keepalive_seconds,
        )
        return EventSourceResponse(stream)

    return pages
