"""The engine's decisions: a pure function from observed state to actions.

No I/O here. The reconciler observes (store + executor), calls ``decide``, and
carries out the actions; tests call ``decide`` directly with hand-made state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from algorithms.contract import EXIT_BAD_INPUT
from orchestrator.domain.catalog import Pipeline, ResolvedStage
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
class ChainMember:
    """A stage fused after a StartAttempt's: it runs next, in the same execution."""

    stage: str
    attempt: int
    #: Its outputs stay in the execution (every stage that reads them is in it too).
    keep_local: bool = False
    #: Its own accelerator, where it differs from the execution's (a CPU stage that
    #: joined a GPU stage's process, ``placement.join_gpu``); None: the execution's.
    accelerator: str | None = None


@dataclass(frozen=True)
class StartAttempt:
    run_id: str
    stage: str
    attempt: int
    accelerator: str
    #: Where this attempt may go instead when no ``accelerator`` slot is free.
    fallback: str | None = None
    #: The later stages fused with it, in order (see ``fuse``); empty: it runs alone.
    chain: tuple[ChainMember, ...] = ()
    keep_local: bool = False

    @property
    def stages(self) -> list[str]:
        return [self.stage, *(member.stage for member in self.chain)]


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
    if status.state == ExecState.SKIPPED:
        reason = status.reason or "not run: an earlier stage of its execution failed"
        return AttemptOutcome(AttemptState.SKIPPED, None, reason, False, False)
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


def _done(
    pipeline: Pipeline, latest: dict[str, StageAttempt], now: datetime
) -> dict[str, datetime]:
    """The stages whose work is done, with when: succeeded, and, for one that kept its
    outputs in its process (fused), every stage reading them done too. If one of those
    must run again, the outputs it needs are gone with that process: so must this one."""
    consumers = pipeline.readers
    done_at: dict[str, datetime] = {}
    for name in reversed(pipeline.stages):  # consumers come after what they read
        attempt = latest.get(name)
        if attempt is None or attempt.state != AttemptState.SUCCEEDED:
            continue
        if attempt.keep_local and not all(c in done_at for c in consumers[name]):
            continue
        done_at[name] = attempt.finished_at or now
    return done_at


class _NoGpu(Exception):
    pass


def _static_accelerator(stage: ResolvedStage, executor_has_gpus: bool) -> str | None:
    """Where a stage goes before any waiting for a GPU counts; None: nowhere."""
    placement = stage.spec.placement
    if placement.accelerator == "gpu" and (
        "gpu" not in stage.algorithm.accelerators or not executor_has_gpus
    ):
        return placement.fallback
    return placement.accelerator


def _placement(
    name: str,
    stage: ResolvedStage,
    executor_has_gpus: bool,
    waited: timedelta,
) -> tuple[str, str | None]:
    """The accelerator a ready stage starts on, and its fallback at admission."""
    placement = stage.spec.placement
    accelerator = _static_accelerator(stage, executor_has_gpus)
    if accelerator is None:
        # No GPU will ever come: fail with what to change.
        raise _NoGpu(
            f"stage {name} needs a GPU and this executor has none; give it "
            "`placement: {fallback: cpu}` or run it on a cluster with GPU nodes"
        )
    if (
        accelerator == "gpu"
        and placement.fallback
        and waited >= timedelta(seconds=placement.fallback_after_seconds)
    ):
        # GPUs exist but the wait is over: admission may use the fallback if none is free.
        return accelerator, placement.fallback
    return accelerator, None


def decide(
    run: Run,
    attempts: Sequence[StageAttempt],
    pipeline: Pipeline | None,
    now: datetime,
    policy: RetryPolicy,
    executor_has_gpus: bool,
    executor_retries: bool = False,
    fuse: bool = False,
) -> RunDecision:
    """What to do next for one active run. ``executor_retries``: the executor retries a
    failed attempt itself (a Job's backoffLimit), so the engine never adds its own.
    ``fuse``: the executor runs consecutive stages in one execution (see ``fused``)."""
    decision = RunDecision()
    if pipeline is None:
        decision.actions = _fail(
            run, attempts, f"pipeline {run.pipeline!r} is no longer defined; restore its file"
        )
        return decision

    latest = _latest(attempts)
    # Retries count failures: a fused stage that was skipped, or ran again for a later
    # stage's sake, used none.
    failures = Counter(a.stage for a in attempts if a.state == AttemptState.FAILED)
    for name, stage in pipeline.stages.items():
        attempt = latest.get(name)
        if attempt is None or attempt.state != AttemptState.FAILED:
            continue
        if attempt.permanent:
            # Exit 2 blames the input; otherwise the stage broke its contract (wrote
            # garbage), which its own reason says.
            why = "bad input, " if attempt.exit_code == EXIT_BAD_INPUT else ""
            decision.actions = _fail(
                run, attempts, f"stage {name} failed: {attempt.reason} ({why}not retried)"
            )
            return decision
        if attempt.exhausted or failures[name] > stage.retries:
            count = attempt.tries if attempt.exhausted and attempt.tries else failures[name]
            tries = "attempt" if count == 1 else "attempts"
            decision.actions = _fail(
                run, attempts, f"stage {name} failed after {count} {tries}: {attempt.reason}"
            )
            return decision

    done_at = _done(pipeline, latest, now)
    if len(done_at) == len(pipeline.stages):
        decision.actions.append(FinishRun(run.id, RunStatus.SUCCEEDED))
        return decision

    in_flight = bool(_in_flight(attempts))
    consumers = pipeline.readers
    for name, stage in pipeline.stages.items():
        if name in done_at:
            continue
        attempt = latest.get(name)
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
        if attempt is not None:
            number = attempt.attempt + 1
            finished = attempt.finished_at or now
            if attempt.state == AttemptState.SUCCEEDED:
                # It kept its outputs in a process that is gone, and a stage reading them
                # must run again: this one runs again first (with it, fused), once
                # nothing of the run is in flight and that stage's backoff is over.
                if in_flight:
                    continue
                retry_at = [
                    (later.finished_at or now) + policy.backoff(failures[later.stage])
                    for c in consumers[name]
                    if (later := latest.get(c)) is not None and later.state == AttemptState.FAILED
                ]
                if retry_at and now < max(retry_at):
                    continue
            elif attempt.state == AttemptState.FAILED and now < finished + policy.backoff(
                failures[name]
            ):  # retries left, after the backoff
                continue
            # SKIPPED: it never ran; it starts as soon as its inputs are there again.
            ready_since = max(ready_since, finished)
        try:
            accelerator, fallback = _placement(name, stage, executor_has_gpus, now - ready_since)
        except _NoGpu as exc:
            decision.actions = _fail(run, attempts, str(exc))
            decision.starts = []
            return decision
        decision.starts.append(StartAttempt(run.id, name, number, accelerator, fallback))
    if fuse:
        decision.starts = fused(decision.starts, pipeline, latest, set(done_at), executor_has_gpus)
    return decision


def fused(
    starts: Sequence[StartAttempt],
    pipeline: Pipeline,
    latest: dict[str, StageAttempt],
    done: set[str],
    executor_has_gpus: bool,
) -> list[StartAttempt]:
    """The starts of one run with later stages fused into them: a stage joins the
    execution of an earlier one when it has the same placement (or is a CPU stage with
    ``placement.join_gpu`` after a GPU one: it runs there, on CPU), may be fused (SDK
    stages; the pipeline did not say ``fuse: false``), is not running already, reads
    the output of a stage of that execution, and needs nothing but that and what is
    done. A fused stage
    that only feeds stages of the same execution, and whose algorithm says its outputs
    are ``intermediate``, keeps them there: they never go to S3."""
    consumers = pipeline.readers
    order = list(pipeline.stages)
    chosen: list[StartAttempt] = []
    taken: set[str] = set()
    by_stage = {start.stage: start for start in starts}

    def may_fuse(name: str) -> bool:
        stage = pipeline.stages[name]
        return stage.spec.fuse and stage.algorithm.fusable

    for start in starts:
        if start.stage in taken:
            continue
        if not may_fuse(start.stage):
            chosen.append(start)
            continue
        members = [start.stage]
        numbers = {start.stage: start.attempt}
        joined: set[str] = set()
        covered = done | {start.stage}
        for name in order[order.index(start.stage) + 1 :]:
            stage = pipeline.stages[name]
            attempt = latest.get(name)
            if name in done or name in taken or not may_fuse(name):
                continue
            if attempt is not None and attempt.state in (
                AttemptState.PENDING,
                AttemptState.RUNNING,
            ):
                continue
            if not stage.spec.depends_on <= covered or not stage.spec.depends_on & set(members):
                # It needs what is not there yet, or nothing of this execution: a stage
                # that runs beside it, not after it, keeps its own process.
                continue
            other = by_stage.get(name)
            if other is not None:
                own = other.accelerator
                alike = (other.accelerator, other.fallback) == (start.accelerator, start.fallback)
            else:
                own = _static_accelerator(stage, executor_has_gpus)
                alike = own == start.accelerator and not (
                    start.fallback and stage.spec.placement.fallback != start.fallback
                )
            if not alike:
                if own == "cpu" and start.accelerator == "gpu" and stage.spec.placement.join_gpu:
                    joined.add(name)  # it rides in the GPU stage's process, on CPU
                else:
                    continue
            members.append(name)
            numbers[name] = attempt.attempt + 1 if attempt is not None else 1
            covered.add(name)
        taken.update(members)
        keep = {
            name: pipeline.stages[name].algorithm.intermediate
            and bool(consumers[name])
            and all(reader in members for reader in consumers[name])
            for name in members
        }
        chosen.append(
            replace(
                start,
                keep_local=keep[start.stage],
                chain=tuple(
                    ChainMember(m, numbers[m], keep[m], "cpu" if m in joined else None)
                    for m in members[1:]
                ),
            )
        )
    return chosen


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
                start = replace(start, accelerator=start.fallback, fallback=None)
            else:
                continue
        free_slots -= 1
        admitted.append(start)
    return admitted
