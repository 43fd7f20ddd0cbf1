"""The store on SQLite and on PostgreSQL."""

from datetime import UTC, datetime

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
    first = store.record_clips([_clip("acme/door/1.mp4")], "s3://b/acme/door/", "acme/door/1.mp4")
    again = store.record_clips([_clip("acme/door/1.mp4")], "s3://b/acme/door/", "acme/door/1.mp4")
    changed = store.record_clips([_clip("acme/door/1.mp4", "e2")], "s3://b/acme/door/", None)
    assert len(first) == 1 and again == [] and len(changed) == 1
    assert store.checkpoint("s3://b/acme/door/") == "acme/door/1.mp4"
    store.close()


def test_the_checkpoint_only_moves_forward(store_url: str) -> None:
    store = Store(store_url)
    store.record_clips([], "cp", "acme/door/5.mp4")
    store.record_clips([], "cp", "acme/door/3.mp4")
    assert store.checkpoint("cp") == "acme/door/5.mp4"
    store.close()


def test_planning_twice_makes_one_run_and_finishing_twice_counts_once(store_url: str) -> None:
    store = Store(store_url)
    clip = _clip("acme/door/1.mp4")
    store.record_clips([clip], "cp", None)
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
    store.record_clips([clip], "cp", None)
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
    store.record_clips([clip], "cp", None)
    assert store.find_clip(clip.id).id == clip.id
    assert store.find_clip("acme/door/2026/01/01/000000.mp4").id == clip.id
    assert store.find_clip("s3://b/acme/door/2026/01/01/000000.mp4").id == clip.id
    store.close()


def test_a_store_made_by_an_older_camflow_is_refused_with_what_to_do(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    import pytest

    from orchestrator.errors import StorageError

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE checkpoints (id VARCHAR PRIMARY KEY)")
    with pytest.raises(
        StorageError,
        match=r"table checkpoints lacks \['last_key', "
        r"'updated_at'\].*move the old store aside",
    ):
        Store(f"sqlite:///{path}")
