"""decode: samples frames from the clip at a fixed rate and writes them as JPEG.

Inputs:  ``video`` — the uploaded clip (an S3 object).
Outputs: ``frames/NNNNNN.jpg`` and ``index.json`` (source metadata, each sampled
frame's number, time in seconds and file name).
A clip that is empty, corrupt, truncated or not a video ends the stage with exit 2.
"""

from __future__ import annotations

from algorithms.decode.video import open_video, output_size, sample_frames
from algorithms.sdk import StageContext, StageReport, run_stage


def main(ctx: StageContext) -> StageReport:
    source = ctx.input("video")
    fps = float(ctx.params.get("fps", 5.0))
    max_width = ctx.params.get("max_width")
    quality = int(ctx.params.get("jpeg_quality", 90))

    local = ctx.download(source, ctx.scratch / "clip" / source.key.rsplit("/", 1)[-1])
    capture, info = open_video(local)
    size = output_size(info, max_width)
    frames, images = [], []
    try:
        for frame in sample_frames(capture, info, fps, size):
            name = f"frames/{frame.index:06d}.jpg"
            images.append((name, frame.image))
            frames.append({"i": frame.index, "t": frame.t, "file": name})
    finally:
        capture.release()
    # JPEG files in S3; fused with the stages that read them, the frames as they are.
    ctx.put_images(images, quality)
    index = {
        "source": str(source),
        "video": {
            "width": info.width,
            "height": info.height,
            "fps": round(info.fps, 3),
            "frames": info.declared_frames,
            "duration": round(info.duration, 3),
            "codec": info.codec,
            "size_bytes": info.size_bytes,
        },
        "sample_fps": fps,
        "frame_width": size[0],
        "frame_height": size[1],
        "frames": frames,
    }
    ctx.put_json("index.json", index)
    return StageReport(
        outputs={"index": "index.json", "frames": "frames/"},
        metrics={"frames": len(frames), "duration": index["video"]["duration"]},
    )


if __name__ == "__main__":
    run_stage(main)
