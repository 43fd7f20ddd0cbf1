"""The engine's decisions, on hand-made state: no S3, no processes, no clock."""

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.domain.catalog import Pipeline, load_catalog
from orchestrator.engine.decide import (
    CancelAttempts,
    ExpireAttempt,
    FinishRun,
    Resubmit,
    RetryPolicy,
    StartAttempt,
    admit,
    decide,
    outcome,
)
from orchestrator.executors.base import ExecState, ExecStatus
from orchestrator.settings import PROJECT_ROOT
from orchestrator.store.models import AttemptState, Run, RunStatus, StageAttempt

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(backoff_seconds=10, backoff_max_seconds=60, overrun_grace_seconds=30)


@pytest.fixture(scope="module")
def faces() -> Pipeline:
    catalog = load_catalog([PROJECT_ROOT / "algorithms"], [PROJECT_ROOT / "pipelines"])
    return catalog.pipeline("faces")


def run() -> Run:
    return Run(id="r-1", clip_id="c-1", pipeline="faces", created_at=T0)


def attempt(stage: str, n: int, state: AttemptState, at: float = 0, **kw: object) -> StageAttempt:
    values = {
        "id": f"r-1-{stage}-{n}",
        "run_id": "r-1",
        "stage": stage,
        "attempt": n,
        "algorithm": f"{stage}@1.0.0",
        "accelerator": "cpu",
        "executor": "local",
        "state": state,
        "handle": f"h-{stage}-{n}",
        "created_at": T0 + timedelta(seconds=at),
        "started_at": T0 + timedelta(seconds=at),
        "finished_at": None if state == AttemptState.RUNNING else T0 + timedelta(seconds=at + 1),
    }
    values.update(kw)
    return StageAttempt(**values)


def test_a_new_run_starts_its_first_stage_only(faces: Pipeline) -> None:
    d = decide(run(), [], faces, T0, POLICY, executor_has_gpus=False)
    assert d.actions == []
    assert d.starts == [StartAttempt("r-1", "decode", 1, "cpu")]


def test_a_stage_starts_when_what_it_needs_has_succeeded(faces: Pipeline) -> None:
    done = [attempt("decode", 1, AttemptState.SUCCEEDED)]
    d = decide(run(), done, faces, T0 + timedelta(seconds=5), POLICY, executor_has_gpus=True)
    assert [s.stage for s in d.starts] == ["faces"]
    assert d.starts[0].accelerator == "gpu"


def test_a_running_stage_is_left_alone(faces: Pipeline) -> None:
    d = decide(run(), [attempt("decode", 1, AttemptState.RUNNING)], faces, T0, POLICY, False)
    assert d.actions == [] and d.starts == []


def test_a_transient_failure_is_retried_after_backoff(faces: Pipeline) -> None:
    failed = [attempt("decode", 1, AttemptState.FAILED, exit_code=1, reason="boom")]
    # finished at T0+1s; backoff after attempt 1 is 10 s
    early = decide(run(), failed, faces, T0 + timedelta(seconds=5), POLICY, False)
    assert early.starts == [] and early.actions == []
    later = decide(run(), failed, faces, T0 + timedelta(seconds=11), POLICY, False)
    assert later.starts == [StartAttempt("r-1", "decode", 2, "cpu")]


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [POLICY.backoff(n).total_seconds() for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]


def test_bad_input_fails_the_run_at_once(faces: Pipeline) -> None:
    failed = [
        attempt(
            "decode",
            1,
            AttemptState.FAILED,
            exit_code=2,
            permanent=True,
            reason="the clip is empty (0 bytes)",
        )
    ]
    d = decide(run(), failed, faces, T0 + timedelta(hours=1), POLICY, False)
    assert d.starts == []
    assert d.actions == [
        FinishRun(
            "r-1",
            RunStatus.FAILED,
            "stage decode failed: the clip is empty (0 bytes) (bad input, not retried)",
        )
    ]


def test_retries_run_out(faces: Pipeline) -> None:
    retries = faces.stages["decode"].retries
    failed = [
        attempt("decode", n, AttemptState.FAILED, at=n * 100, exit_code=1, reason="S3 timeout")
        for n in range(1, retries + 2)
    ]
    d = decide(run(), failed, faces, T0 + timedelta(hours=1), POLICY, False)
    assert d.actions == [
        FinishRun(
            "r-1", RunStatus.FAILED, f"stage decode failed after {retries + 1} attempts: S3 timeout"
        )
    ]


def test_a_failed_run_cancels_what_is_still_in_flight(faces: Pipeline) -> None:
    attempts = [
        attempt("decode", 1, AttemptState.SUCCEEDED),
        attempt("faces", 1, AttemptState.FAILED, at=2, exit_code=2, permanent=True, reason="x"),
        attempt("publish", 1, AttemptState.RUNNING, at=3),
    ]
    d = decide(run(), attempts, faces, T0 + timedelta(seconds=10), POLICY, False)
    assert d.actions[0] == CancelAttempts(("h-publish-1",))
    assert isinstance(d.actions[1], FinishRun)


def test_all_stages_done_finishes_the_run(faces: Pipeline) -> None:
    attempts = [
        attempt(s, 1, AttemptState.SUCCEEDED, at=i)
        for i, s in enumerate(["decode", "faces", "thumbnails", "publish"])
    ]
    d = decide(run(), attempts, faces, T0 + timedelta(seconds=10), POLICY, False)
    assert d.actions == [FinishRun("r-1", RunStatus.SUCCEEDED)]


def test_an_attempt_recorded_but_never_submitted_is_resubmitted(faces: Pipeline) -> None:
    pending = [attempt("decode", 1, AttemptState.PENDING, handle=None)]
    d = decide(run(), pending, faces, T0, POLICY, False)
    assert d.actions == [Resubmit("r-1", "r-1-decode-1")] and d.starts == []


def test_an_attempt_running_far_past_its_timeout_is_expired(faces: Pipeline) -> None:
    running = [attempt("decode", 1, AttemptState.RUNNING)]
    timeout = faces.stages["decode"].timeout_seconds
    within = decide(run(), running, faces, T0 + timedelta(seconds=timeout + 29), POLICY, False)
    assert within.actions == []
    past = decide(run(), running, faces, T0 + timedelta(seconds=timeout + 31), POLICY, False)
    assert len(past.actions) == 1 and isinstance(past.actions[0], ExpireAttempt)
    assert past.actions[0].handle == "h-decode-1"


def test_gpu_stage_falls_back_to_cpu_at_once_where_there_is_no_gpu(faces: Pipeline) -> None:
    done = [attempt("decode", 1, AttemptState.SUCCEEDED)]
    d = decide(run(), done, faces, T0 + timedelta(seconds=2), POLICY, executor_has_gpus=False)
    assert d.starts == [StartAttempt("r-1", "faces", 1, "cpu")]


def test_gpu_stage_waits_for_a_gpu_then_may_fall_back(faces: Pipeline) -> None:
    done = [attempt("decode", 1, AttemptState.SUCCEEDED)]  # finished at T0+1s
    wait = faces.stages["faces"].spec.placement.fallback_after_seconds
    early = decide(run(), done, faces, T0 + timedelta(seconds=2), POLICY, True)
    assert early.starts == [StartAttempt("r-1", "faces", 1, "gpu", None)]
    # No GPU slot free: a start without fallback is not admitted.
    assert admit(early.starts, free_slots=4, free_gpu_slots=0) == []
    late = decide(run(), done, faces, T0 + timedelta(seconds=wait + 2), POLICY, True)
    assert late.starts == [StartAttempt("r-1", "faces", 1, "gpu", "cpu")]
    assert admit(late.starts, 4, 0) == [StartAttempt("r-1", "faces", 1, "cpu")]
    assert admit(late.starts, 4, 1) == [StartAttempt("r-1", "faces", 1, "gpu", "cpu")]


def test_a_gpu_only_stage_fails_where_there_is_no_gpu(faces: Pipeline) -> None:
    spec = faces.spec.model_copy(deep=True)
    spec.stages[1].placement.fallback = None
    strict = load_catalog([PROJECT_ROOT / "algorithms"], []).resolve(spec, "test")
    done = [attempt("decode", 1, AttemptState.SUCCEEDED)]
    d = decide(run(), done, strict, T0, POLICY, executor_has_gpus=False)
    assert isinstance(d.actions[-1], FinishRun)
    assert "needs a GPU" in (d.actions[-1].error or "")


def test_admission_is_first_come_within_the_free_slots() -> None:
    starts = [StartAttempt(f"r-{i}", "decode", 1, "cpu") for i in range(5)]
    assert admit(starts, free_slots=2, free_gpu_slots=0) == starts[:2]
    assert admit(starts, free_slots=0, free_gpu_slots=0) == []


def test_a_run_whose_pipeline_is_gone_fails_with_a_reason() -> None:
    d = decide(run(), [], None, T0, POLICY, False)
    assert d.actions == [
        FinishRun(
            "r-1", RunStatus.FAILED, "pipeline 'faces' is no longer defined; restore its file"
        )
    ]


@pytest.mark.parametrize(
    ("status", "state", "permanent"),
    [
        (ExecStatus(state=ExecState.RUNNING), None, None),
        (ExecStatus(state=ExecState.SUCCEEDED, exit_code=0), AttemptState.SUCCEEDED, False),
        (ExecStatus(state=ExecState.FAILED, exit_code=2, reason="bad"), AttemptState.FAILED, True),
        (ExecStatus(state=ExecState.FAILED, exit_code=1), AttemptState.FAILED, False),
        (
            ExecStatus(state=ExecState.FAILED, exit_code=124, timed_out=True),
            AttemptState.FAILED,
            False,
        ),
        (ExecStatus(state=ExecState.LOST, reason="gone"), AttemptState.FAILED, False),
    ],
)
def test_executor_status_maps_onto_the_stage_contract(
    status: ExecStatus, state: AttemptState | None, permanent: bool | None
) -> None:
    result = outcome(status)
    if state is None:
        assert result is None
    else:
        assert result is not None
        assert (result.state, result.permanent) == (state, permanent)


def test_a_queued_attempt_never_expires_for_its_stage_timeout(faces: Pipeline) -> None:
    # Waiting for a node (a GPU, an image) is not running: no container start, no clock.
    queued = [attempt("decode", 1, AttemptState.RUNNING, started_at=None)]
    d = decide(run(), queued, faces, T0 + timedelta(days=1), POLICY, False, executor_retries=True)
    assert d.actions == [] and d.starts == []


def test_an_executor_that_retries_itself_gets_its_retries_and_none_on_top(
    faces: Pipeline,
) -> None:
    stage = faces.stages["decode"]
    assert stage.retries == 2
    running = [attempt("decode", 1, AttemptState.RUNNING)]
    # Three tries of the timeout, the Job's backoff between them (10 s, 20 s), the grace.
    limit = 3 * stage.timeout_seconds + 10 + 20 + POLICY.overrun_grace_seconds
    assert POLICY.run_limit(stage.timeout_seconds, 2) == timedelta(seconds=limit)
    within = decide(run(), running, faces, T0 + timedelta(seconds=limit - 1), POLICY, False, True)
    assert within.actions == []
    past = decide(run(), running, faces, T0 + timedelta(seconds=limit + 1), POLICY, False, True)
    [expire] = past.actions
    assert isinstance(expire, ExpireAttempt) and expire.exhausted
    # Expired that way, the attempt is final: the Job already used the stage's retries.
    expired = [
        attempt(
            "decode",
            1,
            AttemptState.FAILED,
            timed_out=True,
            exhausted=True,
            reason=expire.reason,
        )
    ]
    d = decide(run(), expired, faces, T0 + timedelta(hours=1), POLICY, False, True)
    assert d.starts == [] and isinstance(d.actions[-1], FinishRun)


def test_the_job_backoff_between_its_own_tries_is_capped() -> None:
    # 10, 20, 40, ..., capped at 360 s: the Job controller's pod-failure backoff.
    assert POLICY.run_limit(0, 8) == timedelta(
        seconds=10 + 20 + 40 + 80 + 160 + 320 + 360 + 360 + POLICY.overrun_grace_seconds
    )
