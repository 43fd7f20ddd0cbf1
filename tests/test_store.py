"""The store on SQLite and on PostgreSQL."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.domain.layout import clip_id, run_id
from orchestrator.store import Clip, Run, StageAttempt, Store
from orchestrator.store.models import AttemptState, RunStatus


def _clip(key: str, etag: str = "e1") -> Clip:
    return Clip(
        id=clip_id("b", key, etag),
        bucket="b",
        key=key,
        etag=etag,
        size=10,
        tenant="acme",
        camera="door",
    )


def test_a_clip_seen_twice_is_recorded_once(store_url: str) -> None:
    store = Store(store_url)
    first = store.record_clips([_clip("acme/door/1.mp4")], cursor=("sweep", "acme/door/1.mp4"))
    again = store.record_clips([_clip("acme/door/1.mp4"), _clip("acme/door/1.mp4")])
    changed = store.record_clips([_clip("acme/door/1.mp4", "e2")])
    assert len(first) == 1 and again == [] and len(changed) == 1
    assert store.cursor("sweep") == "acme/door/1.mp4"
    store.close()


def test_a_sweep_cursor_moves_with_its_page_and_restarts(store_url: str) -> None:
    store = Store(store_url)
    store.record_clips([], cursor=("cp", "acme/door/5.mp4"))
    assert store.cursor("cp") == "acme/door/5.mp4"
    # A listing that reached its end starts over at the next pass.
    store.record_clips([], cursor=("cp", None))
    assert store.cursor("cp") is None
    store.close()


def test_two_writers_recording_the_same_clip_record_it_once(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = Store(store_url), Store(store_url)
    clip = _clip("acme/door/1.mp4")
    # The second writer's batch check ran before the first committed: the unique key
    # catches it, and the row-by-row retry keeps its other clips.
    assert len(one.record_clips([clip])) == 1
    other = _clip("acme/door/2.mp4")
    monkeypatch.setattr(Store, "_new_rows", staticmethod(lambda _s, _t, rows: list(rows)))
    assert [c.id for c in two.record_clips([_clip("acme/door/1.mp4"), other])] == [other.id]
    # A sweep's page moves its cursor in the same call: reading the cursor's row must
    # not flush the clashing clip ahead of the retry (the sweep tick failed on it).
    third = _clip("acme/door/3.mp4")
    page = [_clip("acme/door/2.mp4"), third]
    assert [c.id for c in two.record_clips(page, cursor=("sweep", third.key))] == [third.id]
    assert two.cursor("sweep") == third.key
    one.close()
    two.close()


def test_one_replica_holds_the_lease_until_it_expires(store_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    store = Store(store_url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ttl = timedelta(seconds=15)
    assert store.hold_lease("engine", "a", t0, t0 + ttl) == 1
    assert store.hold_lease("engine", "b", t0 + timedelta(seconds=5), t0 + ttl * 2) is None
    assert store.hold_lease("engine", "a", t0 + timedelta(seconds=5), t0 + ttl * 2) == 1
    # a stops renewing: b takes over once it has expired, with a new epoch
    later = t0 + ttl * 2 + timedelta(seconds=1)
    assert store.hold_lease("engine", "b", later, later + ttl) == 2
    assert store.hold_lease("engine", "a", later, later + ttl) is None
    store.release_lease("engine", "b")
    assert store.hold_lease("engine", "a", later, later + ttl) == 3
    store.close()


def test_planning_twice_makes_one_run_and_finishing_twice_counts_once(store_url: str) -> None:
    store = Store(store_url)
    clip = _clip("acme/door/1.mp4")
    store.record_clips([clip])
    run = Run(id=run_id(clip.id, "faces"), clip_id=clip.id, pipeline="faces")
    assert len(store.plan(clip.id, [run])) == 1
    assert store.plan(clip.id, [Run(id=run.id, clip_id=clip.id, pipeline="faces")]) == []
    assert store.unplanned_clips() == []
    [view] = store.active_runs()
    assert view.run.id == run.id and view.clip.key == clip.key
    now = datetime.now(UTC)
    assert store.finish_run(run.id, RunStatus.SUCCEEDED, None, {"status": "succeeded"}, "u", now)
    assert not store.finish_run(run.id, RunStatus.FAILED, "late", None, None, now)
    finished = store.get_run(run.id)
    assert finished.status == RunStatus.SUCCEEDED and finished.result == {"status": "succeeded"}
    assert store.active_runs() == []
    store.close()


def test_an_attempt_inserted_twice_is_one_attempt(store_url: str) -> None:
    store = Store(store_url)
    clip = _clip("acme/door/1.mp4")
    store.record_clips([clip])
    run = Run(id="r-1", clip_id=clip.id, pipeline="faces")
    store.plan(clip.id, [run])

    def attempt() -> StageAttempt:
        return StageAttempt(
            id="r-1-decode-1",
            run_id="r-1",
            stage="decode",
            attempt=1,
            algorithm="decode@1.0.0",
            accelerator="cpu",
            executor="local",
        )

    store.add_attempt(attempt())
    store.update_attempt("r-1-decode-1", state=AttemptState.RUNNING, handle="h")
    again = store.add_attempt(attempt())
    assert again.state == AttemptState.RUNNING and again.handle == "h"
    assert store.count_attempts("local") == 1
    assert store.count_attempts("local", "gpu") == 0
    store.close()


def test_clips_are_found_by_id_key_or_uri(store_url: str) -> None:
    store = Store(store_url)
    clip = _clip("acme/door/2026/01/01/000000.mp4")
    store.record_clips([clip])
    assert store.find_clip(clip.id).id == clip.id
    assert store.find_clip("acme/door/2026/01/01/000000.mp4").id == clip.id
    assert store.find_clip("s3://b/acme/door/2026/01/01/000000.mp4").id == clip.id
    store.close()


def test_a_store_older_than_the_first_release_with_migrations_is_refused_with_what_to_do(
    tmp_path: Path,
) -> None:
    """The previous release's stores are upgraded (test_migrations); older ones cannot be."""
    import sqlite3

    import pytest

    from orchestrator.errors import StorageError

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE checkpoints (id VARCHAR PRIMARY KEY)")
    with pytest.raises(
        StorageError,
        match=r"older than the first release with migrations: table checkpoints lacks "
        r"\['last_key', 'updated_at'\]; it has no table algorithm_versions, .*"
        r"Move the old store aside",
    ):
        Store(f"sqlite:///{path}")


def test_a_store_upgraded_by_a_newer_camflow_is_refused_with_what_to_do(store_url: str) -> None:
    import pytest
    from sqlalchemy import create_engine, text

    from orchestrator.errors import StorageError

    Store(store_url).close()
    engine = create_engine(store_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    engine.dispose()
    with pytest.raises(
        StorageError,
        match=r"schema revision 0099_future, which this camflow does not know .*a newer "
        r"camflow has upgraded it\. Run that camflow version or a later one",
    ):
        Store(store_url)


def test_a_dead_one_shot_command_holds_none_of_serves_slots(store_url: str) -> None:
    store = Store(store_url)
    clip = _clip("acme/door/1.mp4")
    store.record_clips([clip])
    mine = Run(id="r-oneshot", clip_id=clip.id, pipeline="faces", owner="oneshot-1")
    store.plan(clip.id, [mine])
    attempt = StageAttempt(
        id="r-oneshot-decode-1",
        run_id=mine.id,
        stage="decode",
        attempt=1,
        algorithm="decode@1.0.0",
        accelerator="cpu",
        executor="local",
        state=AttemptState.RUNNING,
    )
    store.add_attempt(attempt)
    assert store.count_attempts("local") == 0  # serve's runs: none
    assert store.count_attempts("local", owner="oneshot-1") == 1
    store.close()


def test_a_stale_engine_never_moves_an_attempt_back(store_url: str) -> None:
    store = Store(store_url)
    clip = _clip("acme/door/1.mp4")
    store.record_clips([clip])
    run = Run(id=run_id(clip.id, "faces"), clip_id=clip.id, pipeline="faces")
    store.plan(clip.id, [run])
    store.add_attempt(
        StageAttempt(
            id="a-1",
            run_id=run.id,
            stage="decode",
            attempt=1,
            algorithm="decode@1.0.0",
            accelerator="cpu",
            executor="kubernetes",
            state=AttemptState.RUNNING,
            handle="dev/job-1",
        )
    )
    live = (AttemptState.PENDING, AttemptState.RUNNING)
    assert store.update_attempt("a-1", live, "dev/job-1", state=AttemptState.SUCCEEDED)
    # A deposed leader that read the attempt before: its update changes nothing.
    assert not store.update_attempt("a-1", live, "dev/job-1", state=AttemptState.FAILED)
    assert not store.update_attempt("a-1", (AttemptState.PENDING,), state=AttemptState.RUNNING)
    [row] = store.attempts_of_run(run.id)
    assert row.state == AttemptState.SUCCEEDED
    store.close()
