"""anonymize: blurs every detected face in every frame and writes an H.264 MP4.

Inputs:  ``video`` — the uploaded clip; ``detections`` — a detector's output.
Outputs: ``anonymized.mp4`` (H.264, same size, frame rate and frame count as the
source; no audio track). Boxes between sampled frames are interpolated.
"""

from __future__ import annotations

from algorithms.anonymize.tracks import Tracks, blur_boxes
from algorithms.decode.video import open_video
from algorithms.sdk import StageContext, StageReport, run_stage


def main(ctx: StageContext) -> StageReport:
    import imageio_ffmpeg

    source = ctx.input("video")
    found = ctx.get_json(ctx.input("detections").join("detections.json"))
    labels = set(ctx.params.get("labels", ["face"]))
    tracks = Tracks(
        [
            (f["t"], [tuple(d["box"]) for d in f["detections"] if d["label"] in labels])
            for f in found["frames"]
        ]
    )
    local = ctx.download(source, ctx.scratch / "source" / source.key.rsplit("/", 1)[-1])
    capture, info = open_video(local)
    target = ctx.scratch / "anonymized.mp4"
    writer = imageio_ffmpeg.write_frames(
        str(target),
        (info.width, info.height),
        fps=info.fps,
        codec="libx264",
        pix_fmt_in="bgr24",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        output_params=[
            "-preset",
            "veryfast",
            "-crf",
            str(ctx.params.get("crf", 23)),
            "-movflags",
            "+faststart",
        ],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    frames = blurred_frames = boxes = 0
    margin = float(ctx.params.get("margin", 0.15))
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            n = blur_boxes(frame, tracks.boxes_at(frames / info.fps), margin)
            boxes += n
            blurred_frames += 1 if n else 0
            writer.send(frame)
            frames += 1
    finally:
        writer.close()
        capture.release()
    ctx.s3.upload_file(
        str(target),
        ctx.output.bucket,
        ctx.output.join("anonymized.mp4").key,
        ExtraArgs={"ContentType": "video/mp4"},
    )
    return StageReport(
        outputs={"video": "anonymized.mp4"},
        metrics={
            "frames": frames,
            "frames_blurred": blurred_frames,
            "boxes_blurred": boxes,
            "fps": round(info.fps, 3),
        },
    )


if __name__ == "__main__":
    run_stage(main)
