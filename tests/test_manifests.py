"""camflow's own deployment: both overlays render, validate, and are locked down."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrator.errors import ConfigError
from orchestrator.kube.egress import stage_network_policy
from orchestrator.settings import PROJECT_ROOT, Settings, load_settings
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


def _config(objects: list[dict[str, Any]]) -> Settings:
    [config] = [o for o in objects if o["kind"] == "ConfigMap"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "camflow.yaml"
        path.write_text(config["data"]["camflow.yaml"])
        return load_settings(path)


def _as_rendered(policy: dict[str, Any], env: str) -> dict[str, Any]:
    """``policy`` as kustomize puts it out: with the overlays' labels."""
    labels = {"app.kubernetes.io/part-of": "camflow", "camflow.io/environment": env}
    policy["metadata"]["labels"] = labels
    return policy


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
            # A tag can move: always asked of the registry. A digest cannot.
            pinned = "@sha256:" in image
            assert container["imagePullPolicy"] == ("IfNotPresent" if pinned else "Always")
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
        # Each Job's own credentials Secret: made, never read back (issue 10).
        (("",), ("secrets",)): ["create"],
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
    if env == "dev":  # in-cluster MinIO: by its pods' labels, not a Service IP
        [peer] = s3["to"]
        assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "minio"}
        assert peer["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": "camflow-dev"
        }
        assert s3["ports"] == [{"protocol": "TCP", "port": 9000}]
    else:  # the S3 interface endpoint's subnets, on HTTPS only
        assert s3["to"] and all(list(peer) == ["ipBlock"] for peer in s3["to"])
        for peer in s3["to"]:
            network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
            assert network.is_private and network.prefixlen >= 24, network
        assert s3["ports"] == [{"protocol": "TCP", "port": 443}]
    # What the overlay keeps is what its config renders (`camflow egress-policy`).
    [cluster] = _config(objects).kubernetes.clusters
    assert policies["camflow-stage"] == _as_rendered(stage_network_policy(cluster), env)


def test_no_secret_values_and_the_config_is_camflow_config(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    env, objects = rendered
    assert not [o for o in objects if o["kind"] == "Secret"]
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    # Secrets reach camflow as files, never as environment variables.
    assert not [e for e in container["env"] if "valueFrom" in e]
    variables = {e["name"]: e["value"] for e in container["env"]}
    secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    for variable, volume, key in [
        ("CAMFLOW_STORE__URL_FILE", "db", "url"),
        ("AWS_SHARED_CREDENTIALS_FILE", "s3", "credentials"),
    ]:
        assert variables[variable] == f"{mounts[volume]['mountPath']}/{key}"
        assert mounts[volume]["readOnly"] and secrets[volume]["defaultMode"] == 0o440
        assert secrets[volume]["items"] == [{"key": key, "path": key}]
    [config] = [o for o in objects if o["kind"] == "ConfigMap"]
    path = tmp_path / "camflow.yaml"
    path.write_text(config["data"]["camflow.yaml"])
    settings = load_settings(path)
    assert settings.executor == "kubernetes"
    [cluster] = settings.kubernetes.clusters
    assert cluster.environment == env and cluster.in_cluster
    assert (cluster.gpu is not None) == (env == "prod")
    assert settings.s3.results_bucket == f"camflow-results-{env}"


def test_the_store_url_comes_from_its_secrets_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "url"
    secret.write_text("postgresql+psycopg://camflow:s3cret@db:5432/camflow\n")
    monkeypatch.setenv("CAMFLOW_STORE__URL_FILE", str(secret))
    assert load_settings().store_url == "postgresql+psycopg://camflow:s3cret@db:5432/camflow"
    monkeypatch.setenv("CAMFLOW_STORE__URL", "sqlite:///x.db")
    with pytest.raises(ConfigError, match="url and url_file both name the store"):
        load_settings()
    monkeypatch.delenv("CAMFLOW_STORE__URL")
    monkeypatch.setenv("CAMFLOW_STORE__URL_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="missing cannot be read: No such file"):
        load_settings()


def test_the_orchestrator_image_runs_as_non_root_from_a_pinned_base() -> None:
    text = (PROJECT_ROOT / "manifests" / "Dockerfile").read_text()
    bases = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert len(bases) == 2 and all(":" in b and not b.endswith(":latest") for b in bases)
    assert "USER 10001:10001" in text


def test_the_orchestrator_reaches_only_dns_the_api_server_s3_sqs_and_the_store(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    env, objects = rendered
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    spec, stage = policies["camflow-orchestrator"], policies["camflow-stage"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"} and spec["ingress"] == []
    dns, *rules = spec["egress"]
    assert dns == stage["egress"][0]  # kube-dns and NodeLocal DNSCache, port 53
    for rule in rules:  # never anywhere, never any port
        assert rule["to"] and rule["ports"], rule
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert ipaddress.ip_network(peer["ipBlock"]["cidr"]).is_private, peer
            else:
                assert peer["namespaceSelector"]["matchLabels"] and peer["podSelector"]
    # S3 as the stage pods reach it, exactly.
    assert stage["egress"][1] in rules
    # The API server, S3, the store, and SQS where discovery has a queue.
    settings = _config(objects)
    assert len(rules) == 3 + (settings.watcher.queue is not None)
    ports = sorted(p["port"] for rule in rules for p in rule["ports"])
    assert ports == {"dev": [5432, 6443, 9000], "prod": [443, 443, 443, 5432]}[env]
