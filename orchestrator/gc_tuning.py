"""The cyclic garbage collector, set for a long-lived engine process.

CPython's defaults run a young collection every 700 container allocations. A tick that
loads and records thousands of attempt rows allocates millions of objects (ORM rows,
pydantic models, botocore requests), almost none of them in reference cycles, so those
collections, and the older ones they cascade into (each walks every object the imports
left behind: botocore's models, moto, SQLAlchemy's mappers), took a fifth to a third of
the engine's CPU in the bench's engine ceiling. A larger young generation keeps what
cycles do form collected, just less often; freezing what start-up made (``gc.freeze``:
the collector ignores it from then on) keeps the full collections from walking it again
and again. Measured: `python -m bench --only engine`.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000

_tuned = False


def tune_for_service() -> None:
    """Once per process, after start-up's imports and before the first tick."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    gc.collect()
    gc.freeze()
