"""Files that readers in other processes poll: replaced whole, never written in place."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: str | bytes, mode: int = 0o666) -> None:
    """Replaces ``path`` whole, so a reader sees the old content or the new, never part
    of either. The temporary name is unique per call: writers in two threads (or two
    processes) must not write into each other's file before it is published. The data
    reaches the disk before the rename, so a crash cannot publish an empty file."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # Created with its mode (less the umask), never readable by others in between.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with open(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_private(path: Path, data: str | bytes) -> None:
    """``write_atomic`` for the owner's eyes only (what carries credentials)."""
    write_atomic(path, data, mode=0o600)


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(payload))
