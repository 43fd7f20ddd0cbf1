"""Stages as Kubernetes Jobs, across named clusters. Same interface as the local one.

State lives in the clusters (Jobs labelled by camflow) and in the store, not here:
each poll lists the Jobs again, so a restarted orchestrator, or one whose cluster was
away for a while, picks its Jobs up where they are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from algorithms.contract import ENV_ACCELERATOR
from orchestrator.errors import CamflowError, ExecutorError
from orchestrator.executors.base import (
    Capacity,
    ExecState,
    ExecStatus,
    StageLaunch,
    Submission,
)
from orchestrator.kube.api import ClusterApi
from orchestrator.kube.jobs import SELECTOR, build_job
from orchestrator.kube.routing import choose_cluster
from orchestrator.kube.status import job_status
from orchestrator.settings import ClusterSettings

log = logging.getLogger("camflow.kube")


def _finished(job: dict[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


@dataclass
class ClusterView:
    """What the last look at one cluster showed."""

    reachable: bool = True
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    def active(self, gpu_only: bool = False) -> int:
        """Unfinished Jobs: the cluster's budget in use (of its GPU slots, with gpu_only)."""
        return sum(
            1
            for job in self.jobs.values()
            if not _finished(job)
            and (
                not gpu_only
                or (job["metadata"].get("annotations") or {}).get("camflow.io/accelerator") == "gpu"
            )
        )


class KubernetesExecutor:
    name = "kubernetes"

    def __init__(
        self,
        clusters: Sequence[ClusterSettings],
        api_factory: Callable[[ClusterSettings], ClusterApi] = ClusterApi,
    ) -> None:
        if not clusters:
            raise ExecutorError(
                "no Kubernetes clusters are configured: add kubernetes.clusters (name, "
                "environment, kubeconfig and context or in_cluster, namespace) to the config file"
            )
        self.clusters = list(clusters)
        self.apis = {c.name: api_factory(c) for c in clusters}
        self.views = {c.name: ClusterView() for c in clusters}
        #: Jobs to delete on clusters that were away when their run was cancelled.
        self.pending_deletes: set[str] = set()
        self._looked = False

    # --- observing ----------------------------------------------------------------------

    def refresh(self) -> None:
        for cluster in self.clusters:
            view = self.views[cluster.name]
            try:
                # A cluster known to be away gets one quick look per tick, not the whole
                # retry cycle: the engine must not stall on it.
                jobs = self.apis[cluster.name].list_jobs(
                    SELECTOR, attempts=None if view.reachable else 1
                )
            except CamflowError as exc:
                if view.reachable:
                    log.warning("cluster %s is unreachable; skipping it: %s", cluster.name, exc)
                view.reachable, view.error = False, str(exc)
                continue
            if not view.reachable:
                log.info("cluster %s answers again; picking up its Jobs", cluster.name)
            view.reachable, view.error = True, None
            view.jobs = {job["metadata"]["name"]: job for job in jobs}
        self._looked = True
        self._retry_deletes()

    def capacity(self) -> Capacity:
        if not self._looked:
            self.refresh()
        up = [c for c in self.clusters if self.views[c.name].reachable]
        return Capacity(
            slots=sum(c.budget for c in up),
            gpu_slots=sum(c.gpu.slots for c in up if c.gpu),
        )

    def poll(self, handles: Sequence[str]) -> dict[str, ExecStatus]:
        self.refresh()
        statuses = {}
        for handle in handles:
            cluster, _namespace, name = handle.split("/", 2)
            view = self.views.get(cluster)
            if view is None:
                statuses[handle] = ExecStatus(
                    state=ExecState.LOST, reason=f"cluster {cluster} is no longer configured"
                )
            elif not view.reachable:
                # Not lost: its Job goes on over there; we look again next time.
                statuses[handle] = ExecStatus(state=ExecState.RUNNING)
            elif name not in view.jobs:
                statuses[handle] = ExecStatus(
                    state=ExecState.LOST, reason=f"Job {name} is gone from cluster {cluster}"
                )
            else:
                statuses[handle] = self._status(cluster, view.jobs[name])
        return statuses

    def _status(self, cluster: str, job: dict[str, Any]) -> ExecStatus:
        pods: list[dict[str, Any]] = []
        if _finished(job) and not any(
            c.get("type") == "Complete" for c in job["status"].get("conditions", [])
        ):
            try:
                pods = self.apis[cluster].pods_of(job["metadata"]["name"])
            except CamflowError as exc:
                log.warning(
                    "cluster %s: cannot read pods of %s: %s", cluster, job["metadata"]["name"], exc
                )
        return job_status(job, pods)

    # --- acting -------------------------------------------------------------------------

    def submit(self, launches: Sequence[StageLaunch]) -> dict[str, Submission]:
        if not self._looked:
            self.refresh()
        done = {}
        for launch in launches:
            views = self.views
            placed = choose_cluster(
                launch,
                self.clusters,
                {n: v.reachable for n, v in views.items()},
                {n: v.active() for n, v in views.items()},
                {n: v.active(gpu_only=True) for n, v in views.items()},
            )
            if placed is None:
                raise ExecutorError(
                    f"no reachable {launch.channel}-channel cluster has room for "
                    f"{launch.stage} on {launch.accelerator} now"
                )
            cluster, accelerator = placed
            if accelerator != launch.accelerator:
                launch = launch.model_copy(
                    update={
                        "accelerator": accelerator,
                        "env": {**launch.env, ENV_ACCELERATOR: accelerator},
                    }
                )
            job = build_job(launch, cluster)
            try:
                created = self.apis[cluster.name].create_job(job)
            except CamflowError as exc:
                self.views[cluster.name].reachable = False
                raise ExecutorError(f"cluster {cluster.name}: {exc}") from exc
            name = job["metadata"]["name"]
            if not created:
                log.info("Job %s already existed on %s: adopted", name, cluster.name)
            # Count it now, so that later launches of this batch see the cluster fuller.
            self.views[cluster.name].jobs.setdefault(name, job)
            done[launch.attempt_id] = Submission(
                handle=f"{cluster.name}/{cluster.namespace}/{name}",
                accelerator=accelerator,  # type: ignore[arg-type]
                placement=cluster.name,
            )
        return done

    def cancel(self, handles: Sequence[str]) -> None:
        self.pending_deletes.update(handles)
        self._retry_deletes()

    def _retry_deletes(self) -> None:
        for handle in sorted(self.pending_deletes):
            cluster, _namespace, name = handle.split("/", 2)
            if cluster not in self.apis:
                self.pending_deletes.discard(handle)
                continue
            try:
                self.apis[cluster].delete_job(
                    name, attempts=None if self.views[cluster].reachable else 1
                )
            except CamflowError as exc:
                log.warning("cluster %s: cannot delete Job %s yet: %s", cluster, name, exc)
                continue
            self.pending_deletes.discard(handle)
            self.views[cluster].jobs.pop(name, None)

    def log_uri(self, handle: str) -> str:
        cluster, namespace, name = handle.split("/", 2)
        return f"k8s://{cluster}/{namespace}/jobs/{name}"

    def close(self) -> None:
        for api in self.apis.values():
            api._client.close()

    def describe(self) -> list[dict[str, Any]]:
        """For ``camflow clusters``: reachability, GPU nodes, Jobs running and queued."""
        self.refresh()
        rows = []
        for cluster in self.clusters:
            view = self.views[cluster.name]
            row: dict[str, Any] = {
                "name": cluster.name,
                "environment": cluster.environment,
                "namespace": cluster.namespace,
                "reachable": view.reachable,
                "error": view.error,
                "budget": cluster.budget,
                "gpu_slots": cluster.gpu.slots if cluster.gpu else 0,
            }
            if view.reachable:
                try:
                    nodes = self.apis[cluster.name].nodes()
                except CamflowError:
                    nodes = []
                resource = cluster.gpu.resource if cluster.gpu else "nvidia.com/gpu"
                row["gpu_nodes"] = sum(
                    1
                    for n in nodes
                    if int((n.get("status") or {}).get("allocatable", {}).get(resource, 0) or 0)
                )
                unfinished = [j for j in view.jobs.values() if not _finished(j)]
                row["running"] = sum(
                    1 for j in unfinished if (j.get("status") or {}).get("startTime")
                )
                row["queued"] = len(unfinished) - row["running"]
            rows.append(row)
        return rows
