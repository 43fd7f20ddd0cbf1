"""Stage attempt -> batch/v1 Job: a pure function, tested as golden YAML and against
the Kubernetes schema."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from algorithms.contract import EXIT_BAD_INPUT
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
GPU_SUFFIX = "-gpu"
#: Pods get a uid of the images' own non-root user.
RUN_AS = 10001


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
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(launch.env.items())]
    env += [
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


def build_job(
    launch: StageLaunch, cluster: ClusterSettings, name: str | None = None
) -> dict[str, Any]:
    """The Job that runs one stage attempt on ``cluster`` (named ``name``, else by
    ``job_name``)."""
    resources = launch.resources
    limits: dict[str, Any] = {"cpu": resources.cpu, "memory": resources.memory}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job, not the kubelet, retries
        "serviceAccountName": cluster.service_account,
        "automountServiceAccountToken": False,
        "priorityClassName": cluster.priority_class,
        "enableServiceLinks": False,
        # The stage timeout, per pod, counted by the kubelet from when it took the pod:
        # time spent waiting for a node is not counted. (A Job-level deadline would
        # count from the Job's startTime, set before any node is found, so there is none.)
        "activeDeadlineSeconds": launch.timeout_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": launch.image,
                "imagePullPolicy": "IfNotPresent",
                "command": launch.command,
                "env": _env(launch, cluster),
                "resources": {"requests": dict(limits), "limits": limits},
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "privileged": False,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}],
            }
        ],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": cluster.scratch_size}}],
    }
    if launch.accelerator == "gpu":
        if cluster.gpu is None:
            raise ValueError(f"cluster {cluster.name} has no GPU nodes for {launch.attempt_id}")
        limits[cluster.gpu.resource] = max(1, resources.gpu)
        pod["nodeSelector"] = dict(cluster.gpu.node_selector)
        pod["tolerations"] = [
            {"key": cluster.gpu.taint_key, "operator": "Exists", "effect": cluster.gpu.taint_effect}
        ]
    job_labels = labels(launch)
    name = name or job_name(launch)
    annotations = {
        ANNOTATION_ATTEMPT: launch.attempt_id,
        ANNOTATION_ACCELERATOR: launch.accelerator,
        ANNOTATION_TIMEOUT: str(launch.timeout_seconds),
    }
    if launch.accelerator == "gpu" and launch.queued_fallback:
        annotations[ANNOTATION_FALLBACK] = launch.queued_fallback
        annotations[ANNOTATION_FALLBACK_AFTER] = f"{launch.fallback_after_seconds or 0:g}"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": cluster.namespace,
            "labels": {**job_labels, LABEL_JOB: name},
            "annotations": annotations,
        },
        "spec": {
            "backoffLimit": launch.retries,
            "ttlSecondsAfterFinished": cluster.ttl_seconds_after_finished,
            "podFailurePolicy": {
                "rules": [
                    {  # bad input: retrying cannot help
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
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
