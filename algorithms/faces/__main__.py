"""faces: finds faces in sampled frames with the pretrained CenterFace model.

Inputs:  ``frames`` — a decode stage's output (``index.json`` + JPEG frames);
         ``gate`` (optional) — a motion stage's output: the model then looks only at
         frames with motion (and at least every ``refresh_seconds``); other frames reuse
         the last detections, as nothing in view has moved.
Outputs: ``detections.json``: for every sampled frame its time ``t`` and detections
(``label`` "face", ``score``, ``box`` [x, y, w, h] in pixels of the original frame).
Runs on onnxruntime's CUDA provider when placed on a GPU, its CPU provider otherwise.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from algorithms.faces.centerface import CenterFace
from algorithms.motion.detector import Segment, gate
from algorithms.sdk import BadInput, StageContext, StageReport, run_stage


def frames_to_analyse(ctx: StageContext, entries: list[dict[str, Any]]) -> list[bool]:
    """Which sampled frames the model looks at: all, or with a gate those with motion,
    the first frame, and one at least every ``refresh_seconds``."""
    if "gate" not in ctx.inputs:
        return [True] * len(entries)
    motion = ctx.get_json(ctx.input("gate").join("motion.json"))
    spans = [Segment(**s) for s in motion["segments"]]
    padding = float(ctx.params.get("gate_padding_seconds", 0.5))
    refresh = float(ctx.params.get("refresh_seconds", 2.0))
    moving = gate((e["t"] for e in entries), spans, padding)
    look, last_t = [], None
    for entry, flag in zip(entries, moving, strict=True):
        due = last_t is None or entry["t"] - last_t >= refresh
        look.append(flag or due)
        if flag or due:
            last_t = entry["t"]
    return look


#: Frames per run of the model on a GPU: one copy each way and one pass of the network
#: for many frames keeps the GPU busy. On CPU one at a time is faster (on two cores, 16
#: at once ran at 19.5-32 frames/s against 32.5-43 one by one).
GPU_FRAMES_PER_RUN = 16


_LOADING = threading.Lock()


def _detector(accelerator: str, threads: int) -> CenterFace:
    """Loaded once per process: a batch of clips shares one session, also when its
    clips run on threads side by side (onnxruntime's run is thread-safe; the lock keeps
    two first clips from loading it twice). Its threads sleep when idle rather than
    spin: the stage shares the cores with its own decoding and S3 work, and with the
    stages beside it (spinning cost the faces pipeline a third of its time on two
    cores: `python -m bench --only faces`)."""
    with _LOADING:
        return _load(accelerator, threads)


@functools.cache
def _load(accelerator: str, threads: int) -> CenterFace:
    return CenterFace(accelerator=accelerator, threads=threads, spin=False)


def main(ctx: StageContext) -> StageReport:
    frames_prefix = ctx.input("frames")
    threshold = float(ctx.params.get("threshold", 0.5))
    iou = float(ctx.params.get("nms_iou", 0.3))
    max_side = ctx.params.get("max_side", 640)

    index = ctx.get_json(frames_prefix.join("index.json"))
    video = index["video"]
    scale_to = (video["width"] / index["frame_width"], video["height"] / index["frame_height"])
    entries = index["frames"]
    look = frames_to_analyse(ctx, entries)
    wanted = [entry for entry, yes in zip(entries, look, strict=True) if yes]
    images = dict(
        zip(
            (e["file"] for e in wanted),
            ctx.get_images(frames_prefix.join(entry["file"]) for entry in wanted),
            strict=True,
        )
    )

    for file, image in images.items():
        if image is None:
            raise BadInput(f"frame {file} of {frames_prefix} is not a readable JPEG")
    detector = _detector(ctx.accelerator, ctx.process_cpus)
    started = time.monotonic()
    batch = GPU_FRAMES_PER_RUN if detector.provider == "CUDAExecutionProvider" else 1
    detected = detector.detect_many(
        list(images.values()), threshold, iou, max_side, scale_to, batch
    )
    found = dict(zip(images, detected, strict=True))
    results: list[dict[str, Any]] = []
    last: list[dict[str, Any]] = []
    for entry in entries:
        frame: dict[str, Any] = {"t": entry["t"], "i": entry["i"]}
        if entry["file"] in found:
            last = [
                {"label": "face", "score": d.score, "box": list(d.box)}
                for d in found[entry["file"]]
            ]
        else:
            frame["reused"] = True
        frame["detections"] = last
        results.append(frame)
    total = sum(len(r["detections"]) for r in results)
    seconds = time.monotonic() - started
    ctx.put_json(
        "detections.json",
        {"model": "centerface", "provider": detector.provider, "frames": results},
    )
    return StageReport(
        outputs={"detections": "detections.json"},
        metrics={
            "frames": len(results),
            "faces": total,
            "frames_with_faces": sum(1 for r in results if r["detections"]),
            "frames_analysed": len(wanted),
            "inference_seconds": round(seconds, 3),
            "fps": round(len(wanted) / seconds, 2) if seconds > 0 else None,
            "provider": detector.provider,
        },
    )


if __name__ == "__main__":
    run_stage(main)
