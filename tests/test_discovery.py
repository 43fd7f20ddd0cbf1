"""What an object is to camflow, and what a notification says: pure, no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from orchestrator.domain.discovery import (
    BadNotification,
    FoundObject,
    Verdict,
    classify,
    parse_notification,
)
from orchestrator.domain.pipeline import Trigger

TRIGGERS = [Trigger(prefix="", suffix=".mp4")]


def _judge(key: str, bucket: str = "in", results: str = "out") -> Verdict:
    obj = FoundObject(bucket, key, "e", 1, None)
    return classify(obj, TRIGGERS, "in", results).verdict


@pytest.mark.parametrize(
    "key",
    [
        "acme/door/2026/05/04/030201.mp4",  # on time
        "acme/door/2019/01/01/000000.mp4",  # a backlog years old
        "acme/door/2031/12/31/235959.mp4",  # a clock years ahead
        "acme/door/export 7.MP4",  # outside the date layout, any case
        "acme/door/2026/13/45/999999.mp4",  # an impossible date: still a clip
    ],
)
def test_a_key_s_date_never_decides(key: str) -> None:
    assert _judge(key) == Verdict.CLIP


def test_what_is_not_a_clip() -> None:
    assert _judge("acme/door/README.txt") == Verdict.IGNORE
    assert _judge("acme/door/2026/") == Verdict.IGNORE
    assert _judge("loose.mp4") == Verdict.REJECT
    assert _judge("acme/loose.mp4") == Verdict.REJECT
    # camflow's own outputs, where the results bucket is the ingest bucket
    own = "acme/door/c-0123456789abcdef/privacy/anonymize/anonymized.mp4"
    assert _judge(own, bucket="in", results="in") == Verdict.IGNORE
    assert _judge(own, bucket="in", results="out") == Verdict.CLIP


def _record(key: str, name: str = "ObjectCreated:Put") -> dict:  # type: ignore[type-arg]
    return {
        "eventName": name,
        "eventTime": "2026-05-04T03:02:01.000Z",
        "s3": {"bucket": {"name": "in"}, "object": {"key": key, "size": 9, "eTag": "abc"}},
    }


def test_notifications_decode_keys_as_s3_encodes_them() -> None:
    body = json.dumps(
        {
            "Records": [
                _record("acme/door/2026/05/04/030201+front+gate.mp4"),
                _record("acme/t%C3%BCr/caf%C3%A9%2B1.mp4"),
                _record("acme/door/gone.mp4", "ObjectRemoved:Delete"),
            ]
        }
    )
    found = parse_notification(body)
    assert [f.key for f in found] == [
        "acme/door/2026/05/04/030201 front gate.mp4",
        "acme/tür/café+1.mp4",
    ]
    assert found[0].last_modified == datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
    assert (found[0].etag, found[0].size) == ("abc", 9)


def test_the_test_event_and_garbage() -> None:
    assert parse_notification(json.dumps({"Event": "s3:TestEvent", "Bucket": "in"})) == []
    for bad in ["not json", "[1, 2]", json.dumps({"hello": 1}), json.dumps({"Records": [{}]})]:
        with pytest.raises(BadNotification):
            parse_notification(bad)
