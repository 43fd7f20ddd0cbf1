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


def _pipeline_seconds(
    tmp: Path, endpoint: str, paths: list[Path], name: str, warm: bool
) -> tuple[float, int, dict]:
    """One `camflow process`-like run of the faces pipeline over ``paths``: seconds,
    succeeded runs, and the decode stage's params. ``warm``: timed once the executor's
    spare process is ready, as it is under `camflow serve` when clips come; otherwise
    from the moment the runtime is open, as a one-shot command."""
    settings = bench_settings(tmp / f"home-{name}", endpoint)
    with open_runtime(settings) as runtime:
        runtime.reconciler.owner = one_shot_owner()
        pipeline = runtime.catalog.pipeline("faces")
        if warm:
            deadline = time.monotonic() + 30
            while not runtime.executor.spare_ready() and time.monotonic() < deadline:  # type: ignore[attr-defined]
                time.sleep(0.02)
        start = time.perf_counter()
        # A camera of its own each run: the same files are new clips again.
        done = run_files(runtime, pipeline, paths, "bench", name, 1800)
        seconds = time.perf_counter() - start
    succeeded = sum(1 for _, run in done if run.status == "succeeded")
    return seconds, succeeded, pipeline.spec.stage("decode").params


def measure(good: int, rounds: int = 1) -> list[Figure]:
    """The pipeline (one-shot, and with the runtime warm) and the bare loop ``rounds``
    times each, taking turns, and the median of each: on a shared two-core machine one
    run of either swings by a third."""
    seconds: dict[str, list[float]] = {"cold": [], "warm": [], "loop": []}
    with TemporaryDirectory(prefix="camflow-bench-") as tmp, counted_s3() as (s3, _):
        real, bad = sample_clips(Path(tmp) / "clips", good)
        paths = real + bad
        for n in range(rounds):
            for mode in ("cold", "warm"):
                taken, succeeded, decode = _pipeline_seconds(
                    Path(tmp), s3.endpoint_url, paths, f"faces-{mode}{n}", warm=mode == "warm"
                )
                if succeeded != len(real):
                    raise RuntimeError(f"{succeeded} of {len(real)} real clips succeeded")
                seconds[mode].append(taken)
            start = time.perf_counter()
            bare_loop(paths, float(decode["fps"]), int(decode["max_width"]))
            seconds["loop"].append(time.perf_counter() - start)
    ours, baseline = statistics.median(seconds["cold"]), statistics.median(seconds["loop"])

    def ratios(mode: str) -> str:
        pairs = zip(seconds[mode], seconds["loop"], strict=True)
        return spread((p / b for p, b in pairs), ".2f", label="rounds (x):")

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
            note=ratios("cold") + "; timed from the runtime's opening, as `camflow process`",
        ),
        Figure(
            key="P3",
            name="faces pipeline / bare loop, runtime warm",
            unit="x",
            ours=statistics.median(seconds["warm"]) / baseline,
            better="lower",
            note=ratios("warm") + "; spare stage process ready, as under `camflow serve`",
        ),
    ]
