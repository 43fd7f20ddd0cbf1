"""How the Kubernetes executor behaves where a real cluster differs from a happy one:
lost answers, Jobs gone during an outage, pending pods, quotas and RBAC, the kubelet's
own failure reasons, and requests per tick with many finished Jobs around.

Each runs the official client over HTTP against the emulator (tests/kube_emulator.py,
whose docstring names the upstream source of each behaviour relied on here)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from orchestrator.domain.layout import upload_key
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.executors.base import ExecState
from orchestrator.kube.executor import KubernetesExecutor
from orchestrator.kube.jobs import SELECTOR
from orchestrator.kube.status import job_status, pod_failure
from orchestrator.service import Runtime, drive, open_runtime
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store.models import AttemptState, RunStatus
from tests.kube_emulator import Call, Emulator, allowed, request_info, tolerates
from tests.test_kube_executor import Cluster, _cluster, _kube_settings

NAMESPACE = "camflow-jobs"


def _make(made: list[Cluster], tmp: Path, s3: EmbeddedS3, name: str, **kw: Any) -> Cluster:
    kw.setdefault("environment", "dev")
    kw.setdefault("gpu", False)
    cluster = _cluster(tmp, s3, name, **kw)
    made.append(cluster)
    return cluster


def _upload(runtime: Runtime, prefix: str) -> str:
    key = upload_key(prefix, "cam", datetime.now(UTC))
    runtime.s3.client.put_object(Bucket=runtime.settings.s3.ingest_bucket, Key=key, Body=b"x")
    runtime.watcher.tick()
    runtime.reconciler.plan_new_clips()
    [run] = runtime.store.runs_of_clip(runtime.store.find_clip(key).id)
    return run.id


def _until(check: Any, timeout: float = 60, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(every)


def _probe_settings(settings: Settings, clusters: list[Cluster]) -> Settings:
    return _kube_settings(settings, clusters, probe=True)


# --- the "no clip lost, none run twice" edge cases ----------------------------------------


def test_a_create_whose_answer_was_lost_is_retried_on_the_same_cluster_only(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    # Its pod waits for the Job's own Secret, made once a retried create adopts the
    # Job: not stuck meanwhile.
    first = _make(made, tmp_path, s3_server, "dev")
    first.settings = first.settings.model_copy(update={"stuck_grace_seconds": 30})
    second = _make(made, tmp_path, s3_server, "dev2")
    # The server makes the Job, and every answer is lost: the create "fails".
    first.emulator.inject("POST", r"/jobs$", status=503, after=True, times=5)
    with open_runtime(_probe_settings(settings, [first, second])) as runtime:
        run_id = _upload(runtime, "ok")
        runtime.reconciler.tick()
        [attempt] = runtime.store.attempts_of_run(run_id)
        # Recorded before the create; held there, not moved to the idle second cluster.
        assert (attempt.state, attempt.placement, attempt.handle) == (
            AttemptState.PENDING,
            "dev",
            None,
        )
        assert len(first.jobs()) == 1 and second.jobs() == []
        runtime.reconciler.tick()  # dev is away: wait for it, do not move
        assert second.jobs() == []
        drive(runtime, [run_id], timeout=60, interval=0.1)
        assert runtime.store.get_run(run_id).status == RunStatus.SUCCEEDED
        [attempt] = runtime.store.attempts_of_run(run_id)
        assert attempt.placement == "dev" and attempt.attempt == 1
    assert len(first.jobs()) == 1 and second.jobs() == []  # the 409 adopted it
    assert sum(first.runner.runs.values()) == 1 and second.runner.runs == {}


def test_a_finished_job_removed_by_its_ttl_while_away_is_resolved_from_its_manifest(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev", ttl_seconds_after_finished=1)
    with open_runtime(_probe_settings(settings, [dev])) as runtime:
        run_id = _upload(runtime, "ok")
        runtime.reconciler.tick()
        [attempt] = runtime.store.attempts_of_run(run_id)
        assert attempt.state == AttemptState.RUNNING
        dev.emulator.stop()  # camflow cannot see it; the Job finishes and its TTL ends
        _until(lambda: sum(dev.runner.runs.values()) == 1 and not dev.jobs())
        dev.emulator.start()
        drive(runtime, [run_id], timeout=60, interval=0.1)
        run = runtime.store.get_run(run_id)
        assert run.status == RunStatus.SUCCEEDED, run.error
        [attempt] = runtime.store.attempts_of_run(run_id)
        assert attempt.state == AttemptState.SUCCEEDED
    assert sum(dev.runner.runs.values()) == 1  # never run again


def test_the_job_retries_and_the_engine_adds_none_on_top(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    with open_runtime(_probe_settings(settings, [dev])) as runtime:
        run_id = _upload(runtime, "always-fail")
        drive(runtime, [run_id], timeout=60, interval=0.1)
        run = runtime.store.get_run(run_id)
        # retries: 1 -> backoffLimit 1 -> two pods, one attempt, and no engine retry.
        assert run.status == RunStatus.FAILED
        assert run.error == (
            "stage probe failed after 2 attempts: simulated transient failure, every time"
        )
        [attempt] = runtime.store.attempts_of_run(run_id)
        assert attempt.exhausted and attempt.tries == 2
    [job] = dev.jobs()
    assert job["spec"]["backoffLimit"] == 1 and sum(dev.runner.runs.values()) == 2


# --- cluster health -----------------------------------------------------------------------


def test_an_away_cluster_is_probed_on_its_own_schedule_and_comes_back(
    made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    from tests.kube_fixtures import CLIP, RUN  # noqa: F401

    dev = _make(made, tmp_path, s3_server, "dev")
    executor = KubernetesExecutor([dev.settings])
    try:
        assert executor.capacity().slots == 4
        dev.emulator.stop()
        executor.poll([f"dev/{NAMESPACE}/cf-gone"])  # a look fails: away
        assert executor.capacity().slots == 0
        dev.emulator.start()
        # Nothing runs there, nothing is polled: the probe alone brings it back.
        _until(lambda: executor.capacity().slots == 4, timeout=5)
        probes = [p for _m, p in dev.emulator.requests if p.rstrip("/") == "/version"]
        assert len(probes) >= 1
    finally:
        executor.close()


def test_a_full_quota_holds_the_attempt_with_the_api_message_and_keeps_the_cluster(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    dev.emulator.job_quota[NAMESPACE] = 0
    with open_runtime(_probe_settings(settings, [dev])) as runtime:
        run_id = _upload(runtime, "ok")
        for _ in range(3):
            runtime.reconciler.tick()
        [attempt] = runtime.store.attempts_of_run(run_id)
        assert attempt.state == AttemptState.PENDING and attempt.placement == "dev"
        assert "exceeded quota: camflow-jobs" in (attempt.reason or "")
        assert "count/jobs.batch=0" in (attempt.reason or "")
        executor = runtime.executor
        assert isinstance(executor, KubernetesExecutor)
        assert executor.views["dev"].reachable  # a refusal of the request, not the cluster
        dev.emulator.job_quota.clear()
        drive(runtime, [run_id], timeout=60, interval=0.1)
        assert runtime.store.get_run(run_id).status == RunStatus.SUCCEEDED


def test_rbac_refusals_hold_the_work_and_keep_the_cluster(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    # Its pod may start before the Job's own Secret is made, just after the Job, and
    # waits for the kubelet's next try: under load that outlasted the half second of
    # grace the other tests give a pod that cannot start, failing the clip. Were the
    # Secret never made, the drive below would time out instead.
    dev.settings = dev.settings.model_copy(update={"stuck_grace_seconds": 30})
    with open_runtime(_probe_settings(settings, [dev])) as runtime:
        run_id = _upload(runtime, "ok")
        dev.emulator.rules = [PUBLIC_INFO]  # the Role is missing
        for _ in range(2):
            runtime.reconciler.tick()
        [attempt] = runtime.store.attempts_of_run(run_id)
        assert attempt.state == AttemptState.PENDING
        assert 'cannot create resource "jobs" in API group "batch"' in (attempt.reason or "")
        executor = runtime.executor
        assert isinstance(executor, KubernetesExecutor) and executor.views["dev"].reachable
        dev.emulator.rules = [*_role_rules(), PUBLIC_INFO]
        runtime.reconciler.tick()  # created now
        dev.emulator.rules = [PUBLIC_INFO]  # and the Role goes again: nothing is lost
        for _ in range(2):
            runtime.reconciler.tick()
        [attempt] = runtime.store.attempts_of_run(run_id)
        assert attempt.state == AttemptState.RUNNING and executor.views["dev"].blind
        dev.emulator.rules = None
        drive(runtime, [run_id], timeout=60, interval=0.1)
        assert runtime.store.get_run(run_id).status == RunStatus.SUCCEEDED
    assert sum(dev.runner.runs.values()) == 1


def test_an_invalid_job_fails_its_attempt_with_the_api_message(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    dev.emulator.inject(
        "POST",
        r"/jobs$",
        status=422,
        message='Job.batch "x" is invalid: spec.template.spec.containers[0].image: Required value',
        reason="Invalid",
    )
    with open_runtime(_probe_settings(settings, [dev])) as runtime:
        run_id = _upload(runtime, "ok")
        drive(runtime, [run_id], timeout=30, interval=0.1)
        run = runtime.store.get_run(run_id)
        assert run.status == RunStatus.FAILED
        assert "containers[0].image: Required value" in (run.error or "")
        executor = runtime.executor
        assert isinstance(executor, KubernetesExecutor) and executor.views["dev"].reachable
    assert dev.jobs() == []


# --- pending is watched -------------------------------------------------------------------


def test_the_first_sync_sets_start_time_and_active_before_any_node(
    made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    from tests.kube_fixtures import CLIP  # noqa: F401

    dev = _make(made, tmp_path, s3_server, "dev")
    job = _bare_job("cf-wants-gpu", gpus=1)  # dev has no GPU node
    code, _body, _h = dev.emulator.handle(
        "POST", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", job
    )
    assert code == 201

    def synced() -> bool:
        with dev.emulator.lock:
            return bool(dev.emulator.jobs[(NAMESPACE, "cf-wants-gpu")]["status"].get("active"))

    _until(synced, timeout=5)
    with dev.emulator.lock:
        status = dev.emulator.jobs[(NAMESPACE, "cf-wants-gpu")]["status"]
        [pod] = list(dev.emulator.pods.values())
        assert status["startTime"] and status["active"] == 1 and not status.get("ready")
        assert pod["status"]["phase"] == "Pending"
    _until(lambda: bool(pod["status"]["conditions"]), timeout=5)  # the scheduler's turn
    with dev.emulator.lock:
        assert "nodeName" not in pod["spec"]
        [scheduled] = pod["status"]["conditions"]
        assert (scheduled["type"], scheduled["status"], scheduled["reason"]) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        )
        assert "Insufficient nvidia.com/gpu" in scheduled["message"]
        # ... which is not the stage starting.
        assert job_status(dev.emulator.jobs[(NAMESPACE, "cf-wants-gpu")], [pod]).state == (
            ExecState.QUEUED
        )


def test_an_unschedulable_gpu_job_falls_back_to_cpu_after_the_wait(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    # The GPU node's taint has an effect our toleration does not name: no node fits.
    prod = _make(
        made,
        tmp_path,
        s3_server,
        "prod",
        environment="prod",
        gpu=True,
        gpu_taint=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoExecute"}],
    )
    with open_runtime(_probe_settings(settings, [prod])) as runtime:
        runtime.registry.promote("probe", "1.0.0")
        run_id = _upload(runtime, "gpu")
        runtime.reconciler.tick()
        [attempt] = runtime.store.attempts_of_run(run_id)
        assert (attempt.accelerator, attempt.placement) == ("gpu", "prod")
        drive(runtime, [run_id], timeout=60, interval=0.1)
        run = runtime.store.get_run(run_id)
        assert run.status == RunStatus.SUCCEEDED, run.error
        [attempt] = runtime.store.attempts_of_run(run_id)
        assert (attempt.accelerator, attempt.placement, attempt.attempt) == ("cpu", "prod", 1)
        assert run.result["probe"]["accelerator"] == "cpu"  # type: ignore[index]
    # The GPU Job was deleted (its pod with it) before the CPU one was created.
    [job] = prod.jobs()
    assert not job["metadata"]["name"].endswith("-gpu")
    assert list(prod.runner.runs) == [job["metadata"]["name"]]


def test_an_image_that_cannot_be_pulled_fails_with_the_kubelet_reason(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    dev.emulator.unpullable.add("camflow/probe:test")
    with open_runtime(_probe_settings(settings, [dev])) as runtime:
        run_id = _upload(runtime, "ok")
        drive(runtime, [run_id], timeout=30, interval=0.1)
        run = runtime.store.get_run(run_id)
        assert run.status == RunStatus.FAILED
        assert "the image camflow/probe:test cannot be pulled (" in (run.error or "")
        assert "ErrImagePull" in (run.error or "") or "ImagePullBackOff" in (run.error or "")
    _until(lambda: not dev.jobs(), timeout=5)  # deleted, and its pod with it
    assert dev.runner.runs == {}


def test_a_missing_secret_fails_with_the_kubelet_reason(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    # The Job is made, its own Secret never is (the create of it fails every time).
    dev.emulator.inject("POST", r"/secrets$", status=403, times=1000)
    with open_runtime(_probe_settings(settings, [dev])) as runtime:
        run_id = _upload(runtime, "ok")
        drive(runtime, [run_id], timeout=30, interval=0.1)
        assert re.fullmatch(
            "stage probe failed after 1 attempt: its container cannot be created "
            r'\(CreateContainerConfigError: secret "cf-probe-[0-9a-f]+" not found\): '
            "check the Secrets and ConfigMaps it uses",
            runtime.store.get_run(run_id).error or "",
        )


# --- reasons from the real fields ---------------------------------------------------------


def test_out_of_memory_says_which_limit_to_raise(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    with open_runtime(_probe_settings(settings, [dev])) as runtime:
        run_id = _upload(runtime, "hang")
        runtime.reconciler.tick()
        _until(lambda: bool(dev.runner.runs), timeout=10)
        [name] = dev.runner.runs
        dev.runner.oom_kill(name)
        drive(runtime, [run_id], timeout=30, interval=0.1)
        run = runtime.store.get_run(run_id)
        assert run.error == (
            "stage probe failed after 1 attempt: ran out of memory (limit 64Mi): "
            "raise resources.memory"
        )
        [attempt] = runtime.store.attempts_of_run(run_id)
        assert attempt.exit_code == 137


def _failed_pod(status: dict[str, Any], terminated: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p",
            "namespace": NAMESPACE,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"containers": [{"name": "stage", "resources": {"limits": {"memory": "2Gi"}}}]},
        "status": {
            "phase": "Failed",
            **status,
            "containerStatuses": [{"name": "stage", "state": {"terminated": terminated}}],
        },
    }


def test_failure_reasons_come_from_the_fields_the_kubelet_and_controller_write() -> None:
    oom = pod_failure(_failed_pod({}, {"exitCode": 137, "reason": "OOMKilled"}), 60)
    assert oom.reason == "ran out of memory (limit 2Gi): raise resources.memory"
    late = pod_failure(
        _failed_pod(
            {
                "reason": "DeadlineExceeded",
                "message": "Pod was active on the node longer than the specified deadline",
            },
            {"exitCode": 143, "reason": "Error"},
        ),
        60,
    )
    assert late.timed_out and late.reason.startswith("ran past its 60 s timeout")
    evicted = pod_failure(
        _failed_pod(
            {"reason": "Evicted", "message": "The node was low on resource: ephemeral-storage."},
            {"exitCode": 137, "reason": "Error"},
        ),
        60,
    )
    assert evicted.reason.startswith(
        "evicted from its node: The node was low on resource: ephemeral-storage."
    )
    # FallbackToLogsOnError: stdout and stderr together; the last line is the reason.
    logged = pod_failure(
        _failed_pod(
            {}, {"exitCode": 1, "reason": "Error", "message": "progress 10%\nS3 throttled"}
        ),
        60,
    )
    assert (logged.exit_code, logged.reason) == (1, "S3 throttled")
    # Bad input is read from the Job's condition even when the pods are gone.
    job = {
        "metadata": {"name": "j"},
        "status": {
            "failed": 1,
            "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy"},
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "PodFailurePolicy",
                    "message": "Container stage for pod camflow-jobs/j-abcde failed with "
                    "exit code 2 matching FailJob rule at index 0",
                },
            ],
        },
    }
    bad = job_status(job, [])
    assert (bad.state, bad.exit_code, bad.exhausted) == (ExecState.FAILED, 2, True)
    # FailureTarget alone: its pods may still stop; the attempt is not over yet.
    failing = {"metadata": {"name": "j"}, "status": {"conditions": job["status"]["conditions"][:1]}}
    assert job_status(failing, []).state == ExecState.QUEUED


# --- emulator fidelity --------------------------------------------------------------------


def _bare_job(name: str, gpus: int = 0) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": "100m", "memory": "64Mi"}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "camflow"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "stage",
                            "image": "busybox",
                            "command": ["python", "-c", "import time; time.sleep(30)"],
                            "resources": {"requests": dict(limits), "limits": limits},
                        }
                    ],
                }
            },
        },
    }


def test_deleting_a_job_orphans_its_pods_unless_a_policy_says_otherwise(
    made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    jobs = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    for name in ("cf-orphan", "cf-background"):
        dev.emulator.handle("POST", jobs, _bare_job(name))
    _until(lambda: len(dev.runner.runs) == 2, timeout=10)
    dev.emulator.handle("DELETE", f"{jobs}/cf-orphan", None)
    dev.emulator.handle("DELETE", f"{jobs}/cf-background?propagationPolicy=Background", None)
    with dev.emulator.lock:
        owners = [p["metadata"]["labels"]["job-name"] for p in dev.emulator.pods.values()]
    assert owners == ["cf-orphan"]  # batch/v1's default: the pod stays, and runs on


def test_tolerations_match_key_operator_value_and_effect() -> None:
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert tolerates({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, taint)
    assert tolerates({"key": "nvidia.com/gpu", "operator": "Exists"}, taint)  # any effect
    assert tolerates({"operator": "Exists"}, taint)  # empty key with Exists: every taint
    assert tolerates({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}, taint)
    assert not tolerates({"key": "nvidia.com/gpu", "value": "absent"}, taint)
    assert not tolerates(
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, taint
    )
    assert not tolerates({"key": "other", "operator": "Exists"}, taint)


# --- RBAC equals the calls ----------------------------------------------------------------

#: Bound to every authenticated user by the default bootstrap policy
#: (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go: system:public-info-viewer).
PUBLIC_INFO = {
    "nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"],
    "verbs": ["get"],
}


def _role_rules() -> list[dict[str, Any]]:
    [role] = [
        d
        for d in yaml.safe_load_all((PROJECT_ROOT / "manifests" / "base" / "rbac.yaml").read_text())
        if d and d["kind"] == "Role"
    ]
    assert role["metadata"]["namespace"] == NAMESPACE
    return list(role["rules"])


def test_rbac_rule_matching_follows_upstream() -> None:
    rules = [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"]}]
    get = request_info("GET", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/x", {})
    assert (get.verb, get.api_group, get.resource, get.name) == ("get", "batch", "jobs", "x")
    assert allowed(rules, get)
    assert not allowed(
        rules, request_info("GET", f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", {})
    )
    log = request_info("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/p/log", {})
    assert log.resource_path == "pods/log"
    assert not allowed([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}], log)
    assert allowed([{"apiGroups": [""], "resources": ["*/log"], "verbs": ["get"]}], log)
    assert allowed([PUBLIC_INFO], Call("get", "", "", path="/version/"))


def test_the_role_allows_exactly_the_calls_the_executor_makes(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    prod = _make(
        made,
        tmp_path,
        s3_server,
        "prod",
        environment="prod",
        gpu=True,
        gpu_taint=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoExecute"}],
    )
    rules = _role_rules()
    prod.emulator.rules = [*rules, PUBLIC_INFO]  # anything else is answered 403
    with open_runtime(_probe_settings(settings, [prod])) as runtime:
        runtime.registry.promote("probe", "1.0.0")
        ran = _upload(runtime, "gpu")  # create, list, get; delete when it falls back
        drive(runtime, [ran], timeout=60, interval=0.1)
        assert runtime.store.get_run(ran).status == RunStatus.SUCCEEDED
        hung = _upload(runtime, "hang")
        runtime.reconciler.tick()
        [attempt] = runtime.store.attempts_of_run(hung)
        runtime.executor.cancel([attempt.handle or ""])  # delete
        executor = runtime.executor
        assert isinstance(executor, KubernetesExecutor)
        gone = executor.poll([attempt.handle or ""])  # missing from the list: get
        assert gone[attempt.handle or ""].state == ExecState.LOST
        executor.views["prod"].reachable, executor.views["prod"].probe_at = False, 0
        executor.probe()  # /version
    calls = {(c.verb, c.api_group, c.resource_path) for c in prod.emulator.calls if c.resource}
    assert all(allowed(rules, c) for c in prod.emulator.calls if c.resource)
    granted = {
        (verb, group, resource)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    # Every call is granted, and every grant is used: the Role is exactly the calls.
    assert calls == granted


# --- bounded requests per tick ------------------------------------------------------------


def test_requests_per_tick_stay_bounded_with_ten_thousand_finished_jobs(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    _keep_finished_jobs(dev.emulator, 10_000)
    with open_runtime(_probe_settings(settings, [dev])) as runtime:
        run_id = _upload(runtime, "hang")
        runtime.reconciler.tick()
        _until(lambda: bool(dev.runner.runs), timeout=10)
        before = len(dev.emulator.requests)
        runtime.reconciler.tick()
        per_tick = dev.emulator.requests[before:]
        # One list of the followed Jobs, one of their pods: the 10,000 cost nothing.
        assert sorted(m for m, _p in per_tick) == ["GET", "GET"], per_tick
        executor = runtime.executor
        assert isinstance(executor, KubernetesExecutor)
        before = len(dev.emulator.requests)
        [row] = executor.describe()  # the command lists them all, a page at a time
        pages = len(dev.emulator.requests) - before
        assert row["queued"] + row["running"] == 1 and pages == 21 + 1  # + nodes
        runtime.executor.cancel([a.handle or "" for a in runtime.store.attempts_of_run(run_id)])


def _keep_finished_jobs(emulator: Emulator, count: int) -> None:
    with emulator.lock:
        for index in range(count):
            # Listed after camflow's own (lists go in name order): the hung Job (a
            # 2 s timeout) is read on the first page, before its deadline.
            name = f"old-{index:05d}"
            job = _bare_job(name)
            job["metadata"]["labels"] |= {"camflow.io/job": name}
            job["metadata"]["uid"] = f"uid-{index}"
            job["status"] = {
                "succeeded": 1,
                "conditions": [{"type": "Complete", "status": "True"}],
            }
            emulator.jobs[(NAMESPACE, name)] = emulator.stamp(job, NAMESPACE)
    assert SELECTOR == "app.kubernetes.io/managed-by=camflow"


# --- durable intent -----------------------------------------------------------------------


def test_a_delete_decided_while_the_cluster_was_away_survives_a_restart(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    from sqlmodel import select

    from orchestrator.store.models import ClusterAction

    dev = _make(made, tmp_path, s3_server, "dev")
    kube = _probe_settings(settings, [dev])
    with open_runtime(kube) as runtime:
        run_id = _upload(runtime, "hang")
        runtime.reconciler.tick()
        [attempt] = runtime.store.attempts_of_run(run_id)
        dev.emulator.stop()
        runtime.executor.cancel([attempt.handle or ""])
        with runtime.store.session() as session:
            [row] = session.exec(select(ClusterAction)).all()
            assert (row.kind, row.cluster, row.handle) == ("delete", "dev", attempt.handle)
    assert len(dev.jobs()) == 1  # camflow stopped before the cluster came back
    dev.emulator.start()
    with open_runtime(kube) as again:  # a new process: only the store remembers
        executor = again.executor
        assert isinstance(executor, KubernetesExecutor)
        executor.capacity()
        assert executor.actions.pending_deletes() == []
    assert dev.jobs() == []


def test_each_job_reads_credentials_of_its_own_owned_by_it(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    with open_runtime(_probe_settings(settings, [dev])) as runtime:
        run_id = _upload(runtime, "ok")
        drive(runtime, [run_id], timeout=60, interval=0.1)
        assert runtime.store.get_run(run_id).status == RunStatus.SUCCEEDED
        [job] = dev.jobs()
        name, uid = job["metadata"]["name"], job["metadata"]["uid"]
        env = job["spec"]["template"]["spec"]["containers"][0]["env"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e}
        # The Job's own Secret, never the cluster-wide one, and no value in the Job.
        assert refs == {"AWS_ACCESS_KEY_ID": name, "AWS_SECRET_ACCESS_KEY": name}
        assert not any(e["name"].startswith("AWS_ACC") and "value" in e for e in env)
        with dev.emulator.lock:
            secret = dev.emulator.secrets[("camflow-jobs", name)]
            assert dev.emulator.secret_owners[("camflow-jobs", name)] == {uid}
        assert secret["AWS_ACCESS_KEY_ID"] not in ("testing", runtime.s3.access.access_key_id)
        dev.emulator.delete_job("camflow-jobs", name, "Background")
        with dev.emulator.lock:  # the garbage collector deletes it with its owner
            assert ("camflow-jobs", name) not in dev.emulator.secrets
