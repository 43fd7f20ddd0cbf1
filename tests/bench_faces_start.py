"""How long the faces stage takes to get its model ready, in fresh processes.

    python -m tests.bench_faces_start [RUNS]

Each run is a new interpreter (as each stage attempt is) that imports the detector and
builds a CenterFace session; all runs share one model cache folder, so the first run
fills it and the others find it. Prints the medians of the first and the later runs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROBE = """
import json, time
started = time.perf_counter()
from algorithms.faces.centerface import CenterFace
CenterFace()
print(json.dumps({"ready_s": time.perf_counter() - started}))
"""


def _run(env: dict[str, str]) -> tuple[float, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - started
    return json.loads(done.stdout.splitlines()[-1])["ready_s"], wall


def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache}
        first = _run(env)
        later = [_run(env) for _ in range(runs)]
    print(f"first start (empty cache): model ready {first[0]:.3f} s, process {first[1]:.3f} s")
    print(
        f"later starts, median of {runs}: model ready "
        f"{statistics.median(r[0] for r in later):.3f} s, "
        f"process {statistics.median(r[1] for r in later):.3f} s"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
