"""Where things live in S3, and what a clip is. Pure string work."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

# A tenant or camera name: one key segment, safe in URLs, labels and paths.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")

# <tenant>/<camera>/<YYYY>/<MM>/<DD>/<HHMMSS>[-<n>].<ext>
_TIMED_KEY = re.compile(
    r"^(?P<tenant>[^/]+)/(?P<camera>[^/]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/"
    r"(?P<hms>\d{6})(?:-[^/]*)?\.[^/]+$"
)


# camflow's own outputs: <tenant>/<camera>/<clip-id>/<pipeline>/... in the results bucket.
_OUTPUT_KEY = re.compile(r"^[^/]+/[^/]+/c-[0-9a-f]{16}/")


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def clip_id(bucket: str, key: str, etag: str) -> str:
    """A clip is bucket + key + ETag: the same upload seen twice is one clip, new
    content under the same key is a new clip."""
    return "c-" + _short_hash(bucket, key, etag.strip('"'))


def run_id(clip: str, pipeline: str) -> str:
    return "r-" + _short_hash(clip, pipeline)


def attempt_id(run: str, stage: str, attempt: int) -> str:
    return f"{run}-{stage}-{attempt}"


@dataclass(frozen=True)
class UploadKey:
    tenant: str
    camera: str
    recorded_at: datetime | None  # from the key's date path, when it follows the layout


def parse_upload_key(key: str) -> UploadKey | None:
    """Tenant and camera of an upload, or None when the key has no camera prefix."""
    parts = key.split("/")
    if len(parts) < 3 or not parts[0] or not parts[1]:
        return None
    recorded_at = None
    match = _TIMED_KEY.match(key)
    if match:
        try:
            recorded_at = datetime.strptime(
                f"{match['y']}{match['m']}{match['d']}{match['hms']}", "%Y%m%d%H%M%S"
            ).replace(tzinfo=UTC)
        except ValueError:
            recorded_at = None
    return UploadKey(parts[0], parts[1], recorded_at)


def is_output_key(key: str) -> bool:
    """Whether ``key`` is where camflow writes a clip's work and results; when the
    results bucket is also the ingest bucket, these must never become clips (an
    anonymized ``.mp4`` would otherwise be analysed again, forever)."""
    return bool(_OUTPUT_KEY.match(key))


def upload_key(tenant: str, camera: str, at: datetime, suffix: str = ".mp4", n: int = 0) -> str:
    stamp = at.astimezone(UTC)
    tail = f"-{n}" if n else ""
    return f"{tenant}/{camera}/{stamp:%Y/%m/%d/%H%M%S}{tail}{suffix}"


def stage_prefix(tenant: str, camera: str, clip: str, pipeline: str, stage: str) -> str:
    return f"{tenant}/{camera}/{clip}/{pipeline}/{stage}/"


def result_key(tenant: str, camera: str, clip: str, pipeline: str) -> str:
    return f"{tenant}/{camera}/{clip}/{pipeline}/result.json"
