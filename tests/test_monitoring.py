"""manifests/monitoring: the Prometheus Operator objects and the Grafana dashboard
render with each overlay, are well formed, and every PromQL expression in the alert
rules and the dashboard parses and names only metrics that a real /metrics exports
after real runs through the engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

import kubernetes_validate
import promql_parser
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.app import create_app
from orchestrator.domain.layout import upload_key
from orchestrator.service import drive, open_runtime
from orchestrator.settings import PROJECT_ROOT, Settings
from tests.kube_fixtures import KUBERNETES_VERSION

MONITORING = PROJECT_ROOT / "manifests" / "monitoring"
STAGES = PROJECT_ROOT / "tests" / "stages"
OPERATOR_KINDS = {"PrometheusRule", "ServiceMonitor"}

# --- the Prometheus Operator's objects, as far as these manifests use them ------------
#
# A model of the fields used, from the operator's CRD reference (monitoring.coreos.com/v1),
# not its whole schema: no PyPI package ships that schema on its own (the one package with
# the operator's models brings a Kubernetes client and a pytest plugin, and accepts
# unknown fields). Unknown fields are refused here, so a misspelt one fails.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Metadata(_Strict):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    namespace: str
    labels: dict[str, str] = Field(default_factory=dict)


DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"


class Rule(_Strict):
    alert: str = Field(pattern=r"^[A-Z][A-Za-z0-9]+$")
    expr: str
    for_: str = Field(alias="for", pattern=DURATION)
    labels: dict[Literal["severity"], Literal["critical", "warning", "info"]]
    annotations: dict[Literal["summary", "description"], str]


class RuleGroup(_Strict):
    name: str
    rules: list[Rule] = Field(min_length=1)


class RuleSpec(_Strict):
    groups: list[RuleGroup] = Field(min_length=1)


class PrometheusRule(_Strict):
    apiVersion: Literal["monitoring.coreos.com/v1"]
    kind: Literal["PrometheusRule"]
    metadata: Metadata
    spec: RuleSpec


class Endpoint(_Strict):
    port: str
    path: str = "/metrics"
    interval: str = Field(pattern=DURATION)
    scrapeTimeout: str = Field(pattern=DURATION)


class LabelSelector(_Strict):
    matchLabels: dict[str, str] = Field(min_length=1)


class NamespaceSelector(_Strict):
    matchNames: list[str] = Field(min_length=1)


class MonitorSpec(_Strict):
    selector: LabelSelector
    namespaceSelector: NamespaceSelector
    endpoints: list[Endpoint] = Field(min_length=1)


class ServiceMonitor(_Strict):
    apiVersion: Literal["monitoring.coreos.com/v1"]
    kind: Literal["ServiceMonitor"]
    metadata: Metadata
    spec: MonitorSpec


# --- rendering ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """The overlay with the monitoring component, as an operator would add it."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) is not installed here: cannot render overlays")
    folder = tmp_path_factory.mktemp("monitored")
    overlay = PROJECT_ROOT / "manifests" / "overlays" / request.param
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes only relative paths.
                "resources": [os.path.relpath(overlay, folder)],
                "components": [os.path.relpath(MONITORING, folder)],
            }
        )
    )
    done = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _one(objects: list[Any], kind: str, name: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return dict(found)


def test_the_monitoring_objects_are_valid(rendered: list[Any]) -> None:
    for obj in rendered:
        if obj["kind"] in OPERATOR_KINDS:
            model = PrometheusRule if obj["kind"] == "PrometheusRule" else ServiceMonitor
            model.model_validate(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    kinds = {o["kind"] for o in rendered}
    assert kinds >= OPERATOR_KINDS


def test_prometheus_reaches_every_orchestrator_pod(rendered: list[Any]) -> None:
    deployment = _one(rendered, "Deployment", "camflow-orchestrator")
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CAMFLOW_API__HOST"] == "0.0.0.0" and env["CAMFLOW_API__PORT"] == "8080"

    service = _one(rendered, "Service", "camflow-orchestrator-metrics")
    assert service["spec"]["clusterIP"] == "None"  # every pod's endpoint, not one
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "http"

    monitor = _one(rendered, "ServiceMonitor", "camflow-orchestrator")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port["name"]]

    # The base lets nothing in; this policy lets Prometheus in, on that port only.
    policy = _one(rendered, "NetworkPolicy", "camflow-orchestrator-metrics")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]


def test_grafana_loads_the_dashboard_from_its_configmap(rendered: list[Any]) -> None:
    config = _one(rendered, "ConfigMap", "camflow-grafana-dashboard")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config["data"]["camflow.json"])
    assert dashboard == json.loads((MONITORING / "grafana-dashboard.json").read_text())


# --- the expressions ---------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    return dict(json.loads((MONITORING / "grafana-dashboard.json").read_text()))


def expressions() -> dict[str, str]:
    """Every PromQL expression, by where it is."""
    found: dict[str, str] = {}
    rules = PrometheusRule.model_validate(
        yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    )
    for group in rules.spec.groups:
        for rule in group.rules:
            found[f"alert {rule.alert}"] = rule.expr
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects, from its parse tree."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def exported(text: str) -> set[str]:
    """The series names an exposition offers: each family's own name as it is written
    (a counter's with `_total`, a histogram's `_bucket`, `_sum` and `_count`), whether or
    not it has samples yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
        names |= {sample.name for sample in family.samples}
    return names


def test_every_expression_parses_and_names_camflow_metrics() -> None:
    found = expressions()
    assert len([w for w in found if w.startswith("alert")]) >= 6
    for where, expr in found.items():
        names = metric_names(expr)
        assert names, f"{where}: names no metric"
        assert all(n.startswith("camflow_") for n in names), (where, names)
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(camflow_runs_finished_total[5m])")


def test_the_alerts_cover_what_operators_must_hear_about() -> None:
    alerts = {
        w.removeprefix("alert "): e for w, e in expressions().items() if w.startswith("alert")
    }
    named = {alert: metric_names(expr) for alert, expr in alerts.items()}
    assert "camflow_engine_last_tick_timestamp_seconds" in named["CamflowEngineNotTicking"]
    assert "camflow_watcher_discovery_delay_seconds" in named["CamflowWatcherLagging"]
    assert "camflow_runs_finished_total" in named["CamflowFailureRateHigh"]
    assert named["CamflowGpuWaitPastFallback"] == {
        "camflow_gpu_wait_oldest_seconds",
        "camflow_gpu_fallback_after_seconds",
    }
    assert named["CamflowWebhookBacklog"] == {"camflow_webhook_deliveries_pending"}


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """/metrics of a camflow that ran clips through the engine: stages that succeed, fail
    and hang, and a GPU stage on one GPU that some clips wait for and fall back from."""
    from orchestrator.embedded_s3 import EmbeddedS3
    from orchestrator.settings import load_settings

    server = EmbeddedS3().start()
    home = tmp_path_factory.mktemp("home")
    settings: Settings = load_settings(
        home=home,
        s3={
            "endpoint_url": server.endpoint_url,
            "embedded": False,
            "ingest_bucket": "ingest-monitoring",
            "results_bucket": "results-monitoring",
            "access_key_id": "testing",
            "secret_access_key": "testing",
        },
        engine={"retry_backoff_seconds": 0.2, "retry_backoff_max_seconds": 1, "batch_max_size": 1},
        watcher={"wait_seconds": 0},
        local={"gpus": 1, "max_parallel": 3, "kill_grace_seconds": 0.5},
        algorithm_dirs=[STAGES],
        pipeline_dirs=[STAGES / "pipelines"],
    )
    try:
        with open_runtime(settings) as runtime:
            at = datetime.now(UTC)
            for n, prefix in enumerate(["ok", "bad", "flaky", "gpu", "gpu", "gpu"]):
                key = upload_key(prefix, "cam", at, n=100_000 + n)
                runtime.s3.client.put_object(Bucket=settings.s3.ingest_bucket, Key=key, Body=b"x")
            runtime.watcher.tick()
            runtime.reconciler.plan_new_clips()
            runs = [run.id for run, _ in runtime.store.list_runs()]
            assert len(runs) == 6
            drive(runtime, runs, timeout=90, interval=0.1)
            yield TestClient(create_app(runtime)).get("/metrics").text
    finally:
        server.stop()


def test_every_metric_the_rules_and_the_dashboard_name_is_exported(scrape: str) -> None:
    offered = exported(scrape)
    missing = {where: sorted(metric_names(expr) - offered) for where, expr in expressions().items()}
    assert {where: names for where, names in missing.items() if names} == {}
    # The check can fail: a name /metrics does not export is caught.
    assert metric_names("rate(camflow_clips_lost_total[5m])") - offered == {
        "camflow_clips_lost_total"
    }
    # The run put figures behind what the alerts read.
    families = {f.name: f for f in text_string_to_metric_families(scrape)}
    assert families["camflow_engine_last_tick_timestamp_seconds"].samples[0].value > 0
    failed = [
        s
        for s in families["camflow_runs_finished"].samples
        if s.labels.get("status") == "failed" and s.value > 0
    ]
    assert failed
    waited = [s for s in families["camflow_gpu_wait_seconds"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in waited) >= 3
