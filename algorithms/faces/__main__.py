"""faces: finds faces in sampled frames with the pretrained CenterFace model.

Inputs:  ``frames`` — a decode stage's output (``index.json`` + JPEG frames).
Outputs: ``detections.json``: for every sampled frame its time ``t`` and detections
(``label`` "face", ``score``, ``box`` [x, y, w, h] in pixels of the original frame).
Runs on onnxruntime's CUDA provider when placed on a GPU, its CPU provider otherwise.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from algorithms.faces.centerface import CenterFace
from algorithms.sdk import BadInput, StageContext, StageReport, run_stage


def main(ctx: StageContext) -> StageReport:
    frames_prefix = ctx.input("frames")
    threshold = float(ctx.params.get("threshold", 0.5))
    iou = float(ctx.params.get("nms_iou", 0.3))
    max_side = ctx.params.get("max_side", 640)

    index = ctx.get_json(frames_prefix.join("index.json"))
    video = index["video"]
    scale_to = (video["width"] / index["frame_width"], video["height"] / index["frame_height"])
    entries = index["frames"]
    blobs = ctx.get_many(frames_prefix.join(entry["file"]) for entry in entries)

    detector = CenterFace(accelerator=ctx.accelerator)
    started = time.monotonic()
    results, total = [], 0
    for entry, blob in zip(entries, blobs, strict=True):
        image = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise BadInput(f"frame {entry['file']} of {frames_prefix} is not a readable JPEG")
        found = detector.detect(image, threshold, iou, max_side, scale_to)
        total += len(found)
        results.append(
            {
                "t": entry["t"],
                "i": entry["i"],
                "detections": [
                    {"label": "face", "score": d.score, "box": list(d.box)} for d in found
                ],
            }
        )
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
            "inference_seconds": round(seconds, 3),
            "fps": round(len(results) / seconds, 2) if seconds > 0 else None,
            "provider": detector.provider,
        },
    )


if __name__ == "__main__":
    run_stage(main)
