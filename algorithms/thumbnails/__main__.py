"""thumbnails: JPEG frames with the detection boxes drawn, for results pages.

Inputs:  ``frames`` — a decode stage's output; ``detections`` — a detector's output.
Outputs: ``thumbnails/NNNNNN.jpg`` and ``thumbnails.json`` (each thumbnail's ``t``,
file and detections). Frames with detections are preferred, spread over the clip.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from algorithms.sdk import BadInput, StageContext, StageReport, run_stage

BOX_COLOUR = (0, 220, 0)  # BGR


def pick(frames: list[dict[str, Any]], most: int) -> list[dict[str, Any]]:
    """Up to ``most`` frames spread evenly, from those with detections if any."""
    pool = [f for f in frames if f["detections"]] or frames
    if len(pool) <= most:
        return pool
    step = (len(pool) - 1) / max(1, most - 1)
    return [pool[round(k * step)] for k in range(most)]


def draw(image: np.ndarray, detections: list[dict[str, Any]], scale: tuple[float, float]) -> None:
    for det in detections:
        x, y, w, h = det["box"]
        p0 = (int(x / scale[0]), int(y / scale[1]))
        p1 = (int((x + w) / scale[0]), int((y + h) / scale[1]))
        cv2.rectangle(image, p0, p1, BOX_COLOUR, 2)
        cv2.putText(
            image,
            f"{det['label']} {det['score']:.2f}",
            (p0[0], max(12, p0[1] - 4)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            BOX_COLOUR,
            1,
            cv2.LINE_AA,
        )


def main(ctx: StageContext) -> StageReport:
    frames_prefix = ctx.input("frames")
    index = ctx.get_json(frames_prefix.join("index.json"))
    found = ctx.get_json(ctx.input("detections").join("detections.json"))
    files = {entry["i"]: entry["file"] for entry in index["frames"]}
    chosen = pick(found["frames"], int(ctx.params.get("max_thumbnails", 6)))
    video = index["video"]
    scale = (video["width"] / index["frame_width"], video["height"] / index["frame_height"])
    width = int(ctx.params.get("width", 320))
    listing, uploads = [], []
    for frame, image in zip(
        chosen, ctx.get_images(frames_prefix.join(files[f["i"]]) for f in chosen), strict=True
    ):
        if image is None:
            raise BadInput(f"frame {files[frame['i']]} of {frames_prefix} is not a readable JPEG")
        image = image.copy()  # a frame handed over by a fused stage is not ours to draw on
        draw(image, frame["detections"], scale)
        height = round(image.shape[0] * width / image.shape[1])
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise RuntimeError(f"could not encode thumbnail of frame {frame['i']}")
        name = f"thumbnails/{frame['i']:06d}.jpg"
        uploads.append((name, jpeg.tobytes(), "image/jpeg"))
        listing.append({"t": frame["t"], "file": name, "detections": frame["detections"]})
    ctx.put_many(uploads)
    ctx.put_json("thumbnails.json", {"thumbnails": listing})
    return StageReport(
        outputs={"thumbnails": "thumbnails.json"}, metrics={"thumbnails": len(listing)}
    )


if __name__ == "__main__":
    run_stage(main)
