"""The faces model on the GPU: same detections as on the CPU. Skips without CUDA."""

from __future__ import annotations

import time

import onnxruntime
import pytest

from algorithms.faces.centerface import CenterFace, providers_for
from orchestrator.cli.samples import load_photo
from tests.helpers import iou

HAS_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA,
    reason="no CUDA execution provider in this onnxruntime (no GPU, or the CPU-only "
    "package): run on a GPU machine with onnxruntime-gpu to test the GPU path",
)


@needs_cuda
@pytest.mark.parametrize("photo", ["astronaut", "camera"])
def test_gpu_and_cpu_find_the_same_faces(photo: str) -> None:
    image = load_photo(photo)
    cpu, gpu = CenterFace(accelerator="cpu"), CenterFace(accelerator="gpu")
    assert gpu.provider == "CUDAExecutionProvider"
    on_cpu, on_gpu = cpu.detect(image), gpu.detect(image)
    assert len(on_cpu) == len(on_gpu) >= 1
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert iou(a.box, b.box) > 0.98 and abs(a.score - b.score) < 0.01
    for name, detector in (("cpu", cpu), ("gpu", gpu)):
        detector.detect(image)  # warm up
        start = time.perf_counter()
        for _ in range(50):
            detector.detect(image)
        print(f"{photo} {name}: {50 / (time.perf_counter() - start):.1f} frames/s")


@needs_cuda
def test_frames_batched_on_the_gpu_find_what_the_cpu_finds_one_by_one() -> None:
    from algorithms.faces.__main__ import GPU_FRAMES_PER_RUN

    frames = [load_photo(name) for name in ("astronaut", "camera", "coffee")] * 8
    cpu, gpu = CenterFace(accelerator="cpu"), CenterFace(accelerator="gpu")
    on_cpu = [cpu.detect(frame) for frame in frames]
    on_gpu = gpu.detect_many(frames, batch_size=GPU_FRAMES_PER_RUN)
    assert [len(f) for f in on_gpu] == [len(f) for f in on_cpu]
    for mine, theirs in zip(on_gpu, on_cpu, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert iou(a.box, b.box) > 0.98 and abs(a.score - b.score) < 0.01


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the refusal cannot happen")
def test_a_gpu_placement_without_cuda_says_what_is_missing() -> None:
    with pytest.raises(RuntimeError, match=r"no CUDA provider .* install onnxruntime-gpu"):
        providers_for("gpu")
