"""The chaos scenarios at CI size: nothing lost, nothing duplicated.

The full sizes (200 clips and 20 kills, 1,000 clips on 3 replicas, a 60 s S3 outage,
30 % of notifications lost) run with ``python -m tests.chaos``.
"""

from __future__ import annotations

import pytest

from tests import chaos

pytestmark = pytest.mark.slow


def _clean(outcome: chaos.Outcome) -> None:
    print(chaos.HEADER, outcome.row(), *outcome.notes, sep="\n")
    assert outcome.lost == 0, outcome
    assert outcome.duplicated == 0, outcome
    assert outcome.failed == 0, outcome


def test_sigkill_of_serve_at_random_moments_loses_and_repeats_nothing() -> None:
    outcome = chaos.kill_scenario(clips=24, kills=3)
    _clean(outcome)
    # serve's death does not kill running stages (they run under their own
    # supervisors), so nothing needs to run again.
    assert outcome.re_executed == 0


def test_three_replicas_on_postgresql_run_every_stage_once(postgres_url: str) -> None:
    outcome = chaos.replicas_scenario(clips=45, replicas=3)
    _clean(outcome)
    assert outcome.re_executed == 0
    assert "another led after ?" not in outcome.notes[0], outcome.notes


def test_lost_and_duplicated_notifications_are_covered_by_the_sweep() -> None:
    outcome = chaos.sqs_loss_scenario(clips=24, drop=0.3, dup=0.3)
    _clean(outcome)
    assert outcome.re_executed == 0


@pytest.mark.parametrize("linger", [None, 0], ids=["warm-processes", "no-warm-processes"])
def test_sigkill_of_fused_stage_processes_loses_and_repeats_nothing(linger: float | None) -> None:
    # With warm processes (camflow's default) a kill also ends the clips handed to the
    # process since it started; those must be failed by its supervisor and run again
    # once, never read as lost while the process runs them on.
    outcome = chaos.stage_kill_scenario(clips=20, kills=3, linger=linger)
    _clean(outcome)
    # Each kill ended one stage mid-run: that stage, and only it, ran again (the one
    # after it in the process had not started; the one before it was stored).
    killed = int(outcome.notes[0].split()[0])
    assert outcome.re_executed == killed
