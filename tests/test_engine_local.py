"""The engine driving real local processes through the stage contract's rules."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.domain.layout import upload_key
from orchestrator.executors.local_runner import RUNNER
from orchestrator.service import Runtime, drive, open_runtime
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store.models import AttemptState, RunStatus

STAGES = PROJECT_ROOT / "tests" / "stages"


@pytest.fixture
def probe_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "algorithm_dirs": [STAGES],
            "pipeline_dirs": [STAGES / "pipelines"],
            "local": settings.local.model_copy(update={"kill_grace_seconds": 0.5}),
        }
    )


def _run_probe(runtime: Runtime, mode: str) -> tuple[str, list]:  # type: ignore[type-arg]
    key = upload_key(mode, "cam", datetime.now(UTC))
    runtime.s3.client.put_object(Bucket=runtime.settings.s3.ingest_bucket, Key=key, Body=b"x")
    assert runtime.watcher.tick() == 1
    runtime.reconciler.plan_new_clips()
    [(run, _clip)] = runtime.store.list_runs(pipeline=f"probe-{mode}")
    drive(runtime, [run.id], timeout=60, interval=0.1)
    return run.id, runtime.store.attempts_of_run(run.id)


def _executions(runtime: Runtime, run_id: str) -> int:
    run = runtime.store.get_run(run_id)
    clip = runtime.store.find_clip(run.clip_id)
    prefix = f"{clip.tenant}/{clip.camera}/{clip.id}/{run.pipeline}/probe/executions/"
    listing = runtime.s3.client.list_objects_v2(
        Bucket=runtime.settings.s3.results_bucket, Prefix=prefix
    )
    return len(listing.get("Contents", []))


def test_a_stage_that_exits_1_is_retried(probe_settings: Settings) -> None:
    with open_runtime(probe_settings) as runtime:
        run_id, attempts = _run_probe(runtime, "flaky")
        run = runtime.store.get_run(run_id)
        assert run.status == RunStatus.SUCCEEDED
        assert [(a.attempt, a.state, a.exit_code) for a in attempts] == [
            (1, AttemptState.FAILED, 1),
            (2, AttemptState.SUCCEEDED, 0),
        ]
        assert attempts[0].reason == "simulated transient failure (S3 throttled us)"
        assert _executions(runtime, run_id) == 2
        assert run.result is not None and run.result["probe"]["executions"] == 2
        assert run.result["stages"][0]["attempts"] == 2


def test_retries_are_bounded_by_the_limit(probe_settings: Settings) -> None:
    with open_runtime(probe_settings) as runtime:
        run_id, attempts = _run_probe(runtime, "always-fail")
        run = runtime.store.get_run(run_id)
        assert run.status == RunStatus.FAILED
        assert len(attempts) == 2 and _executions(runtime, run_id) == 2
        assert run.error == (
            "stage probe failed after 2 attempts: simulated transient failure, every time"
        )


def test_a_stage_that_exits_2_is_not_retried(probe_settings: Settings) -> None:
    with open_runtime(probe_settings) as runtime:
        run_id, attempts = _run_probe(runtime, "bad")
        run = runtime.store.get_run(run_id)
        assert run.status == RunStatus.FAILED
        assert [(a.exit_code, a.permanent) for a in attempts] == [(2, True)]
        assert _executions(runtime, run_id) == 1
        assert run.error == (
            "stage probe failed: this input can never be processed: replace it "
            "(bad input, not retried)"
        )
        # The failed run still gets its result.json, with the reason.
        stored = runtime.s3.get_json(
            probe_settings.s3.results_bucket, run.result_uri.split("/", 3)[3]
        )  # type: ignore[union-attr]
        assert stored["status"] == "failed" and stored["error"] == run.error


def test_a_stage_that_hangs_is_killed_at_its_timeout(probe_settings: Settings) -> None:
    with open_runtime(probe_settings) as runtime:
        run_id, attempts = _run_probe(runtime, "hang")
        [attempt] = attempts
        assert attempt.timed_out and attempt.exit_code == 124
        assert attempt.reason == "timed out after 2 s and was killed"
        assert runtime.store.get_run(run_id).status == RunStatus.FAILED
        seconds = (attempt.finished_at - attempt.started_at).total_seconds()  # type: ignore[operator]
        assert 2 <= seconds < 10
        runner = json.loads((Path(attempt.log_uri.removeprefix("file://")) / RUNNER).read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(runner["child_pid"], 0)  # the whole process group is gone


def test_stage_logs_are_kept_per_attempt(probe_settings: Settings) -> None:
    with open_runtime(probe_settings) as runtime:
        _, attempts = _run_probe(runtime, "flaky")
        first = Path(attempts[0].log_uri.removeprefix("file://"))  # type: ignore[union-attr]
        assert "simulated transient failure" in (first / "stderr.log").read_text()
        second = Path(attempts[1].log_uri.removeprefix("file://"))  # type: ignore[union-attr]
        assert "simulated transient failure" not in (second / "stderr.log").read_text()
