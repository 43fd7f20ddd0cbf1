"""Stage attempt -> batch/v1 Job, and a batch of attempts -> one Indexed Job: pure
functions, tested as golden YAML and against the Kubernetes schema."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from algorithms.contract import ENV_BATCH, ENV_HANDOFF_DIR, EXIT_BAD_INPUT
from orchestrator.executors.base import StageLaunch
from orchestrator.settings import ClusterSettings

CONTAINER = "stage"
SCRATCH = "/tmp"
MANAGED_BY = "camflow"
#: Every Job camflow creates carries this label: listing by it is the observe step.
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
LABEL_PREFIX = "camflow.io"
ANNOTATION_ATTEMPT = f"{LABEL_PREFIX}/attempt-id"
ANNOTATION_ACCELERATOR = f"{LABEL_PREFIX}/accelerator"
ANNOTATION_FALLBACK = f"{LABEL_PREFIX}/fallback"
ANNOTATION_FALLBACK_AFTER = f"{LABEL_PREFIX}/fallback-after-seconds"
ANNOTATION_TIMEOUT = f"{LABEL_PREFIX}/timeout-seconds"
#: The Job's own name as a label: a set-based selector on it lists just the Jobs camflow
#: follows, however many finished ones wait for their TTL.
LABEL_JOB = f"{LABEL_PREFIX}/job"
#: The Job controller labels each pod with its Job's name (and the older ``job-name``).
POD_JOB_LABEL = "batch.kubernetes.io/job-name"
#: A batch Job: the batch id (label, to find it from any of its attempts), and its
#: attempts' ids in index order (annotation, JSON).
LABEL_BATCH = f"{LABEL_PREFIX}/batch"
ANNOTATION_ATTEMPTS = f"{LABEL_PREFIX}/attempt-ids"
#: What the Job controller puts on each pod of an Indexed Job: its completion index
#: (annotation, and label), and the index's failures before this pod (annotation, with
#: backoffLimitPerIndex): pkg/controller/job/indexed_job_utils.go.
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
INDEX_FAILURE_COUNT = "batch.kubernetes.io/job-index-failure-count"
#: A Job of fused stages (a chain): its members in order, each with its stage and the
#: container that runs it (annotation, JSON), and each index's member attempt ids
#: (annotation, JSON: a list per index, in member order).
ANNOTATION_CHAIN = f"{LABEL_PREFIX}/chain"
ANNOTATION_CHAIN_ATTEMPTS = f"{LABEL_PREFIX}/chain-attempt-ids"
#: Where a chain's member is asked to leave its manifest (the SDK writes it there, in
#: place, as compact JSON): the container's termination message, which the kubelet
#: puts in its status. A member whose outputs stay in the pod (CAMFLOW_KEEP_LOCAL)
#: writes its manifest to no S3, so that is the only way it comes back. The kubelet
#: keeps a message's last 4 KiB, then at most 12 KiB over the pod's containers: a
#: manifest that does not fit arrives cut, is not JSON, and is not used.
ENV_MANIFEST_MESSAGE = "CAMFLOW_MANIFEST_MESSAGE"
TERMINATION_LOG = "/dev/termination-log"
#: A chain Job's stages, in order, joined by "." (label), in place of the one-stage
#: labels below.
LABEL_STAGES = f"{LABEL_PREFIX}/stages"
STAGE_LABELS = (
    "app.kubernetes.io/component",
    f"{LABEL_PREFIX}/stage",
    f"{LABEL_PREFIX}/algorithm",
    f"{LABEL_PREFIX}/algorithm-version",
)
#: The emptyDir the containers of a chain's pod share, for CAMFLOW_HANDOFF_DIR.
HANDOFF = "/handoff"
HANDOFF_VOLUME = "handoff"
#: The largest CAMFLOW_BATCH a batch Job carries. Linux refuses to start a process with
#: one environment string longer than MAX_ARG_STRLEN (32 pages: 128 KiB), so a larger
#: batch is refused and its clips go as lone Jobs. What keeps batches under it is the
#: engine's batch size (engine.batch_max_size, 8 by default; a stage's batch.max_size):
#: a clip's contract variables take 0.5 to 1.5 KiB (longer keys, more inputs), so 16
#: clips take at most some 24 KiB, and about 80 always fit.
MAX_BATCH_ENV_BYTES = 120_000
GPU_SUFFIX = "-gpu"
#: Pods get a uid of the images' own non-root user.
RUN_AS = 10001
#: How a manifest scanner (checkov) is told, on the object itself, why a finding stays.
SKIP_ANNOTATION = "checkov.io/skip{}"


def pinned(image: str) -> bool:
    return "@sha256:" in image


def pull_policy(image: str) -> str:
    """A digest names one image forever, so a node's copy is that image and no pod
    start need wait on the registry; a tag can move, so Always makes each pod run what
    the tag names now."""
    return "IfNotPresent" if pinned(image) else "Always"


def scanner_skips(pod: Mapping[str, Any]) -> dict[str, str]:
    """The findings a Job's pod keeps on purpose, each with its reason, as the
    scanner's skip annotations (tests/test_manifest_scan.py scans every Job the shipped
    pipelines make). No "=" in a reason: checkov splits on it."""
    reasons: dict[str, str] = {}
    containers = [*pod.get("initContainers", []), *pod["containers"]]
    images = [c["image"] for c in containers]
    if all(pinned(image) for image in images):
        reasons["CKV_K8S_15"] = (
            "the image is pinned by digest, so IfNotPresent runs that very image; Always "
            "would make every pod start wait on the registry"
        )
    unpinned = [image for image in images if not pinned(image)]
    if unpinned:
        reasons["CKV_K8S_43"] = (
            f"no digest is registered for {unpinned[0]}; registering the version with "
            "--image-digest (an accelerator's own image's too) pins it, and until then it "
            "is pulled Always"
        )
    if any("secretKeyRef" in e.get("valueFrom", {}) for c in containers for e in c["env"]):
        reasons["CKV_K8S_35"] = (
            "S3 credentials reach the stage as Secret references in its environment, "
            "where boto3 reads them; their values never appear in the Job"
        )
    return {
        SKIP_ANNOTATION.format(n): f"{check}={why}"
        for n, (check, why) in enumerate(sorted(reasons.items()), 1)
    }


def _dns_label(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def job_name(launch: StageLaunch) -> str:
    """Deterministic, ≤ 63 characters, DNS-safe: the same attempt always gets the same
    name, so a create retried after a crash finds the first one (409) instead of
    starting a second."""
    digest = hashlib.sha256(launch.attempt_id.encode()).hexdigest()[:8]
    stem = _dns_label(f"{launch.run_id.removeprefix('r-')[:10]}-{launch.stage}")[:40].strip("-")
    name = f"cf-{stem}-{launch.attempt_id.rsplit('-', 1)[-1]}-{digest}"[:59].strip("-")
    # A GPU Job that falls back to CPU is replaced by a Job of the same attempt: the
    # two names differ, so the new create never meets the old Job still being deleted.
    return f"{name}{GPU_SUFFIX}" if launch.accelerator == "gpu" else name


def batch_job_name(batch: str, stage: str, accelerator: str) -> str:
    """A batch Job's name: deterministic in its batch and accelerator, so that a retried
    create finds the first Job, an attempt recorded in the batch finds it by name, and a
    GPU batch given back for CPU is replaced by a Job of another name (as a lone Job is)."""
    digest = hashlib.sha256(batch.encode()).hexdigest()[:12]
    name = f"cf-{_dns_label(stage)[:40].strip('-')}-b{digest}"
    return f"{name}{GPU_SUFFIX}" if accelerator == "gpu" else name


def label_value(text: str) -> str:
    """A valid label value: ≤ 63 of [A-Za-z0-9-_.], starting and ending alphanumeric."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def labels(launch: StageLaunch) -> dict[str, str]:
    name, _, version = launch.algorithm.partition("@")
    return {
        "app.kubernetes.io/name": "camflow-stage",
        "app.kubernetes.io/component": label_value(launch.stage),
        "app.kubernetes.io/part-of": "camflow",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        f"{LABEL_PREFIX}/run": label_value(launch.run_id),
        f"{LABEL_PREFIX}/stage": label_value(launch.stage),
        f"{LABEL_PREFIX}/pipeline": label_value(launch.pipeline),
        f"{LABEL_PREFIX}/tenant": label_value(launch.tenant),
        f"{LABEL_PREFIX}/clip": label_value(launch.clip_id),
        f"{LABEL_PREFIX}/algorithm": label_value(name),
        f"{LABEL_PREFIX}/algorithm-version": label_value(version),
    }


def _env(launch: StageLaunch, cluster: ClusterSettings) -> list[dict[str, Any]]:
    contract = [{"name": k, "value": v} for k, v in sorted(launch.env.items())]
    return [*contract, *_cluster_env(cluster)]


def _cluster_env(cluster: ClusterSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "AWS_REGION", "value": cluster.s3_region},
        {"name": "AWS_DEFAULT_REGION", "value": cluster.s3_region},
        {"name": "TMPDIR", "value": SCRATCH},
    ]
    if cluster.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": cluster.s3_endpoint})
    if cluster.s3_secret:
        # Credentials by reference only: their values never appear in a Job.
        env += [
            {
                "name": key,
                "valueFrom": {"secretKeyRef": {"name": cluster.s3_secret, "key": key}},
            }
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        ]
    return env


def _container(
    launch: StageLaunch,
    cluster: ClusterSettings,
    env: list[dict[str, Any]],
    name: str = CONTAINER,
    mounts: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """One stage's container: its image, command, environment and resources (a GPU
    when the launch has one)."""
    resources = launch.resources
    limits: dict[str, Any] = {"cpu": resources.cpu, "memory": resources.memory}
    requests = dict(limits)  # an extended resource (the GPU) defaults to its limit
    if launch.accelerator == "gpu":
        if cluster.gpu is None:
            raise ValueError(f"cluster {cluster.name} has no GPU nodes for {launch.attempt_id}")
        limits[cluster.gpu.resource] = max(1, resources.gpu)
    return {
        "name": name,
        "image": launch.image,
        "imagePullPolicy": pull_policy(launch.image),
        "command": launch.command,
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}, *mounts],
    }


def _pod(
    launch: StageLaunch,
    cluster: ClusterSettings,
    env: list[dict[str, Any]],
    deadline: int | None = None,
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job, not the kubelet, retries
        "serviceAccountName": cluster.service_account,
        "automountServiceAccountToken": False,
        "priorityClassName": cluster.priority_class,
        "enableServiceLinks": False,
        # The stage timeout, per pod, counted by the kubelet from when it took the pod:
        # time spent waiting for a node is not counted. (A Job-level deadline would
        # count from the Job's startTime, set before any node is found, so there is none.)
        "activeDeadlineSeconds": deadline or launch.timeout_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(launch, cluster, env)],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": cluster.scratch_size}}],
    }
    if launch.accelerator == "gpu" and cluster.gpu is not None:  # else _container refused
        pod["nodeSelector"] = dict(cluster.gpu.node_selector)
        pod["tolerations"] = [
            {"key": cluster.gpu.taint_key, "operator": "Exists", "effect": cluster.gpu.taint_effect}
        ]
    return pod


def _annotations(launch: StageLaunch) -> dict[str, str]:
    annotations = {
        ANNOTATION_ACCELERATOR: launch.accelerator,
        ANNOTATION_TIMEOUT: str(launch.timeout_seconds),
    }
    if launch.accelerator == "gpu" and launch.queued_fallback:
        annotations[ANNOTATION_FALLBACK] = launch.queued_fallback
        annotations[ANNOTATION_FALLBACK_AFTER] = f"{launch.fallback_after_seconds or 0:g}"
    return annotations


def _job(
    name: str,
    cluster: ClusterSettings,
    job_labels: Mapping[str, str],
    annotations: dict[str, str],
    spec: dict[str, Any],
    pod: dict[str, Any],
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": cluster.namespace,
            "labels": {**job_labels, LABEL_JOB: name},
            "annotations": {**annotations, **scanner_skips(pod)},
        },
        "spec": {
            **spec,
            "ttlSecondsAfterFinished": cluster.ttl_seconds_after_finished,
            "podFailurePolicy": {
                "rules": [
                    {  # bad input: retrying cannot help
                        "action": "FailIndex" if "completionMode" in spec else "FailJob",
                        "onExitCodes": {
                            # A chain's: any of its stages' containers (init ones too,
                            # which the Job controller matches as well).
                            **({} if "initContainers" in pod else {"containerName": CONTAINER}),
                            "operator": "In",
                            "values": [EXIT_BAD_INPUT],
                        },
                    },
                    {  # a node drained or a pod preempted is not the stage's fault
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "template": {"metadata": {"labels": dict(job_labels)}, "spec": pod},
        },
    }


def build_job(
    launch: StageLaunch, cluster: ClusterSettings, name: str | None = None
) -> dict[str, Any]:
    """The Job that runs one stage attempt on ``cluster`` (named ``name``, else by
    ``job_name``)."""
    pod = _pod(launch, cluster, _env(launch, cluster))
    annotations = {ANNOTATION_ATTEMPT: launch.attempt_id, **_annotations(launch)}
    spec = {"backoffLimit": launch.retries}
    return _job(name or job_name(launch), cluster, labels(launch), annotations, spec, pod)


def build_batch_job(
    batch: str,
    launches: Sequence[StageLaunch],
    cluster: ClusterSettings,
    job_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One Indexed Job for the attempts of a batch, one completion index per clip, in
    the order given. They must share everything but their contract variables (one
    stage, algorithm version, accelerator, timeout, retries and place).

    Each pod reads its clip from CAMFLOW_BATCH by JOB_COMPLETION_INDEX (the SDK does)
    and exits with that clip's code, so a clip's outcome is its index's: exit 2 fails
    that index at once (FailIndex), any other failure retries that index alone
    (backoffLimitPerIndex = the stage's retries), and the others go on (no
    maxFailedIndexes; backoffLimit is left to its default for backoffLimitPerIndex,
    which never stops the Job).

    One index at a time (parallelism 1): the engine gives a batch one of its slots, a
    cluster's budget counts Jobs, and a GPU slot is one GPU, so a batch Job holds what a
    lone Job does, and its clips take turns as a local batch's do. The engine makes
    batches only when clips outnumber free slots, so the clips would wait anyway.

    ``job_labels``: the labels to keep (a batch rebuilt from an earlier Job's);
    otherwise those all its attempts share."""
    first = launches[0]
    items = _batch_env(launches)
    if len(items.encode()) > MAX_BATCH_ENV_BYTES:
        raise ValueError(
            f"batch {batch}: {len(launches)} clips take {len(items.encode())} bytes of "
            f"{ENV_BATCH}, more than the {MAX_BATCH_ENV_BYTES} a process may be given: "
            "lower the stage's batch.max_size"
        )
    env = [{"name": ENV_BATCH, "value": items}, *_cluster_env(cluster)]
    pod = _pod(first, cluster, env)
    if job_labels is None:
        each = [labels(launch) for launch in launches]
        job_labels = {k: v for k, v in each[0].items() if all(o.get(k) == v for o in each)}
    annotations = {
        ANNOTATION_ATTEMPTS: json.dumps([launch.attempt_id for launch in launches]),
        **_annotations(first),
    }
    spec = {
        "completionMode": "Indexed",
        "completions": len(launches),
        "parallelism": 1,
        "backoffLimitPerIndex": first.retries,
    }
    return _job(
        batch_job_name(batch, first.stage, first.accelerator),
        cluster,
        {**job_labels, LABEL_BATCH: label_value(batch)},
        annotations,
        spec,
        pod,
    )


def chain_container(position: int, count: int) -> str:
    """The container that runs a chain's member at ``position`` of ``count``: an init
    container each, in order, and the last member the pod's main container."""
    return CONTAINER if position == count - 1 else f"{CONTAINER}-{position}"


def chain_job_name(launch: StageLaunch) -> str:
    """A chain's Job: named by its batch, else by its first member's attempt."""
    if launch.batch:
        return batch_job_name(launch.batch, launch.stage, launch.accelerator)
    return job_name(launch)


def _batch_env(launches: Sequence[StageLaunch]) -> str:
    return json.dumps(
        [{"env": dict(sorted(launch.env.items()))} for launch in launches],
        separators=(",", ":"),
    )


def build_chain_job(
    launches: Sequence[StageLaunch], cluster: ClusterSettings, name: str | None = None
) -> dict[str, Any]:
    """One Indexed Job for fused stages: an index per clip (``launches``: each clip's
    first member, its ``chain`` the members after it, the same stages for every clip),
    whose pod runs the members in order, as the kubelet runs a pod's containers: one
    init container per member, the last member the main container, each with its own
    image, command, resources and contract variables (CAMFLOW_BATCH: that member's, of
    every clip, read by JOB_COMPLETION_INDEX), all sharing an emptyDir at
    CAMFLOW_HANDOFF_DIR for the outputs kept local (CAMFLOW_KEEP_LOCAL).

    A member that fails stops the pod (restartPolicy Never): the members after it never
    start. Exit 2 in any member fails its index at once (FailIndex), another failure
    retries the whole chain of that clip (backoffLimitPerIndex: the first member's
    retries), since what the earlier members handed over went with the pod. The pod's
    deadline is the sum of the members' timeouts. Named ``name``, else by
    ``chain_job_name``."""
    first = launches[0]
    members = first.members
    count = len(members)
    for launch in launches:
        stages = [m.stage for m in launch.members]
        if stages != [m.stage for m in members]:
            raise ValueError(f"batch {first.batch}: chains of other stages {stages} in one Job")
    handoff = [{"name": HANDOFF_VOLUME, "mountPath": HANDOFF}]
    containers = []
    for position in range(count):
        column = [launch.members[position] for launch in launches]
        items = _batch_env(column)
        if len(items.encode()) > MAX_BATCH_ENV_BYTES:
            raise ValueError(
                f"batch {first.batch}: {len(launches)} clips take {len(items.encode())} bytes "
                f"of {ENV_BATCH} for stage {column[0].stage}, more than the "
                f"{MAX_BATCH_ENV_BYTES} a process may be given: lower the stage's "
                "batch.max_size"
            )
        env = [
            {"name": ENV_BATCH, "value": items},
            {"name": ENV_HANDOFF_DIR, "value": HANDOFF},
            {"name": ENV_MANIFEST_MESSAGE, "value": TERMINATION_LOG},
            *_cluster_env(cluster),
        ]
        containers.append(
            _container(column[0], cluster, env, chain_container(position, count), handoff)
        )
    pod = _pod(first, cluster, [], deadline=sum(m.timeout_seconds for m in members))
    pod["initContainers"], pod["containers"] = containers[:-1], containers[-1:]
    pod["volumes"].append({"name": HANDOFF_VOLUME, "emptyDir": {"sizeLimit": cluster.scratch_size}})
    each = [labels(launch) for launch in launches]
    job_labels = {k: v for k, v in each[0].items() if all(o.get(k) == v for o in each)}
    # It runs several stages: labelled with them all, not as its first one.
    for key in STAGE_LABELS:
        job_labels.pop(key, None)
    job_labels[LABEL_STAGES] = label_value(".".join(m.stage for m in members))
    if first.batch:
        job_labels[LABEL_BATCH] = label_value(first.batch)
    # Each member's own accelerator: a CPU stage that joined a GPU stage's pod runs there
    # on CPU, and is recorded so (an adopted Job tells it too).
    chain = [
        {"stage": m.stage, "container": chain_container(n, count), "accelerator": m.accelerator}
        for n, m in enumerate(members)
    ]
    annotations = {
        ANNOTATION_ATTEMPTS: json.dumps([launch.attempt_id for launch in launches]),
        ANNOTATION_CHAIN: json.dumps(chain),
        ANNOTATION_CHAIN_ATTEMPTS: json.dumps(
            [[m.attempt_id for m in launch.members] for launch in launches]
        ),
        **_annotations(first),
        ANNOTATION_TIMEOUT: str(pod["activeDeadlineSeconds"]),
    }
    spec = {
        "completionMode": "Indexed",
        "completions": len(launches),
        "parallelism": 1,
        "backoffLimitPerIndex": first.retries,
    }
    return _job(name or chain_job_name(first), cluster, job_labels, annotations, spec, pod)


#: The variables a Job's own credentials Secret holds (the session token only for STS).
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def with_own_credentials(job: dict[str, Any], session_token: bool) -> dict[str, Any]:
    """``job`` reading its S3 credentials from a Secret of its own name (made for it
    after the create, owned by it), in place of the cluster-wide one: its values never
    appear in the Job, and they allow its clips only."""
    job = copy.deepcopy(job)
    name = job["metadata"]["name"]
    keys = CREDENTIAL_KEYS if session_token else CREDENTIAL_KEYS[:2]
    for container in _containers(job):
        env = [e for e in container.get("env", []) if e["name"] not in CREDENTIAL_KEYS]
        env += [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}} for key in keys
        ]
        container["env"] = env
    return job


def credentials_secret(job: dict[str, Any], uid: str, values: Mapping[str, str]) -> dict[str, Any]:
    """The Secret for ``with_own_credentials``: owned by the Job, so the garbage
    collector deletes it with the Job (the TTL controller's delete included)."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "labels": dict(meta.get("labels", {})),
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": uid}
            ],
        },
        "stringData": dict(values),
    }


def _containers(job: dict[str, Any]) -> list[dict[str, Any]]:
    """A Job's pod's containers, its init containers (a chain's members) first."""
    pod = job["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def clip_envs(job: dict[str, Any]) -> list[dict[str, str]]:
    """The stage-contract variables of each clip a Job runs, of each stage it runs (a
    chain's members): its batch items, or the container's own for a lone Job. What its
    credentials must allow, read from the Job itself, so that a Job adopted after a
    crash gets the same grant."""
    envs = []
    for container in _containers(job):
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        if ENV_BATCH in env:
            envs += [item["env"] for item in json.loads(env[ENV_BATCH])]
        else:
            envs.append(env)
    return envs


def busy_seconds(job: dict[str, Any]) -> int:
    """How long a Job's pods may run in all: each clip (completion) one after another, each
    pod up to its deadline, each clip retried up to its backoff limit."""
    spec = job["spec"]
    deadline = int(spec["template"]["spec"].get("activeDeadlineSeconds") or 0)
    retries = spec.get("backoffLimitPerIndex", spec.get("backoffLimit")) or 0
    return deadline * int(spec.get("completions") or 1) * (int(retries) + 1)
