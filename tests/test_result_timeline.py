"""result.json's stage timeline for a run that ends while some of its stages are still
in flight: what the store settles them as, in the same transaction, is what the
timeline says; a fused stage whose report that it was skipped had not been read yet
never ran, and is left out as a skipped one is."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.engine.launches import stage_summaries
from orchestrator.engine.reconciler import ENDED_WITH_RUN
from orchestrator.store.models import AttemptState
from tests.test_decide import T0, attempt

ENDED = T0 + timedelta(seconds=30)


def test_a_run_failed_by_its_first_stage_shows_that_stage_alone() -> None:
    attempts = [
        attempt("decode", 1, AttemptState.FAILED, exit_code=2, batch="b-1"),
        # Fused after it, in the same process: their "skipped" reports not read yet.
        *(
            attempt(stage, 1, AttemptState.RUNNING, batch="b-1", started_at=None)
            for stage in ("faces", "thumbnails", "publish")
        ),
    ]
    [decode] = stage_summaries(attempts, (ENDED, ENDED_WITH_RUN))
    assert (decode["name"], decode["status"], decode["exit_code"]) == ("decode", "failed", 2)


def test_a_stage_running_when_the_run_ended_shows_as_ended_with_it() -> None:
    attempts = [
        attempt("decode", 1, AttemptState.SUCCEEDED),
        attempt("motion", 1, AttemptState.FAILED, at=2, exit_code=2),
        attempt("faces", 1, AttemptState.RUNNING, at=2),  # beside motion, started
    ]
    summaries = {s["name"]: s for s in stage_summaries(attempts, (ENDED, ENDED_WITH_RUN))}
    faces = summaries["faces"]
    assert (faces["status"], faces["reason"]) == ("failed", ENDED_WITH_RUN)
    assert faces["finished_at"] is not None and faces["seconds"] == 28.0
    # Without an end (a run still going), what is in flight shows as it is.
    going = {s["name"]: s for s in stage_summaries(attempts)}
    assert going["faces"]["status"] == "running" and going["faces"]["finished_at"] is None
