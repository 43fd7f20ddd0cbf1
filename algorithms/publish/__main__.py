"""publish: assembles a clip's analysis in the results format.

Inputs:  ``video`` — a decode stage's output (for the clip's metadata); optional:
         ``detections`` (a detector's per-frame detections), ``motion`` (a motion
         stage's segments), ``thumbnails``, ``anonymized`` (an anonymize stage's video).
Outputs: ``result.json`` with ``video``, ``frames`` (``t`` and ``detections``),
``summary``, and where given ``motion`` and ``artifacts`` (S3 URIs of thumbnails and
videos); camflow adds status, error and per-stage timings when the run ends.
"""

from __future__ import annotations

from typing import Any

from algorithms.sdk import StageContext, StageReport, run_stage


def summarize(frames: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for frame in frames:
        for det in frame["detections"]:
            counts[det["label"]] = counts.get(det["label"], 0) + 1
    return {
        "frames": len(frames),
        "frames_with_detections": sum(1 for f in frames if f["detections"]),
        "detections": sum(counts.values()),
        "max_per_frame": max((len(f["detections"]) for f in frames), default=0),
        "labels": counts,
    }


def main(ctx: StageContext) -> StageReport:
    index = ctx.get_json(ctx.input("video").join("index.json"))
    frames: list[dict[str, Any]] = []
    if "detections" in ctx.inputs:
        found = ctx.get_json(ctx.input("detections").join("detections.json"))
        frames = [{"t": f["t"], "detections": f["detections"]} for f in found["frames"]]
    result: dict[str, Any] = {
        "video": index["video"],
        "sample_fps": index["sample_fps"],
        "frames": frames,
        "summary": summarize(frames),
    }
    artifacts: dict[str, Any] = {}
    if "motion" in ctx.inputs:
        motion = ctx.get_json(ctx.input("motion").join("motion.json"))
        result["motion"] = {
            "segments": motion["segments"],
            "frames_with_motion": sum(1 for f in motion["frames"] if f["moving"]),
        }
    if "thumbnails" in ctx.inputs:
        prefix = ctx.input("thumbnails")
        listing = ctx.get_json(prefix.join("thumbnails.json"))["thumbnails"]
        artifacts["thumbnails"] = [
            {"t": item["t"], "uri": str(prefix.join(item["file"]))} for item in listing
        ]
    if "anonymized" in ctx.inputs:
        artifacts["anonymized_video"] = str(ctx.input("anonymized").join("anonymized.mp4"))
    if artifacts:
        result["artifacts"] = artifacts
    ctx.put_json("result.json", result)
    return StageReport(outputs={"result": "result.json"}, metrics=result["summary"])


if __name__ == "__main__":
    run_stage(main)
