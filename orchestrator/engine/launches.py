"""Turning a stage attempt into a launch, and a finished run into its result. Pure."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from algorithms import contract
from orchestrator.domain.algorithm import Resources
from orchestrator.domain.catalog import Pipeline, ResolvedStage
from orchestrator.domain.layout import attempt_id, stage_prefix
from orchestrator.domain.pipeline import CLIP_INPUT
from orchestrator.executors.base import StageLaunch
from orchestrator.store.models import AttemptState, Clip, Run, RunStatus, StageAttempt, iso

#: An attempt an engine may still settle: never move a finished one back.
IN_FLIGHT = (AttemptState.PENDING, AttemptState.RUNNING)


def clip_identity(clip: Clip) -> dict[str, Any]:
    """What a clip is (bucket, key, ETag) and whose (tenant, camera)."""
    return {
        "bucket": clip.bucket,
        "key": clip.key,
        "etag": clip.etag,
        "size": clip.size,
        "tenant": clip.tenant,
        "camera": clip.camera,
    }


def stage_output_uri(results_bucket: str, clip: Clip, pipeline: str, stage: str) -> str:
    prefix = stage_prefix(clip.tenant, clip.camera, clip.id, pipeline, stage)
    return f"s3://{results_bucket}/{prefix}"


def code_root(source: Path | None, command: list[str]) -> str | None:
    """Where a local run of ``command`` must start to import the algorithm's code.

    ``python -m pkg.mod`` registered from ``<root>/pkg/mod`` starts in ``<root>``; any
    other command starts in the algorithm's own folder.
    """
    if source is None:
        return None
    if len(command) >= 3 and command[1] == "-m":
        parts = command[2].split(".")
        if list(source.parts[-len(parts) :]) == parts:
            return str(Path(*source.parts[: -len(parts)]))
    return str(source)


def image_reference(
    resolved: ResolvedStage, resources: Resources, accelerator: str | None = None
) -> str:
    """The image to run: pinned to its registered digest when one is known, the
    default image's or, for an accelerator's own image, the one registered for it."""
    if resources.image:
        image, digest = resources.image, resolved.accelerator_digests.get(accelerator or "")
    else:
        image, digest = resolved.algorithm.image, resolved.image_digest
    # An image named by digest in the manifest is pinned already.
    return f"{image}@{digest}" if digest and "@" not in image else image


def build_launch(
    run: Run,
    clip: Clip,
    pipeline: Pipeline,
    stage: str,
    attempt: int,
    accelerator: str,
    results_bucket: str,
    channel: str = "dev",
    fallback: str | None = None,
    keep_local: bool = False,
) -> StageLaunch:
    resolved = pipeline.stages[stage]
    inputs = {
        name: (
            f"s3://{clip.bucket}/{clip.key}"
            if ref == CLIP_INPUT
            else stage_output_uri(results_bucket, clip, pipeline.name, ref)
        )
        for name, ref in resolved.spec.inputs.items()
    }
    placement = resolved.spec.placement
    resources = resolved.algorithm.accelerators.get(accelerator)  # type: ignore[call-overload]
    if resources is None:
        resources = next(iter(resolved.algorithm.accelerators.values()))
    return StageLaunch(
        attempt_id=attempt_id(run.id, stage, attempt),
        run_id=run.id,
        stage=stage,
        pipeline=pipeline.name,
        tenant=clip.tenant,
        clip_id=clip.id,
        algorithm=resolved.algorithm.ref,
        image=image_reference(resolved, resources, accelerator),
        workdir=code_root(resolved.source, resolved.algorithm.command),
        command=resolved.algorithm.command,
        env={
            contract.ENV_INPUTS: json.dumps(inputs),
            contract.ENV_OUTPUT: stage_output_uri(results_bucket, clip, pipeline.name, stage),
            contract.ENV_PARAMS: json.dumps(resolved.params),
            contract.ENV_RUN_ID: run.id,
            contract.ENV_STAGE: stage,
            contract.ENV_ACCELERATOR: accelerator,
            contract.ENV_CLIP: json.dumps({"id": clip.id, **clip_identity(clip)}),
        }
        | ({contract.ENV_KEEP_LOCAL: "1"} if keep_local else {}),
        accelerator=accelerator,  # type: ignore[arg-type]
        resources=resources,
        timeout_seconds=resolved.timeout_seconds,
        retries=resolved.retries,
        thread_safe=resolved.algorithm.thread_safe,
        channel=channel,
        fallback=fallback,  # type: ignore[arg-type]
        queued_fallback=placement.fallback if accelerator == "gpu" else None,
        fallback_after_seconds=placement.fallback_after_seconds if accelerator == "gpu" else None,
        readers=pipeline.readers[stage],
    )


def stage_summaries(
    attempts: Sequence[StageAttempt],
    ended: tuple[datetime, str] | None = None,
) -> list[dict[str, Any]]:
    """One entry per stage (its last attempt), in the order stages first started.
    ``ended``: when the run ended and why its attempts still in flight end with it
    (the store settles them so in the same transaction): one that started shows as
    failed for that reason; one that never started never ran, and is left out as a
    skipped one is (a fused stage whose report that it was skipped had not been read
    when the stage before it failed the run)."""
    by_stage: dict[str, list[StageAttempt]] = {}
    for attempt in sorted(attempts, key=lambda a: (a.created_at, a.attempt)):
        by_stage.setdefault(attempt.stage, []).append(attempt)
    summaries = []
    for stage, every in by_stage.items():
        # Skipped attempts never ran (a fused stage before them failed): a stage that
        # never ran is not in the timeline.
        tries = [
            t
            for t in every
            if t.state != AttemptState.SKIPPED
            and not (ended and t.state in IN_FLIGHT and t.started_at is None)
        ]
        if not tries:
            continue
        last = tries[-1]
        state, reason, finished_at = last.state, last.reason, last.finished_at
        if ended and state in IN_FLIGHT:
            state, (finished_at, reason) = AttemptState.FAILED, ended
        seconds = None
        if last.started_at and finished_at:
            seconds = round((finished_at - last.started_at).total_seconds(), 3)
        summaries.append(
            {
                "name": stage,
                "algorithm": last.algorithm,
                "image": last.image,
                "status": str(state),
                "attempts": sum(t.tries or 1 for t in tries),
                "accelerator": last.accelerator,
                "executor": last.executor,
                "placement": last.placement,
                "exit_code": last.exit_code,
                "reason": reason,
                "queued_at": iso(every[0].created_at),
                "started_at": iso(last.started_at),
                "finished_at": iso(finished_at),
                "seconds": seconds,
                "metrics": last.metrics or {},
                # Fused with the stages reading them, its outputs never went to S3.
                "outputs_kept_in_process": last.keep_local,
            }
        )
    return summaries


def compose_result(
    run: Run,
    clip: Clip,
    attempts: Sequence[StageAttempt],
    status: RunStatus,
    error: str | None,
    payload: dict[str, Any],
    finished_at: datetime,
    settle: str | None = None,
) -> dict[str, Any]:
    """result.json: the run's status and timings around what the stages published;
    ``settle``: why attempts still in flight end with the run (see stage_summaries)."""
    result: dict[str, Any] = {
        "clip_id": clip.id,
        "source": {**clip_identity(clip), "recorded_at": iso(clip.recorded_at)},
        "pipeline": run.pipeline,
        "run_id": run.id,
        "status": str(status),
        "error": error,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(finished_at),
        "seconds": round((finished_at - run.created_at).total_seconds(), 3),
        "stages": stage_summaries(attempts, (finished_at, settle) if settle else None),
        "frames": [],
    }
    result.update({k: v for k, v in payload.items() if k not in result or k == "frames"})
    return result
