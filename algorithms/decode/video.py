"""Probing and sampling a video with OpenCV: pure of S3, testable on local files."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from algorithms.sdk import BadInput

#: A clip that decodes to fewer than this share of the frames its container declares is
#: truncated (an interrupted upload), not merely rounded.
MIN_DECODED_SHARE = 0.9


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    declared_frames: int
    codec: str
    size_bytes: int

    @property
    def duration(self) -> float:
        return self.declared_frames / self.fps if self.fps > 0 else 0.0


def _fourcc(value: float) -> str:
    code = int(value)
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return text.strip("\x00 ").lower() or "unknown"


def open_video(path: Path) -> tuple[cv2.VideoCapture, VideoInfo]:
    """Opens ``path`` or raises BadInput naming why it is not a usable video."""
    size = path.stat().st_size
    if size == 0:
        raise BadInput("the clip is empty (0 bytes): the upload did not complete; upload it again")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise BadInput(
            f"the clip is not a readable video ({size} bytes that no demuxer accepts): "
            "it is corrupt or not a video file; upload an MP4 (H.264)"
        )
    info = VideoInfo(
        width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        fps=float(capture.get(cv2.CAP_PROP_FPS) or 0.0),
        declared_frames=max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
        codec=_fourcc(capture.get(cv2.CAP_PROP_FOURCC)),
        size_bytes=size,
    )
    if info.width <= 0 or info.height <= 0 or info.fps <= 0 or not math.isfinite(info.fps):
        capture.release()
        raise BadInput(
            f"the clip has no usable video stream (width {info.width}, height {info.height}, "
            f"fps {info.fps:g}): upload a clip with a video track"
        )
    return capture, info


@dataclass(frozen=True)
class SampledFrame:
    index: int  # frame number in the source
    t: float  # seconds into the clip
    image: np.ndarray


def output_size(info: VideoInfo, max_width: int | None) -> tuple[int, int]:
    """The size frames are written at: the source size, shrunk to ``max_width`` if wider."""
    if not max_width or info.width <= max_width:
        return info.width, info.height
    scale = max_width / info.width
    # Even sizes keep JPEG chroma subsampling and later encoders happy.
    return max_width - max_width % 2, max(2, round(info.height * scale / 2) * 2)


def sample_frames(
    capture: cv2.VideoCapture, info: VideoInfo, fps: float, size: tuple[int, int]
) -> Iterator[SampledFrame]:
    """Yields frames ``1/fps`` seconds apart; raises BadInput if the stream is cut short."""
    step = 1.0 / fps if fps > 0 else 0.0
    next_t = 0.0
    decoded = 0
    while capture.grab():
        index = decoded
        decoded += 1
        t = index / info.fps
        # Half a source frame of slack so that 5 fps over 25 fps picks every 5th frame.
        if t + 0.5 / info.fps < next_t:
            continue
        ok, image = capture.retrieve()
        if not ok or image is None:
            break
        if (image.shape[1], image.shape[0]) != size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        yield SampledFrame(index=index, t=round(t, 4), image=image)
        next_t = t + step
    if decoded == 0:
        raise BadInput(
            "the clip has a video stream but not one frame could be decoded: "
            "it is corrupt; upload it again"
        )
    if info.declared_frames and decoded < MIN_DECODED_SHARE * info.declared_frames:
        raise BadInput(
            f"the clip is truncated: its container declares {info.declared_frames} frames "
            f"but only {decoded} could be decoded; upload the complete file"
        )
