"""Log lines for log pipelines: one JSON object per line (``log_format: json``).

What happened to a clip is logged with ``extra=about(...)``: the clip, run, stage and
attempt it concerns become fields of their own, so a pipeline filters on them rather
than on words in the message. The text format shows the same lines as before.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

#: The fields a line about a clip may carry, in the order they are written.
CLIP_FIELDS = ("clip", "run", "stage", "attempt")


def about(
    clip: str | None = None,
    run: str | None = None,
    stage: str | None = None,
    attempt: int | None = None,
) -> dict[str, Any]:
    """``extra=`` for a log call about a clip: only what is known, so that a line
    about a whole run carries no ``stage: null``."""
    given = {"clip": clip, "run": run, "stage": stage, "attempt": attempt}
    return {name: value for name, value in given.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (RFC 3339, UTC), ``level``, ``logger``,
    ``message``, the clip fields the record carries, and ``exception`` (the formatted
    traceback) when there is one. Never raises: a value JSON cannot hold is written as
    its ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CLIP_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # One line whatever the message holds: json.dumps escapes newlines.
        return json.dumps(line, default=str, ensure_ascii=False)
