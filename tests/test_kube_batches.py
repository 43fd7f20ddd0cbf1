"""Batches on Kubernetes: one Indexed Job per batch, each clip's outcome its index's.

The official client over HTTP against the emulator (tests/kube_emulator.py, whose
docstring names the upstream source of each Indexed Job behaviour relied on here), and
the pure parts (the index intervals, an index's status) against upstream's fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from algorithms.contract import ENV_BATCH
from orchestrator.domain.catalog import load_catalog
from orchestrator.domain.layout import upload_key
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.errors import ExecutorError
from orchestrator.executors.base import ExecState
from orchestrator.kube.executor import KubernetesExecutor, MemoryActionLog
from orchestrator.kube.jobs import COMPLETION_INDEX, POD_JOB_LABEL, build_batch_job
from orchestrator.kube.status import index_status, parse_indexes
from orchestrator.service import Runtime, drive, open_runtime
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store.models import AttemptState, RunStatus
from tests.kube_emulator import Emulator, _format_indexes, allowed
from tests.kube_fixtures import DEV, KUBERNETES_VERSION, PROD, launch_for
from tests.test_kube_cluster import PUBLIC_INFO, _role_rules
from tests.test_kube_cluster import _make as _make_cluster
from tests.test_kube_executor import Cluster, _kube_settings

NAMESPACE = "camflow-jobs"
JOBS = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
CATALOG = load_catalog([PROJECT_ROOT / "algorithms"], [PROJECT_ROOT / "pipelines"])
GOLDEN = Path(__file__).parent / "golden"


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing catches it."""


def _make(made: list[Cluster], tmp: Path, s3: EmbeddedS3, name: str, **kw: Any) -> Cluster:
    """A cluster of budget 1: every clip ready at once goes into one batch."""
    cluster = _make_cluster(made, tmp, s3, name, **kw)
    cluster.settings = cluster.settings.model_copy(update={"budget": 1})
    return cluster


def _upload(runtime: Runtime, prefix: str, cameras: list[str]) -> dict[str, str]:
    """Clips from ``cameras`` under ``prefix``, discovered together: camera -> run id."""
    keys = {camera: upload_key(prefix, camera, datetime.now(UTC)) for camera in cameras}
    for key in keys.values():
        runtime.s3.client.put_object(Bucket=runtime.settings.s3.ingest_bucket, Key=key, Body=b"x")
    runtime.watcher.tick()
    runtime.reconciler.plan_new_clips()
    runs = {}
    for camera, key in keys.items():
        [run] = runtime.store.runs_of_clip(runtime.store.find_clip(key).id)
        runs[camera] = run.id
    return runs


def _until(check: Callable[[], bool], timeout: float = 60, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(every)


def _creates(emulator: Emulator) -> int:
    return sum(1 for c in emulator.calls if (c.verb, c.resource) == ("create", "jobs"))


def _index_pods(emulator: Emulator, job: str, index: int) -> list[dict[str, Any]]:
    with emulator.lock:
        return [
            p
            for p in emulator.pods.values()
            if p["metadata"]["labels"]["batch.kubernetes.io/job-name"] == job
            and p["metadata"]["annotations"][COMPLETION_INDEX] == str(index)
        ]


# --- pure parts ---------------------------------------------------------------------------


def test_index_intervals_read_and_written_as_the_job_controller_does() -> None:
    # indexed_job_utils.go writes runs of three or more as a-b, two neighbours as a,b.
    assert _format_indexes({1, 3, 4, 5}) == "1,3-5"
    assert _format_indexes({3, 4}) == "3,4"
    assert _format_indexes({0, 2, 3, 7, 8, 9, 10}) == "0,2,3,7-10"
    assert _format_indexes(set()) == ""
    for indexes in ({1, 3, 4, 5}, {3, 4}, {0, 2, 3, 7, 8, 9, 10}, set()):
        assert parse_indexes(_format_indexes(indexes)) == indexes
    assert parse_indexes(None) == set()


def _pod(index: int, phase: str, failures: int = 0, **terminated: Any) -> dict[str, Any]:
    state = (
        {"terminated": terminated}
        if terminated
        else {"running": {"startedAt": "2026-01-01T00:00:01Z"}}
    )
    return {
        "metadata": {
            "name": f"j-{index}-{failures}",
            "creationTimestamp": f"2026-01-01T00:00:0{failures}Z",
            "annotations": {
                COMPLETION_INDEX: str(index),
                "batch.kubernetes.io/job-index-failure-count": str(failures),
            },
        },
        "status": {"phase": phase, "containerStatuses": [{"name": "stage", "state": state}]},
    }


def test_each_index_has_its_own_outcome_from_the_job_status_and_its_pods() -> None:
    done = {"startedAt": "2026-01-01T00:00:01Z", "finishedAt": "2026-01-01T00:00:04Z"}
    job = {
        "metadata": {"name": "j"},
        "status": {"completedIndexes": "0,2", "failedIndexes": "1", "active": 1},
    }
    pods = [
        _pod(0, "Succeeded", exitCode=0, **done),
        _pod(1, "Failed", exitCode=2, message="Traceback\nthe clip is empty", **done),
        _pod(2, "Failed", 0, exitCode=1, message="throttled", **done),
        _pod(2, "Succeeded", 1, exitCode=0, **done),
        _pod(3, "Running"),
    ]
    ok = index_status(job, pods, 0)
    assert (ok.state, ok.exit_code, ok.tries) == (ExecState.SUCCEEDED, 0, 1)
    assert ok.finished_at == datetime(2026, 1, 1, 0, 0, 4, tzinfo=UTC)
    bad = index_status(job, pods, 1)
    assert (bad.state, bad.exit_code, bad.reason, bad.exhausted, bad.tries) == (
        ExecState.FAILED,
        2,
        "the clip is empty",
        True,
        1,
    )
    flaky = index_status(job, pods, 2)  # retried alone, succeeded at its second pod
    assert (flaky.state, flaky.tries) == (ExecState.SUCCEEDED, 2)
    assert index_status(job, pods, 3).state == ExecState.RUNNING
    waiting = index_status(job, pods, 4)  # its turn has not come: no pod yet
    assert (waiting.state, waiting.started_at) == (ExecState.QUEUED, None)


def test_every_batch_job_is_valid_kubernetes_and_carries_its_clips_inline() -> None:
    faces = CATALOG.pipeline("faces")
    for stage, resolved in faces.stages.items():
        for accelerator in resolved.algorithm.accelerators:
            launches = [
                launch_for(faces, stage, accelerator).model_copy(
                    update={"attempt_id": f"r-{n}-{stage}-1", "run_id": f"r-{n}"}
                )
                for n in range(16)
            ]
            cluster = DEV if accelerator == "cpu" else PROD
            job = build_batch_job("b-0123456789abcdef", launches, cluster)
            kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
            spec = job["spec"]
            assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == (
                "Indexed",
                16,
                1,
            )
            assert spec["backoffLimitPerIndex"] == launches[0].retries
            assert "backoffLimit" not in spec and "maxFailedIndexes" not in spec
            assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailIndex"
            [container] = spec["template"]["spec"]["containers"]
            [items] = [e["value"] for e in container["env"] if e["name"] == ENV_BATCH]
            assert [item["env"] for item in json.loads(items)] == [la.env for la in launches]
            assert len(items) < 32_000  # 16 clips: far below the 128 KiB of one variable
            # A label all clips share stays; one they do not (the run) goes.
            labels = job["metadata"]["labels"]
            assert labels["camflow.io/stage"] == stage and "camflow.io/run" not in labels
    decode = launch_for(faces, "decode", "cpu")
    with pytest.raises(ValueError, match=r"lower the stage's batch\.max_size"):
        build_batch_job("b-x", [decode] * 400, DEV)  # some 220 KB


def test_a_representative_batch_job_matches_its_golden_yaml() -> None:
    faces = CATALOG.pipeline("faces")
    launches = [
        launch_for(faces, "decode", "cpu").model_copy(
            update={
                "attempt_id": f"r-fedcba987654321{n}-decode-1",
                "run_id": f"r-fedcba987654321{n}",
                "clip_id": f"c-0123456789abcde{n}",
                "env": {**launch_for(faces, "decode", "cpu").env, "CAMFLOW_RUN_ID": f"r-{n}"},
            }
        )
        for n in range(2)
    ]
    job = build_batch_job("b-0123456789abcdef", launches, DEV)
    path = GOLDEN / "job-decode-batch-cpu-dev.yaml"
    if os.environ.get("CAMFLOW_UPDATE_GOLDEN"):
        path.write_text(yaml.safe_dump(job, sort_keys=False))
    assert job == yaml.safe_load(path.read_text()), (
        f"{path.name} changed: review, then rerun with CAMFLOW_UPDATE_GOLDEN=1"
    )


STAGE = """
from algorithms.sdk import BadInput, run_stage

def main(ctx):
    if ctx.clip["camera"] == "bad":
        raise BadInput("camera bad: replace it")
    raise RuntimeError("S3 throttled " + ctx.clip["camera"])

run_stage(main)
"""


def _index_run(tmp: Path, index: str | None, reports: bool = False) -> tuple[int, str]:
    items = [
        {
            "env": {
                "CAMFLOW_INPUTS": "{}",
                "CAMFLOW_OUTPUT": f"s3://results/{camera}/",
                "CAMFLOW_RUN_ID": f"r-{camera}",
                "CAMFLOW_CLIP": json.dumps({"camera": camera}),
            },
            **({"report": str(tmp / f"{camera}.json")} if reports else {}),
        }
        for camera in ("flaky", "bad")
    ]
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp), ENV_BATCH: json.dumps(items)}
    if index is not None:
        env["JOB_COMPLETION_INDEX"] = index
    done = subprocess.run(
        [sys.executable, "-c", STAGE],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stderr.strip().splitlines()[-1]


def test_an_indexed_pod_runs_its_clip_of_the_batch_under_the_single_clip_contract(
    tmp_path: Path,
) -> None:
    # The pod's exit code is its clip's outcome: the Job fails or retries that index.
    assert _index_run(tmp_path, "1") == (2, "camera bad: replace it")
    assert _index_run(tmp_path, "0") == (1, "RuntimeError: S3 throttled flaky")
    code, line = _index_run(tmp_path, "2")
    assert (code, line) == (1, "JOB_COMPLETION_INDEX='2': not an item of this batch of 2")
    # Items with reports are a local batch: every clip runs, each reported.
    code, _line = _index_run(tmp_path, "1", reports=True)
    assert code == 0
    assert json.loads((tmp_path / "flaky.json").read_text())["exit_code"] == 1
    assert json.loads((tmp_path / "bad.json").read_text())["exit_code"] == 2


# --- the emulator follows upstream ---------------------------------------------------------


def test_the_api_refuses_per_index_limits_without_indexed_completion(
    made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    job = build_batch_job(
        "b-1", [launch_for(CATALOG.pipeline("faces"), "decode", "cpu")] * 2, dev.settings
    )
    job["spec"]["completionMode"] = "NonIndexed"
    code, body, _h = dev.emulator.handle("POST", JOBS, job)
    assert (code, body["reason"]) == (422, "Invalid")
    assert (
        "spec.backoffLimitPerIndex: Invalid value: 2: requires indexed completion mode"
        in (body["message"])
    )
    del job["spec"]["completionMode"], job["spec"]["backoffLimitPerIndex"]
    code, body, _h = dev.emulator.handle("POST", JOBS, job)
    assert (
        code == 422
        and (
            'spec.podFailurePolicy.rules[0].action: Invalid value: "FailIndex": requires the '
            "backoffLimitPerIndex to be set"
        )
        in body["message"]
    )
    job["spec"] |= {"completionMode": "Indexed", "backoffLimitPerIndex": 0}
    code, body, _h = dev.emulator.handle("POST", JOBS, job)
    assert code == 201
    # Defaulted as defaults.go does: backoffLimit never fails a per-index Job.
    assert (body["spec"]["backoffLimit"], body["spec"]["parallelism"]) == (2**31 - 1, 1)


def test_a_resubmitted_clip_finds_its_batch_job_and_a_clip_that_went_alone_its_own(
    tmp_path: Path,
) -> None:
    api = Emulator("dev", namespaces={NAMESPACE}).start()  # no controllers: Jobs just wait
    cluster = DEV.model_copy(
        update={"namespace": NAMESPACE, "kubeconfig": api.kubeconfig(tmp_path), "budget": 4}
    )
    executor = KubernetesExecutor([cluster])
    try:
        decode = launch_for(CATALOG.pipeline("faces"), "decode", "cpu")
        launches = [
            decode.model_copy(
                update={"attempt_id": f"r-{n}-decode-1", "batch": "b-1", "placement": "dev"}
            )
            for n in range(3)
        ]
        # Another pipeline's retries: it cannot share the Job, so it goes alone.
        launches[2] = launches[2].model_copy(update={"retries": 5})
        first = {a: s.handle for a, s in executor.submit(launches).items()}
        with api.lock:
            jobs = {name: job["spec"].get("completions") for (_ns, name), job in api.jobs.items()}
        assert len(jobs) == 2 and sorted(jobs.values()) == [1, 2]
        assert first["r-0-decode-1"].endswith("#0") and first["r-1-decode-1"].endswith("#1")
        assert "#" not in first["r-2-decode-1"]
        # The engine lost the handles (a crash) and resubmits each clip on its own.
        fresh = KubernetesExecutor([cluster])
        try:
            again = {
                launch.attempt_id: fresh.submit(
                    [launch.model_copy(update={"batch": None, "recorded_batch": "b-1"})]
                )[launch.attempt_id].handle
                for launch in launches
            }
        finally:
            fresh.close()
        assert again == first and len(api.jobs) == 2  # adopted, nothing created twice
    finally:
        executor.close()
        api.stop()


# --- through the engine --------------------------------------------------------------------


def test_a_batch_is_one_indexed_job_whose_clips_fail_and_retry_alone(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    rules = _role_rules()
    dev.emulator.rules = [*rules, PUBLIC_INFO]  # the batch path needs no more than the Role
    with open_runtime(_kube_settings(settings, [dev], probe=True)) as runtime:
        runs = _upload(runtime, "mixed", ["ok1", "bad", "flaky", "ok2"])
        drive(runtime, list(runs.values()), timeout=90, interval=0.1)
        attempts = {
            camera: runtime.store.attempts_of_run(run_id) for camera, run_id in runs.items()
        }
        # Each clip's outcome is its index's; the Job's own terminal condition comes once
        # every pod has stopped (1.31+), which may be a moment after the last index.
        _until(
            lambda: any(
                c["type"] == "Failed" for c in dev.jobs()[0]["status"].get("conditions", [])
            ),
            timeout=10,
        )
        [job] = dev.jobs()
        name = job["metadata"]["name"]
        assert _creates(dev.emulator) == 1  # four clips, one Job (a Job per clip before)
        batches = {a.batch for [a] in attempts.values()}
        assert len(batches) == 1 and None not in batches
        handles = {camera: a.handle for camera, [a] in attempts.items()}
        assert sorted(handles.values()) == [f"dev/{NAMESPACE}/{name}#{i}" for i in range(4)]

        bad_run = runtime.store.get_run(runs["bad"])
        assert bad_run.status == RunStatus.FAILED
        assert bad_run.error == (
            "stage keyed failed: camera bad sends clips that can never be processed: "
            "replace it (bad input, not retried)"
        )
        [bad] = attempts["bad"]
        assert (bad.exit_code, bad.permanent, bad.tries) == (2, True, 1)

        flaky_run = runtime.store.get_run(runs["flaky"])
        assert flaky_run.status == RunStatus.SUCCEEDED, flaky_run.error
        assert flaky_run.result["keyed"]["executions"] == 2  # type: ignore[index]
        [flaky] = attempts["flaky"]
        assert flaky.tries == 2 and flaky.attempt == 1  # the Job retried it, not the engine

        for camera in ("ok1", "ok2"):
            run = runtime.store.get_run(runs[camera])
            assert run.status == RunStatus.SUCCEEDED, run.error
            assert run.result["keyed"]["executions"] == 1  # type: ignore[index]
            assert attempts[camera][0].tries == 1

    index = {camera: int(h.rsplit("#", 1)[1]) for camera, h in handles.items() if h}
    # Only the flaky clip's index was run again; the bad one was not retried.
    pods = {camera: len(_index_pods(dev.emulator, name, i)) for camera, i in index.items()}
    assert pods == {"ok1": 1, "bad": 1, "flaky": 2, "ok2": 1}
    status = job["status"]
    assert parse_indexes(status["failedIndexes"]) == {index["bad"]}
    assert parse_indexes(status["completedIndexes"]) == {index[c] for c in ("ok1", "flaky", "ok2")}
    conditions = [(c["type"], c.get("reason")) for c in status["conditions"]]
    assert conditions == [("FailureTarget", "FailedIndexes"), ("Failed", "FailedIndexes")]
    assert all(allowed(rules, c) for c in dev.emulator.calls if c.resource)


def test_a_batch_job_whose_handles_were_never_recorded_is_adopted_clip_by_clip(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    kube = _kube_settings(settings, [dev], probe=True)
    first = open_runtime(kube)
    runs = _upload(first, "mixed", ["a", "b", "c"])
    original = first.store.update_attempts

    def crash(changes: Any) -> Any:
        if any(change.values.get("state") == AttemptState.RUNNING for change in changes):
            raise Crash  # the orchestrator dies between the create and the record
        return original(changes)

    first.store.update_attempts = crash  # type: ignore[method-assign]
    with pytest.raises(Crash):
        first.reconciler.tick()
    first.store.update_attempts = original  # type: ignore[method-assign]
    first.close()
    [job] = dev.jobs()
    with open_runtime(kube) as second:  # knows nothing of the Job but its batch id
        for run_id in runs.values():
            [attempt] = second.store.attempts_of_run(run_id)
            assert attempt.handle is None and attempt.batch
        drive(second, list(runs.values()), timeout=60, interval=0.1)
        for run_id in runs.values():
            assert second.store.get_run(run_id).status == RunStatus.SUCCEEDED
            [attempt] = second.store.attempts_of_run(run_id)
            assert (attempt.handle or "").startswith(f"dev/{NAMESPACE}/{job['metadata']['name']}#")
    assert len(dev.jobs()) == 1 and _creates(dev.emulator) == 1
    assert [len(_index_pods(dev.emulator, job["metadata"]["name"], i)) for i in range(3)] == [1] * 3


def test_a_gpu_batch_no_node_takes_moves_to_cpu_as_one_batch(
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
    with open_runtime(_kube_settings(settings, [prod], probe=True)) as runtime:
        runtime.registry.promote("probe", "1.0.0")
        runs = _upload(runtime, "gpu", ["c1", "c2", "c3"])
        runtime.reconciler.tick()
        [gpu_job] = prod.jobs()
        assert gpu_job["metadata"]["name"].endswith("-gpu")
        assert gpu_job["spec"]["completions"] == 3
        drive(runtime, list(runs.values()), timeout=60, interval=0.1)
        for run_id in runs.values():
            run = runtime.store.get_run(run_id)
            assert run.status == RunStatus.SUCCEEDED, run.error
            assert run.result["probe"]["accelerator"] == "cpu"  # type: ignore[index]
            [attempt] = runtime.store.attempts_of_run(run_id)
            assert (attempt.accelerator, attempt.placement, attempt.attempt) == ("cpu", "prod", 1)
    # The GPU batch Job was deleted (its pod with it) before one CPU batch Job replaced it.
    [job] = prod.jobs()
    name = job["metadata"]["name"]
    assert name == gpu_job["metadata"]["name"].removesuffix("-gpu")
    assert job["spec"]["completions"] == 3 and prod.runner.runs == {name: 3}
    assert _creates(prod.emulator) == 2


def test_a_batch_job_is_deleted_once_every_clip_it_has_left_is_cancelled(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    with open_runtime(_kube_settings(settings, [dev], probe=True)) as runtime:
        runs = _upload(runtime, "mixed", ["hang1", "hang2"])
        runtime.reconciler.tick()
        handles = [runtime.store.attempts_of_run(r)[0].handle or "" for r in runs.values()]
        executor = runtime.executor
        assert isinstance(executor, KubernetesExecutor)
        _until(lambda: bool(dev.runner.runs))
        executor.cancel([handles[0]])  # one clip of two: it cannot be stopped alone
        executor.capacity()
        assert len(dev.jobs()) == 1 and executor.actions.pending_deletes() == [handles[0]]
        executor.cancel([handles[1]])  # nothing of the Job is wanted any more
        assert dev.jobs() == [] and executor.actions.pending_deletes() == []
        with dev.emulator.lock:
            assert dev.emulator.pods == {}  # Background: its pods went with it


def test_a_clip_of_a_batch_stuck_after_another_ran_fails_with_the_kubelet_reason(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    # Each index is watched for a stuck pod, not only while the first has not begun.
    dev = _make(made, tmp_path, s3_server, "dev")
    with open_runtime(_kube_settings(settings, [dev], probe=True)) as runtime:
        runs = _upload(runtime, "ok", ["c1", "c2", "c3"])
        runtime.reconciler.tick()
        [job] = dev.jobs()
        name = job["metadata"]["name"]
        assert job["spec"]["completions"] == 3
        _until(lambda: bool(dev.runner.runs))  # index 0 has started: its env is made
        with dev.emulator.lock:
            dev.emulator.secrets.clear()  # the next index's container cannot be created
        drive(runtime, list(runs.values()), timeout=30, interval=0.1)
        handles = {
            runtime.store.attempts_of_run(run_id)[0].handle or "": run_id
            for run_id in runs.values()
        }
        outcome = {h.rsplit("#", 1)[1]: runtime.store.get_run(r) for h, r in handles.items()}
        assert outcome["0"].status == RunStatus.SUCCEEDED, outcome["0"].error
        for index in ("1", "2"):  # the one stuck, and the one behind it that never began
            assert outcome[index].status == RunStatus.FAILED
            assert outcome[index].error == (
                "stage probe failed after 1 attempt: its container cannot be created "
                f'(CreateContainerConfigError: secret "{name}" not found): check the '
                "Secrets and ConfigMaps it uses"
            )
    _until(lambda: not dev.jobs(), timeout=5)  # deleted: nothing of it is left to run
    assert dev.runner.runs == {name: 1}


def test_a_clip_of_a_gpu_batch_no_node_takes_after_another_ran_moves_to_cpu(
    settings: Settings, made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    prod = _make(made, tmp_path, s3_server, "prod", environment="prod", gpu=True)
    with open_runtime(_kube_settings(settings, [prod], probe=True)) as runtime:
        runtime.registry.promote("probe", "1.0.0")
        runs = _upload(runtime, "gpu", ["c1", "c2", "c3"])
        runtime.reconciler.tick()
        [gpu_job] = prod.jobs()
        gpu_name = gpu_job["metadata"]["name"]
        assert gpu_name.endswith("-gpu") and gpu_job["spec"]["completions"] == 3
        _until(lambda: bool(prod.runner.runs))  # index 0 runs on the GPU node
        with prod.emulator.lock:  # which is then scaled away
            prod.emulator.nodes = [n for n in prod.emulator.nodes if "gpu" not in str(n)]
        drive(runtime, list(runs.values()), timeout=60, interval=0.1)
        accelerators = []
        for run_id in runs.values():
            run = runtime.store.get_run(run_id)
            assert run.status == RunStatus.SUCCEEDED, run.error
            accelerators.append(run.result["probe"]["accelerator"])  # type: ignore[index]
            [attempt] = runtime.store.attempts_of_run(run_id)
            assert attempt.attempt == 1
        assert sorted(accelerators) == ["cpu", "cpu", "gpu"]
    # The two clips it never ran went back to CPU together, as one batch Job of two.
    [cpu_job] = prod.jobs()
    cpu_name = cpu_job["metadata"]["name"]
    assert cpu_name == gpu_name.removesuffix("-gpu") and cpu_job["spec"]["completions"] == 2
    assert prod.runner.runs == {gpu_name: 1, cpu_name: 2}


def test_after_a_restart_a_clip_given_back_for_cpu_waits_for_its_gpu_batch_job(
    tmp_path: Path,
) -> None:
    api = Emulator("prod", namespaces={NAMESPACE}).start()  # no controllers: Jobs just wait
    cluster = PROD.model_copy(
        update={"namespace": NAMESPACE, "kubeconfig": api.kubeconfig(tmp_path)}
    )
    actions = MemoryActionLog()
    executor = KubernetesExecutor([cluster], actions=actions)
    fresh = KubernetesExecutor([cluster], actions=actions)  # the orchestrator restarted
    try:
        faces = launch_for(CATALOG.pipeline("faces"), "faces", "gpu")
        launches = [
            faces.model_copy(
                update={"attempt_id": f"r-{n}-faces-1", "batch": "b-1", "placement": "prod"}
            )
            for n in range(2)
        ]
        executor.submit(launches)
        [gpu] = [name for (_ns, name) in api.jobs]
        assert gpu.endswith("-gpu")
        # Its first clip's pod started just before the batch was given back for CPU.
        pod = {
            "metadata": {
                "name": f"{gpu}-0-abcde",
                "labels": {POD_JOB_LABEL: gpu},
                "annotations": {COMPLETION_INDEX: "0"},
            },
            "status": {"phase": "Running"},
        }
        with api.lock:
            api.pods[(NAMESPACE, pod["metadata"]["name"])] = api.stamp(pod, NAMESPACE)
        actions.add_deletes([f"prod/{NAMESPACE}/{gpu}"])  # decided, in the store
        api.inject("DELETE", gpu, status=403, times=1)  # and not done yet
        cpu = launches[0].model_copy(
            update={"batch": None, "recorded_batch": "b-1", "accelerator": "cpu"}
        )
        with pytest.raises(ExecutorError, match=f"waiting for prod/{NAMESPACE}/{gpu} to be"):
            fresh.submit([cpu])
        assert list(api.jobs) == [(NAMESPACE, gpu)]
        # Deleted now, but its pod goes in the background and still runs the clip.
        with pytest.raises(ExecutorError, match=f"waiting for 1 pod.s. of {gpu} to stop"):
            fresh.submit([cpu])
        assert api.jobs == {} and actions.pending_deletes() == []
        with api.lock:
            api.pods[(NAMESPACE, pod["metadata"]["name"])]["status"]["phase"] = "Failed"
        fresh.submit([cpu])  # gone: the clip starts on CPU, once
        assert [name for (_ns, name) in api.jobs] != [gpu] and len(api.jobs) == 1
    finally:
        executor.close()
        fresh.close()
        api.stop()


def test_a_clip_resubmitted_alone_takes_its_batch_name_so_a_late_batch_create_runs_nothing(
    tmp_path: Path,
) -> None:
    api = Emulator("dev", namespaces={NAMESPACE}).start()  # no controllers: Jobs just wait
    cluster = DEV.model_copy(
        update={"namespace": NAMESPACE, "kubeconfig": api.kubeconfig(tmp_path), "budget": 4}
    )
    fresh = KubernetesExecutor([cluster])  # the orchestrator, restarted after the create
    try:
        decode = launch_for(CATALOG.pipeline("faces"), "decode", "cpu")
        launches = [
            decode.model_copy(
                update={"attempt_id": f"r-{n}-decode-1", "batch": "b-2", "placement": "dev"}
            )
            for n in range(3)
        ]
        # The batch's create got no answer, and the API server has not applied it yet.
        late = build_batch_job("b-2", launches, cluster)
        name = late["metadata"]["name"]

        def resubmit(n: int) -> str:
            launch = launches[n].model_copy(update={"batch": None, "recorded_batch": "b-2"})
            return fresh.submit([launch])[launch.attempt_id].handle

        assert resubmit(0) == f"dev/{NAMESPACE}/{name}"  # alone, under the batch's name
        code, _body, _h = api.handle("POST", JOBS, late)  # applied now, too late
        assert code == 409
        alone = resubmit(1)  # the batch's Job does not hold it: it never ran there
        assert alone != f"dev/{NAMESPACE}/{name}" and "#" not in alone
        assert resubmit(0) == f"dev/{NAMESPACE}/{name}"  # found again, not made twice
        with api.lock:
            holders = {
                job["metadata"]["annotations"].get("camflow.io/attempt-id")
                for job in api.jobs.values()
            }
        assert holders == {"r-0-decode-1", "r-1-decode-1"}  # each in one Job, once
        # A batch of one is a lone Job under its batch's name, found there by name.
        one = launches[2].model_copy(update={"batch": "b-3"})
        first = fresh.submit([one])[one.attempt_id].handle
        again = fresh.submit([one.model_copy(update={"batch": None, "recorded_batch": "b-3"})])
        assert again[one.attempt_id].handle == first and "#" not in first
    finally:
        fresh.close()
        api.stop()


def test_a_job_whose_clips_ended_before_it_completed_gives_its_budget_back(
    settings: Settings,
    made: list[Cluster],
    tmp_path: Path,
    s3_server: EmbeddedS3,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Since 1.31 a Job is Complete only once its pods have stopped, a moment after its
    # last index succeeded (SuccessCriteriaMet). An engine that saw every clip end in
    # that moment stopped looking at the Job, and with a budget of one Job it waited for
    # ever for that Job to finish: the next stage never started.
    from tests import kube_emulator

    complete = threading.Event()
    condition = kube_emulator.JobRunner._condition

    def held(runner: Any, job: dict[str, Any], kind: str, *args: Any) -> None:
        if kind == "Complete" and not complete.is_set():
            return  # its pods are still stopping
        condition(runner, job, kind, *args)

    monkeypatch.setattr(kube_emulator.JobRunner, "_condition", held)
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "two.yaml").write_text(
        "name: two\ntrigger: {prefix: two/, suffix: .mp4}\nstages:\n"
        "  - {name: first, algorithm: probe@1.0.0, params: {mode: ok}, fuse: false}\n"
        "  - {name: second, algorithm: probe@1.0.0, params: {mode: ok}, needs: [first]}\n"
    )
    dev = _make(made, tmp_path, s3_server, "dev")
    kube = _kube_settings(settings, [dev], probe=True).model_copy(
        update={"pipeline_dirs": [pipelines]}
    )
    with open_runtime(kube) as runtime:
        # Two clips: one Indexed Job, whose clips end with their indexes.
        runs = list(_upload(runtime, "two", ["cam1", "cam2"]).values())

        def attempts() -> list[Any]:
            return [a for run_id in runs for a in runtime.store.attempts_of_run(run_id)]

        def first_ended() -> bool:
            runtime.reconciler.tick()
            return all(a.state == AttemptState.SUCCEEDED for a in attempts())

        _until(first_ended, timeout=60, every=0.1)
        [job] = dev.jobs()
        assert job["spec"]["completionMode"] == "Indexed"
        for _ in range(3):  # nothing runs: the engine has no clip of that Job to poll
            runtime.reconciler.tick()
        assert {a.stage for a in attempts()} == {"first"}  # the Job holds the budget
        complete.set()
        drive(runtime, runs, timeout=30, interval=0.1)
        assert {runtime.store.get_run(run_id).status for run_id in runs} == {RunStatus.SUCCEEDED}
