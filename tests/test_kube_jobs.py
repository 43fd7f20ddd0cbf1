"""The Job builder: every Job it can produce is valid Kubernetes; two are golden."""

from __future__ import annotations

import os
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from orchestrator.domain.catalog import load_catalog
from orchestrator.kube.jobs import build_job, job_name
from orchestrator.settings import PROJECT_ROOT
from tests.kube_fixtures import DEV, KUBERNETES_VERSION, PROD, launch_for

CATALOG = load_catalog([PROJECT_ROOT / "algorithms"], [PROJECT_ROOT / "pipelines"])
GOLDEN = Path(__file__).parent / "golden"
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def every_job() -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    jobs = []
    for pipeline in CATALOG.pipelines.values():
        for stage, resolved in pipeline.stages.items():
            for accelerator in resolved.algorithm.accelerators:
                for cluster in (DEV, PROD):
                    if accelerator == "gpu" and cluster.gpu is None:
                        continue
                    launch = launch_for(pipeline, stage, accelerator)
                    jobs.append(
                        (
                            f"{pipeline.name}/{stage}/{accelerator}/{cluster.name}",
                            build_job(launch, cluster),
                        )
                    )
    return jobs


@pytest.mark.parametrize(("case", "job"), every_job(), ids=[c for c, _ in every_job()])
def test_every_job_is_valid_kubernetes(case: str, job: dict) -> None:  # type: ignore[type-arg]
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    assert len(job["metadata"]["name"]) <= 63 and DNS_1123.match(job["metadata"]["name"])
    for value in job["metadata"]["labels"].values():
        assert len(value) <= 63


@pytest.mark.parametrize(
    ("golden", "stage", "accelerator", "cluster"),
    [
        ("job-decode-cpu-dev.yaml", "decode", "cpu", DEV),
        ("job-faces-gpu-prod.yaml", "faces", "gpu", PROD),
    ],
)
def test_representative_jobs_match_their_golden_yaml(
    golden: str, stage: str, accelerator: str, cluster: object
) -> None:
    job = build_job(launch_for(CATALOG.pipeline("faces"), stage, accelerator), cluster)  # type: ignore[arg-type]
    path = GOLDEN / golden
    if os.environ.get("CAMFLOW_UPDATE_GOLDEN"):
        path.write_text(yaml.safe_dump(job, sort_keys=False))
    assert job == yaml.safe_load(path.read_text()), (
        f"{golden} changed: review, then rerun with CAMFLOW_UPDATE_GOLDEN=1"
    )


def test_gpu_jobs_ask_for_a_gpu_node_and_cpu_jobs_do_not() -> None:
    faces = CATALOG.pipeline("faces")
    gpu = build_job(launch_for(faces, "faces", "gpu"), PROD)["spec"]["template"]["spec"]
    cpu = build_job(launch_for(faces, "faces", "cpu"), PROD)["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert gpu["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in cpu and "tolerations" not in cpu
    with pytest.raises(ValueError, match="has no GPU nodes"):
        build_job(launch_for(faces, "faces", "gpu"), DEV)


def test_the_contract_is_honoured_and_secrets_are_only_referenced() -> None:
    faces = CATALOG.pipeline("faces")
    launch = launch_for(faces, "faces", "cpu")
    job = build_job(launch, DEV)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CAMFLOW_STAGE"]["value"] == "faces"
    assert env["CAMFLOW_ACCELERATOR"]["value"] == "cpu"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.camflow-dev:9000"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[key]
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "camflow-s3", "key": key}
    assert spec["backoffLimit"] == launch.retries == 2
    assert pod["activeDeadlineSeconds"] == launch.timeout_seconds
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    assert spec["podFailurePolicy"]["rules"][1]["action"] == "Ignore"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["volumeMounts"] == [{"name": "scratch", "mountPath": "/tmp"}]
    assert job["metadata"]["labels"]["camflow.io/algorithm-version"] == "1.2.0"
    assert job["metadata"]["labels"]["camflow.io/tenant"] == "acme"


def test_job_names_are_deterministic_and_distinct_per_attempt() -> None:
    faces = CATALOG.pipeline("faces")
    names = {job_name(launch_for(faces, s, "cpu", n)) for s in faces.stages for n in (1, 2, 3)}
    assert len(names) == len(faces.stages) * 3
    assert job_name(launch_for(faces, "decode", "cpu")) == job_name(
        launch_for(faces, "decode", "cpu")
    )
    assert all(len(n) <= 63 and DNS_1123.match(n) for n in names)
