"""A stage for testing batches: behaves as its clip's camera is named, so that the
clips of one batch (one stage, one set of params) can fail in different ways.

``bad*``: bad input (exit 2); ``flaky*``: a transient failure at its first execution;
``hang*``: never ends; ``crash*``: the process dies (SIGKILL, as the OOM killer does)
at its first execution; ``nan*``: a manifest with a NaN metric, which the store's JSON
refuses on PostgreSQL; anything else succeeds. Every execution leaves a marker object
under its output, so tests count how many times the program really ran for a clip.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid

from algorithms.sdk import BadInput, StageContext, StageReport, run_stage


def main(ctx: StageContext) -> StageReport:
    ctx.put_bytes(f"executions/{uuid.uuid4().hex}", b"", "text/plain")
    executions = len(
        ctx.s3.list_objects_v2(
            Bucket=ctx.output.bucket, Prefix=ctx.output.join("executions/").key
        ).get("Contents", [])
    )
    camera = str(ctx.clip.get("camera", ""))
    if camera.startswith("bad"):
        raise BadInput(f"camera {camera} sends clips that can never be processed: replace it")
    if camera.startswith("flaky") and executions < 2:
        print("simulated transient failure (S3 throttled us)", file=sys.stderr)
        sys.exit(1)
    if camera.startswith("hang"):
        time.sleep(3600)
    if camera.startswith("crash") and executions < 2:
        print(f"decoder crashed on {ctx.clip.get('key')}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if camera.startswith("nan"):
        return StageReport(metrics={"score": float("nan")})
    ctx.put_json(
        "result.json",
        {"keyed": {"camera": camera, "executions": executions, "accelerator": ctx.accelerator}},
    )
    return StageReport(outputs={"result": "result.json"}, metrics={"executions": executions})


if __name__ == "__main__":
    run_stage(main)
