"""Real H.264 sample clips made from real photographs, for the demo and the tests.

The photographs ship inside scikit-image; the encoder is the ffmpeg (with libx264)
that ships inside imageio-ffmpeg. A slow pan and zoom over a still gives a clip whose
content, and so the true position of a face in every frame, is known exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class Photo:
    name: str
    #: Where the face is in the photograph (x, y, w, h), annotated by hand; None: no face.
    face: tuple[int, int, int, int] | None


PHOTOS = {
    "astronaut": Photo("astronaut", (180, 65, 85, 115)),
    "camera": Photo("camera", (205, 120, 55, 75)),
    "coffee": Photo("coffee", None),
    "chelsea": Photo("chelsea", None),
    "brick": Photo("brick", None),
}


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph as a BGR uint8 image."""
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)


@dataclass(frozen=True)
class Shot:
    """Per-frame crop window over the photo (x, y, size) scaled to the output size."""

    windows: list[tuple[float, float, float]]
    width: int
    height: int

    def face_box(self, face: tuple[int, int, int, int], frame: int) -> tuple[float, ...]:
        """Where ``face`` (photo pixels) appears in output frame ``frame``."""
        x0, y0, side_w, side_h = self._window(frame)
        sx, sy = self.width / side_w, self.height / side_h
        fx, fy, fw, fh = face
        return ((fx - x0) * sx, (fy - y0) * sy, fw * sx, fh * sy)

    def _window(self, frame: int) -> tuple[float, float, float, float]:
        x, y, size = self.windows[frame]
        return x, y, size * self.width / self.height, size


def pan_zoom(photo: np.ndarray, frames: int, width: int, height: int) -> Shot:
    """A slow zoom from the whole photo to 80 % of it, drifting right."""
    ph, pw = photo.shape[:2]
    aspect = width / height
    windows = []
    for i in range(frames):
        progress = i / max(1, frames - 1)
        size = min(ph, pw / aspect) * (1.0 - 0.2 * progress)
        span_x = pw - size * aspect
        span_y = ph - size
        windows.append((span_x * (0.2 + 0.6 * progress), span_y * 0.15, size))
    return Shot(windows, width, height)


def render(photo: np.ndarray, shot: Shot, frame: int) -> np.ndarray:
    x, y, w, h = shot._window(frame)
    matrix = np.array(
        [[shot.width / w, 0, -x * shot.width / w], [0, shot.height / h, -y * shot.height / h]],
        dtype=np.float32,
    )
    return cv2.warpAffine(photo, matrix, (shot.width, shot.height), flags=cv2.INTER_LINEAR)


def write_h264(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """Encodes BGR frames as H.264 (yuv420p) in MP4 with the ffmpeg of imageio-ffmpeg."""
    import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_in="bgr24",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        output_params=["-preset", "veryfast", "-crf", "23"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def make_clip(
    path: Path,
    photo_name: str,
    seconds: float = 4.0,
    fps: float = 15.0,
    width: int = 640,
    height: int = 480,
) -> Shot:
    """Writes a real H.264 clip panning over ``photo_name``; returns its geometry."""
    photo = load_photo(photo_name)
    count = max(1, round(seconds * fps))
    shot = pan_zoom(photo, count, width, height)
    write_h264(path, [render(photo, shot, i) for i in range(count)], fps)
    return shot


def make_static_clip(
    path: Path,
    photo_name: str,
    seconds: float = 3.0,
    fps: float = 15.0,
    width: int = 640,
    height: int = 480,
) -> None:
    """A fixed camera on a still scene: nothing moves."""
    frame = cv2.resize(load_photo(photo_name), (width, height), interpolation=cv2.INTER_AREA)
    write_h264(path, [frame] * max(1, round(seconds * fps)), fps)


def make_moving_object_clip(
    path: Path,
    background: str = "brick",
    subject: str = "astronaut",
    seconds: float = 4.0,
    moving: tuple[float, float] = (1.5, 3.0),
    fps: float = 15.0,
    width: int = 640,
    height: int = 480,
) -> None:
    """A fixed camera on a still scene that a subject (a crop of ``subject``) crosses
    between ``moving[0]`` and ``moving[1]`` seconds; before and after, it is out of view."""
    scene = cv2.resize(load_photo(background), (width, height), interpolation=cv2.INTER_AREA)
    patch = cv2.resize(load_photo(subject)[40:300, 140:320], (140, 200))
    frames = []
    for i in range(max(1, round(seconds * fps))):
        t = i / fps
        frame = scene.copy()
        if moving[0] <= t < moving[1]:
            progress = (t - moving[0]) / (moving[1] - moving[0])
            x = int(progress * (width - patch.shape[1]))
            y = (height - patch.shape[0]) // 2
            frame[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
        frames.append(frame)
    write_h264(path, frames, fps)
