"""Stage egress per environment: a cluster's `stage_egress` settings (CIDRs, a VPC
endpoint's prefix lists, in-cluster pods) rendered into its stage NetworkPolicy, the
prefix lists read from a real EC2 API (moto over HTTP), and the overlays' policies
exactly what their configs render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.kube.egress import UnresolvedPrefixList, stage_network_policy
from orchestrator.kube.prefix_lists import PrefixListError, resolve
from orchestrator.settings import PROJECT_ROOT, ClusterSettings

OVERLAYS = PROJECT_ROOT / "manifests" / "overlays"


def _cluster(**egress: Any) -> ClusterSettings:
    return ClusterSettings(name="prod", environment="prod", stage_egress=egress)


def _s3_rule(policy: dict[str, Any]) -> dict[str, Any]:
    dns, s3 = policy["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    return s3


def test_cidrs_prefix_lists_and_pods_become_the_s3_rule_and_nothing_else() -> None:
    cluster = _cluster(
        cidrs=["10.1.0.0/28"],
        prefix_lists=["pl-0abc"],
        pods=[{"namespace": "storage", "labels": {"app": "minio"}}],
        ports=[443, 9000],
    )
    policy = stage_network_policy(cluster, {"pl-0abc": ["52.216.0.0/15", "10.1.0.0/28"]})
    assert policy["metadata"] == {"name": "camflow-stage", "namespace": "camflow-jobs"}
    assert policy["spec"]["ingress"] == []
    assert _s3_rule(policy) == {
        "to": [
            {"ipBlock": {"cidr": "10.1.0.0/28"}},
            {"ipBlock": {"cidr": "52.216.0.0/15"}},
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "storage"}},
                "podSelector": {"matchLabels": {"app": "minio"}},
            },
        ],
        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 9000}],
    }
    with pytest.raises(UnresolvedPrefixList, match="prefix list pl-0abc is not resolved"):
        stage_network_policy(cluster)


@pytest.mark.parametrize(
    ("egress", "problem"),
    [
        ({}, "names no destination"),
        ({"cidrs": ["0.0.0.0/0"]}, "0.0.0.0/0 is every address"),
        ({"cidrs": ["::/0"]}, "::/0 is every address"),
        ({"cidrs": ["10.0.0.0/33"]}, "cidrs.0"),
        ({"cidrs": ["10.0.0.0/8"], "ports": [0]}, "port 0 is not a TCP port"),
    ],
)
def test_egress_that_allows_everything_or_nothing_is_refused(
    egress: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        _cluster(**egress)


def test_a_cluster_without_stage_egress_says_what_to_set() -> None:
    with pytest.raises(ValueError, match="has no stage_egress"):
        stage_network_policy(ClusterSettings(name="x", environment="dev"))


@pytest.fixture
def ec2(s3_server: EmbeddedS3) -> Any:
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=s3_server.endpoint_url)


def test_prefix_lists_are_read_from_the_ec2_api_by_id_or_by_name(ec2: Any) -> None:
    own = ec2.create_managed_prefix_list(
        PrefixListName="camflow-s3-endpoint",
        MaxEntries=4,
        AddressFamily="IPv4",
        Entries=[{"Cidr": "10.9.0.0/28"}, {"Cidr": "10.9.0.16/28"}],
    )["PrefixList"]["PrefixListId"]
    aws_s3 = "com.amazonaws.us-east-1.s3"  # the gateway endpoint's, AWS-managed
    resolved = resolve(ec2, [own, aws_s3])
    assert sorted(resolved[own]) == ["10.9.0.0/28", "10.9.0.16/28"]
    assert resolved[aws_s3] and all("/" in cidr for cidr in resolved[aws_s3])
    with pytest.raises(PrefixListError, match="prefix list 'pl-00000000': 0 found"):
        resolve(ec2, ["pl-00000000"])
    with pytest.raises(PrefixListError, match="'no-such-list': 0 found"):
        resolve(ec2, ["no-such-list"])


def test_the_cli_renders_a_prefix_list_through_the_ec2_api(
    ec2: Any, s3_server: EmbeddedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "camflow.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "executor": "kubernetes",
                "kubernetes": {
                    "clusters": [
                        {
                            "name": "prod",
                            "environment": "prod",
                            "stage_egress": {"prefix_lists": ["com.amazonaws.us-east-1.s3"]},
                        }
                    ]
                },
            }
        )
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    done = CliRunner().invoke(app, ["--config", str(config), "egress-policy"])
    assert done.exit_code == 0, done.output
    [policy] = list(yaml.safe_load_all(done.stdout))
    expected = resolve(ec2, ["com.amazonaws.us-east-1.s3"])["com.amazonaws.us-east-1.s3"]
    assert [p["ipBlock"]["cidr"] for p in _s3_rule(policy)["to"]] == expected
    wrong = CliRunner().invoke(app, ["--config", str(config), "egress-policy", "--cluster", "x"])
    assert wrong.exit_code == 1 and "no cluster 'x' with stage_egress" in wrong.output


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_each_overlays_stage_policy_is_what_its_config_renders(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(PROJECT_ROOT)  # the file names its source as run from here
    configmap = Path("manifests", "overlays", overlay, "config.yaml")
    done = CliRunner().invoke(app, ["egress-policy", "--configmap", str(configmap)])
    assert done.exit_code == 0, done.output
    kept = (OVERLAYS / overlay / "s3-egress.yaml").read_text()
    assert done.stdout == kept, (
        f"manifests/overlays/{overlay}/s3-egress.yaml is not what config.yaml renders: "
        f"camflow egress-policy --configmap {configmap} > "
        f"manifests/overlays/{overlay}/s3-egress.yaml"
    )
