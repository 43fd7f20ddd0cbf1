"""A stage for the chaos script: appends "start" and "done" lines to a log that outlives
every process, so the script counts real executions, not the attempts camflow recorded.

The log is named by ``TALLY_LOG`` (not a ``CAMFLOW_`` variable: stages do not inherit
those). Lines are short single ``write`` calls on an ``O_APPEND`` file, so concurrent
stages never interleave within a line.
"""

from __future__ import annotations

import os
import time

from algorithms.sdk import StageContext, StageReport, run_stage


def _log(event: str, ctx: StageContext) -> None:
    path = os.environ.get("TALLY_LOG")
    if not path:
        return
    line = f"{event} {ctx.run_id} {ctx.stage} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def main(ctx: StageContext) -> StageReport:
    _log("start", ctx)
    time.sleep(float(ctx.params.get("seconds", 0.5)))
    ctx.put_json("result.json", {"tally": {"run": ctx.run_id}})
    _log("done", ctx)
    return StageReport(outputs={"result": "result.json"}, metrics={})


if __name__ == "__main__":
    run_stage(main)
