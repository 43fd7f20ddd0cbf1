"""Which of a result's artifacts the API may sign: pure.

A result.json is written by the pipeline's own stages, and a stage may be any author's
code; so the URIs it names are claims, not facts. A presigned GET is our credential
lent out for 15 minutes: it is made only for objects under that run's own folder in the
results bucket (``<results>/<tenant>/<camera>/<clip-id>/<pipeline>/…``), never for
another tenant's, another clip's, or another bucket's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.domain.layout import result_key

Kind = Literal["thumbnail", "anonymized_video"]


@dataclass(frozen=True)
class Signable:
    kind: Kind
    bucket: str
    key: str
    t: float | None = None


@dataclass(frozen=True)
class Refused:
    kind: str
    reason: str


def run_folder(tenant: str, camera: str, clip: str, pipeline: str) -> str:
    return result_key(tenant, camera, clip, pipeline).removesuffix("result.json")


def judge(uri: object, results_bucket: str, folder: str) -> tuple[str, str] | str:
    """(bucket, key) when ``uri`` names an object under ``folder`` of the results
    bucket; otherwise why not."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        return f"{repr(uri)[:200]} is not an s3:// URI"
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if bucket != results_bucket:
        return f"{uri} is not in the results bucket"
    if not key.startswith(folder):
        return f"{uri} is outside this run's results (s3://{results_bucket}/{folder})"
    # S3 keys are literal, but a URL's dot segments are not: a client would fetch
    # another path than the one signed, so such keys are never signed at all.
    if any(part in ("", ".", "..") for part in key.removeprefix(folder).split("/")):
        return f"{uri} has an empty, '.' or '..' segment"
    return bucket, key


def sort_artifacts(
    artifacts: Any, results_bucket: str, folder: str
) -> tuple[list[Signable], list[Refused]]:
    """What a result's ``artifacts`` names, split into what may be signed and what
    may not (and why). Anything malformed is refused, never raised."""
    signable: list[Signable] = []
    refused: list[Refused] = []
    if not isinstance(artifacts, dict):
        return signable, refused

    def add(kind: Kind, uri: object, t: float | None = None) -> None:
        where = judge(uri, results_bucket, folder)
        if isinstance(where, str):
            refused.append(Refused(kind, where))
        else:
            signable.append(Signable(kind, *where, t=t))

    thumbnails = artifacts.get("thumbnails") or []
    for item in thumbnails if isinstance(thumbnails, list) else [thumbnails]:
        t = item.get("t") if isinstance(item, dict) else None
        if not isinstance(t, int | float) or isinstance(t, bool):
            named = repr(item)[:200]
            refused.append(Refused("thumbnail", f"{named} is not a thumbnail: no time `t`"))
            continue
        add("thumbnail", item.get("uri"), float(t))
    video = artifacts.get("anonymized_video")
    if video:
        add("anonymized_video", video)
    return signable, refused
