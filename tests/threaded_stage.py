"""A test stage, run as ``python -m tests.threaded_stage``: each clip sleeps a moment
($THREADED_SLEEP seconds) and reports which process and thread ran it, how many clips
of its process ran at that moment, and its share of the cores. No S3: its manifest is
the report itself."""

from __future__ import annotations

import os
import threading
import time

import algorithms.sdk as sdk
from algorithms.sdk import StageContext, StageReport, run_stage

_running: list[str] = []
_lock = threading.Lock()


def main(ctx: StageContext) -> StageReport:
    with _lock:
        _running.append(ctx.run_id)
        beside = len(_running) - 1
    time.sleep(float(os.environ.get("THREADED_SLEEP", "0.3")))
    with _lock:
        _running.remove(ctx.run_id)
    metrics = {"pid": os.getpid(), "beside": beside, "cpus": ctx.cpus}
    return StageReport(metrics=metrics | {"thread": threading.get_ident(), "cwd": os.getcwd()})


if __name__ == "__main__":
    # The manifest goes to the clip's report only: there is no S3 here.
    sdk._write_manifest = lambda ctx, report, started: dict(report.metrics)
    run_stage(main)
