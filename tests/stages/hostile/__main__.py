"""A stage for testing least privilege: it tries what a stage must not be able to do,
and writes what each try got into its own result (which it may write)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from algorithms.sdk import StageContext, StageReport, run_stage


def _try(action: Callable[[], Any]) -> str:
    try:
        action()
    except ClientError as exc:
        return exc.response.get("Error", {}).get("Code", "error")
    return "allowed"


def main(ctx: StageContext) -> StageReport:
    s3 = ctx.s3
    clip = ctx.input("video")
    victim_bucket, victim_key = ctx.params["victim_clip"].split("/", 1)
    result_bucket, result_key = ctx.params["victim_result"].split("/", 1)
    tries = {
        "list the buckets": lambda: s3.list_buckets(),
        "list the ingest bucket": lambda: s3.list_objects_v2(Bucket=clip.bucket),
        "read another tenant's clip": lambda: s3.get_object(Bucket=victim_bucket, Key=victim_key),
        "overwrite another run's result": lambda: s3.put_object(
            Bucket=result_bucket, Key=result_key, Body=b'{"owned": true}'
        ),
        "delete its own clip": lambda: s3.delete_object(Bucket=clip.bucket, Key=clip.key),
        "write outside its output prefix": lambda: s3.put_object(
            Bucket=ctx.output.bucket, Key=ctx.output.key.rstrip("/") + "-evil/x", Body=b"x"
        ),
        "read its own clip": lambda: s3.get_object(Bucket=clip.bucket, Key=clip.key),
    }
    outcomes = {name: _try(action) for name, action in tries.items()}
    ctx.put_json(
        "result.json",
        {"tries": outcomes, "access_key_id": os.environ.get("AWS_ACCESS_KEY_ID")},
    )
    return StageReport(outputs={"result": "result.json"})


if __name__ == "__main__":
    run_stage(main)
