"""The event stream: a tenant's finished runs as server-sent events, in the order they
finished, each with its sequence number as ``id`` so that a client resumes exactly
where it left off; with keep-alive comments so that proxies keep an idle stream open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import NamedTuple

from fastapi.sse import ServerSentEvent
from pydantic import BaseModel

from orchestrator.api.cursors import EVENT_ID_PATTERN
from orchestrator.api.problems import COMPONENTS
from orchestrator.api.schemas import KeyRevoked, Run
from orchestrator.store import ApiKey, Store

#: Finished runs read per query; the stream reads until it has them all.
PAGE = 200
OPENED = ServerSentEvent(comment="camflow events")
PING = ServerSentEvent(comment="ping")
#: What the document says each event's `data` is, by event name.
EVENT_DATA: dict[str, type[BaseModel]] = {"run.finished": Run, "key.revoked": KeyRevoked}
#: The 200 of /v1/events in the OpenAPI document: FastAPI declares an event's fields,
#: this adds which events there are and what their `data` holds.
EVENT_STREAM = {
    "content": {
        "text/event-stream": {
            "itemSchema": {
                "required": ["event", "data"],
                "properties": {
                    "event": {"type": "string", "enum": list(EVENT_DATA)},
                    "id": {"type": "string", "pattern": EVENT_ID_PATTERN},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {
                            "oneOf": [
                                {"$ref": COMPONENTS.format(model=model.__name__)}
                                for model in EVENT_DATA.values()
                            ]
                        },
                    },
                },
            }
        }
    }
}


class StreamStart(NamedTuple):
    """Who listens, and from where: the events after sequence number ``position`` (on a
    first connection with ``since``, those of runs that finished at or after it)."""

    key: ApiKey
    position: int
    since: datetime | None


async def finished_runs(
    store: Store, start: StreamStart, poll_seconds: float, keepalive_seconds: float
) -> AsyncIterator[ServerSentEvent]:
    """The events from ``start`` on, forever; until the key is revoked. The client going
    away ends it from outside: the response stops and cancels this generator."""
    key, position, since = start
    # Sent at once, so that the client sees the stream open before any run finishes.
    yield OPENED
    ping_due = time.monotonic() + keepalive_seconds
    while True:
        # Checked at every poll, so that revoking a key also ends its streams.
        live = await asyncio.to_thread(store.api_key, key.id)
        if live is None or live.revoked_at is not None:
            gone = KeyRevoked(detail="this API key was revoked: the stream ends here")
            yield ServerSentEvent(event="key.revoked", data=gone)
            return
        while True:  # every page that is there now, not just the first
            found = await asyncio.to_thread(
                store.tenant_finished_runs, key.tenant, position, PAGE, since
            )
            for run, _clip in found:
                if run.finished_seq is None:
                    continue
                position = run.finished_seq
                yield ServerSentEvent(id=str(position), event="run.finished", data=Run.of(run))
                ping_due = time.monotonic() + keepalive_seconds
            if len(found) < PAGE:
                break
        # Idle until the next poll, with a ping whenever nothing was sent for a while:
        # proxies drop connections that stay silent.
        poll_due = time.monotonic() + poll_seconds
        while (now := time.monotonic()) < poll_due:
            if now >= ping_due:
                yield PING
                ping_due = now + keepalive_seconds
            await asyncio.sleep(min(poll_due, ping_due) - now)
