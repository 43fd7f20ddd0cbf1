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
    ANNOTATION_CHAIN,
    ANNOTATION_CHAIN_ATTEMPTS,
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


def _statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Every container's status, the init containers' (a chain's first members) first."""
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _container(pod: dict[str, Any], name: str = CONTAINER) -> dict[str, Any]:
    for status in _statuses(pod):
        if status.get("name") == name:
            return status
    return {}


def _state(pod: dict[str, Any], kind: str, name: str = CONTAINER) -> dict[str, Any] | None:
    return (_container(pod, name).get("state") or {}).get(kind)


def _memory_limit(pod: dict[str, Any], name: str = CONTAINER) -> str | None:
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if container.get("name") == name:
            return ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def _started(pod: dict[str, Any], name: str) -> datetime | None:
    state = _container(pod, name).get("state") or {}
    return parse_time((state.get("running") or state.get("terminated") or {}).get("startedAt"))


def container_started(pods: list[dict[str, Any]], name: str | None = None) -> datetime | None:
    """When the stage's code first ran: the earliest start of its container (``name``;
    None: of any container, a chain's first member's included) in any pod. A pod
    waiting for a node or an image has none."""
    starts = [
        _started(p, status["name"] if name is None else name)
        for p in pods
        for status in (_statuses(p) if name is None else [{"name": name}])
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


def pod_failure(
    pod: dict[str, Any], timeout_seconds: int | None, name: str = CONTAINER
) -> PodFailure:
    """Why one pod failed, as the kubelet reported it for its container ``name``, in
    words that say what to do."""
    status = pod.get("status") or {}
    terminated = _state(pod, "terminated", name) or {}
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
        limit = _memory_limit(pod, name)
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
    #: The container that cannot be created (stuck), when one can't.
    container: str = ""


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
    # Any container's: a chain's member's image may be the one that cannot be pulled.
    for status in _statuses(pod):
        held = (status.get("state") or {}).get("waiting") or {}
        if held.get("reason") in STUCK_WAITING:
            since = parse_time((pod.get("status") or {}).get("startTime")) or created
            return Waiting(
                "stuck", since, held["reason"], held.get("message") or "", status.get("name", "")
            )
    return None


def stuck_reason(job: dict[str, Any], wait: Waiting) -> str:
    """A container that cannot be created, in words that say what to fix."""
    pod = job["spec"]["template"]["spec"]
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    image = next(
        (c.get("image") for c in containers if c.get("name") == wait.container),
        containers[-1].get("image"),
    )
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


# --- fused stages: one chain of stages per pod --------------------------------------------


def chain_of(job: dict[str, Any]) -> list[dict[str, str]]:
    """A chain Job's members in order (``stage``, ``container``); [] for any other Job."""
    raw = (job["metadata"].get("annotations") or {}).get(ANNOTATION_CHAIN)
    return list(json.loads(raw)) if raw else []


def chain_attempts(job: dict[str, Any]) -> list[list[str]]:
    """A chain Job's member attempt ids, per index, in member order."""
    raw = (job["metadata"].get("annotations") or {}).get(ANNOTATION_CHAIN_ATTEMPTS)
    return [list(ids) for ids in json.loads(raw)] if raw else []


def stopped_at(pod: dict[str, Any], chain: list[dict[str, str]]) -> int:
    """Where a failed pod's chain stopped: its first member whose container did not
    end with exit 0 (failed, or never started)."""
    for position, member in enumerate(chain):
        if (_state(pod, "terminated", member["container"]) or {}).get("exitCode") != 0:
            return position
    return len(chain) - 1


def _manifest(message: str | None) -> dict[str, Any] | None:
    """The manifest a member left as its termination message (jobs.ENV_MANIFEST_MESSAGE);
    None when it left none, or one the kubelet cut (not JSON)."""
    try:
        found = json.loads(message or "")
    except ValueError:
        return None
    return found if isinstance(found, dict) and "outputs" in found else None


def _member_success(pod: dict[str, Any], name: str, tries: int | None) -> ExecStatus:
    state = _state(pod, "terminated", name) or {}
    return ExecStatus(
        state=ExecState.SUCCEEDED,
        exit_code=0,
        tries=tries,
        started_at=parse_time(state.get("startedAt")),
        finished_at=parse_time(state.get("finishedAt")),
        manifest=_manifest(state.get("message")),
    )


def member_status(
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    index: int,
    position: int,
    timeout_seconds: int | None = None,
) -> ExecStatus:
    """What a chain Job says about the member at ``position`` of the clip at ``index``.

    Succeeded once its container ended with exit 0 in a pod of the index (a retry of the
    chain runs it again, to hand its outputs over once more: still succeeded). Failed by
    its own container's exit code and reason once the index failed there (the Job
    controller's failedIndexes, or the Job's Failed condition). Skipped once the index
    failed at an earlier member: it never ran. Otherwise running while its container
    runs, else queued (its chain is at an earlier member, or retrying)."""
    chain = chain_of(job)
    name = chain[position]["container"]
    status = job.get("status") or {}
    mine = index_pods(pods, index)
    counts = [
        int((p["metadata"].get("annotations") or {}).get(INDEX_FAILURE_COUNT) or 0) + 1
        for p in mine
    ]
    tries = max(counts) if counts else None
    done = [p for p in mine if (_state(p, "terminated", name) or {}).get("exitCode") == 0]
    if done:
        return _member_success(_newest(done) or done[0], name, tries)
    job_failed = condition(job, "Failed")
    if index in parse_indexes(status.get("failedIndexes")) or job_failed is not None:
        newest = _newest(_failed_pods(mine))
        stopped = stopped_at(newest, chain) if newest else 0
        if position > stopped:
            return ExecStatus(
                state=ExecState.SKIPPED,
                reason=f"not run: stage {chain[stopped]['stage']} failed before it",
            )
        if newest is None:
            reason = (job_failed or {}).get(
                "message"
            ) or f"index {index} failed (its pods are gone)"
            return ExecStatus(state=ExecState.FAILED, exhausted=True, tries=tries, reason=reason)
        pod = pod_failure(newest, timeout_seconds, name)
        terminated = _state(newest, "terminated", name) or {}
        return ExecStatus(
            state=ExecState.FAILED,
            exit_code=pod.exit_code,
            timed_out=pod.timed_out,
            exhausted=True,
            tries=tries,
            reason=pod.reason,
            started_at=container_started(mine, name),
            finished_at=parse_time(terminated.get("finishedAt"))
            or parse_time((job_failed or {}).get("lastTransitionTime")),
        )
    started = container_started(mine, name)
    running = any(_state(p, "running", name) for p in mine)
    return ExecStatus(
        state=ExecState.RUNNING if running or started else ExecState.QUEUED,
        started_at=started,
        tries=tries,
    )
