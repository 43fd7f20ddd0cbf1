"""What an S3 object is to camflow, and what an S3 event notification says. Pure.

Discovery has two paths that meet here: S3 -> SQS event notifications (the fast path)
and the reconciliation sweep that lists the buckets (the safety net). Both hand every
object they see to :func:`classify`, so a key is judged the same way whichever path
found it, and nothing about a key's date decides whether it is looked at.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_plus

from orchestrator.domain.layout import UploadKey, is_output_key, parse_upload_key
from orchestrator.domain.pipeline import Trigger


@dataclass(frozen=True)
class FoundObject:
    """One object as a listing or a notification describes it."""

    bucket: str
    key: str
    etag: str
    size: int
    #: When S3 stored it (a listing's LastModified, a notification's eventTime).
    last_modified: datetime | None


class Verdict(StrEnum):
    CLIP = "clip"
    #: Not for camflow: no trigger wants it, a folder marker, or camflow's own output.
    IGNORE = "ignore"
    #: A trigger wants it, but it cannot be a clip: reported, never silently dropped.
    REJECT = "reject"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    upload: UploadKey | None = None
    reason: str | None = None


def classify(
    obj: FoundObject, triggers: Sequence[Trigger], default_bucket: str, results_bucket: str
) -> Judgement:
    """Whether ``obj`` is a clip. Its key's date plays no part: a backlog dated last
    week, a key from a clock that jumped to 2031 and a key outside the date layout are
    all clips if a trigger wants them (the layout only names tenant and camera)."""
    if obj.key.endswith("/"):
        return Judgement(Verdict.IGNORE)
    if obj.bucket == results_bucket and is_output_key(obj.key):
        return Judgement(Verdict.IGNORE)
    if not any(t.matches(obj.bucket, obj.key, default_bucket) for t in triggers):
        return Judgement(Verdict.IGNORE)
    upload = parse_upload_key(obj.key)
    if upload is None:
        return Judgement(
            Verdict.REJECT,
            reason=(
                f"s3://{obj.bucket}/{obj.key} matches a pipeline's trigger but is not under "
                "<tenant>/<camera>/: camflow cannot tell whose clip it is; upload it as "
                "<tenant>/<camera>/<YYYY>/<MM>/<DD>/<HHMMSS>.mp4"
            ),
        )
    return Judgement(Verdict.CLIP, upload=upload)


class BadNotification(ValueError):
    """A queue message that is not an S3 event notification."""


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_notification(body: str) -> list[FoundObject]:
    """The objects an S3 event notification (as delivered to SQS) says were created.

    S3 sends one ``s3:TestEvent`` when notifications are configured (no records), and
    URL-encodes keys in the records (``+`` for a space, ``%XX`` for the rest). Records
    other than ``ObjectCreated:*`` (removals, restores) add nothing.
    """
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise BadNotification(f"not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise BadNotification("not a JSON object")
    if message.get("Event") == "s3:TestEvent":
        return []
    records = message.get("Records")
    if not isinstance(records, list):
        raise BadNotification("no Records list: not an S3 event notification")
    found = []
    for record in records:
        try:
            if not str(record["eventName"]).startswith("ObjectCreated:"):
                continue
            s3 = record["s3"]
            found.append(
                FoundObject(
                    bucket=str(s3["bucket"]["name"]),
                    key=unquote_plus(str(s3["object"]["key"])),
                    etag=str(s3["object"]["eTag"]).strip('"'),
                    size=int(s3["object"].get("size", 0)),
                    last_modified=_parse_time(record.get("eventTime")),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadNotification(f"a record lacks {exc}: not an S3 event record") from exc
    return found
