"""Where a client left off: the opaque cursor of a listing's pages and the sequence
number an event stream resumes after. Both are read strictly: anything this API did not
hand out is a 400 that says so, never a 500 nor a page from somewhere else."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime

from pydantic import AwareDatetime, TypeAdapter

from orchestrator.api.problems import Problem
from orchestrator.store.models import as_utc, iso

#: The alphabet of the cursors handed out (URL-safe base64), and a bound well above
#: their length, so that the OpenAPI document can say what a cursor looks like.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]*={0,2}$"
CURSOR_MAX_LENGTH = 1024
#: Event ids are the store's finished-run sequence numbers; an empty Last-Event-ID is
#: no id at all (EventSource sends none before its first event).
EVENT_ID_PATTERN = r"^[0-9]{1,18}$"
LAST_EVENT_ID_PATTERN = r"^[0-9]{0,18}$"
MAX_EVENT_ID = 10**18 - 1

_position = TypeAdapter(tuple[AwareDatetime, str])


def page_cursor(at: datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([iso(at), ident]).encode()).decode()


def page_after(cursor: str | None) -> tuple[datetime, str] | None:
    """The (time, id) a page continues after; None for the first page."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii"))
        at, ident = _position.validate_json(raw)
    except ValueError:  # bad base64, bad JSON and a bad position alike
        raise Problem(400, "the cursor is not one this API handed out: use `next` as is") from None
    try:
        return as_utc(at), ident
    except OverflowError:  # a time that exists in its own offset but not in UTC
        raise Problem(400, "the cursor is not one this API handed out: use `next` as is") from None


def event_after(text: str) -> int:
    """Where a reconnecting client left off: the ``id`` of the last event it got."""
    if not re.fullmatch(EVENT_ID_PATTERN, text):
        raise Problem(
            400, "Last-Event-ID must be the id of an event this stream sent (a whole number)"
        )
    return int(text)
