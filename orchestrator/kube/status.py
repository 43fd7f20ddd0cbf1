"""A Job and its pods -> the stage outcome, in words a customer can act on. Pure:
dicts in, decisions out.

The fields read, and who writes them upstream:

- Job conditions ``Complete``, ``Failed`` (reason ``BackoffLimitExceeded``,
  ``DeadlineExceeded`` or ``PodFailurePolicy``) and the interim ``FailureTarget``
  (since 1.31 the Job controller adds it first and ``Failed`` only once every pod has
  stopped): pkg/controller/job/job_controller.go.
- An Indexed Job's ``status.completedIndexes`` and ``status.failedIndexes`` (intervals,
  "1,3-5"; two neighbours written "3,4"), each pod's ``job-completion-index`` and
  ``job-index-failure-count`` annotations: pkg/controller/job/indexed_job_utils.go.
- Pod ``status.reason`` ``DeadlineExceeded`` (the pod's own activeDeadlineSeconds) and
  ``Evicted``, container ``state.terminated`` (reason ``OOMKilled``, exit code 137) and
  ``state.waiting`` (``ErrImagePull``, ``ImagePullBackOff``,
  ``CreateContainerConfigError``): the kubelet.
- ``PodScheduled=False`` with reason ``Unschedulable``: the scheduler.
- The termination message: with ``FallbackToLogsOnError`` the kubelet writes the log's
  tail (stdout and stderr together, at most 80 lines or 2048 bytes) when the container
  failed and left no message of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from algorithms.contract import EXIT_BAD_INPUT
from orchestrator.executors.base import ExecState, ExecStatus
from orchestrator.kube.jobs import (
    ANNOTATION_ACCELERATOR,
    ANNOTATION_ATTEMPTS,
    COMPLETION_INDEX,
    CONTAINER,
    INDEX_FAILURE_COUNT,
)

#: Container waiting reasons that no amount of waiting fixes (the image or the pod's
#: configuration is wrong); after a short grace the attempt fails with them.
STUCK_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for item in (obj.get("status") or {}).get("conditions") or []:
        if item.get("type") == kind and item.get("status") == "True":
            return item
    return None


def finished(job: dict[str, Any]) -> bool:
    return bool(condition(job, "Complete") or condition(job, "Failed"))


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return status
    return {}


def _state(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return (_container(pod).get("state") or {}).get(kind)


def _memory_limit(pod: dict[str, Any]) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == CONTAINER:
            return ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def container_started(pods: list[dict[str, Any]]) -> datetime | None:
    """When the stage's code first ran: the earliest container start of any pod. A pod
    waiting for a node or an image has none."""
    starts = [
        parse_time((_state(p, "running") or _state(p, "terminated") or {}).get("startedAt"))
        for p in pods
    ]
    present = [s for s in starts if s is not None]
    return min(present) if present else None


def _newest(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


def _last_line(message: str | None) -> str | None:
    lines = [ln.strip() for ln in (message or "").splitlines() if ln.strip()]
    return lines[-1] if lines else None


@dataclass(frozen=True)
class PodFailure:
    exit_code: int | None
    reason: str
    timed_out: bool = False


def pod_failure(pod: dict[str, Any], timeout_seconds: int | None) -> PodFailure:
    """Why one pod failed, as the kubelet reported it, in words that say what to do."""
    status = pod.get("status") or {}
    terminated = _state(pod, "terminated") or {}
    code = terminated.get("exitCode")
    if status.get("reason") == "DeadlineExceeded":
        limit = f"{timeout_seconds} s " if timeout_seconds else ""
        return PodFailure(
            code,
            f"ran past its {limit}timeout (the pod's activeDeadlineSeconds) and was "
            "stopped: raise timeout_seconds or make the stage faster",
            timed_out=True,
        )
    if status.get("reason") == "Evicted":
        return PodFailure(
            code,
            f"evicted from its node: {status.get('message') or 'no message'}; "
            "raise resources (memory, scratch) so the node keeps room for it",
        )
    if terminated.get("reason") == "OOMKilled":
        limit = _memory_limit(pod)
        return PodFailure(
            code,
            f"ran out of memory (limit {limit or 'unknown'}): raise resources.memory",
        )
    line = _last_line(terminated.get("message"))
    if line:
        return PodFailure(code, line)
    if code is not None:
        return PodFailure(code, f"exited with code {code}")
    return PodFailure(None, status.get("message") or status.get("reason") or "the pod failed")


def _failed_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]


def job_status(
    job: dict[str, Any], pods: list[dict[str, Any]], timeout_seconds: int | None = None
) -> ExecStatus:
    """What a Job's conditions and its pods say about the attempt."""
    status = job.get("status") or {}
    tries = int(status.get("failed") or 0) + int(status.get("succeeded") or 0) or None
    started = container_started(pods)
    if condition(job, "Complete"):
        return ExecStatus(
            state=ExecState.SUCCEEDED,
            exit_code=0,
            tries=tries,
            started_at=started or parse_time(status.get("startTime")),
            finished_at=parse_time(status.get("completionTime")),
        )
    failed = condition(job, "Failed")
    if failed is None:
        # FailureTarget: failing, but its pods may still be stopping; the attempt ends
        # once the Job is Failed, so nothing of it still runs when the engine acts.
        return ExecStatus(
            state=ExecState.RUNNING if started else ExecState.QUEUED,
            started_at=started,
            tries=tries,
        )
    finished_at = parse_time(failed.get("lastTransitionTime"))
    why = failed.get("reason")
    newest = _newest(_failed_pods(pods))
    pod = pod_failure(newest, timeout_seconds) if newest else None
    if why == "PodFailurePolicy":
        # Our only FailJob rule is exit code 2: bad input. The condition says so even
        # when the pods are gone (a TTL, a node), so it is read, not the exit code alone.
        return ExecStatus(
            state=ExecState.FAILED,
            exit_code=EXIT_BAD_INPUT,
            exhausted=True,
            tries=tries,
            reason=(pod.reason if pod else None) or failed.get("message") or why,
            started_at=started,
            finished_at=finished_at,
        )
    if why == "DeadlineExceeded":
        return ExecStatus(
            state=ExecState.FAILED,
            exit_code=pod.exit_code if pod else None,
            timed_out=True,
            exhausted=True,
            tries=tries,
            reason="ran past the Job's deadline (activeDeadlineSeconds) and was stopped: "
            "raise timeout_seconds or make the stage faster",
            started_at=started,
            finished_at=finished_at,
        )
    # BackoffLimitExceeded: the Job used its own retries; the engine adds none.
    return ExecStatus(
        state=ExecState.FAILED,
        exit_code=pod.exit_code if pod else None,
        timed_out=pod.timed_out if pod else False,
        exhausted=True,
        tries=tries,
        reason=(pod.reason if pod else None) or failed.get("message") or why,
        started_at=started,
        finished_at=finished_at,
    )


@dataclass(frozen=True)
class Waiting:
    """Why an unfinished Job has no running container, and since when."""

    kind: str  # "unschedulable" or "stuck"
    since: datetime | None
    reason: str
    message: str


def waiting(pods: list[dict[str, Any]]) -> Waiting | None:
    """The newest pod's reason to wait: no node can take it (the scheduler's
    Unschedulable), or its container cannot be created (an image that cannot be pulled,
    a missing Secret). None when it runs, or waits for nothing in particular."""
    pending = [p for p in pods if (p.get("status") or {}).get("phase") == "Pending"]
    pod = _newest(pending)
    if pod is None:
        return None
    created = parse_time(pod["metadata"].get("creationTimestamp"))
    scheduled = next(
        (
            c
            for c in (pod.get("status") or {}).get("conditions") or []
            if c.get("type") == "PodScheduled"
        ),
        None,
    )
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason"):
        return Waiting(
            "unschedulable",
            parse_time(scheduled.get("lastTransitionTime")) or created,
            scheduled["reason"],
            scheduled.get("message") or "",
        )
    held = _state(pod, "waiting") or {}
    if held.get("reason") in STUCK_WAITING:
        since = parse_time((pod.get("status") or {}).get("startTime")) or created
        return Waiting("stuck", since, held["reason"], held.get("message") or "")
    return None


def stuck_reason(job: dict[str, Any], wait: Waiting) -> str:
    """A container that cannot be created, in words that say what to fix."""
    image = job["spec"]["template"]["spec"]["containers"][0].get("image")
    detail = f"{wait.reason}: {wait.message}" if wait.message else wait.reason
    if wait.reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"):
        return (
            f"the image {image} cannot be pulled ({detail}): check the algorithm's image "
            "and that the cluster may pull it"
        )
    return f"its container cannot be created ({detail}): check the Secrets and ConfigMaps it uses"


def accelerator_of(job: dict[str, Any]) -> str:
    return (job["metadata"].get("annotations") or {}).get(ANNOTATION_ACCELERATOR, "cpu")


# --- Indexed Jobs: one clip per index ------------------------------------------------------


def parse_indexes(text: str | None) -> set[int]:
    """``status.completedIndexes`` / ``failedIndexes`` as a set: "1,3-5" -> {1, 3, 4, 5}
    (indexed_job_utils.go's parseIndexesFromString)."""
    found: set[int] = set()
    for part in (text or "").split(","):
        first, _, last = part.strip().partition("-")
        if first.isdigit():
            found.update(range(int(first), int(last if last.isdigit() else first) + 1))
    return found


def batch_attempts(job: dict[str, Any]) -> list[str]:
    """A batch Job's attempt ids, in index order; [] for a lone Job."""
    raw = (job["metadata"].get("annotations") or {}).get(ANNOTATION_ATTEMPTS)
    return list(json.loads(raw)) if raw else []


def index_pods(pods: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    return [
        p
        for p in pods
        if (p["metadata"].get("annotations") or {}).get(COMPLETION_INDEX) == str(index)
    ]


def _finished_at(pod: dict[str, Any] | None) -> datetime | None:
    return parse_time((_state(pod, "terminated") or {}).get("finishedAt")) if pod else None


def index_status(
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    index: int,
    timeout_seconds: int | None = None,
) -> ExecStatus:
    """What an Indexed Job says about the clip at ``index``: final as soon as the Job
    controller lists the index as completed or failed (its pod has stopped then), not
    when the whole Job ends."""
    status = job.get("status") or {}
    mine = index_pods(pods, index)
    # The index's pods the Job counted: the newest carries the failures before it.
    counts = [
        int((p["metadata"].get("annotations") or {}).get(INDEX_FAILURE_COUNT) or 0) + 1
        for p in mine
    ]
    tries = max(counts) if counts else None
    started = container_started(mine)
    if index in parse_indexes(status.get("completedIndexes")):
        done = _newest([p for p in mine if (p.get("status") or {}).get("phase") == "Succeeded"])
        return ExecStatus(
            state=ExecState.SUCCEEDED,
            exit_code=0,
            tries=tries,
            started_at=started,
            finished_at=_finished_at(done),
        )
    if index in parse_indexes(status.get("failedIndexes")):
        newest = _newest(_failed_pods(mine))
        pod = pod_failure(newest, timeout_seconds) if newest else None
        return ExecStatus(
            state=ExecState.FAILED,
            # Exit 2 failed the index at once (FailIndex): the engine reads it as bad input.
            exit_code=pod.exit_code if pod else None,
            timed_out=pod.timed_out if pod else False,
            exhausted=True,
            tries=tries,
            reason=pod.reason if pod else f"index {index} failed (its pods are gone)",
            started_at=started,
            finished_at=_finished_at(newest),
        )
    failed = condition(job, "Failed")
    if failed is not None:  # the Job ended before this clip did
        return ExecStatus(
            state=ExecState.FAILED,
            exhausted=True,
            tries=tries,
            reason=failed.get("message") or failed.get("reason") or "the Job failed",
            started_at=started,
            finished_at=parse_time(failed.get("lastTransitionTime")),
        )
    return ExecStatus(
        state=ExecState.RUNNING if started else ExecState.QUEUED, started_at=started, tries=tries
    )
