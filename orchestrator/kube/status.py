"""A Job and its pods -> the stage outcome. Pure: dicts in, ExecStatus out."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestrator.executors.base import ExecState, ExecStatus
from orchestrator.kube.jobs import CONTAINER


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return (status.get("state") or {}).get("terminated")
    return None


def last_failure(pods: list[dict[str, Any]]) -> tuple[int | None, str | None]:
    """Exit code and reason of the newest failed pod: its termination message's last
    line (the stage contract puts the reason there), or why the pod itself failed."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    if not failed:
        return None, None
    pod = max(failed, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    terminated = _terminated(pod)
    if terminated is None:
        status = pod.get("status") or {}
        return None, status.get("message") or status.get("reason")
    lines = [ln.strip() for ln in (terminated.get("message") or "").splitlines() if ln.strip()]
    reason = lines[-1] if lines else terminated.get("reason")
    return terminated.get("exitCode"), reason


def job_status(job: dict[str, Any], pods: list[dict[str, Any]]) -> ExecStatus:
    status = job.get("status") or {}
    tries = int(status.get("failed") or 0) + int(status.get("succeeded") or 0) or None
    started, finished = _time(status.get("startTime")), _time(status.get("completionTime"))
    if _condition(job, "Complete"):
        return ExecStatus(
            state=ExecState.SUCCEEDED,
            exit_code=0,
            tries=tries,
            started_at=started,
            finished_at=finished,
        )
    failed = _condition(job, "Failed")
    if failed:
        finished = _time(failed.get("lastTransitionTime")) or finished
        code, reason = last_failure(pods)
        why = failed.get("reason")
        if why == "DeadlineExceeded":
            return ExecStatus(
                state=ExecState.FAILED,
                exit_code=code,
                timed_out=True,
                exhausted=True,
                tries=tries,
                started_at=started,
                finished_at=finished,
                reason=f"the Job ran past its deadline: {failed.get('message')}",
            )
        return ExecStatus(
            state=ExecState.FAILED,
            exit_code=code,
            # PodFailurePolicy: exit 2, bad input; BackoffLimitExceeded: retries used up.
            exhausted=True,
            tries=tries,
            reason=reason or failed.get("message") or why,
            started_at=started,
            finished_at=finished,
        )
    running = int(status.get("active") or 0) and any(
        (p.get("status") or {}).get("phase") == "Running" for p in pods
    )
    return ExecStatus(
        state=ExecState.RUNNING if running or started else ExecState.QUEUED,
        started_at=started,
        tries=tries,
    )
