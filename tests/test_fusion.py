"""Fused stages: which stages the engine runs in one execution, what they keep out of
S3, and what runs again when one of them fails. Pure decisions on hand-made state."""

from collections.abc import Callable
from datetime import timedelta

import pytest
from pydantic import ValidationError

from orchestrator.domain.catalog import Pipeline, load_catalog
from orchestrator.domain.pipeline import PipelineSpec, Placement
from orchestrator.engine.decide import ChainMember, FinishRun, StartAttempt, decide
from orchestrator.settings import PROJECT_ROOT
from orchestrator.store.models import AttemptState, RunStatus
from tests.test_decide import POLICY, T0, attempt, run


@pytest.fixture(scope="module")
def catalog():  # type: ignore[no-untyped-def]
    return load_catalog([PROJECT_ROOT / "algorithms"], [PROJECT_ROOT / "pipelines"])


@pytest.fixture(scope="module")
def faces(catalog) -> Pipeline:  # type: ignore[no-untyped-def]
    return catalog.pipeline("faces")


def test_the_faces_pipeline_runs_as_one_execution_and_keeps_frames_out_of_s3(
    faces: Pipeline,
) -> None:
    d = decide(run(), [], faces, T0, POLICY, executor_has_gpus=False, fuse=True)
    # decode and faces only feed stages of the execution and say their outputs are
    # intermediate; thumbnails are fetched by customers, publish's result is the run's.
    assert d.starts == [
        StartAttempt(
            "r-1",
            "decode",
            1,
            "cpu",
            keep_local=True,
            chain=(
                ChainMember("faces", 1, keep_local=True),
                ChainMember("thumbnails", 1, keep_local=False),
                ChainMember("publish", 1, keep_local=False),
            ),
        )
    ]


def test_without_an_executor_that_fuses_each_stage_runs_alone(faces: Pipeline) -> None:
    d = decide(run(), [], faces, T0, POLICY, executor_has_gpus=False)
    assert d.starts == [StartAttempt("r-1", "decode", 1, "cpu")]


def _variant(pipeline: Pipeline, edit: Callable[[PipelineSpec], None]) -> Pipeline:
    """``pipeline`` with its spec changed by ``edit``."""
    spec = pipeline.spec.model_copy(deep=True)
    edit(spec)
    changed = Pipeline(spec, {**pipeline.stages}, pipeline.source)
    for name, resolved in changed.stages.items():
        changed.stages[name] = type(resolved)(**{**resolved.__dict__, "spec": spec.stage(name)})
    return changed


def _apart_from_gpu(spec: PipelineSpec) -> None:
    for stage in spec.stages:
        stage.placement.join_gpu = False


def test_a_gpu_stage_is_not_fused_with_cpu_stages(faces: Pipeline) -> None:
    # With GPUs, faces goes to a GPU: decode's execution stops before it, and decode
    # keeps nothing in its process (faces, elsewhere, reads its frames from S3).
    faces = _variant(faces, _apart_from_gpu)
    d = decide(run(), [], faces, T0, POLICY, executor_has_gpus=True, fuse=True)
    assert d.starts == [StartAttempt("r-1", "decode", 1, "cpu")]
    done = [attempt("decode", 1, AttemptState.SUCCEEDED)]
    d = decide(run(), done, faces, T0 + timedelta(seconds=2), POLICY, True, fuse=True)
    assert d.starts == [StartAttempt("r-1", "faces", 1, "gpu")]
    # After faces, thumbnails and publish (both CPU) run together.
    done.append(attempt("faces", 1, AttemptState.SUCCEEDED, at=2, accelerator="gpu"))
    d = decide(run(), done, faces, T0 + timedelta(seconds=4), POLICY, True, fuse=True)
    assert d.starts == [
        StartAttempt(
            "r-1", "thumbnails", 1, "cpu", chain=(ChainMember("publish", 1, keep_local=False),)
        )
    ]


def test_cpu_stages_that_join_gpu_run_in_the_gpu_stage_s_execution_on_cpu(
    faces: Pipeline,
) -> None:
    # The shipped faces pipeline: thumbnails and publish say join_gpu. decode still
    # runs on its own (it comes before the GPU stage); faces' detections now only
    # feed its own execution, so they stay there.
    d = decide(run(), [], faces, T0, POLICY, executor_has_gpus=True, fuse=True)
    assert d.starts == [StartAttempt("r-1", "decode", 1, "cpu")]
    done = [attempt("decode", 1, AttemptState.SUCCEEDED)]
    d = decide(run(), done, faces, T0 + timedelta(seconds=2), POLICY, True, fuse=True)
    assert d.starts == [
        StartAttempt(
            "r-1",
            "faces",
            1,
            "gpu",
            keep_local=True,
            chain=(
                ChainMember("thumbnails", 1, keep_local=False, accelerator="cpu"),
                ChainMember("publish", 1, keep_local=False, accelerator="cpu"),
            ),
        )
    ]
    # Without GPUs all four are CPU stages in one execution, as without join_gpu.
    d = decide(run(), [], faces, T0, POLICY, executor_has_gpus=False, fuse=True)
    [start] = d.starts
    assert start.stages == ["decode", "faces", "thumbnails", "publish"]
    assert all(member.accelerator is None for member in start.chain)


def test_a_joining_stage_that_runs_again_does_so_with_what_it_lost_or_alone_on_cpu(
    faces: Pipeline,
) -> None:
    # thumbnails failed after faces succeeded in one GPU execution: faces kept its
    # detections there, so it runs again with thumbnails and publish joined, on CPU.
    done = [
        attempt("decode", 1, AttemptState.SUCCEEDED),
        attempt("faces", 1, AttemptState.SUCCEEDED, at=2, accelerator="gpu", keep_local=True),
        attempt("thumbnails", 1, AttemptState.FAILED, at=3),
        attempt("publish", 1, AttemptState.SKIPPED, at=3),
    ]
    d = decide(run(), done, faces, T0 + timedelta(seconds=600), POLICY, True, fuse=True)
    [start] = d.starts
    assert (start.stage, start.attempt, start.accelerator) == ("faces", 2, "gpu")
    assert [(m.stage, m.attempt, m.accelerator) for m in start.chain] == [
        ("thumbnails", 2, "cpu"),
        ("publish", 2, "cpu"),
    ]
    # Where faces wrote its detections to S3 (it ran alone, e.g. given back for CPU),
    # thumbnails runs again on its own, on CPU, publish with it: not on the GPU.
    done[1] = attempt("faces", 1, AttemptState.SUCCEEDED, at=2, accelerator="cpu")
    d = decide(run(), done, faces, T0 + timedelta(seconds=600), POLICY, True, fuse=True)
    [start] = d.starts
    assert (start.stage, start.accelerator, start.stages) == (
        "thumbnails",
        "cpu",
        ["thumbnails", "publish"],
    )


def test_join_gpu_is_refused_on_a_gpu_stage() -> None:
    with pytest.raises(ValidationError, match="join_gpu is for CPU stages"):
        Placement(accelerator="gpu", join_gpu=True)


def test_a_stage_beside_another_keeps_its_own_process(catalog) -> None:  # type: ignore[no-untyped-def]
    # privacy: anonymize reads the clip and faces' detections; motion reads decode. Only
    # stages reading an earlier member's output join an execution.
    privacy = catalog.pipeline("privacy")
    d = decide(run(), [], privacy, T0, POLICY, executor_has_gpus=False, fuse=True)
    [start] = d.starts
    assert start.stages == ["decode", "motion", "faces", "anonymize", "publish"]
    assert [m.keep_local for m in start.chain] == [True, True, False, False]


def test_a_stage_the_pipeline_keeps_apart_is_not_fused(faces: Pipeline) -> None:
    spec = faces.spec.model_copy(deep=True)
    spec.stages[2].fuse = False  # thumbnails
    apart = Pipeline(spec, {**faces.stages}, faces.source)
    for name, resolved in apart.stages.items():
        apart.stages[name] = type(resolved)(**{**resolved.__dict__, "spec": spec.stage(name)})
    d = decide(run(), [], apart, T0, POLICY, executor_has_gpus=False, fuse=True)
    [start] = d.starts
    # publish reads thumbnails, which is not there yet: it cannot join either; and
    # decode's frames are read by thumbnails, outside: they go to S3.
    assert start.stages == ["decode", "faces"]
    assert start.keep_local is False
    assert start.chain == (ChainMember("faces", 1, keep_local=False),)


def test_a_fused_stage_that_fails_runs_again_with_the_stage_whose_outputs_it_lost(
    faces: Pipeline,
) -> None:
    attempts = [
        attempt("decode", 1, AttemptState.SUCCEEDED, keep_local=True, batch="b-1"),
        attempt("faces", 1, AttemptState.FAILED, keep_local=True, batch="b-1", exit_code=1),
        attempt("thumbnails", 1, AttemptState.SKIPPED, batch="b-1"),
        attempt("publish", 1, AttemptState.SKIPPED, batch="b-1"),
    ]
    # Within faces' backoff (10 s after it failed at 1 s): nothing starts yet.
    early = decide(run(), attempts, faces, T0 + timedelta(seconds=5), POLICY, False, fuse=True)
    assert early.starts == [] and early.actions == []
    later = decide(run(), attempts, faces, T0 + timedelta(seconds=12), POLICY, False, fuse=True)
    assert later.starts == [
        StartAttempt(
            "r-1",
            "decode",
            2,
            "cpu",
            keep_local=True,
            chain=(
                ChainMember("faces", 2, keep_local=True),
                ChainMember("thumbnails", 2, keep_local=False),
                ChainMember("publish", 2, keep_local=False),
            ),
        )
    ]


def test_skipped_stages_and_runs_again_use_none_of_a_stages_retries(faces: Pipeline) -> None:
    # decode failed twice (2 retries: a third try is allowed); its followers were
    # skipped twice; none of that counts against them.
    attempts = []
    for n in (1, 2):
        attempts += [
            attempt("decode", n, AttemptState.FAILED, at=n * 100, exit_code=1, batch=f"b{n}"),
            *(
                attempt(s, n, AttemptState.SKIPPED, at=n * 100, batch=f"b{n}")
                for s in ("faces", "thumbnails", "publish")
            ),
        ]
    d = decide(run(), attempts, faces, T0 + timedelta(seconds=1000), POLICY, False, fuse=True)
    [start] = d.starts
    assert (start.stage, start.attempt) == ("decode", 3)
    assert [(m.stage, m.attempt) for m in start.chain] == [
        ("faces", 3),
        ("thumbnails", 3),
        ("publish", 3),
    ]
    # A third failure of decode ends the run: its own retries are what count.
    attempts.append(attempt("decode", 3, AttemptState.FAILED, at=900, exit_code=1))
    d = decide(run(), attempts, faces, T0 + timedelta(seconds=1000), POLICY, False, fuse=True)
    assert any(isinstance(a, FinishRun) and "after 3 attempts" in str(a.error) for a in d.actions)


def test_a_run_whose_fused_stages_all_succeeded_is_done(faces: Pipeline) -> None:
    attempts = [
        attempt(s, 1, AttemptState.SUCCEEDED, keep_local=s in ("decode", "faces"))
        for s in ("decode", "faces", "thumbnails", "publish")
    ]
    d = decide(run(), attempts, faces, T0 + timedelta(seconds=5), POLICY, False, fuse=True)
    assert d.actions == [FinishRun("r-1", RunStatus.SUCCEEDED)]


def test_nothing_runs_again_while_a_fused_stage_is_still_running(faces: Pipeline) -> None:
    attempts = [
        attempt("decode", 1, AttemptState.SUCCEEDED, keep_local=True, batch="b-1"),
        attempt("faces", 1, AttemptState.RUNNING, keep_local=True, batch="b-1"),
        attempt("thumbnails", 1, AttemptState.RUNNING, batch="b-1", started_at=None),
        attempt("publish", 1, AttemptState.RUNNING, batch="b-1", started_at=None),
    ]
    d = decide(run(), attempts, faces, T0 + timedelta(seconds=5), POLICY, False, fuse=True)
    assert d.starts == [] and d.actions == []


# --- end to end, local processes ----------------------------------------------------------


@pytest.mark.slow
def test_a_fused_stage_that_fails_transiently_reruns_with_its_producer_and_the_run_succeeds(
    settings,
    tmp_path,
    clips,  # type: ignore[no-untyped-def]
) -> None:
    from datetime import UTC, datetime

    from orchestrator.domain.layout import upload_key
    from orchestrator.service import drive, open_runtime

    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    # decode's frames only feed the probe: fused, they stay in the process. The probe
    # fails its first execution (it counts them in S3), so decode's frames are gone
    # when it must run again: decode runs again with it.
    (pipelines / "relay.yaml").write_text(
        "name: relay\ntrigger: {prefix: relay/, suffix: .mp4}\nstages:\n"
        "  - {name: decode, algorithm: decode@1.2.0, inputs: {video: clip}, params: {fps: 2}}\n"
        "  - {name: probe, algorithm: probe@1.0.0, inputs: {video: decode},"
        " params: {mode: flaky}}\n"
    )
    relay = settings.model_copy(
        update={
            "algorithm_dirs": [PROJECT_ROOT / "algorithms", PROJECT_ROOT / "tests" / "stages"],
            "pipeline_dirs": [pipelines],
        }
    )
    with open_runtime(relay) as runtime:
        key = upload_key("relay", "cam", datetime.now(UTC))
        runtime.s3.upload_file(clips.face, relay.s3.ingest_bucket, key)
        runtime.watcher.tick()
        runtime.reconciler.plan_new_clips()
        [(run, clip)] = runtime.store.list_runs(pipeline="relay")
        drive(runtime, [run.id], timeout=120, interval=0.1)
        assert runtime.store.get_run(run.id).status == RunStatus.SUCCEEDED
        attempts = runtime.store.attempts_of_run(run.id)
        seen = sorted((a.stage, a.attempt, a.state.value, a.keep_local) for a in attempts)
        assert seen == [
            ("decode", 1, "succeeded", True),
            ("decode", 2, "succeeded", True),
            ("probe", 1, "failed", False),
            ("probe", 2, "succeeded", False),
        ]
        # Each pair ran in one process; the frames never reached S3.
        assert len({a.batch for a in attempts if a.attempt == 1}) == 1
        prefix = f"relay/cam/{clip.id}/relay/"
        stored = [o.key for o in runtime.s3.list_after(relay.s3.results_bucket, prefix, None)]
        assert not any(k.startswith(f"{prefix}decode/") for k in stored), stored
        assert runtime.store.get_run(run.id).result["probe"]["executions"] == 2  # type: ignore[index]
