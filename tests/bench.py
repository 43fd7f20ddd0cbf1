"""Benchmarks: each of camflow's choices against a baseline measured in the same run.

    python -m tests.bench

Prints ratios, not absolute targets: machines differ, ratios on one machine don't.
- discovery (latency and idle cost) has its own: ``python -m tests.bench_discovery``;
- decode: seeking with grab() and decoding only sampled frames vs read() of every frame;
- faces: CenterFace on onnxruntime (what the stage uses) vs OpenCV's DNN module.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")


def timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def report(name: str, ours: float, baseline: float, unit: str = "s") -> None:
    """Seconds (lower is better) or a rate such as fps (higher is better)."""
    ratio = baseline / ours if unit == "s" else ours / baseline
    print(
        f"{name:<40} ours {ours:9.4f} {unit:<3}  baseline {baseline:9.4f} {unit:<3}  x{ratio:5.2f}"
    )


def bench_decode(path: Path) -> None:
    from algorithms.decode.video import open_video, sample_frames

    def ours() -> int:
        capture, info = open_video(path)
        count = sum(1 for _ in sample_frames(capture, info, 5, (info.width, info.height)))
        capture.release()
        return count

    def every_frame() -> int:
        capture = cv2.VideoCapture(str(path))
        fps, count, index = capture.get(cv2.CAP_PROP_FPS), 0, 0
        while True:
            ok, _frame = capture.read()
            if not ok:
                break
            if index % round(fps / 5) == 0:
                count += 1
            index += 1
        capture.release()
        return count

    t_ours, n_ours = timed(ours)
    t_base, n_base = timed(every_frame)
    assert n_ours == n_base, (n_ours, n_base)
    report("decode: sample 5 fps of a 15 fps clip", t_ours, t_base)


def bench_faces(path: Path) -> None:
    from algorithms.decode.video import open_video, sample_frames
    from algorithms.faces.centerface import (
        INPUT_NAME,
        OUTPUT_NAMES,
        CenterFace,
        default_model_path,
        network_size,
    )

    capture, info = open_video(path)
    frames = [f.image for f in sample_frames(capture, info, 5, (info.width, info.height))]
    detector = CenterFace()
    net = cv2.dnn.readNetFromONNX(str(default_model_path()))

    def ours() -> int:
        return sum(len(detector.detect(frame)) for frame in frames)

    def opencv_dnn() -> int:
        for frame in frames:
            w, h = network_size(frame.shape[1], frame.shape[0], 640)
            net.setInput(cv2.dnn.blobFromImage(frame, 1.0, (w, h), swapRB=True), INPUT_NAME)
            net.forward(list(OUTPUT_NAMES))
        return len(frames)

    t_ours, _ = timed(ours)
    t_base, _ = timed(opencv_dnn)
    report(
        f"faces: CenterFace, {len(frames)} frames",
        len(frames) / t_ours,
        len(frames) / t_base,
        unit="fps",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    from orchestrator.cli.samples import make_clip

    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "face.mp4"
        make_clip(clip, "astronaut", seconds=8)
        bench_decode(clip)
        bench_faces(clip)


if __name__ == "__main__":
    main()
