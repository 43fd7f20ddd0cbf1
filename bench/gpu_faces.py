"""The faces model's frames/s on the GPU, batched as the stage batches there, against
the CPU one frame at a time as the stage runs there: the same frames of real clips,
decoded at the pipeline's rate. Without a CUDA provider (no GPU, or the CPU-only
onnxruntime) only the CPU figure is measured, and the row says so."""

from __future__ import annotations

import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from algorithms.decode.video import open_video, output_size, sample_frames
from algorithms.faces.__main__ import GPU_FRAMES_PER_RUN
from algorithms.faces.centerface import CenterFace
from bench.faces_loop import sample_clips
from bench.report import Figure

GOAL = 10.0


def _frames(clips: int) -> list[np.ndarray]:
    with TemporaryDirectory(prefix="camflow-bench-") as tmp:
        real, _ = sample_clips(Path(tmp), clips)
        frames = []
        for path in real:
            capture, info = open_video(path)
            try:
                size = output_size(info, 1280)
                frames += [frame.image for frame in sample_frames(capture, info, 5.0, size)]
            finally:
                capture.release()
    return frames


def frames_per_second(detector: CenterFace, frames: list[np.ndarray], batch_size: int) -> float:
    detector.detect_many(frames[:batch_size], batch_size=batch_size)  # warm up
    start = time.perf_counter()
    detector.detect_many(frames, batch_size=batch_size)
    return len(frames) / (time.perf_counter() - start)


def measure(clips: int) -> list[Figure]:
    import onnxruntime

    frames = _frames(clips)
    cpu = frames_per_second(CenterFace(accelerator="cpu"), frames, 1)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return [
            Figure(
                key="GPU",
                name="faces model on CPU, one frame at a time",
                unit="frames/s",
                ours=cpu,
                better="higher",
                note=f"{len(frames)} frames; no GPU here (no CUDA provider): GPU not measured",
            )
        ]
    gpu = frames_per_second(CenterFace(accelerator="gpu"), frames, GPU_FRAMES_PER_RUN)
    return [
        Figure(
            key="GPU",
            name=f"faces model on the GPU, {GPU_FRAMES_PER_RUN} frames a run, vs the CPU",
            unit="frames/s",
            ours=gpu,
            baseline=cpu,
            better="higher",
            note=f"{len(frames)} frames of {clips} real clips",
        ),
        Figure(
            key="GPU",
            name="faces frames/s, GPU / CPU",
            unit="x",
            ours=gpu / cpu,
            better="higher",
            goal=GOAL,
        ),
    ]
