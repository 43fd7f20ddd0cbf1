"""The engine's decisions: a pure function from observed state to actions.

No I/O here. The reconciler observes (store + executor), calls ``decide``, and
carries out the actions; tests call ``decide`` directly with hand-made state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from algorithms.contract import EXIT_BAD_INPUT
from orchestrator.domain.catalog import Pipeline
from orchestrator.domain.layout import run_id
from orchestrator.executors.base import ExecState, ExecStatus
from orchestrator.store.models import AttemptState, Clip, Run, RunStatus, StageAttempt
from orchestrator.store.tenancy import SkippedRun


@dataclass(frozen=True)
class RetryPolicy:
    backoff_seconds: float = 5.0
    backoff_max_seconds: float = 300.0
    #: How long past its timeout a stage may run before the engine gives up on the
    #: executor stopping it and fails the attempt itself.
    overrun_grace_seconds: float = 60.0
    #: An executor that retries by itself waits this long before its first retry,
    #: doubling up to the cap: a Job's pod-failure backoff (10 s doubling, capped at
    #: 6 min, per the Kubernetes Job docs).
    executor_backoff_seconds: float = 10.0
    executor_backoff_max_seconds: float = 360.0

    def backoff(self, failed_attempt: int) -> timedelta:
        seconds = self.backoff_seconds * 2 ** max(0, failed_attempt - 1)
        return timedelta(seconds=min(seconds, self.backoff_max_seconds))

    def run_limit(self, timeout_seconds: float, own_retries: int) -> timedelta:
        """How long after its code started an attempt may still be running: each of the
        executor's own tries (1 + ``own_retries``) for the stage timeout, its backoff
        between them, and the grace."""
        backoffs = sum(
            min(self.executor_backoff_seconds * 2**k, self.executor_backoff_max_seconds)
            for k in range(own_retries)
        )
        tries = 1 + own_retries
        return timedelta(seconds=timeout_seconds * tries + backoffs + self.overrun_grace_seconds)


# --- actions --------------------------------------------------------------------------


@dataclass(frozen=True)
class StartAttempt:
    run_id: str
    stage: str
    attempt: int
    accelerator: str
    #: Where this attempt may go instead when no ``accelerator`` slot is free.
    fallback: str | None = None


@dataclass(frozen=True)
class Resubmit:
    """An attempt recorded but never handed over (the orchestrator stopped between)."""

    run_id: str
    attempt_id: str


@dataclass(frozen=True)
class ExpireAttempt:
    attempt_id: str
    handle: str | None
    reason: str
    #: The executor's own retries were part of the limit: none from the engine on top.
    exhausted: bool = False


@dataclass(frozen=True)
class CancelAttempts:
    handles: tuple[str, ...]


@dataclass(frozen=True)
class FinishRun:
    run_id: str
    status: RunStatus
    error: str | None = None


Action = StartAttempt | Resubmit | ExpireAttempt | CancelAttempts | FinishRun


# --- observation ----------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptOutcome:
    """What an executor status means for the attempt's row."""

    state: AttemptState
    exit_code: int | None
    reason: str | None
    permanent: bool
    timed_out: bool
    exhausted: bool = False
    tries: int | None = None


def outcome(status: ExecStatus) -> AttemptOutcome | None:
    """Maps an executor status onto the stage contract; None while still in flight."""
    if status.state in (ExecState.QUEUED, ExecState.RUNNING):
        return None
    if status.state == ExecState.SUCCEEDED:
        return AttemptOutcome(AttemptState.SUCCEEDED, 0, None, False, False, tries=status.tries)
    if status.state == ExecState.LOST:
        reason = status.reason or "the executor lost track of it"
        return AttemptOutcome(AttemptState.FAILED, None, f"lost: {reason}", False, False)
    permanent = status.exit_code == EXIT_BAD_INPUT and not status.timed_out
    reason = status.reason or f"exited with code {status.exit_code}"
    return AttemptOutcome(
        AttemptState.FAILED,
        status.exit_code,
        reason,
        permanent,
        status.timed_out,
        status.exhausted,
        status.tries,
    )


# --- decisions ------------------------------------------------------------------------


@dataclass
class RunDecision:
    actions: list[Action] = field(default_factory=list)
    #: Stages ready to start, in pipeline order; admitted later against capacity.
    starts: list[StartAttempt] = field(default_factory=list)


def _latest(attempts: Sequence[StageAttempt]) -> dict[str, StageAttempt]:
    latest: dict[str, StageAttempt] = {}
    for attempt in attempts:
        if attempt.stage not in latest or attempt.attempt > latest[attempt.stage].attempt:
            latest[attempt.stage] = attempt
    return latest


def _in_flight(attempts: Sequence[StageAttempt]) -> list[StageAttempt]:
    return [a for a in attempts if a.state in (AttemptState.PENDING, AttemptState.RUNNING)]


def _fail(run: Run, attempts: Sequence[StageAttempt], error: str) -> list[Action]:
    handles = tuple(a.handle for a in _in_flight(attempts) if a.handle)
    actions: list[Action] = [CancelAttempts(handles)] if handles else []
    return [*actions, FinishRun(run.id, RunStatus.FAILED, error)]


def decide(
    run: Run,
    attempts: Sequence[StageAttempt],
    pipeline: Pipeline | None,
    now: datetime,
    policy: RetryPolicy,
    executor_has_gpus: bool,
    executor_retries: bool = False,
) -> RunDecision:
    """What to do next for one active run. ``executor_retries``: the executor retries a
    failed attempt itself (a Job's backoffLimit), so the engine never adds its own."""
    decision = RunDecision()
    if pipeline is None:
        decision.actions = _fail(
            run, attempts, f"pipeline {run.pipeline!r} is no longer defined; restore its file"
        )
        return decision

    latest = _latest(attempts)
    done_at: dict[str, datetime] = {}
    for name, stage in pipeline.stages.items():
        attempt = latest.get(name)
        if attempt is None:
            continue
        if attempt.state == AttemptState.SUCCEEDED:
            done_at[name] = attempt.finished_at or now
        elif attempt.state == AttemptState.FAILED:
            if attempt.permanent:
                # Exit 2 blames the input; otherwise the stage broke its contract (wrote
                # garbage), which its own reason says.
                why = "bad input, " if attempt.exit_code == EXIT_BAD_INPUT else ""
                decision.actions = _fail(
                    run, attempts, f"stage {name} failed: {attempt.reason} ({why}not retried)"
                )
                return decision
            if attempt.exhausted or attempt.attempt > stage.retries:
                count = attempt.tries if attempt.exhausted and attempt.tries else attempt.attempt
                tries = "attempt" if count == 1 else "attempts"
                decision.actions = _fail(
                    run, attempts, f"stage {name} failed after {count} {tries}: {attempt.reason}"
                )
                return decision

    if len(done_at) == len(pipeline.stages):
        decision.actions.append(FinishRun(run.id, RunStatus.SUCCEEDED))
        return decision

    for name, stage in pipeline.stages.items():
        attempt = latest.get(name)
        if attempt is not None and attempt.state == AttemptState.SUCCEEDED:
            continue
        if attempt is not None and attempt.state == AttemptState.PENDING:
            if attempt.handle is None:
                decision.actions.append(Resubmit(run.id, attempt.id))
            continue
        if attempt is not None and attempt.state == AttemptState.RUNNING:
            if attempt.started_at is None:
                # Queued (for a node, a GPU, an image): waiting is not running, so the
                # stage timeout has not begun; the executor watches what it waits for.
                continue
            own_retries = stage.retries if executor_retries else 0
            if attempt.started_at + policy.run_limit(stage.timeout_seconds, own_retries) < now:
                decision.actions.append(
                    ExpireAttempt(
                        attempt.id,
                        attempt.handle,
                        f"ran past its {stage.timeout_seconds} s timeout and the executor "
                        "did not stop it",
                        exhausted=executor_retries,
                    )
                )
            continue
        deps = stage.spec.depends_on
        if not deps.issubset(done_at):
            continue
        ready_since = max([run.created_at, *(done_at[d] for d in deps)])
        number = 1
        if attempt is not None:  # failed, retries left
            retry_at = (attempt.finished_at or now) + policy.backoff(attempt.attempt)
            if now < retry_at:
                continue
            number = attempt.attempt + 1
            ready_since = max(ready_since, attempt.finished_at or now)
        placement = stage.spec.placement
        accelerator, fallback = placement.accelerator, None
        if accelerator == "gpu" and "gpu" not in stage.algorithm.accelerators:
            accelerator = placement.fallback or "cpu"
        elif accelerator == "gpu" and not executor_has_gpus:
            # No GPU will ever come: fall back at once, or fail with what to change.
            if placement.fallback is None:
                decision.actions = _fail(
                    run,
                    attempts,
                    f"stage {name} needs a GPU and this executor has none; give it "
                    "`placement: {fallback: cpu}` or run it on a cluster with GPU nodes",
                )
                decision.starts = []
                return decision
            accelerator = placement.fallback
        elif (
            accelerator == "gpu"
            and placement.fallback
            and now - ready_since >= timedelta(seconds=placement.fallback_after_seconds)
        ):
            # GPUs exist but the wait is over: admission may use the fallback if none is free.
            fallback = placement.fallback
        decision.starts.append(StartAttempt(run.id, name, number, accelerator, fallback))
    return decision


def tenancy(
    clip: Clip, pipelines: Iterable[Pipeline], now: datetime
) -> tuple[list[Pipeline], list[SkippedRun]]:
    """Which of the pipelines whose trigger matched ``clip`` may run on it, and the
    others as rows that say why not: a pipeline runs on a clip of tenant T only if it
    serves T and every algorithm version it uses is T's own, the operator's, or
    published by an admin. Nothing is dropped without a row."""
    allowed: list[Pipeline] = []
    skipped: list[SkippedRun] = []
    for pipeline in pipelines:
        reason = pipeline.refusal(clip.tenant)
        if reason is None:
            allowed.append(pipeline)
        else:
            skipped.append(
                SkippedRun(
                    id=run_id(clip.id, pipeline.name),
                    clip_id=clip.id,
                    pipeline=pipeline.name,
                    tenant=clip.tenant,
                    reason=reason,
                    skipped_at=now,
                )
            )
    return allowed, skipped


def admit(
    starts: Sequence[StartAttempt], free_slots: int, free_gpu_slots: int
) -> list[StartAttempt]:
    """Admits starts in order (oldest run first) while slots last; a GPU start with a
    CPU fallback takes a CPU slot when no GPU slot is free."""
    admitted = []
    for start in starts:
        if free_slots <= 0:
            break
        if start.accelerator == "gpu":
            if free_gpu_slots > 0:
                free_gpu_slots -= 1
            elif start.fallback:
                start = StartAttempt(start.run_id, start.stage, start.attempt, start.fallback)
            else:
                continue
        free_slots -= 1
        admitted.append(start)
    return admitted
