"""The store's engine paths: prepared statements, batches and their savepoints, the
finished-runs counter under a race, and pooled connections that outlive their server
process. On SQLite and PostgreSQL where both apply."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError, ProgrammingError

from orchestrator.domain.layout import clip_id, run_id
from orchestrator.store import Clip, Run, StageAttempt, Store, repository
from orchestrator.store.models import AttemptState, RunStatus
from orchestrator.store.repository import AttemptChange, RunFinish

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LIVE = (AttemptState.PENDING, AttemptState.RUNNING)


def _clip(name: str) -> Clip:
    return Clip(
        id=clip_id("b", f"acme/door/{name}.mp4", "e"),
        bucket="b",
        key=f"acme/door/{name}.mp4",
        etag="e",
        size=10,
        tenant="acme",
        camera="door",
    )


def _planned(store: Store, name: str = "1") -> Run:
    clip = _clip(name)
    store.record_clips([clip])
    run = Run(id=run_id(clip.id, "faces"), clip_id=clip.id, pipeline="faces")
    assert store.plan(clip.id, [run]) == [run]
    return run


def _attempt(
    run: Run, stage: str = "decode", state: AttemptState = AttemptState.PENDING
) -> StageAttempt:
    return StageAttempt(
        id=f"{run.id}-{stage}-1",
        run_id=run.id,
        stage=stage,
        attempt=1,
        algorithm=f"{stage}@1.0.0",
        accelerator="cpu",
        executor="local",
        state=state,
    )


@contextmanager
def _statements(store: Store) -> Iterator[list[str]]:
    """The SQL the store sends while the block runs, one entry per statement."""
    sent: list[str] = []

    def _record(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        sent.append(" ".join(statement.split()))

    event.listen(store.engine, "before_cursor_execute", _record)
    try:
        yield sent
    finally:
        event.remove(store.engine, "before_cursor_execute", _record)


def _savepoints(sent: list[str]) -> list[str]:
    return [s for s in sent if re.search(r"\bSAVEPOINT\b", s)]


def test_prepared_writes_keep_every_column_type(store_url: str) -> None:
    """Enums as the ORM stores them, JSON, times and booleans, through the prepared
    insert and update, read back through the ORM."""
    store = Store(store_url)
    run = _planned(store)
    started = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
    store.add_attempt(_attempt(run))
    assert store.update_attempt(
        f"{run.id}-decode-1",
        LIVE,
        state=AttemptState.SUCCEEDED,
        metrics={"frames": 3, "faces": [1.5, None]},
        outputs={"result": "result.json"},
        permanent=True,
        started_at=started,
        exit_code=0,
    )
    [row] = store.attempts_of_run(run.id)
    assert row.state == AttemptState.SUCCEEDED and row.permanent is True
    assert row.metrics == {"frames": 3, "faces": [1.5, None]}
    assert row.outputs == {"result": "result.json"}
    assert row.started_at is not None and row.started_at.replace(tzinfo=UTC) == started
    store.mark_run_started(run.id, started)
    assert store.get_run(run.id).status == RunStatus.RUNNING
    store.close()


def test_an_update_in_a_batch_reaches_rows_read_earlier_in_it(store_url: str) -> None:
    """A batch's session answers a second read from what it read first: a prepared
    write must bring those rows in step, or a run would be finished from stale state."""
    store = Store(store_url)
    run = _planned(store)
    store.add_attempt(_attempt(run, state=AttemptState.RUNNING))
    with store.batch():
        [before] = store.attempts_of_run(run.id)
        assert before.state == AttemptState.RUNNING
        assert store.update_attempt(before.id, LIVE, state=AttemptState.FAILED, reason="exit 1")
        [after] = store.attempts_of_run(run.id)
        assert after.state == AttemptState.FAILED and after.reason == "exit 1"
        assert store.finish_run(run.id, RunStatus.FAILED, "exit 1", None, None, NOW)
        assert store.get_run(run.id).status == RunStatus.FAILED
    store.close()


def test_a_savepoint_block_that_touches_no_store_sends_no_savepoint(postgres_url: str) -> None:
    store = Store(postgres_url)
    run = _planned(store)
    store.add_attempt(_attempt(run))
    with _statements(store) as sent, store.batch():
        for _ in range(3):
            with store.savepoint():
                pass  # a run with nothing to do this tick
    assert _savepoints(sent) == []
    with _statements(store) as sent, store.batch():
        for _ in range(3):
            with store.savepoint():
                store.update_attempt(f"{run.id}-decode-1", reason="waiting")
    # One round trip per block that writes: the RELEASE goes with the next SAVEPOINT.
    assert len(_savepoints(sent)) == 3
    store.close()


def test_a_failed_block_undoes_its_writes_alone_and_the_batch_goes_on(postgres_url: str) -> None:
    store = Store(postgres_url)
    one, two, three = (_planned(store, name) for name in ("1", "2", "3"))
    for run in (one, two, three):
        store.add_attempt(_attempt(run))
    with store.batch():
        with store.savepoint():
            store.update_attempt(f"{one.id}-decode-1", reason="kept")
        with pytest.raises(ProgrammingError), store.savepoint():
            store.update_attempt(f"{two.id}-decode-1", reason="undone")
            # A statement that fails: PostgreSQL refuses every later one until undone.
            with store.session() as session:
                session.execute(text("SELECT 1 FROM no_such_table"))
        with pytest.raises(RuntimeError), store.savepoint():
            store.update_attempt(f"{three.id}-decode-1", reason="undone too")
            raise RuntimeError("a bug after the write")
        with store.savepoint():  # the transaction still takes writes
            store.mark_run_started(three.id, NOW)
    reasons = {run.id: store.attempts_of_run(run.id)[0].reason for run in (one, two, three)}
    assert reasons == {one.id: "kept", two.id: None, three.id: None}
    assert store.get_run(three.id).status == RunStatus.RUNNING
    store.close()


def test_writes_after_a_checkpoint_in_a_block_are_undone_with_it(postgres_url: str) -> None:
    """A checkpoint commits the block's writes so far (they must stay); what it writes
    after is in a savepoint of its own again."""
    store = Store(postgres_url)
    run = _planned(store)
    store.add_attempt(_attempt(run))
    with store.batch(), pytest.raises(RuntimeError), store.savepoint():
        store.update_attempt(f"{run.id}-decode-1", placement="local")
        store.checkpoint()
        store.update_attempt(f"{run.id}-decode-1", reason="undone")
        raise RuntimeError("the submit failed")
    [row] = store.attempts_of_run(run.id)
    assert row.placement == "local" and row.reason is None
    store.close()


def test_a_run_finishes_once_and_numbers_have_no_gaps(store_url: str) -> None:
    store = Store(store_url)
    one, two = _planned(store, "1"), _planned(store, "2")
    assert store.finish_run(one.id, RunStatus.SUCCEEDED, None, {"n": 1}, "u", NOW)
    # A replay of the same finish: no number taken, none given back later.
    assert not store.finish_run(one.id, RunStatus.FAILED, "late", None, None, NOW)
    assert not store.finish_run("r-unknown", RunStatus.FAILED, "none", None, None, NOW)
    assert store.finish_run(two.id, RunStatus.FAILED, "exit 1", None, None, NOW)
    assert [store.get_run(r.id).finished_seq for r in (one, two)] == [1, 2]
    assert store.get_run(one.id).result == {"n": 1}
    store.close()


def test_runs_finished_together_each_take_their_number_once(store_url: str) -> None:
    """``finish_runs``: the first finishes of a store (no counter row yet), a run
    finished twice in one call, and one that is not there, in one batch."""
    store = Store(store_url)
    runs = [_planned(store, str(n)) for n in range(4)]
    ends = [
        RunFinish(run.id, RunStatus.SUCCEEDED, None, {"n": n}, f"s3://r/{n}", NOW)
        for n, run in enumerate(runs)
    ]
    missing = RunFinish("r-unknown", RunStatus.FAILED, "none", None, None, NOW)
    with store.batch():
        done = store.finish_runs([*ends[:2], ends[0], missing, *ends[2:]])
    assert done == [True, True, False, False, True, True]
    assert [store.get_run(r.id).finished_seq for r in runs] == [1, 2, 3, 4]
    assert store.get_run(runs[3].id).result == {"n": 3}
    store.close()


def test_attempt_writes_together_say_which_took_effect(store_url: str) -> None:
    store = Store(store_url)
    run = _planned(store)
    rows = [_attempt(run, stage) for stage in ("decode", "faces", "publish")]
    with store.batch():
        assert store.add_attempts(rows[:2]) == [True, True]
        # One recorded already (a replay): only the other goes in.
        assert store.add_attempts(rows[1:]) == [False, True]
        done = store.update_attempts(
            [
                AttemptChange(rows[0].id, {"state": AttemptState.RUNNING, "handle": "h0"}, LIVE),
                AttemptChange(rows[1].id, {"state": AttemptState.SUCCEEDED}, LIVE, "not-its"),
                AttemptChange(rows[2].id, {"state": AttemptState.RUNNING, "handle": "h2"}, LIVE),
                AttemptChange("r-none-decode-1", {"state": AttemptState.RUNNING}, LIVE),
            ]
        )
    assert done == [True, False, True, False]
    states = {a.stage: (a.state, a.handle) for a in store.attempts_of_run(run.id)}
    assert states == {
        "decode": (AttemptState.RUNNING, "h0"),
        "faces": (AttemptState.PENDING, None),
        "publish": (AttemptState.RUNNING, "h2"),
    }
    store.close()


def test_a_store_whose_counter_row_is_lost_numbers_on_after_the_highest(store_url: str) -> None:
    store = Store(store_url)
    one, two = _planned(store, "1"), _planned(store, "2")
    assert store.finish_run(one.id, RunStatus.SUCCEEDED, None, None, None, NOW)
    with store.engine.begin() as connection:
        connection.execute(text("DELETE FROM counters"))
    assert store.finish_run(two.id, RunStatus.SUCCEEDED, None, None, None, NOW)
    assert store.get_run(two.id).finished_seq == 2
    store.close()


def test_two_engines_finishing_the_same_run_number_it_once(postgres_url: str) -> None:
    """The second waits for the first's row lock, then finds the run finished: it takes
    no number (the stream's cursor must never skip one)."""
    first, second = Store(postgres_url), Store(postgres_url)
    run, other = _planned(first, "1"), _planned(first, "2")
    answers: list[bool] = []
    with first.batch():
        assert first.finish_run(run.id, RunStatus.SUCCEEDED, None, None, None, NOW)
        racing = threading.Thread(
            target=lambda: answers.append(
                second.finish_run(run.id, RunStatus.FAILED, "late", None, None, NOW)
            )
        )
        racing.start()
        racing.join(timeout=1)
        assert racing.is_alive()  # held by the first's uncommitted finish
    racing.join(timeout=30)
    assert answers == [False]
    assert second.finish_run(other.id, RunStatus.SUCCEEDED, None, None, None, NOW)
    assert [first.get_run(r.id).finished_seq for r in (run, other)] == [1, 2]
    assert first.get_run(run.id).status == RunStatus.SUCCEEDED
    first.close()
    second.close()


def _terminate_backend(url: str, store: Store) -> None:
    """Leaves the store one pooled connection, and ends its server process as a restart
    would (only its own: other tests share this PostgreSQL)."""
    store.engine.dispose()
    with store.engine.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    admin = create_engine(url)
    with admin.begin() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()


def test_a_pooled_connection_idle_a_while_is_pinged_and_replaced(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(postgres_url)
    _terminate_backend(postgres_url, store)
    monkeypatch.setattr(repository, "PING_AFTER_IDLE_SECONDS", 0.0)
    store.ping()  # the dead connection is found before use and replaced
    store.close()


def test_a_connection_given_back_a_moment_ago_is_lent_without_a_ping(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the trade: no round trip per short transaction; a server gone
    in that moment fails one caller, and the pool starts afresh."""
    store = Store(postgres_url)
    monkeypatch.setattr(repository, "PING_AFTER_IDLE_SECONDS", 3600.0)
    _terminate_backend(postgres_url, store)
    with pytest.raises(OperationalError):
        store.ping()
    store.ping()
    store.close()


def test_clips_planned_together_get_their_runs_once_and_are_marked_planned(
    store_url: str,
) -> None:
    store = Store(store_url)
    clips = [_clip(str(n)) for n in range(3)]
    store.record_clips(clips)
    runs = [Run(id=run_id(c.id, "faces"), clip_id=c.id, pipeline="faces") for c in clips]
    # The first clip's run exists already (another engine planned it meanwhile).
    assert store.plan(clips[0].id, [runs[0]]) == [runs[0]]
    plans = [repository.ClipPlan(c.id, [r], []) for c, r in zip(clips, runs, strict=True)]
    created = store.plan_many(plans)
    assert [[r.id for r in made] for made in created] == [[], [runs[1].id], [runs[2].id]]
    assert store.unplanned_clips() == []
    assert sorted(r.id for r in store.runs_of_clip(clips[1].id)) == [runs[1].id]


def test_a_run_ends_with_its_attempts_in_flight_settled_and_only_once(store_url: str) -> None:
    store = Store(store_url)
    runs = [_planned(store, str(n)) for n in range(2)]
    for run in runs:
        store.add_attempt(_attempt(run, "decode", AttemptState.SUCCEEDED))
        store.add_attempt(_attempt(run, "faces", AttemptState.RUNNING))
    finishes = [
        RunFinish(run.id, RunStatus.FAILED, "given up", None, None, NOW, "cancelled: the run ended")
        for run in runs
    ]
    assert store.finish_runs(finishes[:1]) == [True]
    # A replay finishes nothing, and settles nothing of a run it did not finish.
    store.add_attempt(_attempt(runs[0], "thumbnails", AttemptState.PENDING))
    assert store.finish_runs(finishes) == [False, True]
    for run in runs:
        states = {a.stage: (a.state, a.reason) for a in store.attempts_of_run(run.id)}
        assert states["decode"] == (AttemptState.SUCCEEDED, None)
        assert states["faces"] == (AttemptState.FAILED, "cancelled: the run ended")
    assert {a.stage: a.state for a in store.attempts_of_run(runs[0].id)}["thumbnails"] == (
        AttemptState.PENDING
    )
