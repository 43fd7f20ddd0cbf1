"""The engine process's collector settings (in a fresh interpreter: they are global)."""

import subprocess
import sys

PROBE = """
import gc
from orchestrator import gc_tuning, service

before = gc.get_threshold()
assert gc.get_freeze_count() == 0
gc_tuning.tune_for_service()
gc_tuning.tune_for_service()  # once per process: a second call changes nothing
after = gc.get_threshold()
assert after == (gc_tuning.YOUNG_THRESHOLD, *before[1:]), (before, after)
assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()
assert gc.isenabled()
# Cycles made after start-up are still collected.
class Node:
    pass
a, b = Node(), Node()
a.other, b.other = b, a
del a, b
assert gc.collect() >= 2
print("ok")
"""


def test_the_engine_process_collects_less_often_and_skips_what_start_up_made() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
