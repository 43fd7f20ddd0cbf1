"""Real H.264 clips through watcher, engine, local processes and the real model,
with S3 over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from orchestrator.domain.layout import upload_key
from orchestrator.embedded_s3 import EmbeddedS3
from orchestrator.engine.reconciler import Reconciler
from orchestrator.service import Runtime, drive, open_runtime
from orchestrator.settings import ClusterSettings, Settings
from orchestrator.store.models import AttemptState, RunStatus
from tests.conftest import SampleClips
from tests.helpers import iou

pytestmark = pytest.mark.slow


@pytest.fixture(params=["local", "kubernetes"])
def executor(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path, s3_server: EmbeddedS3
) -> Iterator[tuple[Settings, Callable[[], list[int]]]]:
    """The same tests on both executors: settings, and how many times each stage
    attempt's program ran (from the local runner's folders, or the job runner's
    container starts)."""
    if request.param == "local":

        def local_runs() -> list[int]:
            # One folder per attempt handed to a process (batches, and the spare
            # processes started ahead, keep theirs apart).
            apart = ("batches", "spares")
            return [1 for p in (settings.home / "attempts").iterdir() if p.name not in apart]

        yield settings, local_runs
        return
    from tests.kube_emulator import Emulator, JobRunner, node

    emulator = Emulator("dev", nodes=[node("dev-cpu-1")], namespaces={"camflow-jobs"}).start()
    runner = JobRunner(emulator).start()
    cluster = ClusterSettings(
        name="dev",
        environment="dev",
        kubeconfig=emulator.kubeconfig(tmp_path),
        namespace="camflow-jobs",
        budget=4,
        s3_endpoint=s3_server.endpoint_url,
        request_timeout_seconds=2,
    )
    yield (
        settings.model_copy(
            update={
                "executor": "kubernetes",
                "kubernetes": settings.kubernetes.model_copy(update={"clusters": [cluster]}),
            }
        ),
        lambda: sorted(runner.container_runs.values()),
    )
    runner.stop()
    emulator.stop()


T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
CLIP_FPS = 15  # what SampleClips encodes at
Executor = tuple[Settings, Callable[[], list[int]]]


def _upload(runtime: Runtime, camera: str, path: Path, at: datetime) -> str:
    key = upload_key("acme", camera, at)
    runtime.s3.upload_file(path, runtime.settings.s3.ingest_bucket, key)
    return key


def _discover(runtime: Runtime) -> list[str]:
    runtime.watcher.tick()
    runtime.reconciler.plan_new_clips()
    return [run.id for run, _ in runtime.store.list_runs(limit=1000)]


def _result(runtime: Runtime, key: str) -> dict:  # type: ignore[type-arg]
    [run] = runtime.store.runs_of_clip(runtime.store.find_clip(key).id)
    assert run.result is not None
    return run.result


def test_a_batch_with_good_and_bad_clips(executor: Executor, clips: SampleClips) -> None:
    settings, _ = executor
    batch = {
        "face": clips.face,
        "face2": clips.other_face,
        "noface": clips.no_face,
        "corrupt": clips.corrupt,
        "truncated": clips.truncated,
        "empty": clips.empty,
        "notvideo": clips.not_video,
    }
    with open_runtime(settings) as runtime:
        keys = {
            name: _upload(runtime, name, path, T0 + timedelta(seconds=i))
            for i, (name, path) in enumerate(batch.items())
        }
        run_ids = _discover(runtime)
        assert len(run_ids) == len(batch)
        drive(runtime, run_ids, timeout=300, interval=0.2)

        fused_clips = 0
        for name in ("face", "face2"):
            result = _result(runtime, keys[name])
            assert result["status"] == "succeeded" and result["error"] is None
            frames = result["frames"]
            assert len(frames) == 15  # 3 s sampled at 5 fps
            hits = 0
            for frame in frames:
                truth = clips.true_face_box(name, round(frame["t"] * CLIP_FPS))
                faces = [d for d in frame["detections"] if d["label"] == "face"]
                if faces and max(iou(d["box"], truth) for d in faces) > 0.5:
                    hits += 1
                assert len(faces) <= 1, frame  # one person, one box
            assert hits >= 0.8 * len(frames), (name, hits)
            assert [s["name"] for s in result["stages"]] == [
                "decode",
                "faces",
                "thumbnails",
                "publish",
            ]
            # The Kubernetes API keeps times to the second (RFC 3339): a stage quicker
            # than that may read 0 s there, never nothing and never negative.
            assert all(s["seconds"] is not None and s["seconds"] >= 0 for s in result["stages"])
            if settings.executor == "local":
                assert all(s["seconds"] > 0 for s in result["stages"]), result["stages"]
            # A stage retried after a transient fault (a loaded machine) runs alone: the
            # in-process hand-over holds for the clips whose stages each ran once.
            if settings.executor == "local" and all(s["attempts"] == 1 for s in result["stages"]):
                fused_clips += 1
                # Fused in one process: decode's frames and faces' detections were handed
                # on in memory and never reached S3; the thumbnails customers fetch did.
                kept = {s["name"]: s["outputs_kept_in_process"] for s in result["stages"]}
                assert kept == {
                    "decode": True,
                    "faces": True,
                    "thumbnails": False,
                    "publish": False,
                }, result["stages"]
                prefix = f"acme/{name}/{result['clip_id']}/faces/"
                stored = {
                    o.key.removeprefix(prefix)
                    for o in runtime.s3.list_after(settings.s3.results_bucket, prefix, None)
                }
                assert not any(k.startswith(("decode/", "faces/")) for k in stored), stored
                assert any(k.startswith("thumbnails/thumbnails/") for k in stored), stored
                assert "publish/result.json" in stored
        if settings.executor == "local":
            assert fused_clips, "both face clips had a stage retried: nothing ran fused"

        quiet = _result(runtime, keys["noface"])
        assert quiet["status"] == "succeeded"
        assert len(quiet["frames"]) == 15
        assert all(f["detections"] == [] for f in quiet["frames"])

        for name, reason in {
            "corrupt": "corrupt",
            "truncated": "not a readable video",
            "empty": "the clip is empty (0 bytes)",
            "notvideo": "not a readable video",
        }.items():
            result = _result(runtime, keys[name])
            assert result["status"] == "failed", name
            assert reason in result["error"], (name, result["error"])
            assert result["error"].startswith("stage decode failed")
            [decode] = result["stages"]  # failed early, once, and nothing after it ran
            assert decode["attempts"] == 1 and decode["exit_code"] == 2

        # The decode stage ran its clips in batches (one process each locally, one
        # Indexed Job each on Kubernetes), and a bad clip failed alone inside a batch
        # whose good clips went on.
        outcomes: dict[str, set[str]] = {}  # by batch, or by attempt when alone
        for key in keys.values():
            [run] = runtime.store.runs_of_clip(runtime.store.find_clip(key).id)
            for attempt in runtime.store.attempts_of_run(run.id):
                if attempt.stage == "decode":
                    execution = attempt.batch or attempt.id
                    outcomes.setdefault(execution, set()).add(str(attempt.state))
        slots = runtime.executor.capacity().slots
        assert len(outcomes) <= slots < len(batch), outcomes
        assert any(states == {"succeeded", "failed"} for states in outcomes.values())

        # The result in S3 is the one in the store.
        run = runtime.store.runs_of_clip(runtime.store.find_clip(keys["face"]).id)[0]
        bucket, key = run.result_uri.removeprefix("s3://").split("/", 1)  # type: ignore[union-attr]
        assert runtime.s3.get_json(bucket, key) == run.result


def test_the_same_upload_twice_is_one_run_and_new_content_is_another(
    executor: Executor, clips: SampleClips
) -> None:
    settings, _ = executor
    with open_runtime(settings) as runtime:
        key = _upload(runtime, "door", clips.face, T0)
        [first] = _discover(runtime)
        drive(runtime, [first], timeout=300, interval=0.2)
        _upload(runtime, "door", clips.face, T0)  # the camera retried its upload
        assert _discover(runtime) == [first]
        _upload(runtime, "door", clips.no_face, T0)  # same key, new content
        second = next(r for r in _discover(runtime) if r != first)
        drive(runtime, [second], timeout=300, interval=0.2)
        before, after = (runtime.store.get_run(r).result for r in (first, second))
        assert before and after and before["clip_id"] != after["clip_id"]
        assert {before["source"]["key"], after["source"]["key"]} == {key}
        assert before["summary"]["labels"]["face"] >= 12
        assert after["status"] == "succeeded" and after["summary"]["labels"] == {}


def test_a_clip_replaced_before_it_is_read_fails_alone_with_the_reason(
    executor: Executor, clips: SampleClips
) -> None:
    settings, _ = executor
    with open_runtime(settings) as runtime:
        _upload(runtime, "door", clips.face, T0)
        [replaced] = _discover(runtime)
        _upload(runtime, "door", clips.no_face, T0)
        newer = next(r for r in _discover(runtime) if r != replaced)
        drive(runtime, [replaced, newer], timeout=300, interval=0.2)
        old = runtime.store.get_run(replaced)
        assert old.status == RunStatus.FAILED
        assert "was replaced by a newer upload under the same key" in (old.error or "")
        assert runtime.store.get_run(newer).status == RunStatus.SUCCEEDED


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing catches it."""


def _records_a_handle(changes: object) -> bool:
    """Whether the store writes are an attempt's start: its handle, the move to running
    (the engine records them together, after the executor took the attempts)."""
    assert isinstance(changes, list)
    return any(change.values.get("state") == AttemptState.RUNNING for change in changes)


def _crash_once(target: object, name: str) -> dict[str, bool]:
    """Makes ``target.name`` raise Crash once; its state says whether it has."""
    original = getattr(target, name)
    state = {"armed": True}

    def wrapper(*args: object, **kwargs: object) -> object:
        if name == "update_attempts" and not _records_a_handle(*args):
            return original(*args, **kwargs)
        if state["armed"]:
            state["armed"] = False
            raise Crash
        return original(*args, **kwargs)

    setattr(target, name, wrapper)
    return state


@pytest.mark.parametrize(
    "crash_point",
    [
        "none",  # stop and start between ticks, with a stage running
        "before_submit",  # attempt recorded, never handed to the executor
        "after_submit",  # handed over, but the handle never reached the store
    ],
)
def test_a_restarted_engine_completes_the_run_exactly_once(
    executor: Executor, clips: SampleClips, crash_point: str
) -> None:
    settings, runs = executor
    first = open_runtime(settings)
    _upload(first, "door", clips.face, T0)
    [run_id] = _discover(first)
    crash = {"armed": False}
    if crash_point == "before_submit":
        crash = _crash_once(first.reconciler.executor, "submit")
    elif crash_point == "after_submit":
        crash = _crash_once(first.store, "update_attempts")
    try:
        for _ in range(200):
            first.reconciler.tick()
            attempts = first.store.attempts_of_run(run_id)
            if any(a.stage == "faces" for a in attempts):
                break
    except Crash:
        pass
    assert not crash["armed"], "the engine never reached the point it was to die at"
    first.close()  # the orchestrator is gone; stages it started keep running

    second = open_runtime(settings)
    assert isinstance(second.reconciler, Reconciler)
    drive(second, [run_id], timeout=300, interval=0.2)
    run = second.store.get_run(run_id)
    assert run.status == RunStatus.SUCCEEDED, run.error
    attempts = second.store.attempts_of_run(run_id)
    assert sorted(a.stage for a in attempts) == ["decode", "faces", "publish", "thumbnails"]
    assert all(a.attempt == 1 and a.state == AttemptState.SUCCEEDED for a in attempts)
    # Each stage's program ran once.
    assert runs() == [1] * len(attempts)
    assert run.result and run.result["summary"]["labels"]["face"] >= 12
    second.close()
