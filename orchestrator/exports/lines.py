"""One run's result as export lines: a line per detection, and one line with empty
detection columns for a frame where nothing was found, so that "looked, saw nothing"
stays apart from "never looked". Pure: the reading is ``query``'s."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.store.models import as_utc

ExportFormat = Literal["jsonl", "csv"]
FORMATS: tuple[ExportFormat, ...] = ("jsonl", "csv")
MEDIA_TYPES: dict[ExportFormat, str] = {
    # JSON Lines has no registered type; this is the one clients and proxies know.
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8; header=present",
}
#: The CSV header; a JSONL line has the same keys, with ``box`` as [x, y, w, h].
COLUMNS = (
    "time",
    "camera",
    "clip_id",
    "key",
    "run_id",
    "pipeline",
    "t",
    "label",
    "score",
    "x",
    "y",
    "w",
    "h",
)


#: A day: longer than any clip a camera uploads.
MAX_CLIP_SECONDS = 86_400.0


@dataclass(frozen=True)
class RunSource:
    """Where a run's lines come from: its clip, and when the camera recorded it."""

    camera: str
    clip_id: str
    key: str
    run_id: str
    pipeline: str
    recorded_at: datetime


class _Detection(BaseModel):
    # NaN or infinity is not JSON, nor a score: such a frame is skipped, not exported.
    model_config = ConfigDict(allow_inf_nan=False)

    label: str | None = None
    score: float | None = None
    box: tuple[float, float, float, float] | None = None


class _Frame(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    #: Seconds into the clip: a time past any clip would overflow the line's time.
    t: float = Field(ge=0, le=MAX_CLIP_SECONDS)
    detections: list[_Detection] = []


@dataclass(frozen=True)
class RenderedRun:
    text: str
    lines: int
    #: Frames whose shape is not the results format (a third-party stage's): left out.
    skipped: int


def header(fmt: ExportFormat) -> str:
    return _csv_line(COLUMNS) if fmt == "csv" else ""


def render_run(source: RunSource, result: dict[str, Any], fmt: ExportFormat) -> RenderedRun:
    """The lines of one run's ``result`` (result.json's ``frames``), in frame order."""
    out: list[str] = []
    skipped = 0
    frames = result.get("frames")
    for raw in frames if isinstance(frames, list) else []:
        try:
            frame = _Frame.model_validate(raw)
        except ValidationError:
            skipped += 1
            continue
        at = _instant(source.recorded_at + timedelta(seconds=frame.t))
        found: list[_Detection | None] = [*frame.detections] or [None]
        for detection in found:
            row = {
                "time": at,
                "camera": source.camera,
                "clip_id": source.clip_id,
                "key": source.key,
                "run_id": source.run_id,
                "pipeline": source.pipeline,
                "t": frame.t,
                "label": detection.label if detection else None,
                "score": detection.score if detection else None,
                "box": list(detection.box) if detection and detection.box else None,
            }
            out.append(_json_line(row) if fmt == "jsonl" else _csv_row(row))
    return RenderedRun("".join(out), len(out), skipped)


def file_name(
    camera: str, since: datetime | None, until: datetime | None, fmt: ExportFormat
) -> str:
    """``door_2026-03-01T000000Z_2026-04-01T000000Z.csv``: safe in a Content-Disposition
    (a camera name is letters, digits, '-' and '_')."""

    def stamp(at: datetime | None) -> str | None:
        return as_utc(at).strftime("%Y-%m-%dT%H%M%SZ") if at else None

    return f"{camera}_{stamp(since) or 'start'}_{stamp(until) or 'now'}.{fmt}"


def _instant(at: datetime) -> str:
    # Milliseconds always, so that every time has the same width (CSV sorts as text).
    return as_utc(at).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


def _csv_row(row: dict[str, Any]) -> str:
    box = row["box"] or [None] * 4
    cells = [row[c] for c in COLUMNS[:9]] + list(box)
    return _csv_line(["" if cell is None else _inert(cell) for cell in cells])


#: What a spreadsheet reads as the start of a formula (OWASP's CSV injection list).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _inert(cell: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (a label a stage made up, say)
    gets a leading apostrophe; numbers stay numbers."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_START):
        return "'" + cell
    return cell


def _csv_line(cells: Any) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)  # quoting and CRLF as RFC 4180 has them
    return buffer.getvalue()
