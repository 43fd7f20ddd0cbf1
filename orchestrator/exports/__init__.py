"""Bulk export of a camera's detections over a time range, streamed: a line per
detection (JSONL or CSV), read run by run, so that memory stays flat however long the
range. ``query`` reads the store; ``lines`` turns one result into lines, purely."""

from orchestrator.exports.lines import FORMATS, MEDIA_TYPES, ExportFormat, file_name
from orchestrator.exports.query import ExportQuery, camera_known, count_runs, export_lines

__all__ = [
    "FORMATS",
    "MEDIA_TYPES",
    "ExportFormat",
    "ExportQuery",
    "camera_known",
    "count_runs",
    "export_lines",
    "file_name",
]
