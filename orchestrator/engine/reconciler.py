"""The reconcile loop: observe (store + executor) -> decide (pure) -> act.

Everything needed to resume lives in the store. Each action is written so that
replaying it after a crash is harmless: attempts have deterministic ids and unique
keys, submitting a submitted attempt adopts it, and a run finishes exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from algorithms.contract import MANIFEST_NAME
from orchestrator.domain.catalog import Catalog, Pipeline
from orchestrator.domain.layout import attempt_id, result_key, run_id, stage_prefix
from orchestrator.engine.decide import (
    Action,
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
from orchestrator.engine.launches import build_launch, compose_result
from orchestrator.errors import CamflowError, StorageError
from orchestrator.executors.base import Executor
from orchestrator.storage import S3Gateway
from orchestrator.store import Clip, Run, StageAttempt, Store
from orchestrator.store.models import AttemptState, RunStatus, utcnow
from orchestrator.store.repository import RunWithAttempts

log = logging.getLogger("camflow.engine")


@dataclass
class TickReport:
    planned: int = 0
    started: int = 0
    finished: list[tuple[str, RunStatus]] = field(default_factory=list)
    active: int = 0


def _clip_name(clip: Clip) -> str:
    return f"{clip.id} ({clip.key})"


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
    ) -> None:
        self.store = store
        #: A fixed catalog, or where to get the current one (the registry can change).
        self._catalog_source = catalog if callable(catalog) else (lambda: catalog)
        self.catalog = self._catalog_source()
        #: Pipelines that exist only for this process (``camflow algorithms try``).
        self.extra_pipelines: dict[str, Pipeline] = {}
        self.executor = executor
        self.s3 = s3
        self.results_bucket = results_bucket
        self.default_bucket = default_bucket
        self.policy = policy or RetryPolicy()
        self.clock = clock

    # --- plan ---------------------------------------------------------------------------

    def plan_new_clips(self) -> int:
        planned = 0
        for clip in self.store.unplanned_clips():
            pipelines = [
                p
                for p in self.catalog.pipelines.values()
                if p.spec.trigger.matches(clip.bucket, clip.key, self.default_bucket)
            ]
            runs = [
                Run(id=run_id(clip.id, p.name), clip_id=clip.id, pipeline=p.name, algorithms=p.pins)
                for p in pipelines
            ]
            for run in self.store.plan(clip.id, runs):
                planned += 1
                log.info(
                    "clip %s: run %s queued (pipeline %s)", _clip_name(clip), run.id, run.pipeline
                )
            if not pipelines:
                log.info("clip %s: no pipeline's trigger matches it", _clip_name(clip))
        return planned

    def plan_run(self, clip: Clip, pipeline: Pipeline) -> Run:
        """Creates one run of ``pipeline`` for ``clip`` (the one-shot ``process`` path)."""
        run = Run(
            id=run_id(clip.id, pipeline.name),
            clip_id=clip.id,
            pipeline=pipeline.name,
            algorithms=pipeline.pins,
        )
        self.store.plan(clip.id, [run])
        return run

    def pipeline_of(self, run: Run) -> Pipeline | None:
        """The pipeline as this run was created: with the algorithm versions it pinned."""
        if run.pipeline in self.extra_pipelines:
            return self.extra_pipelines[run.pipeline]
        return self.catalog.pipeline_for_run(run.pipeline, run.algorithms)

    # --- observe ------------------------------------------------------------------------

    def _read_manifest(self, clip: Clip, pipeline: str, stage: str) -> dict[str, Any] | None:
        key = stage_prefix(clip.tenant, clip.camera, clip.id, pipeline, stage) + MANIFEST_NAME
        try:
            return self.s3.get_json(self.results_bucket, key)
        except StorageError:
            return None

    def observe(self, views: list[RunWithAttempts]) -> None:
        running = {
            a.handle: (view, a)
            for view in views
            for a in view.attempts
            if a.state == AttemptState.RUNNING and a.handle
        }
        if not running:
            return
        statuses = self.executor.poll(list(running))
        for handle, status in statuses.items():
            view, attempt = running[handle]
            if status.started_at and not attempt.started_at:
                self.store.update_attempt(attempt.id, started_at=status.started_at)
                attempt.started_at = status.started_at
            result = outcome(status)
            if result is None:
                continue
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
                manifest = self._read_manifest(view.clip, view.run.pipeline, attempt.stage)
                if manifest is None:
                    values.update(
                        state=AttemptState.FAILED,
                        reason=f"exited 0 but wrote no {MANIFEST_NAME} (the stage contract "
                        "requires it last)",
                    )
                else:
                    values.update(metrics=manifest.get("metrics"), outputs=manifest.get("outputs"))
            self.store.update_attempt(attempt.id, **values)
            for key, value in values.items():
                setattr(attempt, key, value)
            self._log_outcome(view, attempt)

    def _log_outcome(self, view: RunWithAttempts, attempt: StageAttempt) -> None:
        where = (
            f"clip {_clip_name(view.clip)} run {view.run.id}: stage {attempt.stage} "
            f"attempt {attempt.attempt}"
        )
        if attempt.state == AttemptState.SUCCEEDED:
            log.info("%s succeeded %s", where, attempt.metrics or {})
        else:
            kind = "permanently" if attempt.permanent else "transiently"
            log.warning(
                "%s failed %s (exit %s): %s", where, kind, attempt.exit_code, attempt.reason
            )

    # --- act ----------------------------------------------------------------------------

    def tick(self, only: Collection[str] | None = None) -> TickReport:
        """One round of observe, decide, act; ``only`` limits it to those runs (the
        one-shot ``process`` path, which must not drive anyone else's runs)."""
        report = TickReport()
        self.catalog = self._catalog_source()
        if only is None:
            report.planned = self.plan_new_clips()
        views = self.store.active_runs()
        if only is not None:
            views = [view for view in views if view.run.id in only]
        self.observe(views)
        now = self.clock()
        capacity = self.executor.capacity()
        actions: list[Action] = []
        starts: list[StartAttempt] = []
        by_id = {view.run.id: view for view in views}
        for view in views:
            pipeline = self.pipeline_of(view.run)
            decision = decide(
                view.run, view.attempts, pipeline, now, self.policy, capacity.gpu_slots > 0
            )
            actions += decision.actions
            if not any(isinstance(a, FinishRun) for a in decision.actions):
                starts += decision.starts
        for action in actions:
            self._apply(action, by_id, report)
        free = capacity.slots - self.store.count_attempts(self.executor.name)
        free_gpu = capacity.gpu_slots - self.store.count_attempts(self.executor.name, "gpu")
        for start in admit(starts, free, free_gpu):
            self._start(start, by_id[start.run_id])
            report.started += 1
        report.active = len(views) - len(report.finished)
        return report

    def _apply(self, action: Action, by_id: dict[str, RunWithAttempts], report: TickReport) -> None:
        if isinstance(action, Resubmit):
            view = by_id[action.run_id]
            attempt = next(a for a in view.attempts if a.id == action.attempt_id)
            self._submit(view, attempt)
        elif isinstance(action, CancelAttempts):
            self.executor.cancel(list(action.handles))
        elif isinstance(action, ExpireAttempt):
            if action.handle:
                self.executor.cancel([action.handle])
            self.store.update_attempt(
                action.attempt_id,
                state=AttemptState.FAILED,
                reason=action.reason,
                timed_out=True,
                finished_at=self.clock(),
            )
        elif isinstance(action, FinishRun) and self._finish(by_id[action.run_id], action):
            report.finished.append((action.run_id, action.status))

    def _start(self, start: StartAttempt, view: RunWithAttempts) -> None:
        attempt = self.store.add_attempt(
            StageAttempt(
                id=attempt_id(view.run.id, start.stage, start.attempt),
                run_id=view.run.id,
                stage=start.stage,
                attempt=start.attempt,
                algorithm=self._pipeline(view).stages[start.stage].algorithm.ref,
                accelerator=start.accelerator,
                executor=self.executor.name,
            )
        )
        if not self._submit(view, attempt, start.fallback):
            # No executor took it (no cluster with room, say): withdraw it, so that the
            # next tick decides afresh, e.g. to fall back to CPU after the wait.
            self.store.delete_attempt(attempt.id)

    def _submit(
        self, view: RunWithAttempts, attempt: StageAttempt, fallback: str | None = None
    ) -> bool:
        pipeline = self._pipeline(view)
        launch = build_launch(
            view.run,
            view.clip,
            pipeline,
            attempt.stage,
            attempt.attempt,
            attempt.accelerator,
            self.results_bucket,
            channel=self.catalog.channels.get(pipeline.stages[attempt.stage].algorithm.ref, "dev"),
            fallback=fallback,
        )
        try:
            submission = self.executor.submit([launch])[launch.attempt_id]
        except CamflowError as exc:
            log.warning("clip %s: could not submit %s: %s", _clip_name(view.clip), attempt.id, exc)
            return False
        now = self.clock()
        self.store.update_attempt(
            attempt.id,
            state=AttemptState.RUNNING,
            handle=submission.handle,
            accelerator=submission.accelerator,
            placement=submission.placement,
            submitted_at=now,
            image=launch.image,
            log_uri=self.executor.log_uri(submission.handle),
        )
        self.store.mark_run_started(view.run.id, now)
        log.info(
            "clip %s run %s: stage %s attempt %d submitted on %s (%s)",
            _clip_name(view.clip),
            view.run.id,
            attempt.stage,
            attempt.attempt,
            submission.accelerator,
            submission.placement,
        )
        return True

    def _pipeline(self, view: RunWithAttempts) -> Pipeline:
        pipeline = self.pipeline_of(view.run)
        if pipeline is None:  # decide() fails such runs before anything is started
            raise KeyError(f"pipeline {view.run.pipeline!r} is no longer defined")
        return pipeline

    def _payload(self, view: RunWithAttempts, attempts: list[StageAttempt]) -> dict[str, Any]:
        """What the stages published: each succeeded stage listing a ``result`` output."""
        payload: dict[str, Any] = {}
        for attempt in attempts:
            if attempt.state != AttemptState.SUCCEEDED or not (attempt.outputs or {}).get("result"):
                continue
            key = (
                stage_prefix(
                    view.clip.tenant,
                    view.clip.camera,
                    view.clip.id,
                    view.run.pipeline,
                    attempt.stage,
                )
                + attempt.outputs["result"]
            )  # type: ignore[index]
            payload.update(self.s3.get_json(self.results_bucket, key))
        return payload

    def _finish(self, view: RunWithAttempts, action: FinishRun) -> bool:
        attempts = self.store.attempts_of_run(view.run.id)
        now = self.clock()
        try:
            payload = self._payload(view, attempts) if action.status == RunStatus.SUCCEEDED else {}
            result = compose_result(
                view.run, view.clip, attempts, action.status, action.error, payload, now
            )
            key = result_key(view.clip.tenant, view.clip.camera, view.clip.id, view.run.pipeline)
            uri = self.s3.put_json(self.results_bucket, key, result)
        except StorageError as exc:
            # The run stays active; the next tick writes the result again.
            log.warning(
                "clip %s run %s: could not write result.json: %s",
                _clip_name(view.clip),
                view.run.id,
                exc,
            )
            return False
        if not self.store.finish_run(view.run.id, action.status, action.error, result, uri, now):
            return False
        if action.status == RunStatus.SUCCEEDED:
            log.info(
                "clip %s run %s: succeeded, result at %s", _clip_name(view.clip), view.run.id, uri
            )
        else:
            log.warning(
                "clip %s run %s: failed: %s", _clip_name(view.clip), view.run.id, action.error
            )
        return True
