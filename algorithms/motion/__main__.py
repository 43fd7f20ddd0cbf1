"""motion: scores every sampled frame for motion and finds motion segments.

Inputs:  ``frames`` — a decode stage's output.
Outputs: ``motion.json``: per frame ``t``, ``score`` (share of the frame that moved) and
``moving``; ``segments`` with ``start``, ``end`` (seconds) and ``peak``. Later stages
can use it as a gate, to look only at frames with motion.
"""

from __future__ import annotations

from algorithms.motion.detector import MotionScorer, segments
from algorithms.sdk import BadInput, StageContext, StageReport, run_stage


def main(ctx: StageContext) -> StageReport:
    frames_prefix = ctx.input("frames")
    threshold = float(ctx.params.get("threshold", 0.005))
    min_gap = float(ctx.params.get("min_gap_seconds", 1.0))
    index = ctx.get_json(frames_prefix.join("index.json"))
    entries = index["frames"]
    images = ctx.get_images(frames_prefix.join(entry["file"]) for entry in entries)
    scorer = MotionScorer(history=int(ctx.params.get("history", 50)))
    scores = []
    for entry, image in zip(entries, images, strict=True):
        if image is None:
            raise BadInput(f"frame {entry['file']} of {frames_prefix} is not a readable JPEG")
        scores.append(scorer.score(image))
    times = [entry["t"] for entry in entries]
    step = 1.0 / float(index["sample_fps"])
    spans = segments(times, scores, threshold, min_gap, step)
    ctx.put_json(
        "motion.json",
        {
            "threshold": threshold,
            "sample_fps": index["sample_fps"],
            "frames": [
                {"t": t, "i": e["i"], "score": round(s, 5), "moving": s >= threshold}
                for t, e, s in zip(times, entries, scores, strict=True)
            ],
            "segments": [vars(s) for s in spans],
        },
    )
    return StageReport(
        outputs={"motion": "motion.json"},
        metrics={
            "frames": len(entries),
            "frames_with_motion": sum(1 for s in scores if s >= threshold),
            "segments": len(spans),
            "seconds_with_motion": round(sum(s.end - s.start for s in spans), 3),
        },
    )


if __name__ == "__main__":
    run_stage(main)
