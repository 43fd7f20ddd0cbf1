"""What an execution may touch in S3, as an IAM policy. Pure: no I/O.

A stage reads its clip (that one key) and the earlier stages' outputs it names as
inputs (their output prefixes), and writes under its own output prefix. Nothing else:
no listing, no deleting, no other key. A batch gets the union of its clips' grants,
since one process holds one set of credentials for all of them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel

from algorithms import contract
from orchestrator.executors.base import StageLaunch

#: Time a stage may go on using its credentials after its own timeout: uploads it was
#: finishing, clock skew. Kept short: this is the window a leaked key stays good.
GRACE_SECONDS = 120


class Grant(BaseModel):
    """S3 object ARNs' tails (``bucket/key``): ``reads`` exact keys, ``read_prefixes`` and
    ``write_prefixes`` everything under a prefix."""

    reads: list[str]
    read_prefixes: list[str]
    write_prefixes: list[str]
    #: How long the credentials must last: as long as its clips may keep it busy.
    seconds: int
    #: Who it is for, for names and logs: the first attempt's id.
    label: str


def _split(uri: str) -> str:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return uri[len("s3://") :]


def _as_prefix(tail: str) -> str:
    return tail if tail.endswith("/") else tail + "/"


def grant_for(launches: Sequence[StageLaunch]) -> Grant:
    """The grant for one process running these attempts. An input that is another
    stage's output (``s3://<results>/.../<stage>/``) is read as a prefix; the clip itself
    as one exact key."""
    if not launches:
        raise ValueError("a grant needs at least one attempt")
    # A batch's process takes its clips one after another, each with its own timeout.
    return grant_of(
        [launch.env for launch in launches],
        sum(launch.timeout_seconds for launch in launches),
        launches[0].attempt_id,
    )


def grant_of(envs: Sequence[Mapping[str, str]], busy_seconds: int, label: str) -> Grant:
    """The grant for the stage-contract variables of each clip (what a Job carries), for
    a process (or pods) that may be busy with them up to ``busy_seconds``."""
    if not envs:
        raise ValueError("a grant needs at least one clip")
    reads: set[str] = set()
    read_prefixes: set[str] = set()
    writes: set[str] = set()
    for env in envs:
        for uri in json.loads(env[contract.ENV_INPUTS]).values():
            tail = _split(uri)
            (read_prefixes if tail.endswith("/") else reads).add(tail)
        writes.add(_as_prefix(_split(env[contract.ENV_OUTPUT])))
    return Grant(
        reads=sorted(reads),
        read_prefixes=sorted(read_prefixes),
        write_prefixes=sorted(writes),
        seconds=busy_seconds + GRACE_SECONDS,
        label=label,
    )


def _arns(partition: str, tails: Iterable[str], wildcard: bool) -> list[str]:
    return [f"arn:{partition}:s3:::{tail}{'*' if wildcard else ''}" for tail in tails]


def policy_document(grant: Grant, partition: str = "aws") -> dict[str, Any]:
    """The IAM policy: GetObject on the clip and on the input prefixes, PutObject (which
    covers multipart uploads) under the output prefix. No List, no Delete."""
    reads = _arns(partition, grant.reads, False) + _arns(partition, grant.read_prefixes, True)
    statements: list[dict[str, Any]] = []
    if reads:
        statements.append(
            {"Sid": "ReadInputs", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": reads}
        )
    statements.append(
        {
            "Sid": "WriteOutputs",
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
            "Resource": _arns(partition, grant.write_prefixes, True),
        }
    )
    return {"Version": "2012-10-17", "Statement": statements}


def expiry(issued: datetime, grant: Grant) -> datetime:
    return issued + timedelta(seconds=grant.seconds)
