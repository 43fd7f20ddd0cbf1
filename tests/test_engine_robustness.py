"""Nothing a stage writes, nothing an executor answers, and no stale row stops the
engine: each fails its own attempt or run with a reason, and every other run goes on."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from orchestrator.domain.layout import attempt_id, clip_id, upload_key
from orchestrator.errors import StorageError
from orchestrator.executors.base import ExecStatus
from orchestrator.service import HEARTBEAT, Runtime, Service, _guarded, open_runtime, read_heartbeat
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store import Clip, Run, StageAttempt
from orchestrator.store.models import AttemptState, RunStatus, utcnow

STAGES = PROJECT_ROOT / "tests" / "stages"
MODES = [
    "ok",
    "manifest-array",
    "manifest-not-json",
    "manifest-bad-outputs",
    "result-string",
    "result-huge",
    "result-missing",
]
_numbers = itertools.count(100_000)


@pytest.fixture
def mischief(settings: Settings, tmp_path: Path) -> Settings:
    """The mischief stage, one pipeline per mode (clips under ``<mode>/``), a 4 KiB
    result limit and three erroring ticks before a run is given up."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    for mode in MODES:
        (folder / f"mischief-{mode}.yaml").write_text(
            f"name: mischief-{mode}\n"
            f"trigger: {{prefix: {mode}/, suffix: .mp4}}\n"
            "stages:\n"
            "  - name: mischief\n"
            "    algorithm: mischief@1.0.0\n"
            "    inputs: {video: clip}\n"
            f"    params: {{mode: {mode}}}\n"
        )
    return settings.model_copy(
        update={
            "algorithm_dirs": [STAGES],
            "pipeline_dirs": [folder],
            "engine": settings.engine.model_copy(
                update={"max_result_bytes": 4096, "max_erroring_ticks": 3}
            ),
            "local": settings.local.model_copy(update={"max_parallel": 4}),
        }
    )


def _add_clip(runtime: Runtime, tenant: str) -> Clip:
    """An upload under ``<tenant>/cam/``, recorded as the watcher would."""
    bucket = runtime.settings.s3.ingest_bucket
    key = upload_key(tenant, "cam", datetime.now(UTC), n=next(_numbers))
    etag = runtime.s3.client.put_object(Bucket=bucket, Key=key, Body=b"x")["ETag"].strip('"')
    clip = Clip(
        id=clip_id(bucket, key, etag),
        bucket=bucket,
        key=key,
        etag=etag,
        size=1,
        tenant=tenant,
        camera="cam",
    )
    runtime.store.record_clips([clip])
    return clip


def _run_of(runtime: Runtime, clip: Clip) -> Run:
    [run] = runtime.store.runs_of_clip(clip.id)
    return run


def _tick_until_done(
    runtime: Runtime, clips: Sequence[Clip], tick: Callable[[], object] | None = None
) -> dict[str, Run]:
    """Ticks the whole engine (every run together, as `camflow serve` does) until the
    clips' runs have all ended; their runs by clip id."""
    deadline = time.monotonic() + 120
    while True:
        (tick or runtime.reconciler.tick)()
        runs = {clip.id: _run_of(runtime, clip) for clip in clips}
        if all(RunStatus(run.status).terminal for run in runs.values()):
            return runs
        assert time.monotonic() < deadline, {c: r.status for c, r in runs.items()}
        time.sleep(0.1)


SHAPE = (
    'the stage contract wants an object like {"outputs": {"result": "result.json"}, '
    '"metrics": {"frames": 20}}, written last'
)


def test_what_a_broken_stage_writes_fails_its_own_run_with_the_reason(
    mischief: Settings,
) -> None:
    with open_runtime(mischief) as runtime:
        clips = {mode: _add_clip(runtime, mode) for mode in MODES}
        runs = _tick_until_done(runtime, list(clips.values()))
        by_mode = {mode: runs[clip.id] for mode, clip in clips.items()}

        ok = by_mode.pop("ok")
        assert ok.status == RunStatus.SUCCEEDED, ok.error
        assert ok.result is not None and ok.result["mischief"] == {"mode": "ok"}

        errors = {mode: run.error for mode, run in by_mode.items()}
        assert errors == {
            "manifest-array": "stage mischief failed: wrote a _manifest.json that is an "
            f"array, not an object; {SHAPE} (not retried)",
            "manifest-not-json": "stage mischief failed: wrote a _manifest.json that is not "
            "JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
            "(char 1)) (not retried)",
            "manifest-bad-outputs": "stage mischief failed: wrote a _manifest.json that "
            f"breaks the contract: outputs.result: Input should be a valid string; {SHAPE} "
            "(not retried)",
            "result-string": "stage mischief failed: wrote a result.json (its 'result' "
            "output) that is a string, not an object; the result output is merged into the "
            "clip's result.json, so it must be a JSON object (not retried)",
            "result-huge": "stage mischief failed: wrote a 9.8 KiB result.json; the limit "
            "is 4 KiB (engine.max_result_bytes) (not retried)",
            "result-missing": "stage mischief failed: names result.json as its 'result' "
            "output in _manifest.json but did not write result.json (not retried)",
        }
        for mode, run in by_mode.items():
            assert run.status == RunStatus.FAILED, mode
            # A stage that writes garbage writes it again: one attempt, no retries.
            [attempt] = runtime.store.attempts_of_run(run.id)
            assert attempt.state == AttemptState.FAILED and attempt.permanent, mode
            assert attempt.exit_code == 0 and attempt.outputs is None, mode
            # The failed run still gets its result.json, saying why.
            assert run.result_uri is not None
            stored = runtime.s3.get_json(
                mischief.s3.results_bucket, run.result_uri.split("/", 3)[3]
            )
            assert stored["status"] == "failed" and stored["error"] == run.error


def _leading_service(runtime: Runtime) -> Service:
    service = Service(runtime)
    assert service.leadership.renew()
    return service


def test_an_exception_in_one_runs_handling_fails_that_run_alone(
    mischief: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_runtime(mischief) as runtime:
        good, cursed = _add_clip(runtime, "ok"), _add_clip(runtime, "ok")
        reconciler = runtime.reconciler
        pipeline_of = reconciler.pipeline_of

        def tripping(run: Run) -> Any:
            if run.clip_id == cursed.id:
                raise RuntimeError("injected: the engine trips over this run")
            return pipeline_of(run)

        monkeypatch.setattr(reconciler, "pipeline_of", tripping)
        service = _leading_service(runtime)
        service._engine_tick()
        # The tick finished despite the error, and its heartbeat says so.
        beat = read_heartbeat(mischief.home)
        assert beat is not None and beat["tick"]["errors"] == 1
        assert beat["tick"]["started"] == 1  # the good run's stage, not the cursed one's

        runs = _tick_until_done(runtime, [good, cursed], service._engine_tick)
        assert runs[good.id].status == RunStatus.SUCCEEDED
        assert runs[cursed.id].status == RunStatus.FAILED
        assert runs[cursed.id].error == (
            "camflow failed while deciding this run 3 ticks in a row (RuntimeError: "
            "injected: the engine trips over this run); it was stopped rather than retried "
            "forever: the orchestrator's log has the traceback"
        )
        assert runtime.store.attempts_of_run(runs[cursed.id].id) == []
        assert runs[cursed.id].result_uri is not None  # its result.json says so too


def test_an_outage_does_not_count_against_a_run(
    mischief: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_runtime(mischief) as runtime:
        clip = _add_clip(runtime, "ok")
        reconciler = runtime.reconciler
        pipeline_of = reconciler.pipeline_of
        outage = iter(range(5))  # longer than max_erroring_ticks

        def away(run: Run) -> Any:
            if next(outage, None) is not None:
                raise StorageError("S3 get failed at http://s3: connection refused")
            return pipeline_of(run)

        monkeypatch.setattr(reconciler, "pipeline_of", away)
        for _ in range(5):
            assert reconciler.tick().errors == 1
        runs = _tick_until_done(runtime, [clip])
        assert runs[clip.id].status == RunStatus.SUCCEEDED


def test_no_heartbeat_when_the_tick_itself_cannot_run(
    mischief: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_runtime(mischief) as runtime:
        service = _leading_service(runtime)
        service._engine_tick()
        before = (mischief.home / HEARTBEAT).read_text()

        def unreachable(*_args: object, **_kwargs: object) -> list[object]:
            raise OperationalError("SELECT …", {}, Exception("connection refused"))

        monkeypatch.setattr(runtime.store, "active_runs", unreachable)
        _guarded("engine", service._engine_tick)()  # logged, not raised
        assert (mischief.home / HEARTBEAT).read_text() == before


def test_an_attempt_left_by_another_executor_fails_with_the_reason(mischief: Settings) -> None:
    with open_runtime(mischief) as runtime:
        clip = _add_clip(runtime, "ok")
        runtime.reconciler.plan_new_clips()
        run = _run_of(runtime, clip)
        # What a store that ran on Kubernetes before holds.
        runtime.store.add_attempt(
            StageAttempt(
                id=attempt_id(run.id, "mischief", 1),
                run_id=run.id,
                stage="mischief",
                attempt=1,
                algorithm="mischief@1.0.0",
                accelerator="cpu",
                executor="kubernetes",
                state=AttemptState.RUNNING,
                handle="dev/camflow-jobs/cf-mischief-1",
                placement="dev",
                submitted_at=utcnow(),
            )
        )
        runtime.store.mark_run_started(run.id, utcnow())
        runs = _tick_until_done(runtime, [clip])
        stale, retried = runtime.store.attempts_of_run(run.id)
        assert stale.state == AttemptState.FAILED and not stale.permanent
        assert stale.reason == (
            "submitted to executor kubernetes, but this camflow runs local; it cannot follow "
            "or stop that attempt (if it still runs there, stop it there)"
        )
        # Retried where it can be followed.
        assert (retried.executor, retried.state) == ("local", AttemptState.SUCCEEDED)
        assert runs[clip.id].status == RunStatus.SUCCEEDED


def test_a_handle_the_executor_cannot_read_fails_that_attempt_alone(
    mischief: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_runtime(mischief) as runtime:
        garbled, fine = _add_clip(runtime, "ok"), _add_clip(runtime, "ok")
        runtime.reconciler.tick()  # both start
        [first] = runtime.store.attempts_of_run(_run_of(runtime, garbled).id)
        runtime.store.update_attempt(first.id, handle="garbled")
        poll = runtime.executor.poll

        def strict(handles: Sequence[str]) -> dict[str, ExecStatus]:
            # As the Kubernetes executor reads handles: cluster/namespace/name.
            for handle in handles:
                if handle == "garbled":
                    _cluster, _namespace, _name = handle.split("/", 2)
            return poll(handles)

        monkeypatch.setattr(runtime.executor, "poll", strict)
        runs = _tick_until_done(runtime, [garbled, fine])
        assert runs[fine.id].status == RunStatus.SUCCEEDED
        lost, retried = runtime.store.attempts_of_run(runs[garbled.id].id)
        assert lost.reason == (
            "the local executor cannot follow its handle 'garbled' (ValueError: not enough "
            "values to unpack (expected 3, got 1)); the attempt is given up"
        )
        assert retried.state == AttemptState.SUCCEEDED
        assert runs[garbled.id].status == RunStatus.SUCCEEDED
