"""Stages as Kubernetes Jobs, across named clusters. Same interface as the local one.

State lives in the clusters (Jobs labelled by camflow) and in the store, not here:
each poll lists the followed Jobs again, so a restarted orchestrator, or one whose
cluster was away for a while, picks its Jobs up where they are. What this object
keeps is a cache of the last look, and each cluster's health.

Requests per tick are bounded by the Jobs camflow follows, not by the Jobs a cluster
holds: Jobs and pods are listed with a set-based selector on the followed Jobs' names
(chunks of ``NAMES_PER_LIST``), so finished Jobs kept for their TTL cost nothing.

A batch (launches sharing ``StageLaunch.batch``) runs as one Indexed Job, a completion
index per clip (see jobs.build_batch_job). Each attempt keeps a handle of its own,
``<cluster>/<namespace>/<job>#<index>``, and its outcome is its index's: the Job's
``completedIndexes`` and ``failedIndexes`` and that index's pods. A batch Job counts as
one Job against its cluster's budget, as it holds one slot of the engine's.

Fused stages (a launch's ``chain``) run as one Indexed Job too, an index per clip, whose
pod runs the chain's members in order, one container each (jobs.build_chain_job). The
first member's handle is its index's; the member at position k > 0 of the chain has
``...#<index>@<k>``, answered from its own container's status (status.member_status).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from algorithms import contract
from algorithms.contract import ENV_ACCELERATOR, ENV_BATCH
from orchestrator.errors import CamflowError, ExecutorError
from orchestrator.executors.base import (
    Capacity,
    ExecState,
    ExecStatus,
    Placement,
    StageLaunch,
    Submission,
    SubmitRefused,
)
from orchestrator.grants.brokers import Broker
from orchestrator.grants.policy import grant_of
from orchestrator.kube.api import ClusterApi, ClusterUnreachable, KubeApiError
from orchestrator.kube.jobs import (
    ANNOTATION_ATTEMPT,
    ANNOTATION_FALLBACK,
    ANNOTATION_FALLBACK_AFTER,
    ANNOTATION_TIMEOUT,
    CONTAINER,
    ENV_MANIFEST_MESSAGE,
    LABEL_JOB,
    POD_JOB_LABEL,
    SELECTOR,
    batch_job_name,
    build_batch_job,
    build_chain_job,
    build_job,
    busy_seconds,
    chain_job_name,
    clip_envs,
    credentials_secret,
    job_name,
    with_own_credentials,
)
from orchestrator.kube.routing import choose_cluster
from orchestrator.kube.status import (
    Waiting,
    accelerator_of,
    batch_attempts,
    chain_attempts,
    chain_of,
    container_started,
    finished,
    index_pods,
    index_status,
    job_status,
    member_status,
    parse_indexes,
    stopped_at,
    stuck_reason,
    waiting,
)
from orchestrator.settings import ClusterSettings

log = logging.getLogger("camflow.kube")

#: Names per set-based selector: keeps each list's URL well under common limits.
NAMES_PER_LIST = 50
#: Refusals that describe the request itself: the same create can never succeed.
FINAL_STATUSES = frozenset({400, 422})


def _chunks(names: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(names), size):
        yield names[start : start + size]


def _handle(
    cluster: ClusterSettings, name: str, index: int | None = None, position: int = 0
) -> str:
    """``<cluster>/<namespace>/<job>``, ``#<index>`` for one clip of a batch Job, and
    ``@<position>`` for a later member of a clip's chain of fused stages."""
    job = f"{cluster.name}/{cluster.namespace}/{name}"
    if index is None:
        return job
    return f"{job}#{index}@{position}" if position else f"{job}#{index}"


def _parse(handle: str) -> tuple[str, str, str, int | None]:
    """A handle's cluster, namespace, Job name and, for a clip of a batch, its index."""
    cluster, namespace, rest = handle.split("/", 2)
    name, sep, index = rest.partition("#")
    return cluster, namespace, name, int(index.partition("@")[0]) if sep else None


def _position(handle: str) -> int:
    """A handle's member of its chain of fused stages (0: the first, or no chain)."""
    _, sep, position = handle.partition("#")[2].partition("@")
    return int(position) if sep else 0


def _job_handle(handle: str) -> str:
    return handle.partition("#")[0]


def _shape(launch: StageLaunch) -> tuple[object, ...]:
    """What a batch's launches must share to be one Job (the engine batches one stage's
    attempts of one algorithm version, params and accelerator; retries and placement
    come from each run's pipeline and place)."""
    return (
        launch.batch,
        launch.placement,
        launch.accelerator,
        launch.stage,
        launch.image,
        tuple(launch.command),
        launch.resources.model_dump_json(),
        launch.timeout_seconds,
        launch.retries,
        launch.queued_fallback,
        launch.fallback_after_seconds,
    )


class ActionLog(Protocol):
    """Where deletes of Jobs are remembered until their cluster has done them: in the
    store, so that a restart between the decision and the delete loses none."""

    def pending_deletes(self) -> list[str]: ...

    def add_deletes(self, handles: Sequence[str]) -> None: ...

    def done_delete(self, handle: str) -> None: ...


class MemoryActionLog:
    """An ActionLog that lasts as long as this process (tests, one-shot commands)."""

    def __init__(self) -> None:
        self._handles: set[str] = set()

    def pending_deletes(self) -> list[str]:
        return sorted(self._handles)

    def add_deletes(self, handles: Sequence[str]) -> None:
        self._handles.update(handles)

    def done_delete(self, handle: str) -> None:
        self._handles.discard(handle)


@dataclass
class ClusterView:
    """What the last look at one cluster showed, and when to look again if it is away."""

    reachable: bool = True
    #: The followed Jobs by name (handles polled, and Jobs created since).
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Their pods, by Job name.
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None
    #: Monotonic time of the next probe while it is away.
    probe_at: float = 0.0
    #: It answers but refused the last look (RBAC): its attempts are left as they are.
    blind: bool = False

    def active(self, gpu_only: bool = False) -> int:
        """Unfinished Jobs: the cluster's budget in use (of its GPU slots, with gpu_only)."""
        return sum(
            1
            for job in self.jobs.values()
            if not finished(job) and (not gpu_only or accelerator_of(job) == "gpu")
        )


class KubernetesExecutor:
    name = "kubernetes"
    retries_itself = True
    batches = True
    durable_before_submit = True
    #: Fused stages (a launch's chain), once the SDK leaves each stage's manifest in its
    #: container's termination message (contract.ENV_MANIFEST_MESSAGE): a member whose
    #: outputs stay in its pod (CAMFLOW_KEEP_LOCAL) writes its manifest to no S3, so
    #: without it the engine would find none and fail that member.
    fuses = getattr(contract, "ENV_MANIFEST_MESSAGE", None) == ENV_MANIFEST_MESSAGE

    def __init__(
        self,
        clusters: Sequence[ClusterSettings],
        api_factory: Callable[[ClusterSettings], ClusterApi] = ClusterApi,
        actions: ActionLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        broker: Broker | None = None,
    ) -> None:
        if not clusters:
            raise ExecutorError(
                "no Kubernetes clusters are configured: add kubernetes.clusters (name, "
                "environment, kubeconfig and context or in_cluster, namespace) to the config file"
            )
        self.clusters = {c.name: c for c in clusters}
        self.apis = {c.name: api_factory(c) for c in clusters}
        self.views = {c.name: ClusterView() for c in clusters}
        self.actions: ActionLog = actions or MemoryActionLog()
        #: GPU Jobs given back for CPU: their pods must be gone before the CPU Job starts.
        self._fell_back: set[str] = set()
        #: Clips of batch Jobs given back (for CPU, or failed while stuck), by handle
        #: (``...#<index>``): what each is told, however late it is asked.
        self._gave_back: dict[str, ExecStatus] = {}
        #: GPU batch Jobs some clips of which were given back for CPU, by handle, with
        #: those clips' indexes: the first of them resubmitted creates one CPU batch Job
        #: for them all, so the batch still holds one slot. In memory: after a restart,
        #: the first resubmitted takes the CPU batch Job's name and the others go alone.
        self._regroup: dict[str, tuple[dict[str, Any], list[int]]] = {}
        self._clock = clock
        self._now = now
        #: Mints each Job's own storage credentials (None: the cluster's s3_secret).
        self.broker = broker

    # --- cluster health -----------------------------------------------------------------

    def _away(self, cluster: ClusterSettings, exc: CamflowError) -> None:
        view = self.views[cluster.name]
        if view.reachable:
            log.warning("cluster %s is unreachable; skipping it: %s", cluster.name, exc)
        view.reachable, view.error = False, str(exc)
        view.probe_at = self._clock() + cluster.probe_interval_seconds

    def _back(self, cluster: ClusterSettings) -> None:
        view = self.views[cluster.name]
        if not view.reachable:
            log.info("cluster %s answers again; picking up its Jobs", cluster.name)
        view.reachable, view.error = True, None

    def probe(self) -> None:
        """Asks each away cluster whose probe is due whether it answers (one quick
        request), whether or not anything runs there."""
        for cluster in self.clusters.values():
            view = self.views[cluster.name]
            if view.reachable or self._clock() < view.probe_at:
                continue
            try:
                self.apis[cluster.name].probe()
            except CamflowError as exc:
                self._away(cluster, exc)
                continue
            self._back(cluster)
        self._retry_deletes()

    # --- observing ----------------------------------------------------------------------

    def _look(self, cluster: ClusterSettings, names: Sequence[str]) -> None:
        """Lists the named Jobs and their pods: two requests per chunk of names. Jobs
        last seen unfinished are looked at too, polled or not: they hold the cluster's
        budget until they finish, and a Job's clips can all have ended (its completed
        indexes) before its Complete condition is set; followed only through its clips'
        handles, it would hold that budget for ever once none is polled any more."""
        view = self.views[cluster.name]
        api = self.apis[cluster.name]
        attempts = None if view.reachable else 1
        jobs: dict[str, dict[str, Any]] = {}
        pods: dict[str, list[dict[str, Any]]] = {}
        unfinished = [name for name, job in view.jobs.items() if not finished(job)]
        for chunk in _chunks(sorted({*names, *unfinished}), NAMES_PER_LIST):
            wanted = ",".join(chunk)
            for job in api.list_jobs(f"{SELECTOR},{LABEL_JOB} in ({wanted})", attempts):
                jobs[job["metadata"]["name"]] = job
            for pod in api.list_pods(f"{POD_JOB_LABEL} in ({wanted})", attempts):
                owner = pod["metadata"].get("labels", {}).get(POD_JOB_LABEL, "")
                pods.setdefault(owner, []).append(pod)
        view.jobs, view.pods = jobs, pods

    def poll(self, handles: Sequence[str]) -> dict[str, ExecStatus]:
        by_cluster: dict[str, list[str]] = {}
        for handle in handles:
            cluster, _namespace, name, _index = _parse(handle)
            by_cluster.setdefault(cluster, []).append(name)
        for handle in self.actions.pending_deletes():
            # A batch Job some of whose clips were cancelled: seen in the same list, to
            # know when none of it is left to run (see _retry_deletes).
            cluster, _namespace, name, index = _parse(handle)
            if index is not None:
                by_cluster.setdefault(cluster, []).append(name)
        for name, cluster in self.clusters.items():
            view = self.views[name]
            if not view.reachable and self._clock() < view.probe_at:
                continue
            try:
                self._look(cluster, by_cluster.get(name, []))
            except KubeApiError as exc:
                # Refused (RBAC, say): the cluster answers, so it keeps its work; its
                # attempts stay as they were until a look is allowed again.
                log.warning("cluster %s: cannot look at its Jobs: %s", name, exc)
                view.blind, view.error = True, exc.api_message or str(exc)
                continue
            except CamflowError as exc:
                self._away(cluster, exc)
                continue
            view.blind = False
            self._back(cluster)
        self._retry_deletes()
        return {handle: self._status(handle) for handle in handles}

    def _status(self, handle: str) -> ExecStatus:
        cluster_name, _namespace, name, index = _parse(handle)
        cluster = self.clusters.get(cluster_name)
        if cluster is None:
            return ExecStatus(
                state=ExecState.LOST, reason=f"cluster {cluster_name} is no longer configured"
            )
        given = self._gave_back.get(handle)
        if index is not None and given is not None:
            return given
        view = self.views[cluster_name]
        if not view.reachable or view.blind:
            # Not lost: its Job goes on over there; we look again when it answers.
            return ExecStatus(state=ExecState.RUNNING)
        job = view.jobs.get(name)
        if job is None:
            return self._gone(cluster, name, index, _position(handle))
        return self._observe(cluster, job, index, _position(handle))

    def _gone(
        self, cluster: ClusterSettings, name: str, index: int | None, position: int = 0
    ) -> ExecStatus:
        # A list can miss a Job that was made before its label existed: ask for it.
        try:
            job = self.apis[cluster.name].get_job(name)
        except CamflowError as exc:
            log.warning("cluster %s: cannot read Job %s: %s", cluster.name, name, exc)
            return ExecStatus(state=ExecState.RUNNING)
        if job is not None:
            self.views[cluster.name].jobs[name] = job
            return self._observe(cluster, job, index, position)
        # The engine then looks for the stage's manifest: a Job that finished and was
        # removed by its TTL while we could not see the cluster succeeded if it is there.
        what = f"Job {name}" if index is None else f"Job {name} (its clip at index {index})"
        return ExecStatus(
            state=ExecState.LOST,
            reason=f"{what} is gone from cluster {cluster.name} (deleted, or removed "
            "by its ttlSecondsAfterFinished while camflow could not see the cluster)",
        )

    def _observe(
        self,
        cluster: ClusterSettings,
        job: dict[str, Any],
        index: int | None = None,
        position: int = 0,
    ) -> ExecStatus:
        name = job["metadata"]["name"]
        pods = self.views[cluster.name].pods.get(name, [])
        annotations = job["metadata"].get("annotations") or {}
        timeout = annotations.get(ANNOTATION_TIMEOUT)
        limit = int(timeout) if timeout else None
        if index is not None:
            return self._observe_index(cluster, job, pods, index, limit, position)
        status = job_status(job, pods, limit)
        if status.state != ExecState.QUEUED or finished(job):
            return status
        given = self._verdict(cluster, job, waiting(pods))
        if given is None:
            return status
        handle = _handle(cluster, name)
        self._delete(handle)
        if given.requeue:
            # A create of the same attempt on CPU waits for this delete: never two at once.
            self._fell_back.add(handle)
        return given

    def _verdict(
        self, cluster: ClusterSettings, job: dict[str, Any], wait: Waiting | None
    ) -> ExecStatus | None:
        """What to tell the engine of a pod that has not started and may never: failed
        (its container cannot be created, after the cluster's grace), back for CPU (a
        GPU pod no node could take within the stage's fallback wait), or None: wait on."""
        if wait is None or wait.since is None:
            return None
        waited = (self._now() - wait.since).total_seconds()
        if wait.kind == "stuck" and waited >= cluster.stuck_grace_seconds:
            reason = stuck_reason(job, wait)
            return ExecStatus(state=ExecState.FAILED, reason=reason, exhausted=True, tries=1)
        annotations = job["metadata"].get("annotations") or {}
        after = float(annotations.get(ANNOTATION_FALLBACK_AFTER) or 0)
        if (
            wait.kind == "unschedulable"
            and accelerator_of(job) == "gpu"
            and annotations.get(ANNOTATION_FALLBACK) == "cpu"
            and waited >= after
        ):
            log.info(
                "cluster %s: no node could take GPU Job %s for %.0f s (%s): back for CPU",
                cluster.name,
                job["metadata"]["name"],
                waited,
                wait.message,
            )
            return ExecStatus(
                state=ExecState.QUEUED,
                requeue="cpu",
                reason=f"no node could take it on GPU for {waited:.0f} s ({wait.message}): "
                "moved to CPU",
            )
        return None

    def _observe_index(
        self,
        cluster: ClusterSettings,
        job: dict[str, Any],
        pods: list[dict[str, Any]],
        index: int,
        limit: int | None,
        position: int = 0,
    ) -> ExecStatus:
        """One clip of a batch Job (its chain's member at ``position``, for fused
        stages). Each index that has not started is watched as a lone Job is: once the
        pod of one of them is stuck, or waits for a GPU past the fallback wait, every
        clip the Job has not run and is not running is given back (failed with the
        kubelet's reason, or for CPU; a chain's later members are skipped), and the Job
        is deleted once the index it runs, if any, has ended (as cancelled clips are,
        see cancel)."""
        chain = chain_of(job)
        status = (
            member_status(job, pods, index, position, limit)
            if chain
            else index_status(job, pods, index, limit)
        )
        if finished(job):
            return status
        name = job["metadata"]["name"]
        handle = _handle(cluster, name)
        progress = job.get("status") or {}
        ended = parse_indexes(progress.get("completedIndexes")) | parse_indexes(
            progress.get("failedIndexes")
        )
        left = [i for i in range(int(job["spec"].get("completions") or 1)) if i not in ended]
        given: ExecStatus | None = None
        for other in left:
            mine = index_pods(pods, other)
            if container_started(mine) is None:
                given = self._verdict(cluster, job, waiting(mine))
                if given is not None:
                    break
        stuck: int | None = None
        if given is None and chain:
            given, stuck = self._stuck_chain(cluster, job, pods, left)
        if given is None:
            return status
        # The index running now goes on to its end; every other one left is given back
        # (one whose earlier pod ran and failed, waiting for its retry, too: the Job
        # that would retry it is deleted).
        running = {
            i
            for i in left
            if any(
                (p.get("status") or {}).get("phase") in ("Pending", "Running")
                and container_started([p]) is not None
                for p in index_pods(pods, i)
            )
        }
        back = [i for i in left if i not in running]
        if given.state == ExecState.FAILED and chain:
            # Its kubelet cannot create a container (a later stage's image, say): no
            # clip left gets further, the one running included.
            back = left
        for i in back:
            if i == stuck:  # told by _stuck_chain, stage by stage
                continue
            self._gave_back[_handle(cluster, name, i)] = given
            for later in range(1, len(chain)):
                what = "failed" if given.state == ExecState.FAILED else "was given back"
                self._gave_back[_handle(cluster, name, i, later)] = ExecStatus(
                    state=ExecState.SKIPPED,
                    reason=f"not run: stage {chain[0]['stage']} {what} before it ({given.reason})",
                )
        if given.requeue:
            self._fell_back.add(handle)
            if not chain:  # a chain's first members come back one by one, with theirs
                self._regroup[handle] = (job, back)
        self.actions.add_deletes([_handle(cluster, name, i) for i in back])
        self._retry_deletes(self._pending_of(handle))
        return self._gave_back.get(_handle(cluster, name, index, position), status)

    def _stuck_chain(
        self,
        cluster: ClusterSettings,
        job: dict[str, Any],
        pods: list[dict[str, Any]],
        left: list[int],
    ) -> tuple[ExecStatus | None, int | None]:
        """A chain whose running pod cannot create its next stage's container (an
        image that cannot be pulled, a missing Secret) past the cluster's grace: that
        stage fails with the kubelet's reason, the stages after it are skipped, the
        ones before keep their outcome. Returns what the other clips are told, and
        the index of that chain."""
        chain = chain_of(job)
        name = job["metadata"]["name"]
        for index in left:
            mine = index_pods(pods, index)
            if container_started(mine) is None:
                continue
            given = self._verdict(cluster, job, waiting(mine))
            if given is None or given.state != ExecState.FAILED:
                continue
            pod = max(mine, key=lambda p: p["metadata"].get("creationTimestamp") or "")
            stopped = stopped_at(pod, chain)
            for before in range(stopped):  # kept: the Job that says so is deleted next
                self._gave_back[_handle(cluster, name, index, before)] = member_status(
                    job, pods, index, before
                )
            for later in range(stopped + 1, len(chain)):
                self._gave_back[_handle(cluster, name, index, later)] = ExecStatus(
                    state=ExecState.SKIPPED,
                    reason=f"not run: stage {chain[stopped]['stage']} failed before it",
                )
            self._gave_back[_handle(cluster, name, index, stopped)] = given
            return given, index
        return None, None

    def _pending_of(self, job_handle: str) -> list[str]:
        """The pending deletes of a Job: its own, or those of its clips."""
        return [h for h in self.actions.pending_deletes() if _job_handle(h) == job_handle]

    # --- acting -------------------------------------------------------------------------

    def capacity(self) -> Capacity:
        self.probe()
        up = [c for c in self.clusters.values() if self.views[c.name].reachable]
        return Capacity(
            slots=sum(c.budget for c in up),
            gpu_slots=sum(c.gpu.slots for c in up if c.gpu),
        )

    def place(self, launches: Sequence[StageLaunch]) -> dict[str, Placement]:
        placed = {}
        active = {n: v.active() for n, v in self.views.items()}
        gpu_active = {n: v.active(gpu_only=True) for n, v in self.views.items()}
        for launch in launches:
            choice = choose_cluster(
                launch,
                list(self.clusters.values()),
                {n: v.reachable for n, v in self.views.items()},
                active,
                gpu_active,
            )
            if choice is None:
                continue
            cluster, accelerator = choice
            placed[launch.attempt_id] = Placement(
                placement=cluster.name,
                accelerator=accelerator,  # type: ignore[arg-type]
            )
            # Later launches of this batch see the cluster fuller.
            active[cluster.name] += 1
            gpu_active[cluster.name] += accelerator == "gpu"
        return placed

    def submit(self, launches: Sequence[StageLaunch]) -> dict[str, Submission]:
        """Each lone launch as a Job, each batch (launches sharing ``batch``) as one
        Indexed Job; a batch that came apart (one clip, or clips of other shapes) as
        several."""
        done = {}
        batches: dict[str, list[StageLaunch]] = {}
        chains: dict[str, list[StageLaunch]] = {}
        for launch in launches:
            if launch.placement is None:
                placed = self.place([launch]).get(launch.attempt_id)
                if placed is None:
                    raise ExecutorError(
                        f"no reachable {launch.channel}-channel cluster has room for "
                        f"{launch.stage} on {launch.accelerator} now"
                    )
                launch = launch.model_copy(
                    update={"placement": placed.placement, "accelerator": placed.accelerator}
                )
            if launch.chain:
                # Fused stages: one Job per batch of chains (or per lone chain).
                chains.setdefault(launch.batch or launch.attempt_id, []).append(launch)
            elif launch.batch:
                batches.setdefault(launch.batch, []).append(launch)
            else:
                done[launch.attempt_id] = self._create(launch)
        for members in batches.values():
            # One Job per batch and place, named by the batch (a batch of one too, as a
            # lone Job: the name is what a Resubmit finds, or takes, see _reserve). Its
            # clips that cannot share that Job (of another shape at the same place) go
            # as lone Jobs, where a Resubmit finds them by their own names.
            groups: dict[tuple[object, ...], list[StageLaunch]] = {}
            for launch in members:
                groups.setdefault(_shape(launch), []).append(launch)
            named: set[tuple[str | None, str]] = set()
            for group in groups.values():
                where = (group[0].placement, group[0].accelerator)
                if where not in named:
                    named.add(where)
                    if len(group) > 1:
                        done.update(self._create_batch(group))
                    else:
                        done[group[0].attempt_id] = self._create(group[0], group[0].batch)
                    continue
                for launch in group:
                    done[launch.attempt_id] = self._create(launch)
        for members in chains.values():
            done.update(self._create_chain(members))
        return done

    def _create_chain(self, launches: list[StageLaunch]) -> dict[str, Submission]:
        """One Indexed Job for the chains of fused stages of a batch (or one lone
        chain): an index per clip, each member a container of its pod; a Submission
        for every member. A chain resubmitted on its own (``recorded_batch``: its
        batch's submit failed, or its handles were never recorded) is looked for in its
        batch's Job first, so that it never runs twice; if that Job does not exist, the
        chain takes its name (a late create of the batch then gets 409 and runs
        nothing), as a lone batch attempt does (see _reserve)."""
        cluster = self._cluster_for(launches[0])
        launches = [self._chain_on_accelerator(launch) for launch in launches]
        first = launches[0]
        name = None
        if not first.batch and first.recorded_batch:
            job = self._batch_job(cluster, first)
            if job is None:
                name = batch_job_name(first.recorded_batch, first.stage, first.accelerator)
            elif chain_of(job):
                found = self._adopt_chains(cluster, job, launches)
                if found is not None:
                    return found
        done = self._create_chain_job(cluster, launches, name)
        if done is None and name is not None:
            # The batch's Job was made meanwhile without it: it goes alone.
            done = self._create_chain_job(cluster, launches, None)
        if done is None:
            raise ExecutorError(f"a Job of another batch holds the name of {first.attempt_id}")
        return done

    def _adopt_chains(
        self, cluster: ClusterSettings, job: dict[str, Any], launches: list[StageLaunch]
    ) -> dict[str, Submission] | None:
        """The members' handles in ``job`` if it holds every chain; None otherwise."""
        wanted = {launch.attempt_id for launch in launches}
        found = self._chain_submissions(cluster, job, wanted)
        held = {attempt for attempt in wanted if attempt in found}
        if held != wanted:
            return None
        name = job["metadata"]["name"]
        log.info("chains of %s are in Job %s on %s: adopted", sorted(wanted), name, cluster.name)
        self._adopt_secret(cluster, name)
        return found

    def _create_chain_job(
        self, cluster: ClusterSettings, launches: list[StageLaunch], name: str | None
    ) -> dict[str, Submission] | None:
        """Creates the chains' Job (named ``name``, else by chain_job_name); None when
        one of that name exists (made by an earlier try) without them."""
        first = launches[0]
        try:
            job = build_chain_job(launches, cluster, name)
        except ValueError as exc:
            raise SubmitRefused(str(exc), final=True) from exc
        gpu_twin = (
            chain_job_name(first.model_copy(update={"accelerator": "gpu"}))
            if name is None
            else batch_job_name(first.recorded_batch or "", first.stage, "gpu")
        )
        created = self._create_job(
            cluster, job, first.accelerator, _handle(cluster, gpu_twin), self._batch_twin(first)
        )
        name = job["metadata"]["name"]
        if not created:  # made by an earlier try: what does it hold?
            existing = self.apis[cluster.name].get_job(name)
            self.views[cluster.name].jobs.pop(name, None)
            if existing is None:
                raise ExecutorError(f"Job {name} is gone before it could be adopted")
            self.views[cluster.name].jobs[name] = existing
            return self._adopt_chains(cluster, existing, launches)
        log.info(
            "chain %s: %d clips of stages %s in Indexed Job %s on %s",
            first.batch or first.recorded_batch or first.attempt_id,
            len(launches),
            "+".join(m.stage for m in first.members),
            name,
            cluster.name,
        )
        return self._chain_submissions(cluster, job, {launch.attempt_id for launch in launches})

    @staticmethod
    def _chain_submissions(
        cluster: ClusterSettings, job: dict[str, Any], firsts: set[str]
    ) -> dict[str, Submission]:
        """A Submission for each member of the chains of ``job`` whose first member is
        in ``firsts``."""
        name = job["metadata"]["name"]
        accelerator = accelerator_of(job)
        # A member's own, where the Job says (a CPU stage in a GPU stage's pod).
        own = [member.get("accelerator", accelerator) for member in chain_of(job)]
        done = {}
        for index, members in enumerate(chain_attempts(job)):
            if members and members[0] in firsts:
                for position, attempt in enumerate(members):
                    done[attempt] = Submission(
                        handle=_handle(cluster, name, index, position),
                        accelerator=own[position],  # type: ignore[arg-type]
                        placement=cluster.name,
                    )
        return done

    def _chain_on_accelerator(self, launch: StageLaunch) -> StageLaunch:
        """The chain's members where its first member was placed, each told its
        accelerator: the first member's, but a CPU member stays on CPU (a stage that
        joined a GPU stage's pod, ``placement.join_gpu``)."""
        chain = [
            self._on_accelerator(
                m.model_copy(
                    update={
                        "placement": launch.placement,
                        "accelerator": "cpu" if m.accelerator == "cpu" else launch.accelerator,
                    }
                )
            )
            for m in launch.chain
        ]
        return self._on_accelerator(launch).model_copy(update={"chain": chain})

    def _cluster_for(self, launch: StageLaunch) -> ClusterSettings:
        cluster = self.clusters.get(launch.placement or "")
        if cluster is None:
            raise SubmitRefused(
                f"cluster {launch.placement} is no longer configured: add it back to "
                "kubernetes.clusters, or the attempt cannot be followed",
                final=True,
            )
        view = self.views[cluster.name]
        if not view.reachable:
            # Its place is fixed: wait for that cluster, never move to another.
            raise ExecutorError(f"cluster {cluster.name} is away: {view.error}")
        return cluster

    @staticmethod
    def _on_accelerator(launch: StageLaunch) -> StageLaunch:
        if launch.env.get(ENV_ACCELERATOR) == launch.accelerator:
            return launch
        return launch.model_copy(
            update={"env": {**launch.env, ENV_ACCELERATOR: launch.accelerator}}
        )

    def _create(self, launch: StageLaunch, by_batch: str | None = None) -> Submission:
        """A lone Job for ``launch``: named by ``by_batch`` (a batch of one), else by
        the attempt."""
        cluster = self._cluster_for(launch)
        launch = self._on_accelerator(launch)
        if by_batch is not None:
            return self._create_lone(cluster, launch, by_batch)
        if launch.recorded_batch:
            # Recorded in a batch whose Job may exist: never start the attempt beside it.
            found = self._regrouped(cluster, launch)
            if found is None:
                job = self._batch_job(cluster, launch)
                found = (
                    self._reserve(cluster, launch)
                    if job is None
                    else self._find_in_batch(cluster, launch, job)
                )
            if found is not None:
                return found
        return self._create_lone(cluster, launch)

    def _create_lone(
        self, cluster: ClusterSettings, launch: StageLaunch, by_batch: str | None = None
    ) -> Submission:
        name = (
            None if by_batch is None else batch_job_name(by_batch, launch.stage, launch.accelerator)
        )
        try:
            job = build_job(launch, cluster, name)
        except ValueError as exc:
            raise SubmitRefused(str(exc), final=True) from exc
        gpu_twin = (
            job_name(launch.model_copy(update={"accelerator": "gpu"}))
            if by_batch is None
            else batch_job_name(by_batch, launch.stage, "gpu")
        )
        self._create_job(
            cluster, job, launch.accelerator, _handle(cluster, gpu_twin), self._batch_twin(launch)
        )
        return Submission(
            handle=_handle(cluster, job["metadata"]["name"]),
            accelerator=launch.accelerator,
            placement=cluster.name,
        )

    def _create_batch(self, launches: list[StageLaunch]) -> dict[str, Submission]:
        cluster = self._cluster_for(launches[0])
        launches = [self._on_accelerator(launch) for launch in launches]
        try:
            job = build_batch_job(launches[0].batch or "", launches, cluster)
        except ValueError as exc:
            raise SubmitRefused(str(exc), final=True) from exc
        accelerator = launches[0].accelerator
        gpu_twin = batch_job_name(launches[0].batch or "", launches[0].stage, "gpu")
        self._create_job(cluster, job, accelerator, _handle(cluster, gpu_twin))
        name = job["metadata"]["name"]
        log.info(
            "batch %s: %d clips of stage %s in Indexed Job %s on %s",
            launches[0].batch,
            len(launches),
            launches[0].stage,
            name,
            cluster.name,
        )
        return {
            launch.attempt_id: Submission(
                handle=_handle(cluster, name, index),
                accelerator=accelerator,
                placement=cluster.name,
            )
            for index, launch in enumerate(launches)
        }

    def _batch_twin(self, launch: StageLaunch) -> tuple[str, str] | None:
        """For a CPU attempt recorded in a batch: the GPU batch Job it may have been
        given back from (its handle), and the attempt. Whatever this process remembers
        (nothing, after a restart), that Job's delete and its pods running the attempt
        are waited for."""
        if not launch.recorded_batch or launch.accelerator == "gpu":
            return None
        cluster = self.clusters[launch.placement or ""]
        name = batch_job_name(launch.recorded_batch, launch.stage, "gpu")
        return _handle(cluster, name), launch.attempt_id

    def _adopt_secret(self, cluster: ClusterSettings, name: str) -> None:
        """An adopted Job (made by an earlier try) still gets its Secret, read back for
        its uid and clips; if it cannot, the Job is adopted anyway, and its pods fail
        with the kubelet's reason after the cluster's grace."""
        if self.broker is None:
            return
        try:
            found = self.apis[cluster.name].get_job(name)
            if found is None:
                raise ExecutorError(f"Job {name} is gone before its credentials were made")
            self._ensure_secret(cluster, found)
        except CamflowError as exc:
            log.warning("Job %s on %s: %s", name, cluster.name, exc)

    def _ensure_secret(self, cluster: ClusterSettings, made: dict[str, Any]) -> None:
        """Mints credentials for the clips the Job runs (read from the Job as the server
        has it, uid included) and makes its Secret, owned by the Job so that the garbage
        collector deletes it with the Job (the TTL's delete included). Its pods wait for
        it as for any missing Secret. One an earlier try made (before a crash) is kept:
        its keys still hold, and running pods may use them."""
        assert self.broker is not None
        name = made["metadata"]["name"]
        try:
            grant = grant_of(clip_envs(made), busy_seconds(made), name)
            credentials = self.broker.issue(grant)
        except CamflowError as exc:
            raise ExecutorError(f"no storage credentials for Job {name}: {exc}") from exc
        try:
            created = self.apis[cluster.name].create_secret(
                credentials_secret(made, made["metadata"]["uid"], credentials.env())
            )
        except BaseException:
            self.broker.revoke(credentials)
            raise
        if not created:
            self.broker.revoke(credentials)

    def _create_job(
        self,
        cluster: ClusterSettings,
        job: dict[str, Any],
        accelerator: str,
        gpu_twin: str,
        batch_twin: tuple[str, str] | None = None,
    ) -> bool:
        """Creates ``job`` (a 409 adopts the one an earlier try made: False). A CPU Job
        that replaces a GPU one given back (``gpu_twin``; ``batch_twin``: the GPU batch
        Job and the attempt, for a clip recorded in a batch) waits until that one is
        deleted and its pods (running the attempt) are gone. With a broker, every Job
        made here (lone, batch, reserved or regrouped) reads credentials of its own,
        from a Secret made once the Job exists (``_ensure_secret``)."""
        name = job["metadata"]["name"]
        if self.broker is not None:
            job = with_own_credentials(job, session_token=self.broker.session_tokens)
        if accelerator != "gpu":
            twins = [gpu_twin, *([batch_twin[0]] if batch_twin else [])]
            for twin in twins:
                if self._pending_of(twin):
                    # The GPU Job this one replaces is not deleted yet (a batch Job: once
                    # the clip it runs has ended): it could still start this attempt.
                    self._retry_deletes(self._pending_of(twin))
                    if self._pending_of(twin):
                        raise ExecutorError(
                            f"waiting for {twin} to be deleted before {name} starts"
                        )
            if gpu_twin in self._fell_back:
                self._wait_for_pods_gone(cluster, _parse(gpu_twin)[2], name)
                self._fell_back.discard(gpu_twin)
            if batch_twin:
                self._wait_for_pods_gone(cluster, _parse(batch_twin[0])[2], name, batch_twin[1])
                self._fell_back.discard(batch_twin[0])
        try:
            created = self.apis[cluster.name].create_job(job)
        except ClusterUnreachable as exc:
            self._away(cluster, exc)
            raise
        except KubeApiError as exc:
            # About this request, not the cluster: it stays in service for others.
            raise SubmitRefused(
                f"cluster {cluster.name} refused the Job: {exc.api_message or exc}",
                final=exc.status in FINAL_STATUSES,
            ) from exc
        if created is None:
            log.info("Job %s already existed on %s: adopted", name, cluster.name)
            self._adopt_secret(cluster, name)
        elif self.broker is not None:
            self._ensure_secret(cluster, created)
        self.views[cluster.name].jobs.setdefault(name, job)
        return created is not None

    def _batch_job(self, cluster: ClusterSettings, launch: StageLaunch) -> dict[str, Any] | None:
        """The Job of the batch the attempt was recorded in, on its accelerator, if any.
        A refusal to read it is raised: creating the attempt alone could run it twice."""
        name = batch_job_name(launch.recorded_batch or "", launch.stage, launch.accelerator)
        view = self.views[cluster.name]
        job = view.jobs.get(name)
        if job is None:
            try:
                job = self.apis[cluster.name].get_job(name)
            except ClusterUnreachable as exc:
                self._away(cluster, exc)
                raise
            if job is None:
                return None
            view.jobs[name] = job
        return job

    def _find_in_batch(
        self, cluster: ClusterSettings, launch: StageLaunch, job: dict[str, Any] | None = None
    ) -> Submission | None:
        """The attempt's index in the Job of the batch it was recorded in (``job``, else
        read), on its accelerator (a create whose answer was lost, a handle never
        recorded)."""
        job = job or self._batch_job(cluster, launch)
        if job is None:
            return None
        name = job["metadata"]["name"]
        if (job["metadata"].get("annotations") or {}).get(ANNOTATION_ATTEMPT) == (
            launch.attempt_id
        ):  # a batch of one, or a clip that took its batch's name (see _reserve)
            log.info("%s is Job %s on %s: adopted", launch.attempt_id, name, cluster.name)
            self._adopt_secret(cluster, name)
            return Submission(
                handle=_handle(cluster, name),
                accelerator=launch.accelerator,
                placement=cluster.name,
            )
        attempts = batch_attempts(job)
        if launch.attempt_id not in attempts:  # it went alone (another shape, say)
            return None
        log.info("%s is in batch Job %s on %s: adopted", launch.attempt_id, name, cluster.name)
        self._adopt_secret(cluster, name)
        return Submission(
            handle=_handle(cluster, name, attempts.index(launch.attempt_id)),
            accelerator=launch.accelerator,
            placement=cluster.name,
        )

    def _reserve(self, cluster: ClusterSettings, launch: StageLaunch) -> Submission | None:
        """An attempt recorded in a batch that has no Job (its create was refused, or
        lost and perhaps still to be applied): it is created alone under the batch's
        name, so that a late create of the original gets 409 and never runs it a second
        time. None: a Job of the batch was made meanwhile and does not hold it: it goes
        alone under its own name (that Job never runs it)."""
        batch = launch.recorded_batch or ""
        name = batch_job_name(batch, launch.stage, launch.accelerator)
        try:
            job = build_job(launch, cluster, name)
        except ValueError as exc:
            raise SubmitRefused(str(exc), final=True) from exc
        gpu_twin = _handle(cluster, job_name(launch.model_copy(update={"accelerator": "gpu"})))
        if not self._create_job(
            cluster, job, launch.accelerator, gpu_twin, self._batch_twin(launch)
        ):
            # Made meanwhile (the original create, applied late): what does it hold?
            self.views[cluster.name].jobs.pop(name, None)
            return self._find_in_batch(cluster, launch)
        log.info("%s: alone under its batch %s's name, Job %s", launch.attempt_id, batch, name)
        return Submission(
            handle=_handle(cluster, name), accelerator=launch.accelerator, placement=cluster.name
        )

    def _regrouped(self, cluster: ClusterSettings, launch: StageLaunch) -> Submission | None:
        """The first clip of a GPU batch given back for CPU to be resubmitted brings the
        whole batch back as one CPU batch Job; the others find it there."""
        if launch.accelerator == "gpu":
            return None
        for gpu_handle, (gpu_job, back) in list(self._regroup.items()):
            every = batch_attempts(gpu_job)
            ids = [every[i] for i in back]
            if _parse(gpu_handle)[0] != cluster.name or launch.attempt_id not in ids:
                continue
            [container] = [
                c
                for c in gpu_job["spec"]["template"]["spec"]["containers"]
                if c["name"] == CONTAINER
            ]
            raw = next(e["value"] for e in container["env"] if e["name"] == ENV_BATCH)
            items = json.loads(raw)
            members = [
                launch.model_copy(
                    update={
                        "attempt_id": attempt,
                        "env": {**item["env"], ENV_ACCELERATOR: launch.accelerator},
                    }
                )
                for attempt, item in zip(ids, [items[i] for i in back], strict=True)
            ]
            labels = gpu_job["spec"]["template"]["metadata"]["labels"]
            try:
                job = build_batch_job(launch.recorded_batch or "", members, cluster, labels)
            except ValueError as exc:
                raise SubmitRefused(str(exc), final=True) from exc
            self._create_job(cluster, job, launch.accelerator, gpu_handle)
            del self._regroup[gpu_handle]
            name = job["metadata"]["name"]
            log.info("batch %s: back on CPU as Indexed Job %s", launch.recorded_batch, name)
            return Submission(
                handle=_handle(cluster, name, ids.index(launch.attempt_id)),
                accelerator=launch.accelerator,
                placement=cluster.name,
            )
        return None

    def cancel(self, handles: Sequence[str]) -> None:
        """Deletes the Jobs of ``handles``. One clip of a batch Job cannot be stopped
        alone: its index runs to its end (its outcome then unread), and the Job is
        deleted once every clip it has left to run was cancelled."""
        # Remembered first (in the store, when given one): a cluster that is away, or a
        # restart, delays the delete but never forgets it.
        self.actions.add_deletes(handles)
        self._retry_deletes()

    def _delete(self, handle: str) -> None:
        self.actions.add_deletes([handle])
        self._retry_deletes([handle])

    def _wait_for_pods_gone(
        self, cluster: ClusterSettings, gpu_job: str, name: str, attempt: str | None = None
    ) -> None:
        """A deleted Job's pods go in the background (batch/v1 with propagationPolicy
        Background): one the GPU Job started just before its delete may still run.
        The CPU Job waits until none is left, so one stage never runs twice at once.
        With ``attempt`` (a GPU batch Job): only its index's pods, while the Job is
        there to say which index is the attempt's (any, once it is gone)."""
        try:
            pods = self.apis[cluster.name].list_pods(f"{POD_JOB_LABEL}={gpu_job}")
        except ClusterUnreachable as exc:
            self._away(cluster, exc)
            raise
        alive = [p for p in pods if (p.get("status") or {}).get("phase") in ("Pending", "Running")]
        if alive and attempt is not None:
            try:
                job = self.apis[cluster.name].get_job(gpu_job)
            except ClusterUnreachable as exc:
                self._away(cluster, exc)
                raise
            lone = ((job or {}).get("metadata", {}).get("annotations") or {}).get(
                ANNOTATION_ATTEMPT
            )
            if job is not None and lone is None:
                attempts = batch_attempts(job)
                index = attempts.index(attempt) if attempt in attempts else None
                alive = [] if index is None else index_pods(alive, index)
            elif lone is not None and lone != attempt:  # another clip's, alone
                alive = []
        if alive:
            raise ExecutorError(
                f"waiting for {len(alive)} pod(s) of {gpu_job} to stop before {name} starts"
            )

    def _retry_deletes(self, only: Sequence[str] | None = None) -> None:
        pending = self.actions.pending_deletes() if only is None else list(only)
        clips: dict[str, dict[int, list[str]]] = {}
        for handle in pending:
            cluster, _namespace, name, index = _parse(handle)
            if index is not None:
                # A clip's handles: its index's, and its chain's later members'.
                clips.setdefault(_job_handle(handle), {}).setdefault(index, []).append(handle)
                continue
            if cluster not in self.apis:
                self.actions.done_delete(handle)
                continue
            if not self.views[cluster].reachable:
                continue
            if self._delete_job(cluster, name):
                self.actions.done_delete(handle)
        for job_handle, cancelled in clips.items():
            self._retry_cancelled_clips(job_handle, cancelled)

    def _delete_job(self, cluster: str, name: str) -> bool:
        try:
            self.apis[cluster].delete_job(name)
        except ClusterUnreachable as exc:
            self._away(self.clusters[cluster], exc)
            return False
        except CamflowError as exc:
            log.warning("cluster %s: cannot delete Job %s yet: %s", cluster, name, exc)
            return False
        self.views[cluster].jobs.pop(name, None)
        return True

    def _retry_cancelled_clips(self, job_handle: str, cancelled: dict[int, list[str]]) -> None:
        """Deletes a batch Job once each of its clips is cancelled or finished; until
        then its cancelled clips wait (a clip that finished meanwhile is done)."""
        cluster, _namespace, name, _index = _parse(job_handle)
        if cluster not in self.apis:
            for handles in cancelled.values():
                for handle in handles:
                    self.actions.done_delete(handle)
            return
        view = self.views[cluster]
        if not view.reachable:
            return
        job = view.jobs.get(name)
        if job is None:
            try:
                job = self.apis[cluster].get_job(name, attempts=1)
            except ClusterUnreachable as exc:
                self._away(self.clusters[cluster], exc)
                return
            except CamflowError as exc:
                log.warning("cluster %s: cannot read Job %s: %s", cluster, name, exc)
                return
        status = (job or {}).get("status") or {}
        ended = parse_indexes(status.get("completedIndexes")) | parse_indexes(
            status.get("failedIndexes")
        )
        if job is None or finished(job):
            left: list[int] = []
        else:
            count = int(job["spec"].get("completions") or 1)
            left = [i for i in range(count) if i not in ended]
            if left and set(left) <= set(cancelled):
                if not self._delete_job(cluster, name):
                    return
                left = []
        for index, handles in cancelled.items():
            if index not in left:  # deleted with its Job, or over by itself
                for handle in handles:
                    self.actions.done_delete(handle)

    def log_uri(self, handle: str) -> str:
        cluster, namespace, name, index = _parse(handle)
        uri = f"k8s://{cluster}/{namespace}/jobs/{name}"
        return uri if index is None else f"{uri}#{handle.partition('#')[2]}"

    def close(self) -> None:
        for api in self.apis.values():
            api._client.close()

    def describe(self) -> list[dict[str, Any]]:
        """For ``camflow clusters``: reachability, GPU nodes, Jobs running and queued.
        Lists every camflow Job (paginated): a command, not the engine's tick."""
        rows = []
        for cluster in self.clusters.values():
            row: dict[str, Any] = {
                "name": cluster.name,
                "environment": cluster.environment,
                "namespace": cluster.namespace,
                "budget": cluster.budget,
                "gpu_slots": cluster.gpu.slots if cluster.gpu else 0,
            }
            api = self.apis[cluster.name]
            try:
                jobs = api.list_jobs(SELECTOR, attempts=1)
            except CamflowError as exc:
                rows.append({**row, "reachable": False, "error": str(exc)})
                continue
            row |= {"reachable": True, "error": None}
            try:
                nodes: list[dict[str, Any]] | None = api.nodes()
            except KubeApiError as exc:
                # Nodes are cluster-wide; reading them needs the optional ClusterRole.
                row["nodes_error"] = exc.api_message or str(exc)
                nodes = None
            except CamflowError:
                nodes = None
            resource = cluster.gpu.resource if cluster.gpu else "nvidia.com/gpu"
            row["gpu_nodes"] = (
                None
                if nodes is None
                else sum(
                    1
                    for n in nodes
                    if int((n.get("status") or {}).get("allocatable", {}).get(resource, 0) or 0)
                )
            )
            unfinished = [j for j in jobs if not finished(j)]
            row["running"] = sum(1 for j in unfinished if (j.get("status") or {}).get("ready"))
            row["queued"] = len(unfinished) - row["running"]
            rows.append(row)
        return rows


__all__ = ["ANNOTATION_ATTEMPT", "ActionLog", "KubernetesExecutor", "MemoryActionLog", "job_name"]
