"""Fused stages on Kubernetes: one Indexed Job whose pod runs a clip's chain of stages in
order (an init container per member, the last the main container, an emptyDir shared
for the hand-off), each member answered from its own container's status.

The pure parts against the fields upstream writes (pkg/kubelet/status/generate.go,
test/e2e/common/node/init_container.go for a failed init container of a restartPolicy
Never pod), and the executor over HTTP against the emulator, whose kubelet runs init
containers as the real one does (tests/kube_emulator.py names the sources)."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from algorithms.contract import ENV_BATCH, ENV_HANDOFF_DIR
from orchestrator.domain.catalog import load_catalog
from orchestrator.domain.layout import upload_key
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.executors.base import ExecState, ExecStatus, StageLaunch
from orchestrator.kube.executor import KubernetesExecutor
from orchestrator.kube.jobs import (
    ANNOTATION_CHAIN,
    HANDOFF,
    batch_job_name,
    build_chain_job,
    clip_envs,
    job_name,
    with_own_credentials,
)
from orchestrator.kube.status import chain_of, member_status
from orchestrator.service import drive, open_runtime
from orchestrator.settings import PROJECT_ROOT, Settings
from orchestrator.store.models import AttemptState, RunStatus
from tests.conftest import SampleClips
from tests.kube_emulator import JobRunner
from tests.kube_fixtures import DEV, KUBERNETES_VERSION, PROD, launch_for
from tests.test_kube_cluster import _make
from tests.test_kube_executor import Cluster, _kube_settings

CATALOG = load_catalog([PROJECT_ROOT / "algorithms"], [PROJECT_ROOT / "pipelines"])
FACES = ("decode", "faces", "thumbnails", "publish")


def _chain(
    clip: str, batch: str | None = "b-chain", stages: tuple[str, ...] = FACES
) -> StageLaunch:
    """A clip's chain of the faces pipeline's stages on CPU, each member its own attempt."""
    members = [
        launch_for(CATALOG.pipeline("faces"), stage, "cpu").model_copy(
            update={"attempt_id": f"a-{clip}-{stage}", "run_id": f"r-{clip}"}
        )
        for stage in stages
    ]
    members = [
        m.model_copy(update={"env": {**m.env, "CAMFLOW_RUN_ID": f"r-{clip}"}}) for m in members
    ]
    return members[0].model_copy(update={"chain": members[1:], "batch": batch})


def _until(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


# --- the Job ------------------------------------------------------------------------------


def test_a_chain_job_runs_each_member_in_its_own_container_in_order() -> None:
    chains = [_chain("c1"), _chain("c2")]
    job = build_chain_job(chains, DEV)
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    names = [c["name"] for c in [*pod["initContainers"], *pod["containers"]]]
    assert names == ["stage-0", "stage-1", "stage-2", "stage"]
    assert json.loads(job["metadata"]["annotations"][ANNOTATION_CHAIN]) == [
        {"stage": s, "container": n, "accelerator": "cpu"}
        for s, n in zip(FACES, names, strict=True)
    ]
    assert (job["spec"]["completionMode"], job["spec"]["completions"]) == ("Indexed", 2)
    assert job["metadata"]["name"] == batch_job_name("b-chain", "decode", "cpu")
    # Labelled with every stage it runs, and none as if it ran one stage.
    job_labels = job["metadata"]["labels"]
    assert job_labels["camflow.io/stages"] == "decode.faces.thumbnails.publish"
    assert "camflow.io/stage" not in job_labels and "camflow.io/algorithm" not in job_labels
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == (
        "camflow-stage"  # what the stage NetworkPolicy selects
    )
    # Each container: its member's image and command, its member's variables for every
    # clip (by index), and the hand-off folder every container of the pod mounts.
    for position, container in enumerate([*pod["initContainers"], *pod["containers"]]):
        member = chains[0].members[position]
        assert (container["image"], container["command"]) == (member.image, member.command)
        env = {e["name"]: e.get("value") for e in container["env"]}
        items = json.loads(env[ENV_BATCH])
        assert [i["env"]["CAMFLOW_STAGE"] for i in items] == [FACES[position]] * 2
        assert [i["env"]["CAMFLOW_RUN_ID"] for i in items] == ["r-c1", "r-c2"]
        assert env[ENV_HANDOFF_DIR] == HANDOFF
        assert {"name": "handoff", "mountPath": HANDOFF} in container["volumeMounts"]
    assert {"name": "handoff", "emptyDir": {"sizeLimit": DEV.scratch_size}} in pod["volumes"]
    # The pod may run every member to its timeout; exit 2 of any member fails the index.
    assert pod["activeDeadlineSeconds"] == sum(m.timeout_seconds for m in chains[0].members)
    [bad_input, _disruption] = job["spec"]["podFailurePolicy"]["rules"]
    assert bad_input["action"] == "FailIndex" and "containerName" not in bad_input["onExitCodes"]
    # Credentials by reference in every container, for every member's prefixes.
    own = with_own_credentials(job, session_token=False)
    for container in [*own["spec"]["template"]["spec"]["initContainers"], pod["containers"][0]]:
        refs = [e for e in container["env"] if "valueFrom" in e]
        assert refs, container["name"]
    assert len(clip_envs(job)) == 8  # four stages of two clips


def test_a_gpu_chain_holds_one_gpu_for_its_pod_and_is_valid_kubernetes() -> None:
    members = [m.model_copy(update={"accelerator": "gpu"}) for m in _chain("g").members]
    chain = members[0].model_copy(update={"chain": members[1:]})
    job = build_chain_job([chain], PROD)
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    # Each member's container asks for the GPU; init containers run one at a time, so
    # the pod holds one (its effective request is the largest of theirs).
    for container in [*pod["initContainers"], *pod["containers"]]:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert JobRunner._gpus(pod) == 1  # the emulator's scheduler counts it so (PodRequests)
    two_apps = {"containers": [pod["containers"][0]] * 2}
    assert JobRunner._gpus(two_apps) == 2  # app containers run side by side: their sum
    assert job["metadata"]["name"].endswith("-gpu")


def test_cpu_stages_that_joined_a_gpu_chain_run_in_its_pod_without_a_gpu() -> None:
    """faces on a GPU with thumbnails and publish joined (placement.join_gpu): one Job
    on a GPU node, the GPU asked for by faces' container only, the others on CPU."""
    members = _chain("j", stages=("faces", "thumbnails", "publish")).members
    members[0] = members[0].model_copy(update={"accelerator": "gpu"})
    chain = members[0].model_copy(update={"chain": members[1:]})
    job = build_chain_job([chain], PROD)
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    faces, thumbnails = pod["initContainers"]
    [publish] = pod["containers"]
    assert faces["resources"]["limits"]["nvidia.com/gpu"] == 1
    for container, stage in ((thumbnails, "thumbnails"), (publish, "publish")):
        assert "nvidia.com/gpu" not in container["resources"]["limits"]
        # Its own image, the CPU one: the stage's code, not faces'.
        assert container["image"] == launch_for(CATALOG.pipeline("faces"), stage, "cpu").image
    # The pod goes to a GPU node (faces' container needs it), and holds one GPU.
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert JobRunner._gpus(pod) == 1
    assert job["metadata"]["name"].endswith("-gpu")


def test_chains_of_other_stages_are_never_one_job() -> None:
    with pytest.raises(ValueError, match="chains of other stages"):
        build_chain_job([_chain("c1"), _chain("c2", stages=("decode", "faces"))], DEV)


# --- each member's status, from the fields the kubelet writes -------------------------------


def _terminated(name: str, code: int, started: str, finished: str, message: str = "") -> dict:  # type: ignore[type-arg]
    state: dict[str, Any] = {
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "startedAt": started,
        "finishedAt": finished,
    }
    if message:
        state["message"] = message
    return {"name": name, "ready": code == 0, "state": {"terminated": state}}


def _waiting(name: str) -> dict:  # type: ignore[type-arg]
    return {"name": name, "ready": False, "state": {"waiting": {"reason": "PodInitializing"}}}


def _pod(index: int, phase: str, inits: list[dict], main: dict) -> dict:  # type: ignore[type-arg]
    return {
        "metadata": {
            "name": f"job-{index}-x",
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "annotations": {
                "batch.kubernetes.io/job-completion-index": str(index),
                "batch.kubernetes.io/job-index-failure-count": "0",
            },
        },
        "status": {"phase": phase, "initContainerStatuses": inits, "containerStatuses": [main]},
    }


def test_each_member_is_answered_from_its_own_container() -> None:
    job = build_chain_job([_chain("c1"), _chain("c2")], DEV)
    # Index 0 failed at its second member with bad input (the shape of upstream's e2e
    # test of a failed init container in a restartPolicy Never pod); index 1 runs its
    # third member.
    failed = _pod(
        0,
        "Failed",
        [
            _terminated("stage-0", 0, "2026-12-01T10:00:01Z", "2026-12-01T10:00:03Z"),
            _terminated(
                "stage-1", 2, "2026-12-01T10:00:04Z", "2026-12-01T10:00:05Z", "log\nno frames"
            ),
            _waiting("stage-2"),
        ],
        _waiting("stage"),
    )
    running = _pod(
        1,
        "Pending",  # the kubelet's phase while init containers run
        [
            _terminated("stage-0", 0, "2026-12-01T10:00:06Z", "2026-12-01T10:00:07Z"),
            _terminated("stage-1", 0, "2026-12-01T10:00:08Z", "2026-12-01T10:00:09Z"),
            {
                "name": "stage-2",
                "ready": False,
                "state": {"running": {"startedAt": "2026-12-01T10:00:10Z"}},
            },
        ],
        _waiting("stage"),
    )
    job["status"] = {"failedIndexes": "0", "completedIndexes": ""}
    pods = [failed, running]

    def state(index: int, position: int) -> tuple[Any, ...]:
        s = member_status(job, pods, index, position, 600)
        return s.state, s.exit_code, s.reason

    assert state(0, 0) == (ExecState.SUCCEEDED, 0, None)
    assert state(0, 1) == (ExecState.FAILED, 2, "no frames")
    assert state(0, 2) == (ExecState.SKIPPED, None, "not run: stage faces failed before it")
    assert state(0, 3) == (ExecState.SKIPPED, None, "not run: stage faces failed before it")
    assert [state(1, p)[0] for p in range(4)] == [
        ExecState.SUCCEEDED,
        ExecState.SUCCEEDED,
        ExecState.RUNNING,
        ExecState.QUEUED,
    ]
    first = member_status(job, pods, 1, 0)
    assert (first.started_at.second, first.finished_at.second) == (6, 7)  # type: ignore[union-attr]
    assert member_status(job, pods, 0, 1).exhausted


# --- through the executor, on the emulator --------------------------------------------------

#: A member: writes its clip into the hand-off folder (the first), checks that the
#: earlier member's file is there (the others), and fails with bad input where its
#: clip and stage say so.
MEMBER = """
import json, os, sys, time
item = json.loads(os.environ["CAMFLOW_BATCH"])[int(os.environ["JOB_COMPLETION_INDEX"])]
env = item["env"]
clip, stage = env["CAMFLOW_RUN_ID"], env["CAMFLOW_STAGE"]
folder = os.environ["CAMFLOW_HANDOFF_DIR"]
time.sleep(0.2)
if stage == "decode":
    open(os.path.join(folder, "frames"), "w").write(clip)
else:
    got = open(os.path.join(folder, "frames")).read()
    if got != clip:
        sys.exit(f"hand-off holds {got!r}, not {clip!r}")
if clip == "r-bad" and stage == "faces":
    print("the clip holds no frames", file=sys.stderr)
    sys.exit(2)
print(f"{stage} of {clip} done")
manifest = {"stage": stage, "outputs": {}, "metrics": {"clip": clip}}
open(os.environ["CAMFLOW_MANIFEST_MESSAGE"], "w").write(json.dumps(manifest))
"""


def _scripted(chain: StageLaunch) -> StageLaunch:
    members = [
        m.model_copy(update={"command": ["python", "-c", MEMBER], "placement": "dev"})
        for m in chain.members
    ]
    return members[0].model_copy(update={"chain": members[1:]})


def test_a_batch_of_chains_is_one_job_and_a_bad_clip_fails_alone(
    made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    settings = dev.settings.model_copy(update={"s3_secret": None, "budget": 1})
    executor = KubernetesExecutor([settings])
    chains = [_scripted(_chain(clip)) for clip in ("ok1", "bad", "ok2")]
    submitted = executor.submit(chains)
    members = {m.attempt_id: m for chain in chains for m in chain.members}
    assert set(submitted) == set(members)  # a handle for every member
    [job] = dev.jobs()
    name = job["metadata"]["name"]
    assert submitted["a-bad-faces"].handle == f"dev/camflow-jobs/{name}#1@1"
    assert submitted["a-bad-decode"].handle == f"dev/camflow-jobs/{name}#1"
    handles = {attempt: s.handle for attempt, s in submitted.items()}

    def final() -> bool:
        states = executor.poll(list(handles.values()))
        return all(
            s.state in (ExecState.SUCCEEDED, ExecState.FAILED, ExecState.SKIPPED)
            for s in states.values()
        )

    _until(final, timeout=90)
    states = executor.poll(list(handles.values()))
    by_attempt = {attempt: states[handle] for attempt, handle in handles.items()}
    for clip in ("ok1", "ok2"):
        got = [by_attempt[f"a-{clip}-{stage}"] for stage in FACES]
        assert [s.state for s in got] == [ExecState.SUCCEEDED] * 4, [s.reason for s in got]
        # In order, one after another, each with its own times.
        for before, after in itertools.pairwise(got):
            assert before.finished_at <= after.started_at  # type: ignore[operator]
        # Each member's manifest comes back in its container's termination message.
        assert [s.manifest["metrics"]["clip"] for s in got] == [f"r-{clip}"] * 4  # type: ignore[index]
    bad = [by_attempt[f"a-bad-{stage}"] for stage in FACES]
    assert [s.state for s in bad] == [
        ExecState.SUCCEEDED,
        ExecState.FAILED,
        ExecState.SKIPPED,
        ExecState.SKIPPED,
    ]
    assert (bad[1].exit_code, bad[1].reason, bad[1].exhausted) == (
        2,
        "the clip holds no frames",
        True,
    )
    assert bad[2].reason == "not run: stage faces failed before it"
    # One Job for three clips of four stages; the bad clip's pod ran two containers.
    creates = [c for c in dev.emulator.calls if (c.verb, c.resource) == ("create", "jobs")]
    assert len(creates) == 1
    with dev.emulator.lock:
        [bad_pod] = [
            p
            for p in dev.emulator.pods.values()
            if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == "1"
        ]
        status = bad_pod["status"]
    assert status["phase"] == "Failed"
    initialized = next(c for c in status["conditions"] if c["type"] == "Initialized")
    assert (initialized["status"], initialized["reason"], initialized["message"]) == (
        "False",
        "ContainersNotInitialized",
        "containers with incomplete status: [stage-1 stage-2]",
    )
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    executor.close()


def test_a_chain_resubmitted_alone_is_found_in_its_batch_job_or_takes_its_name(
    made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    settings = dev.settings.model_copy(update={"s3_secret": None})
    executor = KubernetesExecutor([settings])
    chains = [_scripted(_chain(clip)) for clip in ("ok1", "ok2")]
    first = executor.submit(chains)

    def alone(chain: StageLaunch, batch: str) -> StageLaunch:
        members = [
            m.model_copy(update={"batch": None, "recorded_batch": batch}) for m in chain.members
        ]
        return members[0].model_copy(update={"chain": members[1:]})

    # The engine stopped before recording the handles: the same handles, nothing made.
    again = executor.submit([alone(chains[1], "b-chain")])
    assert again == {k: v for k, v in first.items() if k.startswith("a-ok2-")}
    assert len(dev.jobs()) == 1
    # A batch whose create never happened: the chain takes the batch's name, so that a
    # late create of the batch finds it (409) and runs nothing twice.
    lost = [_scripted(_chain(clip, batch="b-lost")) for clip in ("ok3", "ok4")]
    mine = executor.submit([alone(lost[0], "b-lost")])
    reserved = f"dev/camflow-jobs/{batch_job_name('b-lost', 'decode', 'cpu')}#0"
    assert mine["a-ok3-decode"].handle == reserved
    # The batch's create, applied late, finds the name taken: the other chain goes alone.
    late = executor.submit([alone(lost[1], "b-lost")])
    assert late["a-ok4-decode"].handle == f"dev/camflow-jobs/{job_name(lost[1])}#0"
    assert late["a-ok4-publish"].handle == f"dev/camflow-jobs/{job_name(lost[1])}#0@3"
    assert len(dev.jobs()) == 3
    executor.close()


# --- the faces pipeline, through the engine -----------------------------------------------


@pytest.mark.slow
def test_the_faces_pipeline_runs_fused_in_one_job_and_a_bad_clip_fails_alone(
    settings: Settings,
    made: list[Cluster],
    tmp_path: Path,
    s3_server: EmbeddedS3,
    clips: SampleClips,
) -> None:
    if not KubernetesExecutor.fuses:
        pytest.skip(
            "fused stages on Kubernetes wait for the SDK to leave each stage's manifest in "
            "its termination message (contract.ENV_MANIFEST_MESSAGE)"
        )
    dev = _make(made, tmp_path, s3_server, "dev")
    # A budget of one Job: every clip ready at once goes into one batch.
    dev.settings = dev.settings.model_copy(update={"budget": 1})
    kube = _kube_settings(settings, [dev], probe=False)
    kube = kube.model_copy(update={"engine": kube.engine.model_copy(update={"batch_max_size": 16})})
    files = {"face": clips.face, "noface": clips.no_face, "broken": clips.truncated}
    with open_runtime(kube) as runtime:
        keys = {}
        for camera, path in files.items():
            keys[camera] = upload_key("acme", camera, datetime.now(UTC))
            runtime.s3.upload_file(path, kube.s3.ingest_bucket, keys[camera])
        runtime.watcher.tick()
        runtime.reconciler.plan_new_clips()
        runs = {
            camera: runtime.store.runs_of_clip(runtime.store.find_clip(key).id)[0].id
            for camera, key in keys.items()
        }
        drive(runtime, list(runs.values()), timeout=300, interval=0.2)
        attempts = {
            camera: {a.stage: a for a in runtime.store.attempts_of_run(run_id)}
            for camera, run_id in runs.items()
        }
        for camera in ("face", "noface"):
            run = runtime.store.get_run(runs[camera])
            assert run.status == RunStatus.SUCCEEDED, run.error
            assert {s: a.state for s, a in attempts[camera].items()} == {
                s: AttemptState.SUCCEEDED for s in FACES
            }
        face = runtime.store.get_run(runs["face"]).result
        assert face["summary"]["labels"]["face"] >= 12  # type: ignore[index]
        broken = attempts["broken"]
        assert (broken["decode"].state, broken["decode"].exit_code) == (AttemptState.FAILED, 2)
        assert {s: broken[s].state for s in FACES[1:]} == {
            s: AttemptState.SKIPPED for s in FACES[1:]
        }
        assert runtime.store.get_run(runs["broken"]).status == RunStatus.FAILED
        listed = runtime.s3.client.list_objects_v2(Bucket=kube.s3.results_bucket)
        stored = [o["Key"] for o in listed.get("Contents", [])]
    # Three clips of four stages: one Job and its credentials, the pods one per clip.
    writes = [c for c in dev.emulator.calls if c.verb in ("create", "update", "patch", "delete")]
    assert sorted(f"{c.verb} {c.resource}" for c in writes) == ["create jobs", "create secrets"]
    [job] = dev.jobs()
    assert job["spec"]["completions"] == 3 and chain_of(job)
    # What decode and faces handed over stayed in the pod; the later stages' went to S3.
    assert not [k for k in stored if "/faces/decode/" in k or "/faces/faces/" in k]
    assert [k for k in stored if "/faces/thumbnails/" in k]


def test_a_gpu_chain_no_node_takes_gives_its_first_stage_back_for_cpu_and_skips_the_rest(
    made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
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
    executor = KubernetesExecutor([prod.settings.model_copy(update={"s3_secret": None})])

    def on_gpu(chain: StageLaunch) -> StageLaunch:
        update = {
            "accelerator": "gpu",
            "placement": "prod",
            "channel": "stable",
            "queued_fallback": "cpu",
            "fallback_after_seconds": 0,
        }
        members = [m.model_copy(update=update) for m in chain.members]
        return members[0].model_copy(update={"chain": members[1:]})

    chains = [on_gpu(_scripted(_chain(c, stages=("decode", "faces")))) for c in ("g1", "g2")]
    submitted = executor.submit(chains)
    [gpu_job] = prod.jobs()
    assert gpu_job["metadata"]["name"].endswith("-gpu")
    handles = {attempt: s.handle for attempt, s in submitted.items()}

    def given_back() -> bool:
        states = executor.poll(list(handles.values()))
        return all(states[handles[f"a-{c}-decode"]].requeue == "cpu" for c in ("g1", "g2"))

    _until(given_back, timeout=30)
    states = executor.poll(list(handles.values()))
    for clip in ("g1", "g2"):
        first, later = states[handles[f"a-{clip}-decode"]], states[handles[f"a-{clip}-faces"]]
        assert first.state == ExecState.QUEUED
        assert later.state == ExecState.SKIPPED
        assert later.reason.startswith("not run: stage decode was given back before it")  # type: ignore[union-attr]
    _until(lambda: not prod.jobs(), timeout=30)  # deleted before anything runs on CPU
    # Back on CPU, the first stage comes alone (the engine starts the skipped one later):
    # its Job takes the batch's CPU name, so that nothing of the batch runs twice.
    back = chains[0].model_copy(
        update={"accelerator": "cpu", "batch": None, "recorded_batch": "b-chain", "chain": []}
    )
    [again] = executor.submit([back]).values()
    assert again.handle == f"prod/camflow-jobs/{batch_job_name('b-chain', 'decode', 'cpu')}"
    assert gpu_job["metadata"]["name"] not in prod.runner.runs  # it never ran a container
    executor.close()


def test_a_later_stage_whose_image_cannot_be_pulled_fails_with_the_kubelet_reason(
    made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    executor = KubernetesExecutor([dev.settings.model_copy(update={"s3_secret": None})])
    stages = ("decode", "faces", "thumbnails")
    chains = [_scripted(_chain(clip, stages=stages)) for clip in ("p1", "p2")]
    image = chains[0].members[2].image
    dev.emulator.unpullable.add(image)
    handles = {a: s.handle for a, s in executor.submit(chains).items()}

    def told() -> dict[str, ExecStatus]:
        states = executor.poll(list(handles.values()))
        return {attempt: states[handle] for attempt, handle in handles.items()}

    # The first clip's pod ran two stages, then waits on the third's image: after the
    # cluster's grace that stage fails with the kubelet's reason, not at the deadline.
    _until(lambda: told()["a-p1-thumbnails"].state == ExecState.FAILED, timeout=30)
    got = told()
    assert [got[f"a-p1-{s}"].state for s in stages[:2]] == [ExecState.SUCCEEDED] * 2
    reason = got["a-p1-thumbnails"].reason or ""
    assert reason.startswith(f"the image {image} cannot be pulled (ErrImagePull")
    # The other clip never started: it fails the same way, its later stages skipped.
    assert got["a-p2-decode"].state == ExecState.FAILED
    assert [got[f"a-p2-{s}"].state for s in stages[1:]] == [ExecState.SKIPPED] * 2
    _until(lambda: not dev.jobs(), timeout=30)  # and the Job is gone
    executor.close()


def test_a_chain_job_is_deleted_once_every_clip_is_cancelled_and_no_handle_lingers(
    made: list[Cluster], tmp_path: Path, s3_server: EmbeddedS3
) -> None:
    dev = _make(made, tmp_path, s3_server, "dev")
    executor = KubernetesExecutor([dev.settings.model_copy(update={"s3_secret": None})])
    chains = [_scripted(_chain(clip)) for clip in ("c1", "c2")]
    handles = {a: s.handle for a, s in executor.submit(chains).items()}
    _until(lambda: bool(dev.runner.runs))
    first = [h for a, h in handles.items() if a.startswith("a-c1-")]
    executor.cancel(first)  # one clip's chain of two: it cannot be stopped alone
    assert len(dev.jobs()) == 1 and sorted(executor.actions.pending_deletes()) == sorted(first)
    executor.cancel([h for a, h in handles.items() if a.startswith("a-c2-")])
    # Nothing of the Job is wanted any more: deleted, and every member's handle done.
    assert dev.jobs() == [] and executor.actions.pending_deletes() == []
    executor.close()


@pytest.mark.slow
def test_on_a_cluster_with_a_gpu_node_the_faces_shape_takes_two_jobs(tmp_path: Path) -> None:
    """The faces pipeline's shape (no-op stages: CPU, GPU, then two CPU stages that join
    the GPU one) through the engine and the emulator: decode's batch Job on the CPU
    node, then one GPU Job running faces, thumbnails and publish, each stage recorded
    on its own accelerator at the same place."""
    from bench.environment import counted_s3
    from bench.kube_runs import _kube_runtime
    from bench.local_runs import _files
    from orchestrator.cli.oneshot import run_files

    with (
        counted_s3() as (s3, _),
        _kube_runtime(tmp_path, s3, 1, 4, gpus=True) as (
            runtime,
            emulator,
        ),
    ):
        files = _files(tmp_path / "clips", 4)
        done = run_files(runtime, runtime.catalog.pipeline("noop-gpu-chain"), files, "t", "c", 300)
        with emulator.lock:
            created = [c for c in emulator.calls if c.verb == "create" and c.resource == "jobs"]
        assert [run.status for _, run in done] == [RunStatus.SUCCEEDED] * 4
        assert len(created) == 2, [c.path for c in created]
        for _, run in done:
            attempts = {a.stage: a for a in runtime.store.attempts_of_run(run.id)}
            assert {s: a.accelerator for s, a in attempts.items()} == {
                "decode": "cpu",
                "faces": "gpu",
                "thumbnails": "cpu",
                "publish": "cpu",
            }
            gpu_execution = {(attempts[s].batch, attempts[s].placement) for s in FACES[1:]}
            assert len(gpu_execution) == 1
            assert attempts["decode"].batch not in {batch for batch, _ in gpu_execution}
