"""Page cursors: opaque to clients, so whatever a client sends in their place is a
position this API handed out, none (the first page) or a 400; never a 500."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.api.cursors import CURSOR_PATTERN, page_after, page_cursor
from orchestrator.api.problems import Problem

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)
#: Base64 of JSON, some of it shaped like a real position.
encoded_json = st.builds(
    lambda value: base64.urlsafe_b64encode(json.dumps(value).encode()).decode(),
    json_values
    | st.tuples(st.datetimes().map(datetime.isoformat), st.text())
    | st.tuples(st.datetimes(timezones=st.timezones()).map(datetime.isoformat), json_values),
)


@given(st.from_regex(CURSOR_PATTERN, fullmatch=True) | encoded_json)
def test_anything_in_the_place_of_a_cursor_is_a_position_or_a_400(cursor: str) -> None:
    try:
        position = page_after(cursor)
    except Problem as refused:
        assert refused.status_code == 400
        return
    if not cursor:  # none: the first page
        assert position is None
    else:
        assert position is not None
        at, ident = position
        assert at.tzinfo == UTC and isinstance(ident, str)


@given(st.datetimes(timezones=st.just(UTC)), st.text())
def test_a_cursor_handed_out_reads_back_as_its_position(at: datetime, ident: str) -> None:
    cursor = page_cursor(at, ident)
    assert re.fullmatch(CURSOR_PATTERN, cursor)
    assert page_after(cursor) == (at, ident)
