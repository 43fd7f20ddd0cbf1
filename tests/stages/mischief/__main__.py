"""A stage for testing the engine against what a broken stage writes: it exits 0 but
breaks the stage contract in the way its ``mode`` param names."""

from __future__ import annotations

import json
import sys

from algorithms.contract import MANIFEST_NAME
from algorithms.sdk import StageContext, StageReport, run_stage

#: What the broken-manifest modes write as _manifest.json, instead of the SDK's.
MANIFESTS = {
    "manifest-array": b"[1, 2]",
    "manifest-not-json": b"{this is not json",
    "manifest-bad-outputs": json.dumps({"outputs": {"result": 5}, "metrics": {}}).encode(),
}


def main(ctx: StageContext) -> StageReport:
    mode = ctx.params["mode"]
    if mode in MANIFESTS:
        ctx.put_bytes(MANIFEST_NAME, MANIFESTS[mode], "application/json")
        sys.exit(0)  # before the SDK writes a proper manifest over ours
    if mode == "result-string":
        ctx.put_bytes("result.json", b'"all good, honest"', "application/json")
    elif mode == "result-huge":
        ctx.put_json("result.json", {"padding": "x" * 10_000})
    elif mode != "result-missing":
        ctx.put_json("result.json", {"mischief": {"mode": mode}})
    return StageReport(outputs={"result": "result.json"}, metrics={"mode": mode})


if __name__ == "__main__":
    run_stage(main)
