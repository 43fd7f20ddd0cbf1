"""The reconcile loop: observe (store + executor) -> decide (pure) -> act.

Everything needed to resume lives in the store. Each action is written so that
replaying it after a crash is harmless: attempts have deterministic ids and unique
keys, submitting a submitted attempt adopts it, and a run finishes exactly once.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError

from algorithms.contract import MANIFEST_NAME
from orchestrator import telemetry
from orchestrator.domain.catalog import Catalog, Pipeline
from orchestrator.domain.layout import attempt_id, result_key, run_id, stage_prefix
from orchestrator.engine.batching import Candidate, plan_executions
from orchestrator.engine.checked_results import CheckedResults
from orchestrator.engine.decide import (
    Action,
    CancelAttempts,
    ChainMember,
    ExpireAttempt,
    FinishRun,
    Resubmit,
    RetryPolicy,
    StartAttempt,
    admit,
    decide,
    outcome,
    tenancy,
)
from orchestrator.engine.launches import IN_FLIGHT, build_launch, compose_result
from orchestrator.engine.outputs import (
    RESULT_OUTPUT,
    BrokenContract,
    StageManifest,
    check_manifest,
    check_result,
    unreadable,
)
from orchestrator.errors import (
    CamflowError,
    ContentError,
    ExecutorError,
    ObjectMissing,
    StorageError,
)
from orchestrator.executors.base import (
    ExecState,
    ExecStatus,
    Executor,
    StageLaunch,
    Submission,
    SubmitRefused,
)
from orchestrator.logs import about
from orchestrator.storage import S3Gateway
from orchestrator.store import Clip, Run, StageAttempt, Store
from orchestrator.store.models import AttemptState, RunStatus, utcnow
from orchestrator.store.repository import AttemptChange, ClipPlan, RunFinish, RunWithAttempts

log = logging.getLogger("camflow.engine")


@dataclass
class TickReport:
    planned: int = 0
    started: int = 0
    finished: list[tuple[str, RunStatus]] = field(default_factory=list)
    active: int = 0
    #: Runs (and clips being planned) whose handling raised this tick; the others went on.
    errors: int = 0


#: Something we depend on is away for a moment (S3, the database, a cluster, the disk):
#: a run that meets one is looked at again next tick without counting against it, or
#: an outage would fail every active run.
UNAVAILABLE: tuple[type[Exception], ...] = (
    StorageError,
    ExecutorError,
    OperationalError,
    InterfaceError,
    OSError,
)


@dataclass
class _Trouble:
    """The runs whose handling raised this tick, each with the first step and error."""

    runs: dict[str, tuple[str, Exception]] = field(default_factory=dict)
    #: Undoes one run's writes in the phase's transaction when its handling raises
    #: (the store's savepoint), so that the others' stay and can go on.
    savepoint: Callable[[], AbstractContextManager[None]] = nullcontext

    def __contains__(self, run_id: object) -> bool:
        return run_id in self.runs

    @contextmanager
    def isolate(self, view: RunWithAttempts, step: str) -> Iterator[None]:
        """Runs the block for one run; what it raises is logged and kept, not raised,
        so that one run's trouble never stops the tick for the others."""
        try:
            with self.savepoint():
                yield
        except Exception as exc:
            where = f"clip {_clip_name(view.clip)} run {view.run.id}"
            fields = about(view.clip.id, view.run.id)
            if isinstance(exc, UNAVAILABLE):
                log.warning(
                    "%s: %s while %s it; trying again next tick", where, exc, step, extra=fields
                )
            else:
                log.exception(
                    "%s: unexpected error while %s it; the other runs go on",
                    where,
                    step,
                    extra=fields,
                )
            self.runs.setdefault(view.run.id, (step, exc))


#: result.json writes in flight at once when a tick ends many runs: as many as a boto3
#: client keeps connections (its max_pool_connections), beyond which each would open
#: and drop a connection of its own.
RESULT_WRITERS = 10

Item = TypeVar("Item")


@dataclass(frozen=True)
class _Ending:
    """How a run ends, composed and not written yet."""

    status: RunStatus
    error: str | None
    result: dict[str, Any]
    #: Where its result.json goes in the results bucket.
    key: str
    attempts: list[StageAttempt]
    #: Why its stages still in flight end with it, written with its end (and told in
    #: result.json); None when none is.
    settle: str | None


class _RecordedBefore(Exception):
    """One of the attempts a batch records together exists already."""


@dataclass
class _Observed:
    """An attempt's change that an observation calls for, not written yet."""

    view: RunWithAttempts
    attempt: StageAttempt
    change: AttemptChange
    #: It ends the attempt (counted, and its outcome logged, once written).
    finished: bool


#: Attempts observed between two commits of the observe phase.
OBSERVED_PER_COMMIT = 25


def _clip_name(clip: Clip) -> str:
    return f"{clip.id} ({clip.key})"


#: Why a run's stages still in flight end with it (cancelled, they no longer hold slots).
ENDED_WITH_RUN = "cancelled: the run ended"


def _settle_reason(attempts: Sequence[StageAttempt]) -> str | None:
    """Why a run's stages still in flight end with it; None when none is."""
    return ENDED_WITH_RUN if any(a.state in IN_FLIGHT for a in attempts) else None


class Reconciler:
    def __init__(
        self,
        store: Store,
        catalog: Catalog | Callable[[], Catalog],
        executor: Executor,
        s3: S3Gateway,
        results_bucket: str,
        default_bucket: str,
        policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        max_result_bytes: int = 16 * 2**20,
        max_manifest_bytes: int = 2**20,
        max_erroring_ticks: int = 10,
        batch_max_size: int = 8,
        batch_max_wait_seconds: float = 0.0,
        fuse_stages: bool = True,
    ) -> None:
        self.store = store
        #: A fixed catalog, or where to get the current one (the registry can change).
        self._catalog_source = catalog if callable(catalog) else (lambda: catalog)
        self.catalog = self._catalog_source()
        #: Pipelines that exist only for this process (``camflow algorithms try``).
        self.extra_pipelines: dict[str, Pipeline] = {}
        #: Whose runs this engine drives: None for `camflow serve`; a one-shot command
        #: sets its own name so that it and a running serve never drive each other's.
        self.owner: str | None = None
        #: Whether this engine may still act (a replica checks it holds the lease):
        #: asked before each run's actions and each start, not only when a tick begins.
        self.may_act: Callable[[], bool] = lambda: True
        self.executor = executor
        #: Consecutive stages with the same placement run in one execution, where the
        #: executor can (fused stages).
        self.fuses = fuse_stages and getattr(executor, "fuses", False)
        self.s3 = s3
        self.results_bucket = results_bucket
        self.default_bucket = default_bucket
        self.policy = policy or RetryPolicy()
        self.clock = clock
        self.max_result_bytes = max_result_bytes
        self.max_manifest_bytes = max_manifest_bytes
        self.max_erroring_ticks = max_erroring_ticks
        #: Run id -> ticks in a row its handling raised unexpectedly. In memory: a
        #: restart forgets it, which only delays giving up on a run, and a column would
        #: be written on every erroring tick to guard against what is almost always a
        #: bug that recurs within a few ticks of any start.
        self._erroring: dict[str, int] = {}
        self.batch_max_size = batch_max_size
        self.batch_max_wait_seconds = batch_max_wait_seconds
        #: (run, stage, attempt) -> when it was first seen ready to start, for the
        #: batch wait. In memory: a restart only starts its wait over.
        self._ready_since: dict[tuple[str, str, int], datetime] = {}
        self._checked_results = CheckedResults()

    # --- plan ---------------------------------------------------------------------------

    def plan_new_clips(self, report: TickReport | None = None) -> int:
        clips = self.store.unplanned_clips()
        plans: list[tuple[Clip, ClipPlan]] = []
        for clip in clips:
            try:
                plans.append((clip, self._clip_plan(clip)))
            except Exception:
                self._unplanned(clip, report)
        if len(plans) > 1:
            try:
                created = self.store.plan_many([plan for _, plan in plans])
            except UNAVAILABLE:
                raise  # the store is away: so is the rest of this tick
            except Exception as exc:
                log.warning(
                    "could not plan %d clips together (%s: %s); planning them one by one",
                    len(plans),
                    type(exc).__name__,
                    exc,
                )
            else:
                for (clip, plan), runs in zip(plans, created, strict=True):
                    self._log_plan(clip, plan, runs)
                return sum(len(runs) for runs in created)
        planned = 0
        for clip, plan in plans:
            try:
                runs = self.store.plan(clip.id, plan.runs, plan.skipped)
            except UNAVAILABLE:
                raise
            except Exception:
                self._unplanned(clip, report)
                continue
            self._log_plan(clip, plan, runs)
            planned += len(runs)
        return planned

    def _unplanned(self, clip: Clip, report: TickReport | None) -> None:
        # Left unplanned, so it is tried again next tick; the others go on.
        log.exception("clip %s: could not plan its runs", _clip_name(clip), extra=about(clip.id))
        if report is not None:
            report.errors += 1

    def _clip_plan(self, clip: Clip) -> ClipPlan:
        """The runs the clip gets (and the pipelines tenancy keeps off it), not written."""
        pipelines = [
            p
            for p in self.catalog.pipelines.values()
            if p.spec.trigger.matches(clip.bucket, clip.key, self.default_bucket)
        ]
        allowed, skipped = tenancy(clip, pipelines, self.clock())
        runs = [
            Run(id=run_id(clip.id, p.name), clip_id=clip.id, pipeline=p.name, algorithms=p.pins)
            for p in allowed
        ]
        return ClipPlan(clip.id, runs, list(skipped))

    def _log_plan(self, clip: Clip, plan: ClipPlan, created: list[Run]) -> None:
        for row in plan.skipped:
            # A pipeline scoped to other tenants is routine; an algorithm refused is not.
            served = self.catalog.pipelines[row.pipeline].spec.serves(clip.tenant)
            (log.warning if served else log.info)(
                "clip %s: pipeline %s not run: %s", _clip_name(clip), row.pipeline, row.reason
            )
        for run in created:
            log.info(
                "clip %s: run %s queued (pipeline %s)",
                _clip_name(clip),
                run.id,
                run.pipeline,
                extra=about(clip.id, run.id),
            )
        if not plan.runs and not plan.skipped:
            log.info(
                "clip %s: no pipeline's trigger matches it", _clip_name(clip), extra=about(clip.id)
            )

    def plan_runs(self, clips: Sequence[Clip], pipeline: Pipeline) -> list[Run]:
        """Creates a run of ``pipeline`` for each of ``clips``, in one transaction (the
        one-shot ``process`` path)."""
        runs = [
            Run(
                id=run_id(clip.id, pipeline.name),
                clip_id=clip.id,
                pipeline=pipeline.name,
                algorithms=pipeline.pins,
                owner=self.owner,
            )
            for clip in clips
        ]
        self.store.plan_many([ClipPlan(run.clip_id, [run], []) for run in runs])
        return runs

    def pipeline_of(self, run: Run) -> Pipeline | None:
        """The pipeline as this run was created: with the algorithm versions it pinned."""
        if run.pipeline in self.extra_pipelines:
            return self.extra_pipelines[run.pipeline]
        return self.catalog.pipeline_for_run(run.pipeline, run.algorithms)

    # --- observe ------------------------------------------------------------------------

    def _stage_json(self, view: RunWithAttempts, stage: str, name: str, setting: str) -> Any:
        """An object the stage wrote under its output prefix, parsed. BrokenContract if
        it is too large or not JSON; ObjectMissing if absent; StorageError if S3 is away."""
        return self._stage_json_sized(view, stage, name, setting)[0]

    def _stage_json_sized(
        self, view: RunWithAttempts, stage: str, name: str, setting: str
    ) -> tuple[Any, int]:
        """``_stage_json``, and the object's size in bytes."""
        prefix = stage_prefix(
            view.clip.tenant, view.clip.camera, view.clip.id, view.run.pipeline, stage
        )
        limit = self.max_manifest_bytes if name == MANIFEST_NAME else self.max_result_bytes
        try:
            return self.s3.get_json_sized(self.results_bucket, prefix + name, limit)
        except ContentError as exc:
            raise unreadable(name, exc, setting) from None

    def _read_result(
        self, view: RunWithAttempts, stage: str, name: str
    ) -> tuple[dict[str, Any], int]:
        """The stage's ``result`` output, checked, and its size in bytes."""
        try:
            raw, size = self._stage_json_sized(view, stage, name, "max_result_bytes")
        except ObjectMissing:
            raise BrokenContract(
                f"names {name} as its {RESULT_OUTPUT!r} output in {MANIFEST_NAME} but did not "
                f"write {name}"
            ) from None
        return check_result(raw, name), size

    def _check_outputs(
        self, view: RunWithAttempts, attempt: StageAttempt, reported: dict[str, Any] | None = None
    ) -> StageManifest:
        """The manifest of a stage that exited 0, and its result output, checked against
        the contract (BrokenContract if not). A StorageError (S3 away) is raised: the
        attempt then stays running and is looked at again next tick. ``reported``: the
        manifest as the stage handed it to the executor after writing it to S3 (one S3
        read less per attempt); held to the same size limit. The checked result is kept
        for the run's result.json (one S3 read less per run)."""
        stage = attempt.stage
        if reported is not None and len(json.dumps(reported)) <= self.max_manifest_bytes:
            raw: Any = reported
        else:
            try:
                raw = self._stage_json(view, stage, MANIFEST_NAME, "max_manifest_bytes")
            except ObjectMissing:
                raise BrokenContract(
                    f"exited 0 but wrote no {MANIFEST_NAME} (the stage contract requires it last)",
                    permanent=False,
                ) from None
        manifest = check_manifest(raw)
        if RESULT_OUTPUT in manifest.outputs:
            name = manifest.outputs[RESULT_OUTPUT]
            result, size = self._read_result(view, stage, name)
            self._checked_results.keep(attempt.id, name, result, size)
        return manifest

    def observe(self, views: list[RunWithAttempts], trouble: _Trouble | None = None) -> None:
        trouble = _Trouble() if trouble is None else trouble
        running: dict[str, tuple[RunWithAttempts, StageAttempt]] = {}
        for view in views:
            for attempt in view.attempts:
                if attempt.state not in (AttemptState.PENDING, AttemptState.RUNNING):
                    continue
                if attempt.executor != self.executor.name:
                    # Its handle and placement mean nothing to this executor (the store
                    # moved from local to kubernetes, or back): asking about it, or
                    # submitting it again, would be answered wrongly or not at all.
                    with trouble.isolate(view, "observing"):
                        self._abandon(
                            view,
                            attempt,
                            f"submitted to executor {attempt.executor}, but this camflow "
                            f"runs {self.executor.name}; it cannot follow or stop that "
                            "attempt (if it still runs there, stop it there)",
                        )
                    continue
                if attempt.state == AttemptState.RUNNING and attempt.handle:
                    running[attempt.handle] = (view, attempt)
        # Polled with nothing running too: an executor follows what holds its
        # capacity (a Kubernetes Job whose clips all ended, not yet complete) there.
        statuses = self._poll(running, trouble)
        observed: list[_Observed] = []
        for n, (handle, (view, attempt)) in enumerate(running.items(), 1):
            status = statuses.get(handle)
            if status is None or view.run.id in trouble:
                continue  # no answer about it this time: asked again next tick
            with trouble.isolate(view, "observing"):
                seen = self._observe_attempt(view, attempt, status)
                if seen is not None:
                    observed.append(seen)
            if n % OBSERVED_PER_COMMIT == 0:
                # Other writers wait behind an open write (all of them, on SQLite):
                # never for more than this many attempts' S3 reads.
                self._record_observed(observed, trouble)
                observed = []
                self.store.checkpoint()
        self._record_observed(observed, trouble)

    def _record_observed(self, observed: list[_Observed], trouble: _Trouble) -> None:
        """Writes what was observed of the attempts, together, then brings the views
        in step with what was written."""
        done = self._write_changes([(o.view, o.change) for o in observed], trouble, "observing")
        for seen, written in zip(observed, done, strict=True):
            if not written:
                continue  # another engine settled it first
            for key, value in seen.change.values.items():
                setattr(seen.attempt, key, value)
            if seen.finished:
                telemetry.attempt_finished(seen.attempt)
                self._log_outcome(seen.view, seen.attempt)

    def _write_changes(
        self,
        changes: list[tuple[RunWithAttempts, AttemptChange]],
        trouble: _Trouble | None,
        step: str,
    ) -> list[bool]:
        """Attempt updates of several runs, in one round trip where the store can; what
        each did. Without ``trouble``, the caller isolates the one run concerned."""
        if trouble is None:
            return self.store.update_attempts([change for _, change in changes])
        return self._together(changes, self.store.update_attempts, trouble, step)

    def _together(
        self,
        items: list[tuple[RunWithAttempts, Item]],
        write: Callable[[list[Item]], list[bool]],
        trouble: _Trouble,
        step: str,
    ) -> list[bool]:
        """``write`` for the items of several runs at once where the store writes in
        bulk (one round trip); what each did. Should the store refuse them together,
        each run's go on their own, so that only the run whose write fails waits for
        the next tick, as if it had raised alone."""
        if not items:
            return []
        if self.store.writes_in_bulk and len(items) > 1:
            try:
                with self.store.savepoint():
                    return write([item for _, item in items])
            except Exception as exc:
                log.warning(
                    "%d writes together failed while %s runs (%s: %s); writing them run by run",
                    len(items),
                    step,
                    type(exc).__name__,
                    exc,
                )
        # Run by run, each run's items in one write: all of them or none (a fused
        # chain's handles, say, never half recorded).
        positions: dict[str, list[int]] = {}
        for n, (view, _) in enumerate(items):
            positions.setdefault(view.run.id, []).append(n)
        done = [False] * len(items)
        for indexes in positions.values():
            with trouble.isolate(items[indexes[0]][0], step):
                for n, written in zip(indexes, write([items[n][1] for n in indexes]), strict=True):
                    done[n] = written
        return done

    def _poll(
        self, running: dict[str, tuple[RunWithAttempts, StageAttempt]], trouble: _Trouble
    ) -> dict[str, ExecStatus]:
        try:
            return self.executor.poll(list(running))
        except UNAVAILABLE as exc:
            log.warning("the %s executor cannot be polled now: %s", self.executor.name, exc)
            for view, _attempt in running.values():
                trouble.runs.setdefault(view.run.id, ("polling", exc))
            return {}
        except Exception as exc:
            # Most likely one handle it cannot read: find it rather than stay blind to all.
            log.warning(
                "the %s executor could not poll %d attempts at once (%s: %s); asking one at a time",
                self.executor.name,
                len(running),
                type(exc).__name__,
                exc,
            )
        statuses: dict[str, ExecStatus] = {}
        for handle, (view, attempt) in running.items():
            with trouble.isolate(view, "polling"):
                try:
                    statuses.update(self.executor.poll([handle]))
                except (ValueError, LookupError, TypeError) as exc:
                    self._abandon(
                        view,
                        attempt,
                        f"the {self.executor.name} executor cannot follow its handle "
                        f"{handle!r} ({type(exc).__name__}: {exc}); the attempt is given up",
                    )
        return statuses

    def _abandon(self, view: RunWithAttempts, attempt: StageAttempt, reason: str) -> None:
        """Fails an attempt this engine cannot follow. Not permanent: the stage did
        nothing wrong, and a retry here, where it can be followed, may well succeed."""
        values: dict[str, Any] = {
            "state": AttemptState.FAILED,
            "reason": reason,
            "permanent": False,
            "finished_at": self.clock(),
        }
        if not self.store.update_attempt(attempt.id, IN_FLIGHT, attempt.handle, **values):
            return  # another engine settled it first
        for key, value in values.items():
            setattr(attempt, key, value)
        telemetry.attempt_finished(attempt, ran=False)  # how long we followed it: no run time
        self._log_outcome(view, attempt)

    def _observe_attempt(
        self, view: RunWithAttempts, attempt: StageAttempt, status: ExecStatus
    ) -> _Observed | None:
        """What the status says to write of the attempt (written with the others'
        afterwards), or None."""
        if status.requeue:
            self._requeue(view, attempt, status)
            return None
        if status.state == ExecState.LOST and self._wrote_manifest(view, attempt.stage):
            # Its Job finished and was removed (by its TTL while the cluster was out of
            # sight): the manifest, written last, says it succeeded. Never run again.
            status = ExecStatus(
                state=ExecState.SUCCEEDED, exit_code=0, started_at=status.started_at
            )
        result = outcome(status)
        if result is None:
            if status.started_at and not attempt.started_at:
                started = AttemptChange(attempt.id, {"started_at": status.started_at})
                return _Observed(view, attempt, started, finished=False)
            return None
        values: dict[str, Any] = {
            "state": result.state,
            "exit_code": result.exit_code,
            "reason": result.reason,
            "permanent": result.permanent,
            "timed_out": result.timed_out,
            "exhausted": result.exhausted,
            "tries": result.tries,
            "finished_at": status.finished_at or self.clock(),
            "started_at": attempt.started_at or status.started_at,
        }
        if result.state == AttemptState.SUCCEEDED:
            try:
                manifest = self._check_outputs(view, attempt, status.manifest)
            except BrokenContract as exc:
                values.update(state=AttemptState.FAILED, reason=exc.reason, permanent=exc.permanent)
            else:
                values.update(metrics=manifest.metrics, outputs=manifest.outputs)
        change = AttemptChange(attempt.id, values, IN_FLIGHT, attempt.handle)
        return _Observed(view, attempt, change, finished=True)

    def _wrote_manifest(self, view: RunWithAttempts, stage: str) -> bool:
        try:
            self._stage_json(view, stage, MANIFEST_NAME, "max_manifest_bytes")
        except ObjectMissing:
            return False
        except BrokenContract:
            # It ran to its end and wrote garbage: the success path says so properly.
            return True
        return True

    def _requeue(self, view: RunWithAttempts, attempt: StageAttempt, status: ExecStatus) -> None:
        """The executor gave the attempt back (a GPU Job no node could take): the next
        tick's Resubmit starts it again at its recorded place, on ``status.requeue``.
        It goes alone (the stages fused after it were skipped with it), so what it was
        to hand over in its process now goes to S3 for them: kept local, its success
        would count for nothing and it would run again with them, on the GPU no node
        could take, again and again."""
        values: dict[str, Any] = {
            "state": AttemptState.PENDING,
            "handle": None,
            "accelerator": status.requeue,
            "submitted_at": None,
            "reason": status.reason,
            "keep_local": False,
        }
        if not self.store.update_attempt(
            attempt.id, (AttemptState.RUNNING,), attempt.handle, **values
        ):
            return  # another engine settled it first
        for key, value in values.items():
            setattr(attempt, key, value)
        log.info(
            "clip %s run %s: stage %s attempt %d: %s",
            _clip_name(view.clip),
            view.run.id,
            attempt.stage,
            attempt.attempt,
            status.reason,
            extra=about(view.clip.id, view.run.id, attempt.stage, attempt.attempt),
        )

    def _log_outcome(self, view: RunWithAttempts, attempt: StageAttempt) -> None:
        where = (
            f"clip {_clip_name(view.clip)} run {view.run.id}: stage {attempt.stage} "
            f"attempt {attempt.attempt}"
        )
        fields = about(view.clip.id, view.run.id, attempt.stage, attempt.attempt)
        if attempt.state == AttemptState.SUCCEEDED:
            log.info("%s succeeded %s", where, attempt.metrics or {}, extra=fields)
        elif attempt.state == AttemptState.SKIPPED:
            log.info("%s %s", where, attempt.reason, extra=fields)
        else:
            kind = "permanently" if attempt.permanent else "transiently"
            log.warning(
                "%s failed %s (exit %s): %s",
                where,
                kind,
                attempt.exit_code,
                attempt.reason,
                extra=fields,
            )

    # --- act ----------------------------------------------------------------------------

    def tick(self, only: Collection[str] | None = None) -> TickReport:
        """One round of observe, decide, act; ``only`` limits it to those runs (the
        one-shot ``process`` path, which must not drive anyone else's runs)."""
        telemetry.ENGINE_TICKS.inc()
        try:
            report = self._tick(only)
        except Exception:
            telemetry.ENGINE_TICK_FAILURES.inc()
            raise
        telemetry.ENGINE_LAST_TICK.set_to_current_time()
        return report

    def _tick(self, only: Collection[str] | None) -> TickReport:
        report = TickReport()
        self.catalog = self._catalog_source()
        if only is None and self.owner is None:
            report.planned = self.plan_new_clips(report)
        views = self.store.active_runs(self.owner)
        if only is not None:
            views = [view for view in views if view.run.id in only]
        # Past this point each run is handled on its own: what one run's handling
        # raises is kept in ``trouble`` and the tick goes on for the others.
        trouble = _Trouble(savepoint=self.store.savepoint)
        # Each phase's store writes commit together: one commit for a tick's hundreds
        # of attempt updates, not one each.
        with self.store.batch():
            self.observe(views, trouble)
        now = self.clock()
        capacity = self.executor.capacity()
        plans: list[tuple[RunWithAttempts, list[Action]]] = []
        starts: list[StartAttempt] = []
        by_id = {view.run.id: view for view in views}
        for view in views:
            if view.run.id in trouble:
                continue  # what we know of it may be stale: decide next tick
            with trouble.isolate(view, "deciding"):
                pipeline = self.pipeline_of(view.run)
                decision = decide(
                    view.run,
                    view.attempts,
                    pipeline,
                    now,
                    self.policy,
                    capacity.gpu_slots > 0,
                    executor_retries=getattr(self.executor, "retries_itself", False),
                    fuse=self.fuses,
                )
                plans.append((view, decision.actions))
                if not any(isinstance(a, FinishRun) for a in decision.actions):
                    starts += decision.starts
        finishing: list[tuple[RunWithAttempts, FinishRun]] = []
        with self.store.batch():
            for view, actions in plans:
                if not self.may_act():
                    log.warning("no longer the leader: this tick stops before acting")
                    return report
                with trouble.isolate(view, "acting on"):
                    for action in actions:
                        if isinstance(action, FinishRun):  # a run's last action
                            finishing.append((view, action))
                        else:
                            self._apply(action, view, report)
            self._finish_runs(
                [(view, action) for view, action in finishing if view.run.id not in trouble],
                trouble,
                report,
            )
        free = free_gpu = 0
        if starts:  # most ticks only record outcomes: the slots in use need not be counted
            free = capacity.slots - self.store.count_attempts(self.executor.name, None, self.owner)
            free_gpu = capacity.gpu_slots - self.store.count_attempts(
                self.executor.name, "gpu", self.owner
            )
        # An executor that places each batch by what was submitted before it (the
        # Kubernetes budgets) gets its batches one by one; another, together.
        together = not getattr(self.executor, "durable_before_submit", True)
        with self.store.batch():
            grouped: list[list[StartAttempt]] = []
            for execution, batchable in self._executions(starts, by_id, free, free_gpu, now):
                if not self.may_act():
                    log.warning("no longer the leader: this tick stops before starting stages")
                    return report
                execution = [s for s in execution if s.run_id not in trouble]
                if len(execution) == 1 and not batchable and not execution[0].chain:
                    [start] = execution
                    view = by_id[start.run_id]
                    with trouble.isolate(view, "starting a stage of"):
                        self._start(start, view)
                        report.started += 1
                elif execution and together:
                    grouped.append(execution)
                elif execution:
                    report.started += self._start_batches([execution], by_id, trouble)
            report.started += self._start_batches(grouped, by_id, trouble)
        self._settle(views, trouble, report)
        report.active = len(views) - len(report.finished)
        return report

    def _settle(self, views: list[RunWithAttempts], trouble: _Trouble, report: TickReport) -> None:
        """Counts the ticks in a row each run's handling raised unexpectedly, and fails
        a run at ``max_erroring_ticks``: a bug that recurs must end the run with its
        reason, not wedge it. An outage (UNAVAILABLE) neither counts nor resets."""
        report.errors += len(trouble.runs)
        active = {view.run.id for view in views}
        for run_id_ in list(self._erroring):
            if run_id_ not in active:
                del self._erroring[run_id_]  # finished, or no longer ours to drive
        for view in views:
            problem = trouble.runs.get(view.run.id)
            if problem is None:
                self._erroring.pop(view.run.id, None)
                continue
            step, exc = problem
            if isinstance(exc, UNAVAILABLE):
                continue
            count = self._erroring[view.run.id] = self._erroring.get(view.run.id, 0) + 1
            if count < self.max_erroring_ticks:
                continue
            reason = (
                f"camflow failed while {step} this run {count} ticks in a row "
                f"({type(exc).__name__}: {exc}); it was stopped rather than retried forever: "
                "the orchestrator's log has the traceback"
            )
            try:
                if self._give_up(view, reason):
                    report.finished.append((view.run.id, RunStatus.FAILED))
            except Exception:
                log.exception(
                    "clip %s run %s: could not fail it either; trying again next tick",
                    _clip_name(view.clip),
                    view.run.id,
                    extra=about(view.clip.id, view.run.id),
                )

    def _give_up(self, view: RunWithAttempts, reason: str) -> bool:
        """Fails a run whose handling keeps raising, by the shortest path that works:
        its in-flight attempts are cancelled if they can be, and result.json is written
        if it can be; the store records the failure in any case."""
        mine = [
            a.handle
            for a in view.attempts
            if a.handle
            and a.executor == self.executor.name
            and a.state in (AttemptState.PENDING, AttemptState.RUNNING)
        ]
        try:
            if mine:
                self.executor.cancel(mine)
            return self._finish(view, FinishRun(view.run.id, RunStatus.FAILED, reason)) is not None
        except Exception:
            log.exception(
                "clip %s run %s: cannot write its result.json; failing it in the store only",
                _clip_name(view.clip),
                view.run.id,
                extra=about(view.clip.id, view.run.id),
            )
        done = self.store.finish_run(
            view.run.id, RunStatus.FAILED, reason, None, None, self.clock()
        )
        if done:
            telemetry.run_finished(view.run.pipeline, RunStatus.FAILED)
            log.warning(
                "clip %s run %s: failed: %s",
                _clip_name(view.clip),
                view.run.id,
                reason,
                extra=about(view.clip.id, view.run.id),
            )
        return done

    def _apply(self, action: Action, view: RunWithAttempts, report: TickReport) -> None:
        if isinstance(action, Resubmit):
            attempt = next(a for a in view.attempts if a.id == action.attempt_id)
            chain = self._recorded_chain(view, attempt)
            if chain and chain[0] is not attempt:
                return  # submitted with the first stage of its execution
            self._submit(view, attempt, chain=chain[1:])
        elif isinstance(action, CancelAttempts):
            # Another executor's handles mean nothing to this one (see observe).
            mine = {a.handle for a in view.attempts if a.executor == self.executor.name}
            self.executor.cancel([h for h in action.handles if h in mine])
        elif isinstance(action, ExpireAttempt):
            if action.handle:
                self.executor.cancel([action.handle])
            values: dict[str, Any] = {
                "state": AttemptState.FAILED,
                "reason": action.reason,
                "timed_out": True,
                "exhausted": action.exhausted,
                "finished_at": self.clock(),
            }
            if self.store.update_attempt(action.attempt_id, IN_FLIGHT, **values):
                for attempt in view.attempts:
                    if attempt.id == action.attempt_id:
                        for key, value in values.items():
                            setattr(attempt, key, value)
                        telemetry.attempt_finished(attempt)

    def _executions(
        self,
        starts: list[StartAttempt],
        by_id: dict[str, RunWithAttempts],
        free: int,
        free_gpu: int,
        now: datetime,
    ) -> list[tuple[list[StartAttempt], bool]]:
        """What starts now, each with whether it may run in a batch process (even alone:
        the executor may hand it to a warm process of its stage): lone attempts as
        ``admit`` chooses them, or, for an executor that runs batches, batches of a
        stage's ready attempts (see batching)."""
        if not getattr(self.executor, "batches", False):
            return [([start], False) for start in admit(starts, free, free_gpu)]
        seen = {(s.run_id, s.stage, s.attempt) for s in starts}
        for key in list(self._ready_since):
            if key not in seen:
                del self._ready_since[key]
        candidates = []
        for start in starts:
            ready = self._ready_since.setdefault((start.run_id, start.stage, start.attempt), now)
            resolved = self._pipeline(by_id[start.run_id]).stages[start.stage]
            max_size = resolved.spec.batch.max_size or self.batch_max_size
            max_wait = resolved.spec.batch.max_wait_seconds
            key = None
            # A retry runs alone: a clip that brought its batch down (a crash, a hang)
            # must not take the next batch's clips with it. Tenants never share one.
            if resolved.algorithm.batch and max_size > 1 and start.attempt == 1:
                key = (
                    by_id[start.run_id].clip.tenant,
                    resolved.algorithm.ref,
                    json.dumps(resolved.params, sort_keys=True),
                    start.accelerator,
                    start.fallback,
                    resolved.timeout_seconds,
                    start.keep_local,
                    self._chain_key(by_id[start.run_id], start),
                )
            candidates.append(
                Candidate(
                    start,
                    key,
                    max_size,
                    self.batch_max_wait_seconds if max_wait is None else max_wait,
                    (now - ready).total_seconds(),
                )
            )
        # A chunk holds attempts of one key: keyed ones, or a lone unkeyed one.
        keyed = {
            (c.start.run_id, c.start.stage, c.start.attempt)
            for c in candidates
            if c.key is not None
        }
        executions = plan_executions(candidates, free, free_gpu)
        telemetry.gpu_admission(candidates, executions, lambda s: self._pipeline(by_id[s.run_id]))
        return [
            (chunk, (chunk[0].run_id, chunk[0].stage, chunk[0].attempt) in keyed)
            for chunk in executions
        ]

    def _start_batches(
        self,
        executions: list[list[StartAttempt]],
        by_id: dict[str, RunWithAttempts],
        trouble: _Trouble,
    ) -> int:
        """Records the attempts of batches (all of them in one round trip where the
        store can), starts each batch in one submit, then records every handle the
        executor gave in one round trip. A clip that cannot be handed over stays
        recorded where it was placed, and a later tick's Resubmit starts it on its own."""
        if not executions:
            return 0
        batches = [f"b-{uuid.uuid4().hex[:16]}" for _ in executions]
        planned = [
            self._plan_chains(starts, by_id, trouble, batch)
            for starts, batch in zip(executions, batches, strict=True)
        ]
        recorded = self._record_chains(list(zip(batches, planned, strict=True)), trouble)
        if getattr(self.executor, "durable_before_submit", True) and any(recorded):
            self.store.checkpoint()
        handed: list[tuple[RunWithAttempts, StageAttempt, StageLaunch, Submission]] = []
        started = 0
        pairs = list(zip(batches, recorded, strict=True))
        # An executor that may run batches starting together in one process (a
        # thread-safe stage's, locally) is given them in one submit; others one by one,
        # so that a refusal stays the one batch's.
        together = getattr(self.executor, "submits_together", False)
        for group in [pairs] if together else [[pair] for pair in pairs]:
            given, count = self._submit_batches(group, trouble)
            handed += given
            started += count
        self._record_submissions(handed, trouble)
        return started

    def _submit_batches(
        self,
        batches: list[tuple[str, list[tuple[RunWithAttempts, StageAttempt, list[StageAttempt]]]]],
        trouble: _Trouble,
    ) -> tuple[list[tuple[RunWithAttempts, StageAttempt, StageLaunch, Submission]], int]:
        """Starts batches' recorded chains in one submit: each attempt with the launch
        and the submission the executor gave it (none if it refused them), and how many
        chains started."""
        members: list[tuple[RunWithAttempts, StageAttempt, StageLaunch]] = []
        whole: dict[str, list[StageAttempt]] = {}
        for batch, view, attempt, chain in (
            (batch, *recorded) for batch, chains in batches for recorded in chains
        ):
            with trouble.isolate(view, "starting a stage of"):
                launch = self._launch(view, attempt).model_copy(
                    update={
                        "placement": attempt.placement,
                        "batch": batch,
                        "chain": [
                            self._launch(view, member).model_copy(
                                update={"placement": attempt.placement, "batch": batch}
                            )
                            for member in chain
                        ],
                    }
                )
                members.append((view, attempt, launch))
                whole[attempt.id] = [attempt, *chain]
        if not members:
            return [], 0
        try:
            submissions = self.executor.submit([launch for _, _, launch in members])
        except SubmitRefused as exc:  # the same refusal for each of its clips
            for view, attempt, _ in members:
                with trouble.isolate(view, "starting a stage of"):
                    self._refused(view, attempt, exc)
            return [], 0
        except CamflowError as exc:
            # Their place is recorded: a Resubmit tries there again, and only there.
            names = ", ".join(batch for batch, _ in batches)
            log.warning("could not submit batch %s of %d clips: %s", names, len(members), exc)
            return [], 0
        handed: list[tuple[RunWithAttempts, StageAttempt, StageLaunch, Submission]] = []
        for view, attempt, launch in members:
            with trouble.isolate(view, "starting a stage of"):
                handed += [
                    (view, member, member_launch, submissions[member.id])
                    for member, member_launch in zip(whole[attempt.id], launch.members, strict=True)
                ]
        return handed, len(members)

    def _plan_chains(
        self,
        starts: list[StartAttempt],
        by_id: dict[str, RunWithAttempts],
        trouble: _Trouble,
        batch: str,
    ) -> list[tuple[StartAttempt, RunWithAttempts, StageAttempt, list[StageAttempt]]]:
        """The attempts a batch's chains ask for, placed, not recorded yet: each first
        attempt with those fused after it."""
        planned = []
        for start in starts:
            view = by_id[start.run_id]
            with trouble.isolate(view, "starting a stage of"):
                head = self._new_attempt(start, view, batch)
                if head is not None:
                    followers = [self._follower(view, member, head) for member in start.chain]
                    planned.append((start, view, head, followers))
        return planned

    def _record_chains(
        self,
        batches: list[
            tuple[str, list[tuple[StartAttempt, RunWithAttempts, StageAttempt, list[StageAttempt]]]]
        ],
        trouble: _Trouble,
    ) -> list[list[tuple[RunWithAttempts, StageAttempt, list[StageAttempt]]]]:
        """Records the planned chains of each batch and returns, for each batch, the
        chains that start now. Where the store can, all in one round trip; if one was
        recorded already (a replay, another engine), that is undone and each chain is
        recorded on its own, which decides where each chain must end."""
        rows = [
            row
            for _, planned in batches
            for _, _, head, followers in planned
            for row in (head, *followers)
        ]
        if self.store.writes_in_bulk and self.store.in_batch and rows:
            try:
                with self.store.savepoint():
                    if not all(self.store.add_attempts(rows)):
                        raise _RecordedBefore
                return [
                    [(view, head, followers) for _, view, head, followers in planned]
                    for _, planned in batches
                ]
            except _RecordedBefore:
                pass
            except Exception as exc:
                log.warning(
                    "could not record %d attempts of %d batches together (%s: %s); "
                    "recording them clip by clip",
                    len(rows),
                    len(batches),
                    type(exc).__name__,
                    exc,
                )
        recorded = []
        for batch, planned in batches:
            chains = []
            for start, view, head, _ in planned:
                with trouble.isolate(view, "starting a stage of"):
                    attempt = self._recorded(head, batch)
                    if attempt is not None:
                        chains.append((view, attempt, self._add_followers(start, view, attempt)))
            recorded.append(chains)
        return recorded

    def _add_attempt(
        self, start: StartAttempt, view: RunWithAttempts, batch: str | None = None
    ) -> StageAttempt | None:
        """The new attempt, placed and recorded with its place in one write; None if it
        has no place now (nothing is recorded: the next tick decides afresh, e.g. to fall
        back to CPU) or existed already (another engine, a replay: that one is
        followed)."""
        new = self._new_attempt(start, view, batch)
        return None if new is None else self._recorded(new, batch)

    def _new_attempt(
        self, start: StartAttempt, view: RunWithAttempts, batch: str | None
    ) -> StageAttempt | None:
        """The attempt ``start`` asks for, placed, not recorded yet; None: no place now."""
        new = self._attempt_row(
            view, start.stage, start.attempt, start.accelerator, batch, start.keep_local
        )
        placed = self.executor.place([self._launch(view, new, start.fallback)]).get(new.id)
        if placed is None:
            return None
        new.placement, new.accelerator = placed.placement, placed.accelerator
        return new

    def _recorded(self, new: StageAttempt, batch: str | None) -> StageAttempt | None:
        """Records ``new``: it, or None if it existed already and is not this one to
        start (handed over, or recorded alone or in another batch)."""
        attempt = self.store.add_attempt(new)
        if attempt.state != AttemptState.PENDING or attempt.handle is not None:
            return None
        if batch is not None and attempt.batch != batch:
            return None  # recorded earlier, alone or in another batch
        return attempt

    def _follower(
        self, view: RunWithAttempts, member: ChainMember, head: StageAttempt
    ) -> StageAttempt:
        """The attempt of a stage fused after ``head``, with its place and batch, on the
        head's accelerator unless it has its own (a CPU stage in a GPU stage's process)."""
        accelerator = member.accelerator or head.accelerator
        follower = self._attempt_row(
            view, member.stage, member.attempt, accelerator, head.batch, member.keep_local
        )
        follower.placement = head.placement
        return follower

    def _attempt_row(
        self,
        view: RunWithAttempts,
        stage: str,
        number: int,
        accelerator: str,
        batch: str | None,
        keep_local: bool,
    ) -> StageAttempt:
        """A new attempt of ``stage`` for this executor, not placed or recorded yet."""
        return StageAttempt(
            id=attempt_id(view.run.id, stage, number),
            run_id=view.run.id,
            stage=stage,
            attempt=number,
            algorithm=self._pipeline(view).stages[stage].algorithm.ref,
            accelerator=accelerator,
            executor=self.executor.name,
            batch=batch,
            keep_local=keep_local,
        )

    def _add_followers(
        self, start: StartAttempt, view: RunWithAttempts, head: StageAttempt
    ) -> list[StageAttempt]:
        """The attempts of the stages fused after ``head``, recorded with its place and
        batch. The chain ends before one recorded already (a replay, another engine):
        a stage it feeds is then started again later, with a stage before it."""
        recorded: list[StageAttempt] = []
        for member in start.chain:
            attempt = self.store.add_attempt(self._follower(view, member, head))
            if (
                attempt.state != AttemptState.PENDING
                or attempt.handle is not None
                or attempt.batch != head.batch
            ):
                break
            recorded.append(attempt)
        return recorded

    def _chain_key(self, view: RunWithAttempts, start: StartAttempt) -> tuple[Any, ...]:
        """What a fused chain runs, so that only alike chains share a batch."""
        stages = self._pipeline(view).stages
        return tuple(
            (
                member.stage,
                stages[member.stage].algorithm.ref,
                json.dumps(stages[member.stage].params, sort_keys=True),
                member.keep_local,
                member.accelerator,
            )
            for member in start.chain
        )

    def _start(self, start: StartAttempt, view: RunWithAttempts) -> None:
        attempt = self._add_attempt(start, view)
        if attempt is None:
            return
        self._submit(view, attempt)

    def _launch(
        self, view: RunWithAttempts, attempt: StageAttempt, fallback: str | None = None
    ) -> StageLaunch:
        pipeline = self._pipeline(view)
        return build_launch(
            view.run,
            view.clip,
            pipeline,
            attempt.stage,
            attempt.attempt,
            attempt.accelerator,
            self.results_bucket,
            channel=self.catalog.channels.get(pipeline.stages[attempt.stage].algorithm.ref, "dev"),
            fallback=fallback,
            keep_local=attempt.keep_local,
        )

    def _recorded_chain(self, view: RunWithAttempts, attempt: StageAttempt) -> list[StageAttempt]:
        """The attempts recorded to run fused in one execution with ``attempt`` and not
        handed over yet, in stage order; empty when it runs alone."""
        if attempt.batch is None:
            return []
        order = list(self._pipeline(view).stages)
        members = sorted(
            (
                a
                for a in view.attempts
                if a.batch == attempt.batch
                and a.state == AttemptState.PENDING
                and a.handle is None
                and a.stage in order
            ),
            key=lambda a: order.index(a.stage),
        )
        return members if len(members) > 1 else []

    def _submit(
        self,
        view: RunWithAttempts,
        attempt: StageAttempt,
        fallback: str | None = None,
        chain: list[StageAttempt] | None = None,
    ) -> bool:
        """Places the attempt (once), records where, then creates it there, with the
        attempts fused after it (``chain``, placed with it). False only when it has no
        place and nothing was created."""
        if not self._place(view, attempt, fallback):
            return False
        chain = chain or []
        launch = self._launch(view, attempt).model_copy(
            update={
                "placement": attempt.placement,
                "recorded_batch": attempt.batch,
                "chain": [
                    self._launch(view, member).model_copy(
                        update={"placement": attempt.placement, "recorded_batch": member.batch}
                    )
                    for member in chain
                ],
            }
        )
        if getattr(self.executor, "durable_before_submit", True):
            self.store.checkpoint()
        try:
            submissions = self.executor.submit([launch])
        except SubmitRefused as exc:
            for member in [attempt, *chain]:
                self._refused(view, member, exc)
            return True
        except CamflowError as exc:
            # Its place is recorded: a Resubmit tries there again, and only there.
            log.warning(
                "clip %s: could not submit %s: %s",
                _clip_name(view.clip),
                attempt.id,
                exc,
                extra=about(view.clip.id, view.run.id, attempt.stage, attempt.attempt),
            )
            return True
        self._record_submissions(
            [
                (view, member, member_launch, submissions[member.id])
                for member, member_launch in zip([attempt, *chain], launch.members, strict=True)
            ]
        )
        return True

    def _refused(self, view: RunWithAttempts, attempt: StageAttempt, exc: SubmitRefused) -> None:
        if exc.final:
            values: dict[str, Any] = {
                "state": AttemptState.FAILED,
                "reason": str(exc),
                "exhausted": True,
                "finished_at": self.clock(),
            }
            if self.store.update_attempt(attempt.id, (AttemptState.PENDING,), **values):
                for key, value in values.items():
                    setattr(attempt, key, value)
                telemetry.attempt_finished(attempt, ran=False)
        else:  # held where it was placed; the reason shows why it waits
            self.store.update_attempt(attempt.id, reason=str(exc))
        log.warning(
            "clip %s: %s refused: %s",
            _clip_name(view.clip),
            attempt.id,
            exc,
            extra=about(view.clip.id, view.run.id, attempt.stage, attempt.attempt),
        )

    def _place(
        self, view: RunWithAttempts, attempt: StageAttempt, fallback: str | None = None
    ) -> bool:
        """Chooses where the attempt goes, once, and records it; False: nowhere now."""
        if attempt.placement is not None:
            return True
        placed = self.executor.place([self._launch(view, attempt, fallback)]).get(attempt.id)
        if placed is None:
            return False
        # Recorded before the create: a create that timed out after the server made
        # the Job is retried at this place (where a 409 adopts it), never elsewhere.
        self.store.update_attempt(
            attempt.id, placement=placed.placement, accelerator=placed.accelerator
        )
        attempt.placement, attempt.accelerator = placed.placement, placed.accelerator
        return True

    def _record_submissions(
        self,
        handed: list[tuple[RunWithAttempts, StageAttempt, StageLaunch, Submission]],
        trouble: _Trouble | None = None,
    ) -> None:
        """Records the handles the executor gave, together (see ``_write_changes``),
        and marks each run started at its first stage."""
        now = self.clock()
        changes = [
            (
                view,
                AttemptChange(
                    attempt.id,
                    {
                        "state": AttemptState.RUNNING,
                        "handle": submission.handle,
                        "accelerator": submission.accelerator,
                        "placement": submission.placement,
                        "batch": submission.batch or attempt.batch,
                        "submitted_at": now,
                        "image": launch.image,
                        "reason": None,
                        "log_uri": self.executor.log_uri(submission.handle),
                    },
                    (AttemptState.PENDING,),
                ),
            )
            for view, attempt, launch, submission in handed
        ]
        started: dict[str, RunWithAttempts] = {}
        step = "starting a stage of"
        for (view, attempt, launch, submission), written in zip(
            handed, self._write_changes(changes, trouble, step), strict=True
        ):
            fields = about(view.clip.id, view.run.id, attempt.stage, attempt.attempt)
            if not written:
                if trouble is None or view.run.id not in trouble:
                    log.warning(
                        "attempt %s moved on while it was submitted: left as it is",
                        attempt.id,
                        extra=fields,
                    )
                continue
            if view.run.status == RunStatus.PENDING:  # its first stage: one write per run
                started[view.run.id] = view
            log.info(
                "clip %s run %s: stage %s attempt %d submitted on %s (%s)%s",
                _clip_name(view.clip),
                view.run.id,
                attempt.stage,
                attempt.attempt,
                submission.accelerator,
                submission.placement,
                f" in batch {launch.batch}" if launch.batch else "",
                extra=fields,
            )
        if not started:
            return
        try:
            with self.store.savepoint():
                self.store.mark_runs_started(list(started), now)
        except Exception:
            if trouble is None:
                raise
            for view in list(started.values()):
                with trouble.isolate(view, step):
                    self.store.mark_run_started(view.run.id, now)
                if view.run.id in trouble:
                    del started[view.run.id]
        for view in started.values():
            view.run.status, view.run.started_at = RunStatus.RUNNING, now

    def _pipeline(self, view: RunWithAttempts) -> Pipeline:
        pipeline = self.pipeline_of(view.run)
        if pipeline is None:  # decide() fails such runs before anything is started
            raise KeyError(f"pipeline {view.run.pipeline!r} is no longer defined")
        return pipeline

    def _payload(self, view: RunWithAttempts, attempts: list[StageAttempt]) -> dict[str, Any]:
        """What the stages published: each succeeded stage's ``result`` output, as it
        was checked when the stage finished (kept since, in this process), or read and
        checked again (after a restart, or another engine's check). If one fails them
        now (replaced since, or recorded by an older camflow), that attempt fails and
        BrokenContract says why the run does."""
        payload: dict[str, Any] = {}
        for attempt in attempts:
            name = (attempt.outputs or {}).get(RESULT_OUTPUT)
            if attempt.state != AttemptState.SUCCEEDED or not name:
                continue
            try:
                if not isinstance(name, str):
                    raise BrokenContract(
                        f"names {name!r} as its {RESULT_OUTPUT!r} output: not an object name"
                    )
                kept = self._checked_results.take(attempt.id, name)
                if kept is None:
                    kept = self._read_result(view, attempt.stage, name)[0]
                payload.update(kept)
            except BrokenContract as exc:
                self.store.update_attempt(
                    attempt.id, state=AttemptState.FAILED, reason=exc.reason, permanent=True
                )
                raise BrokenContract(
                    f"stage {attempt.stage} failed: {exc.reason} (not retried)"
                ) from None
        return payload

    def _finish(self, view: RunWithAttempts, action: FinishRun) -> RunStatus | None:
        """Writes result.json and ends the run; the status it ended with, or None if it
        stays active (S3 away: the next tick tries again) or was ended already."""
        now = self.clock()
        try:
            ending = self._compose(view, action, self.store.attempts_of_run(view.run.id), now)
            uri = self.s3.put_json(self.results_bucket, ending.key, ending.result)
        except StorageError as exc:
            self._unwritten(view, exc)
            return None
        if not self.store.finish_run(
            view.run.id, ending.status, ending.error, ending.result, uri, now, ending.settle
        ):
            return None
        self._ended(view, ending, uri)
        return ending.status

    def _finish_runs(
        self,
        finishing: list[tuple[RunWithAttempts, FinishRun]],
        trouble: _Trouble,
        report: TickReport,
    ) -> None:
        """``_finish`` for a tick's finishing runs together: their attempts read in one
        query, their result.json written side by side (each a round trip to S3, which
        one after another would cap a tick at a few dozen runs a second), and the
        store's writes sent together."""
        if not finishing:
            return
        now = self.clock()
        attempts = self.store.attempts_of_runs([view.run.id for view, _ in finishing])
        endings: list[tuple[RunWithAttempts, _Ending]] = []
        for view, action in finishing:
            with trouble.isolate(view, "finishing"):
                try:
                    endings.append((view, self._compose(view, action, attempts[view.run.id], now)))
                except StorageError as exc:
                    self._unwritten(view, exc)
        # What acting wrote is committed first: on SQLite it would hold every other
        # writer (the watcher, the API) behind the S3 writes.
        self.store.checkpoint()
        uris = self._put_results(endings, trouble)
        stored = [
            (
                view,
                RunFinish(
                    view.run.id,
                    ending.status,
                    ending.error,
                    ending.result,
                    uri,
                    now,
                    ending.settle,
                ),
            )
            for (view, ending), uri in zip(endings, uris, strict=True)
            if uri is not None
        ]
        ended = self._together(stored, self.store.finish_runs, trouble, "finishing")
        by_run = {view.run.id: ending for view, ending in endings}
        for (view, finish), done in zip(stored, ended, strict=True):
            if done:
                self._ended(view, by_run[view.run.id], finish.result_uri)
                report.finished.append((view.run.id, finish.status))

    def _put_results(
        self, endings: list[tuple[RunWithAttempts, _Ending]], trouble: _Trouble
    ) -> list[str | None]:
        """Writes each ending's result.json, several at once; each one's URI, or None
        where it could not be written (the run stays active: the next tick tries
        again)."""

        def put(item: tuple[RunWithAttempts, _Ending]) -> str | Exception:
            ending = item[1]
            try:
                return self.s3.put_json(self.results_bucket, ending.key, ending.result)
            except Exception as exc:  # handled below, on the engine's thread
                return exc

        if len(endings) > 1:
            with ThreadPoolExecutor(min(RESULT_WRITERS, len(endings))) as pool:
                written = list(pool.map(put, endings))
        else:
            written = [put(item) for item in endings]
        uris: list[str | None] = []
        for (view, _), answer in zip(endings, written, strict=True):
            if isinstance(answer, StorageError):
                self._unwritten(view, answer)
            elif isinstance(answer, Exception):
                with trouble.isolate(view, "finishing"):
                    raise answer
            uris.append(answer if isinstance(answer, str) else None)
        return uris

    def _compose(
        self,
        view: RunWithAttempts,
        action: FinishRun,
        attempts: list[StageAttempt],
        now: datetime,
    ) -> _Ending:
        """The run's result.json, from what its stages published; StorageError if S3
        could not be read."""
        status, error = action.status, action.error
        payload: dict[str, Any] = {}
        if status == RunStatus.SUCCEEDED:
            try:
                payload = self._payload(view, attempts)
            except BrokenContract as exc:
                status, error = RunStatus.FAILED, exc.reason
                attempts = self.store.attempts_of_run(view.run.id)
        settle = _settle_reason(attempts)
        result = compose_result(view.run, view.clip, attempts, status, error, payload, now, settle)
        key = result_key(view.clip.tenant, view.clip.camera, view.clip.id, view.run.pipeline)
        return _Ending(status, error, result, key, attempts, settle)

    def _unwritten(self, view: RunWithAttempts, exc: StorageError) -> None:
        # The run stays active; the next tick writes the result again.
        log.warning(
            "clip %s run %s: could not write result.json: %s",
            _clip_name(view.clip),
            view.run.id,
            exc,
            extra=about(view.clip.id, view.run.id),
        )

    def _ended(self, view: RunWithAttempts, ending: _Ending, uri: str | None) -> None:
        """What follows a run's end: it is counted and logged (its stages still in
        flight were settled with it, see ``_settle_reason``)."""
        for attempt in ending.attempts:
            self._checked_results.drop(attempt.id)
        telemetry.run_finished(view.run.pipeline, ending.status)
        fields = about(view.clip.id, view.run.id)
        if ending.status == RunStatus.SUCCEEDED:
            log.info(
                "clip %s run %s: succeeded, result at %s",
                _clip_name(view.clip),
                view.run.id,
                uri,
                extra=fields,
            )
        else:
            log.warning(
                "clip %s run %s: failed: %s",
                _clip_name(view.clip),
                view.run.id,
                ending.error,
                extra=fields,
            )
