"""A cluster's stage NetworkPolicy, from its settings (``stage_egress``): stage pods
take nothing in, and reach out only to DNS and to S3 as that cluster's pods reach it.

The policy is pure data from the settings; a prefix list's CIDRs come in resolved
(``prefix_lists.resolve``, the one place that asks the EC2 API)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.settings import ClusterSettings, StageEgress

POLICY = "camflow-stage"
#: What stage pods are labelled (orchestrator/kube/jobs.py) and the policy selects.
STAGE_POD_LABELS = {"app.kubernetes.io/name": "camflow-stage"}
#: NodeLocal DNSCache answers on this link-local address on every node (its pods use
#: the host's network, so no pod selector matches them).
NODE_LOCAL_DNS = "169.254.20.10/32"


class UnresolvedPrefixList(ValueError):
    """A prefix list named in the settings whose CIDRs were not looked up."""


def dns_rule() -> dict[str, Any]:
    return {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            },
            {"ipBlock": {"cidr": NODE_LOCAL_DNS}},
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def s3_peers(egress: StageEgress, resolved: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """The NetworkPolicy peers S3 is, in the order the settings list them."""
    cidrs = [str(cidr) for cidr in egress.cidrs]
    for name in egress.prefix_lists:
        if name not in resolved:
            raise UnresolvedPrefixList(
                f"prefix list {name} is not resolved: render with the EC2 API at hand "
                "(AWS credentials and region), or list its CIDRs under stage_egress.cidrs"
            )
        cidrs += [c for c in resolved[name] if c not in cidrs]
    peers: list[dict[str, Any]] = [{"ipBlock": {"cidr": cidr}} for cidr in cidrs]
    peers += [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": pod.namespace}},
            "podSelector": {"matchLabels": dict(pod.labels)},
        }
        for pod in egress.pods
    ]
    return peers


def stage_network_policy(
    cluster: ClusterSettings, resolved: Mapping[str, Sequence[str]] | None = None
) -> dict[str, Any]:
    """The camflow-stage NetworkPolicy for ``cluster``'s Job namespace."""
    if cluster.stage_egress is None:
        raise ValueError(
            f"cluster {cluster.name} has no stage_egress: set S3's cidrs, prefix_lists or "
            "pods under kubernetes.clusters[].stage_egress"
        )
    egress = cluster.stage_egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": POLICY, "namespace": cluster.namespace},
        "spec": {
            "podSelector": {"matchLabels": dict(STAGE_POD_LABELS)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [
                dns_rule(),
                {
                    "to": s3_peers(egress, resolved or {}),
                    "ports": [{"protocol": "TCP", "port": port} for port in egress.ports],
                },
            ],
        },
    }
