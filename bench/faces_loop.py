"""P3: the faces pipeline against the bare loop a user would write instead, on the same
real H.264 clips: OpenCV decode sampled at the pipeline's fps, CenterFace on
onnxruntime loaded once."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from algorithms.decode.video import open_video, output_size, sample_frames
from algorithms.faces.centerface import CenterFace
from bench.environment import bench_settings, counted_s3
from bench.report import Figure, spread
from orchestrator.cli.oneshot import one_shot_owner, run_files
from orchestrator.service import open_runtime
from tests.conftest import SampleClips

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "astronaut")


def sample_clips(folder: Path, good: int) -> tuple[list[Path], list[Path]]:
    """``good`` real clips from photographs, and three bad files (truncated, not a
    video, empty), as `camflow demo` uploads them."""
    clips = SampleClips(folder)
    real = [clips.make(f"clip{n}", PHOTOS[n % len(PHOTOS)]) for n in range(good)]
    return real, [clips.truncated, clips.not_video, clips.empty]


def bare_loop(paths: list[Path], fps: float, max_width: int) -> int:
    """What the pipeline does, written as one loop: the number of faces found."""
    model = CenterFace()
    faces = 0
    for path in paths:
        try:
            capture, info = open_video(path)
        except Exception:  # a bad file: the loop skips it, as the pipeline fails it
            continue
        try:
            size = output_size(info, max_width)
            scale = (info.width / size[0], info.height / size[1])
            for frame in sample_frames(capture, info, fps, size):
                faces += len(model.detect(frame.image, scale_to=scale))
        except Exception:
            continue
        finally:
            capture.release()
    return faces


def measure(good: int, rounds: int = 1) -> list[Figure]:
    """The pipeline and the bare loop ``rounds`` times each, taking turns, and the
    median of each: on a shared two-core machine one run of either swings by a third."""
    pipeline_seconds: list[float] = []
    loop_seconds: list[float] = []
    with TemporaryDirectory(prefix="camflow-bench-") as tmp, counted_s3() as (s3, _):
        real, bad = sample_clips(Path(tmp) / "clips", good)
        paths = real + bad
        for n in range(rounds):
            settings = bench_settings(Path(tmp) / f"home{n}", s3.endpoint_url)
            with open_runtime(settings) as runtime:
                runtime.reconciler.owner = one_shot_owner()
                pipeline = runtime.catalog.pipeline("faces")
                decode = pipeline.spec.stage("decode").params
                start = time.perf_counter()
                # A camera of its own each round: the same files are new clips again.
                done = run_files(runtime, pipeline, paths, "bench", f"faces{n}", 1800)
                pipeline_seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            bare_loop(paths, float(decode["fps"]), int(decode["max_width"]))
            loop_seconds.append(time.perf_counter() - start)
            succeeded = sum(1 for _, run in done if run.status == "succeeded")
            if succeeded != len(real):
                raise RuntimeError(f"{succeeded} of {len(real)} real clips succeeded")
    ours, baseline = statistics.median(pipeline_seconds), statistics.median(loop_seconds)
    return [
        Figure(
            key="P3",
            name="faces pipeline vs the bare loop, same clips",
            unit="s",
            ours=ours,
            baseline=baseline,
            better="lower",
            note=f"{len(real)} real clips + {len(bad)} bad files; median of {rounds} round(s) each",
        ),
        Figure(
            key="P3",
            name="faces pipeline / bare loop",
            unit="x",
            ours=ours / baseline,
            better="lower",
            goal=1.3,
            note=spread(
                (p / b for p, b in zip(pipeline_seconds, loop_seconds, strict=True)),
                ".2f",
                label="rounds (x):",
            ),
        ),
    ]
