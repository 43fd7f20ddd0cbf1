"""The engine's writes together: a batch's chains recorded in one statement, their
handles and outcomes in one each, a tick's finishing runs ended together with their
result.json written. On PostgreSQL these are single round trips; each
test runs on SQLite too, where they are statements one by one. What must hold either
way: a chain another engine started meanwhile ends before it, one run whose write
fails waits alone, and every run ends once with its result."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from bench.engine_ceiling import InstantExecutor
from orchestrator.domain.discovery import FoundObject
from orchestrator.domain.layout import attempt_id, result_key, upload_key
from orchestrator.executors.base import Capacity
from orchestrator.service import Runtime, open_runtime
from orchestrator.settings import Settings
from orchestrator.store import Run, StageAttempt
from orchestrator.store.models import AttemptState, RunStatus
from orchestrator.store.repository import AttemptChange
from orchestrator.watcher import to_clip

STAGES = ["decode", "faces", "thumbnails", "publish"]


class CpuOnlyInstant(InstantExecutor):
    """No GPU: the faces pipeline's four stages fuse into one chain per clip."""

    def capacity(self) -> Capacity:
        return Capacity(slots=4, gpu_slots=0)


@pytest.fixture
def runtime(settings: Settings, store_url: str) -> Iterator[Runtime]:
    with open_runtime(
        settings.model_copy(update={"store": settings.store.model_copy(update={"url": store_url})}),
        executor=CpuOnlyInstant(),
    ) as runtime:
        yield runtime


def _record(runtime: Runtime, count: int) -> list[str]:
    """``count`` uploads to the faces pipeline recorded as the watcher would; their
    clip ids."""
    now = datetime.now(UTC)
    found = [
        FoundObject(
            runtime.settings.s3.ingest_bucket,
            upload_key("acme", f"cam{n}", now, ".mp4", n),
            f"etag{n}",
            1000,
            now,
        )
        for n in range(count)
    ]
    clips = [c for c in (to_clip(f, "upload") for f in found) if c]
    runtime.store.record_clips(clips)
    return [clip.id for clip in clips]


def _runs(runtime: Runtime, clip_ids: Sequence[str]) -> list[Run]:
    return [run for clip in clip_ids for run in runtime.store.runs_of_clip(clip)]


def _until_done(runtime: Runtime, clip_ids: Sequence[str], ticks: int = 30) -> list[Run]:
    for _ in range(ticks):
        runtime.reconciler.tick()
        runs = _runs(runtime, clip_ids)
        if len(runs) == len(clip_ids) and all(RunStatus(r.status).terminal for r in runs):
            return runs
    raise AssertionError({r.id: r.status for r in _runs(runtime, clip_ids)})


def _each_stage_once(runtime: Runtime, run: Run) -> list[StageAttempt]:
    attempts = runtime.store.attempts_of_run(run.id)
    assert sorted((a.stage, a.attempt) for a in attempts) == sorted((s, 1) for s in STAGES)
    assert all(a.state == AttemptState.SUCCEEDED for a in attempts), attempts
    return attempts


def _result(runtime: Runtime, run: Run) -> dict[str, Any]:
    clip = runtime.store.find_clip(run.clip_id)
    key = result_key(clip.tenant, clip.camera, clip.id, run.pipeline)
    body = runtime.s3.client.get_object(Bucket=runtime.settings.s3.results_bucket, Key=key)
    return json.loads(body["Body"].read())


def test_batches_of_chains_run_and_end_once_each(runtime: Runtime) -> None:
    clip_ids = _record(runtime, 24)
    runs = _until_done(runtime, clip_ids)
    assert all(r.status == RunStatus.SUCCEEDED for r in runs)
    for run in runs:
        attempts = _each_stage_once(runtime, run)
        # One chain per clip: the four attempts share their batch and place.
        assert len({(a.batch, a.placement) for a in attempts}) == 1
        assert [s["name"] for s in _result(runtime, run)["stages"]] == STAGES
    # Each run took its own number of the finished-runs sequence (the event cursor).
    assert sorted(r.finished_seq for r in runs) == list(range(1, len(runs) + 1))
    # Batches of several clips, not one execution per clip.
    assert len({a.batch for run in runs for a in runtime.store.attempts_of_run(run.id)}) < 24


def test_a_chain_another_engine_started_meanwhile_ends_before_it(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between this engine's decision and its writes, another one recorded the
    thumbnails stage of one clip: that clip's chain stops before it, and no later stage
    is left recorded to run without its input."""
    clip_ids = _record(runtime, 6)
    reconciler = runtime.reconciler
    executions = reconciler._executions
    raced: list[str] = []

    def racing(starts: Any, by_id: Any, *args: Any) -> Any:
        chosen = executions(starts, by_id, *args)
        if not raced:
            run_id_ = next(iter(by_id))
            other = StageAttempt(
                id=attempt_id(run_id_, "thumbnails", 1),
                run_id=run_id_,
                stage="thumbnails",
                attempt=1,
                algorithm="thumbnails@1.0.0",
                accelerator="cpu",
                executor=reconciler.executor.name,
                batch="b-another-engine",
                placement="instant",
            )
            runtime.store.add_attempt(other)
            raced.append(run_id_)
        return chosen

    monkeypatch.setattr(reconciler, "_executions", racing)
    reconciler.tick()  # plans the runs
    reconciler.tick()  # starts their chains, one of them raced
    [run_id_] = raced
    stages = {a.stage: a for a in runtime.store.attempts_of_run(run_id_)}
    assert set(stages) == {"decode", "faces", "thumbnails"}  # publish waits for its input
    assert stages["thumbnails"].batch == "b-another-engine"
    assert stages["decode"].batch == stages["faces"].batch != "b-another-engine"
    monkeypatch.undo()
    runs = _until_done(runtime, clip_ids)
    assert all(r.status == RunStatus.SUCCEEDED for r in runs)
    for run in runs:
        if run.id != run_id_:
            _each_stage_once(runtime, run)
    # The raced clip's decode and faces kept their outputs in their process for a
    # thumbnails stage that ran elsewhere: they ran again to feed it (as designed).
    last = {a.stage: a for a in runtime.store.attempts_of_run(run_id_)}
    assert set(last) == set(STAGES)
    assert all(a.state == AttemptState.SUCCEEDED for a in last.values())


def test_one_runs_write_that_fails_holds_back_that_run_alone(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip_ids = _record(runtime, 6)
    store = runtime.store
    update_attempts = store.update_attempts
    cursed: list[str] = []

    def refusing(changes: Sequence[AttemptChange]) -> list[bool]:
        if not cursed:
            cursed.append(changes[0].attempt_id.removesuffix("-decode-1"))
        if any(c.attempt_id.startswith(cursed[0]) for c in changes):
            raise RuntimeError("injected: the store refuses this run's write")
        return update_attempts(changes)

    monkeypatch.setattr(store, "update_attempts", refusing)
    report = runtime.reconciler.tick()  # plans and starts; one run's handles fail
    assert report.errors == 1
    for run in _runs(runtime, clip_ids):
        states = {a.state for a in store.attempts_of_run(run.id)}
        if run.id == cursed[0]:
            assert states == {AttemptState.PENDING}  # recorded, its start not written
        else:
            assert states == {AttemptState.RUNNING}
    monkeypatch.undo()
    runs = _until_done(runtime, clip_ids)
    assert all(r.status == RunStatus.SUCCEEDED for r in runs)
    for run in runs:
        _each_stage_once(runtime, run)


def test_a_result_that_cannot_be_written_keeps_its_run_active_alone(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.errors import StorageError

    clip_ids = _record(runtime, 6)
    put_json = runtime.s3.put_json
    refused: list[str] = []

    lock = threading.Lock()

    def refusing(bucket: str, key: str, payload: Any) -> str:
        with lock:
            if not refused:
                refused.append(key)
        if key == refused[0]:
            raise StorageError("S3 put failed at http://s3: injected")
        return put_json(bucket, key, payload)

    monkeypatch.setattr(runtime.s3, "put_json", refusing)
    for _ in range(4):
        runtime.reconciler.tick()
    runs = _runs(runtime, clip_ids)
    active = [r for r in runs if not RunStatus(r.status).terminal]
    assert len(active) == 1 and all(
        r.status == RunStatus.SUCCEEDED for r in runs if r is not active[0]
    )
    monkeypatch.undo()
    runs = _until_done(runtime, clip_ids)
    assert all(r.status == RunStatus.SUCCEEDED for r in runs)
    assert sorted(r.finished_seq for r in runs) == list(range(1, len(runs) + 1))


def test_a_ticks_batches_are_recorded_together_and_submitted_one_by_one(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip_ids = _record(runtime, 24)
    adds: list[int] = []
    submits: list[int] = []
    add_attempts, submit = runtime.store.add_attempts, runtime.executor.submit

    def counted_adds(rows: Any) -> Any:
        adds.append(len(rows))
        return add_attempts(rows)

    def counted_submits(launches: Any) -> Any:
        submits.append(len(launches))
        return submit(launches)

    monkeypatch.setattr(runtime.store, "add_attempts", counted_adds)
    monkeypatch.setattr(runtime.executor, "submit", counted_submits)
    for _ in range(3):
        runtime.reconciler.tick()
        if submits:
            break
    # Four slots: four batches of six clips, each its own submit (one process, one Job).
    assert submits == [6, 6, 6, 6]
    if runtime.store.writes_in_bulk:
        # Their 24 chains of four fused stages went to the store in one round trip.
        assert adds == [24 * len(STAGES)]
    runs = _until_done(runtime, clip_ids)
    assert all(r.status == RunStatus.SUCCEEDED for r in runs)
    for run in runs:
        _each_stage_once(runtime, run)
