"""A stage for testing the engine: behaves as its ``mode`` param says.

Every execution leaves a marker object under its output, so tests count how many
times the program really ran, not just how many attempts camflow recorded.
"""

from __future__ import annotations

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
    mode = ctx.params["mode"]
    if mode == "flaky" and executions < 2:
        print("simulated transient failure (S3 throttled us)", file=sys.stderr)
        sys.exit(1)
    if mode == "always-fail":
        print("simulated transient failure, every time", file=sys.stderr)
        sys.exit(1)
    if mode == "bad":
        raise BadInput("this input can never be processed: replace it")
    if mode == "hang":
        time.sleep(3600)
    ctx.put_json(
        "result.json",
        {"probe": {"mode": mode, "executions": executions, "accelerator": ctx.accelerator}},
    )
    return StageReport(outputs={"result": "result.json"}, metrics={"executions": executions})


if __name__ == "__main__":
    run_stage(main)
