"""camflow's own deployment: both overlays render, validate, and are locked down."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrator.settings import PROJECT_ROOT, load_settings
from tests.kube_fixtures import KUBERNETES_VERSION

OVERLAYS = ["dev", "prod"]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) is not installed here: cannot render overlays")
    done = subprocess.run(
        ["kubectl", "kustomize", str(PROJECT_ROOT / "manifests" / "overlays" / request.param)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return request.param, [d for d in yaml.safe_load_all(done.stdout) if d]


def _pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")
    ]


def test_every_object_is_valid_kubernetes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _env, objects = rendered
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "Namespace",
            "Namespace",
            "PriorityClass",
            "PriorityClass",
            "ServiceAccount",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "ConfigMap",
            "Deployment",
        ]
    )
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_containers_are_pinned_limited_and_unprivileged(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _env, objects = rendered
    for pod in _pod_specs(objects):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"].get("runAsUser", 1) != 0
        for container in pod["containers"]:
            image = container["image"]
            tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
            assert (tag and tag != "latest") or "@sha256:" in image, image
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False and ctx.get("privileged") is False
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["capabilities"]["drop"] == ["ALL"]
            assert container["livenessProbe"] and container["readinessProbe"]


def test_rbac_is_least_privilege_and_namespaced(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _env, objects = rendered
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    [role] = [o for o in objects if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "camflow-jobs"
    rules = {
        (tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"]) for r in role["rules"]
    }
    # Exactly the executor's calls (tests/test_kube_cluster.py checks each against them).
    assert rules == {
        (("batch",), ("jobs",)): sorted(["create", "get", "list", "delete"]),
        (("",), ("pods",)): ["list"],
    }
    [binding] = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "camflow-orchestrator", "namespace": "camflow"}
    ]
    [stage_sa] = [
        o
        for o in objects
        if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == "camflow-stage"
    ]
    assert stage_sa["automountServiceAccountToken"] is False


def test_stage_pods_may_reach_only_dns_and_s3(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    env, objects = rendered
    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "egress" not in deny and "ingress" not in deny
    stage = policies["camflow-stage"]["spec"]
    assert stage["ingress"] == []
    dns, s3 = stage["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    kube_dns, node_local = dns["to"]
    assert kube_dns["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"
    }
    assert kube_dns["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert node_local == {"ipBlock": {"cidr": "169.254.20.10/32"}}  # NodeLocal DNSCache
    [peer] = s3["to"]
    if env == "dev":  # in-cluster MinIO: by its pods' labels, not a Service IP
        assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "minio"}
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "camflow-dev"
        }
    else:
        assert list(peer) == ["ipBlock"] and peer["ipBlock"]["cidr"] != "0.0.0.0/0"
        assert peer["ipBlock"]["cidr"] != "192.0.2.0/24"  # the base's placeholder


def test_no_secret_values_and_the_config_is_camflow_config(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    env, objects = rendered
    assert not [o for o in objects if o["kind"] == "Secret"]
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        if item["name"].startswith(("AWS_", "CAMFLOW_STORE")):
            assert "valueFrom" in item and "value" not in item, item
    [config] = [o for o in objects if o["kind"] == "ConfigMap"]
    path = tmp_path / "camflow.yaml"
    path.write_text(config["data"]["camflow.yaml"])
    settings = load_settings(path)
    assert settings.executor == "kubernetes"
    [cluster] = settings.kubernetes.clusters
    assert cluster.environment == env and cluster.in_cluster
    assert (cluster.gpu is not None) == (env == "prod")
    assert settings.s3.results_bucket == f"camflow-results-{env}"


def test_the_orchestrator_image_runs_as_non_root_from_a_pinned_base() -> None:
    text = (PROJECT_ROOT / "manifests" / "Dockerfile").read_text()
    bases = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert len(bases) == 2 and all(":" in b and not b.endswith(":latest") for b in bases)
    assert "USER 10001:10001" in text
