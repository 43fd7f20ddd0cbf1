"""The Kubernetes executor: the official client over HTTP against two emulated clusters
(dev without GPU nodes, prod with them), Jobs run by the emulator's job runner."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.layout import upload_key
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.executors.base import ExecState
from orchestrator.kube.api import retry_delay
from orchestrator.kube.routing import choose_cluster
from orchestrator.kube.status import job_status
from orchestrator.service import Runtime, drive, open_runtime
from orchestrator.settings import ClusterSettings, GpuNodes, Settings
from orchestrator.store.models import AttemptState, RunStatus
from tests.conftest import SampleClips
from tests.kube_emulator import Emulator, JobRunner, node
from tests.kube_fixtures import DEV, PROD
from tests.test_engine_local import STAGES

GPU_LABELS = {"nvidia.com/gpu.present": "true"}
GPU_TAINT = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]


@dataclass
class Cluster:
    emulator: Emulator
    runner: JobRunner
    settings: ClusterSettings

    def jobs(self) -> list[dict]:  # type: ignore[type-arg]
        with self.emulator.lock:
            return list(self.emulator.jobs.values())


def _cluster(
    tmp: Path,
    s3: EmbeddedS3,
    name: str,
    environment: str,
    gpu: bool,
    gpu_taint: list[dict[str, str]] | None = None,
    **settings: Any,
) -> Cluster:
    nodes = [node(f"{name}-cpu-1")]
    if gpu:
        nodes.append(node(f"{name}-gpu-1", GPU_LABELS, gpus=1, taints=gpu_taint or GPU_TAINT))
    emulator = Emulator(name, nodes=nodes, namespaces={"camflow-jobs", "other"}).start()
    # No cluster-wide S3 Secret: every Job camflow makes reads credentials of its own
    # (a Job left on the cluster's Secret would wait on it, and fail).
    cluster = ClusterSettings(
        name=name,
        environment=environment,
        kubeconfig=emulator.kubeconfig(tmp),  # type: ignore[arg-type]
        namespace="camflow-jobs",
        budget=4,
        s3_endpoint=s3.endpoint_url,
        gpu=GpuNodes(node_selector=GPU_LABELS, slots=1) if gpu else None,
        request_timeout_seconds=2,
        probe_interval_seconds=0.3,
        stuck_grace_seconds=0.5,
        **settings,
    )
    return Cluster(emulator, JobRunner(emulator).start(), cluster)


@pytest.fixture
def clusters(tmp_path: Path, s3_server: EmbeddedS3) -> Iterator[dict[str, Cluster]]:
    made = {
        "dev": _cluster(tmp_path, s3_server, "dev", "dev", gpu=False),
        "prod": _cluster(tmp_path, s3_server, "prod", "prod", gpu=True),
    }
    yield made
    for cluster in made.values():
        cluster.runner.stop()
        cluster.emulator.stop()


def _kube_settings(settings: Settings, clusters: list[Cluster], probe: bool) -> Settings:
    update = {
        "executor": "kubernetes",
        "kubernetes": settings.kubernetes.model_copy(
            update={"clusters": [c.settings for c in clusters]}
        ),
    }
    if probe:
        update |= {
            "algorithm_dirs": [*settings.algorithm_dirs, STAGES],
            "pipeline_dirs": [STAGES / "pipelines"],
        }
    return settings.model_copy(update=update)


def _run(runtime: Runtime, prefix: str, path: Path | None = None, timeout: float = 120) -> str:
    key = upload_key(prefix, "cam", datetime.now(UTC))
    bucket = runtime.settings.s3.ingest_bucket
    if path is None:
        runtime.s3.client.put_object(Bucket=bucket, Key=key, Body=b"x")
    else:
        runtime.s3.upload_file(path, bucket, key)
    runtime.watcher.tick()
    runtime.reconciler.plan_new_clips()
    [run] = runtime.store.runs_of_clip(runtime.store.find_clip(key).id)
    drive(runtime, [run.id], timeout=timeout, interval=0.1)
    return run.id


# --- pure parts ---------------------------------------------------------------------------


def test_routing_follows_channel_accelerator_budget_and_reachability() -> None:
    from orchestrator.domain.algorithm import Resources
    from orchestrator.executors.base import StageLaunch
    from tests.kube_fixtures import CLIP, RUN  # noqa: F401  (shared fixtures)

    def launch(channel: str, accelerator: str, fallback: str | None = None) -> StageLaunch:
        return StageLaunch(
            attempt_id="a",
            run_id="r",
            stage="s",
            pipeline="p",
            tenant="t",
            clip_id="c",
            algorithm="x@1.0.0",
            image="i",
            command=["x"],
            env={},
            accelerator=accelerator,
            resources=Resources(),  # type: ignore[arg-type]
            timeout_seconds=1,
            channel=channel,
            fallback=fallback,
        )  # type: ignore[arg-type]

    up = {"dev": True, "prod": True}
    idle = {"dev": 0, "prod": 0}
    both = [DEV, PROD]
    assert choose_cluster(launch("dev", "cpu"), both, up, idle, idle) == (DEV, "cpu")
    assert choose_cluster(launch("stable", "cpu"), both, up, idle, idle) == (PROD, "cpu")
    assert choose_cluster(launch("stable", "gpu"), both, up, idle, idle) == (PROD, "gpu")
    # dev has no GPU nodes: a GPU stage waits, unless it may fall back.
    assert choose_cluster(launch("dev", "gpu"), both, up, idle, idle) is None
    assert choose_cluster(launch("dev", "gpu", "cpu"), both, up, idle, idle) == (DEV, "cpu")
    # GPU slots used up on prod: fallback to its CPUs.
    assert choose_cluster(launch("stable", "gpu", "cpu"), both, up, idle, {"prod": 2}) == (
        PROD,
        "cpu",
    )
    # Budget used up, or the cluster away: nowhere to go now.
    assert choose_cluster(launch("stable", "cpu"), both, up, {"prod": 8}, idle) is None
    assert choose_cluster(launch("stable", "cpu"), both, {"prod": False}, idle, idle) is None


def _job(conditions: list[dict], **status: object) -> dict:  # type: ignore[type-arg]
    return {"metadata": {"name": "j"}, "status": {"conditions": conditions, **status}}


def _pod(code: int, message: str) -> dict:  # type: ignore[type-arg]
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"name": "stage", "state": {"terminated": {"exitCode": code, "message": message}}}
            ],
        },
    }


def _pending(**condition: str) -> dict:  # type: ignore[type-arg]
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"phase": "Pending", "conditions": [condition] if condition else []},
    }


def _running() -> dict:  # type: ignore[type-arg]
    return {
        "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {"name": "stage", "state": {"running": {"startedAt": "2026-01-01T00:05:00Z"}}}
            ],
        },
    }


def test_job_conditions_map_onto_stage_outcomes() -> None:
    done = job_status(_job([{"type": "Complete", "status": "True"}], succeeded=1, failed=1), [])
    assert done.state == ExecState.SUCCEEDED and done.tries == 2
    bad = job_status(
        _job([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}], failed=1),
        [_pod(2, "Traceback...\nthe clip is empty (0 bytes)")],
    )
    assert (bad.state, bad.exit_code, bad.reason) == (
        ExecState.FAILED,
        2,
        "the clip is empty (0 bytes)",
    )
    spent = job_status(
        _job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}], failed=3),
        [_pod(1, "boom")],
    )
    assert spent.exhausted and spent.tries == 3 and spent.exit_code == 1
    late = job_status(
        _job(
            [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "too long",
                }
            ]
        ),
        [],
    )
    assert late.timed_out and late.exhausted
    assert job_status(_job([], active=1), []).state == ExecState.QUEUED
    # The Job controller sets startTime at its first sync, before any node is found:
    # that is not the stage starting. Only a container that started is.
    queued = job_status(_job([], active=1, startTime="2026-01-01T00:00:00Z"), [_pending()])
    assert queued.state == ExecState.QUEUED and queued.started_at is None
    running = job_status(_job([], active=1, startTime="2026-01-01T00:00:00Z"), [_running()])
    assert running.state == ExecState.RUNNING
    assert running.started_at == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


def test_retry_after_is_honoured_and_backoff_is_capped() -> None:
    assert retry_delay({"Retry-After": "3"}, 1) == 3.0
    assert retry_delay({"Retry-After": "soon"}, 2) == 1.0
    assert retry_delay(None, 1) == 0.5 and retry_delay(None, 10) == 10.0


# --- through the API --------------------------------------------------------------------


def test_jobs_follow_the_stage_contract_on_kubernetes(
    settings: Settings, clusters: dict[str, Cluster]
) -> None:
    kube = _kube_settings(settings, list(clusters.values()), probe=True)
    with open_runtime(kube) as runtime:
        flaky = runtime.store.get_run(_run(runtime, "flaky"))
        assert flaky.status == RunStatus.SUCCEEDED
        [attempt] = runtime.store.attempts_of_run(flaky.id)
        # The Job retried the failed pod itself (backoffLimit): one attempt, two pods.
        assert attempt.tries == 2 and attempt.placement == "dev"
        assert flaky.result["probe"]["executions"] == 2  # type: ignore[index]

        bad = runtime.store.get_run(_run(runtime, "bad"))
        assert bad.status == RunStatus.FAILED
        assert bad.error == (
            "stage probe failed: this input can never be processed: replace "
            "it (bad input, not retried)"
        )
        [bad_job] = [
            j for j in clusters["dev"].jobs() if j["metadata"]["labels"]["camflow.io/run"] == bad.id
        ]
        # FailureTarget first, Failed once the pod has stopped (1.31+).
        conditions = [(c["type"], c["reason"]) for c in bad_job["status"]["conditions"]]
        assert conditions == [
            ("FailureTarget", "PodFailurePolicy"),
            ("Failed", "PodFailurePolicy"),
        ]
        assert bad_job["status"]["failed"] == 1  # exit 2: no second pod

        hang = runtime.store.get_run(_run(runtime, "hang"))
        assert hang.status == RunStatus.FAILED
        assert "ran past its 2 s timeout (the pod's activeDeadlineSeconds)" in (hang.error or "")
        [hang_job] = [
            j
            for j in clusters["dev"].jobs()
            if j["metadata"]["labels"]["camflow.io/run"] == hang.id
        ]
        [hang_pod] = [
            p
            for p in clusters["dev"].emulator.pods.values()
            if p["metadata"]["labels"]["batch.kubernetes.io/job-name"]
            == hang_job["metadata"]["name"]
        ]
        assert hang_pod["status"]["reason"] == "DeadlineExceeded"
        assert hang_pod["status"]["message"] == (
            "Pod was active on the node longer than the specified deadline"
        )
    assert not clusters["prod"].jobs()  # dev-channel versions never touch prod


def test_gpu_stages_land_on_gpu_nodes_and_fall_back_to_cpu_when_allowed(
    settings: Settings, clusters: dict[str, Cluster]
) -> None:
    kube = _kube_settings(settings, list(clusters.values()), probe=True)
    with open_runtime(kube) as runtime:
        # On the dev channel: dev has no GPU nodes, so after the 1 s wait it runs on CPU.
        fell_back = runtime.store.get_run(_run(runtime, "gpu"))
        [attempt] = runtime.store.attempts_of_run(fell_back.id)
        assert (attempt.accelerator, attempt.placement) == ("cpu", "dev")
        assert fell_back.result["probe"]["accelerator"] == "cpu"  # type: ignore[index]

        runtime.registry.promote("probe", "1.0.0")  # stable: prod, which has a GPU node
        on_gpu = runtime.store.get_run(_run(runtime, "gpu"))
        [attempt] = runtime.store.attempts_of_run(on_gpu.id)
        assert (attempt.accelerator, attempt.placement) == ("gpu", "prod")
        assert on_gpu.result["probe"]["accelerator"] == "gpu"  # type: ignore[index]
        [job] = clusters["prod"].jobs()
        assert clusters["prod"].runner.placements[job["metadata"]["name"]] == "prod-gpu-1"
        limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1


def test_api_faults_lose_nothing_and_run_nothing_twice(
    settings: Settings, clusters: dict[str, Cluster]
) -> None:
    dev = clusters["dev"]
    kube = _kube_settings(settings, [dev], probe=True)
    jobs_path = r"/apis/batch/v1/namespaces/camflow-jobs/jobs$"
    dev.emulator.inject("POST", jobs_path, status=500, times=2)
    dev.emulator.inject("GET", jobs_path, status=429, retry_after=0.2, times=2)
    # Created, but the answer never arrives: the retried create meets a 409.
    dev.emulator.inject("POST", jobs_path, status=503, after=True, times=1)
    dev.emulator.inject("GET", jobs_path, status=0, delay=2.5, times=1)  # a client timeout
    with open_runtime(kube) as runtime:
        run = runtime.store.get_run(_run(runtime, "ok"))
        assert run.status == RunStatus.SUCCEEDED
        assert len(dev.jobs()) == 1 and sum(dev.runner.runs.values()) == 1
        posts = [p for m, p in dev.emulator.requests if m == "POST"]
        assert len(posts) >= 4  # 2 x 500, the lost answer, and the create that met 409


def test_a_cluster_that_goes_away_and_comes_back_loses_nothing(
    settings: Settings, clusters: dict[str, Cluster], clips: SampleClips
) -> None:
    dev = clusters["dev"]
    kube = _kube_settings(settings, [dev], probe=False)
    with open_runtime(kube) as runtime:
        key = upload_key("acme", "door", datetime.now(UTC))
        runtime.s3.upload_file(clips.face, settings.s3.ingest_bucket, key)
        runtime.watcher.tick()
        runtime.reconciler.plan_new_clips()
        [run] = runtime.store.runs_of_clip(runtime.store.find_clip(key).id)
        while not runtime.store.attempts_of_run(run.id):
            runtime.reconciler.tick()
        dev.emulator.stop()  # the API goes away; the Jobs on the cluster carry on
        for _ in range(5):
            report = runtime.reconciler.tick()
            assert report.finished == []
        assert all(a.state != AttemptState.FAILED for a in runtime.store.attempts_of_run(run.id))
        dev.emulator.start()  # the same port: it answers again
        drive(runtime, [run.id], timeout=300, interval=0.2)
        done = runtime.store.get_run(run.id)
        assert done.status == RunStatus.SUCCEEDED, done.error
        attempts = runtime.store.attempts_of_run(run.id)
        assert sorted(a.stage for a in attempts) == ["decode", "faces", "publish", "thumbnails"]
        assert all(a.attempt == 1 for a in attempts)
        # Each stage ran once: a container each, in one Job per stage or, fused, in one.
        assert sum(dev.runner.runs.values()) == 4
        assert done.result["summary"]["labels"]["face"] >= 12  # type: ignore[index]


def test_clusters_command_shows_reachability_gpu_nodes_and_jobs(
    settings: Settings, clusters: dict[str, Cluster], tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from orchestrator.cli import app

    config = tmp_path / "camflow.yaml"
    config.write_text(
        json.dumps(
            {
                "kubernetes": {
                    "clusters": [
                        {
                            **c.settings.model_dump(mode="json"),
                            "kubeconfig": str(c.settings.kubeconfig),
                        }
                        for c in clusters.values()
                    ]
                }
            }
        )
    )
    clusters["dev"].emulator.stop()
    shown = CliRunner().invoke(app, ["--config", str(config), "clusters", "--json"])
    assert shown.exit_code == 0, shown.output
    rows = {row["name"]: row for row in json.loads(shown.stdout)}
    assert rows["dev"]["reachable"] is False and "failed" in rows["dev"]["error"]
    assert rows["prod"]["reachable"] is True and rows["prod"]["gpu_nodes"] == 1
    assert rows["prod"]["running"] == rows["prod"]["queued"] == 0


def test_health_follows_the_engine_heartbeat(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from orchestrator.service import write_heartbeat

    env = {"CAMFLOW_HOME": str(tmp_path)}
    assert CliRunner().invoke(app, ["health"], env=env).exit_code == 1
    write_heartbeat(tmp_path)
    assert CliRunner().invoke(app, ["health"], env=env).exit_code == 0


def test_cancelled_jobs_are_deleted_even_if_their_cluster_was_away(
    settings: Settings, clusters: dict[str, Cluster]
) -> None:
    from orchestrator.kube.executor import KubernetesExecutor

    dev = clusters["dev"]
    kube = _kube_settings(settings, [dev], probe=True)
    with open_runtime(kube) as runtime:
        key = upload_key("hang", "cam", datetime.now(UTC))
        runtime.s3.client.put_object(Bucket=settings.s3.ingest_bucket, Key=key, Body=b"x")
        runtime.watcher.tick()
        runtime.reconciler.plan_new_clips()
        runtime.reconciler.tick()
        [attempt] = runtime.store.attempts_of_run(
            runtime.store.runs_of_clip(runtime.store.find_clip(key).id)[0].id
        )
        assert attempt.handle and len(dev.jobs()) == 1
        executor = runtime.executor
        assert isinstance(executor, KubernetesExecutor)
        dev.emulator.stop()
        executor.cancel([attempt.handle])  # the cluster is away: remembered
        assert executor.actions.pending_deletes() == [attempt.handle]
        assert len(dev.jobs()) == 1
        dev.emulator.start()
        time.sleep(dev.settings.probe_interval_seconds)
        executor.probe()  # it answers again: the delete goes through
        assert executor.actions.pending_deletes() == [] and dev.jobs() == []
        assert dev.emulator.pods == {}  # Background: its pods went with it
