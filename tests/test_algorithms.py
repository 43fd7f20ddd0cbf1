"""motion, anonymize and thumbnails: their pure parts, then real clips end to end."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from algorithms.anonymize.tracks import Tracks, blur_boxes
from algorithms.decode.video import open_video
from algorithms.motion.detector import Segment, gate, segments
from algorithms.thumbnails.__main__ import pick
from orchestrator.cli.oneshot import process_files
from orchestrator.cli.samples import load_photo
from orchestrator.settings import Settings
from tests.conftest import SampleClips


def test_motion_segments_merge_close_runs_and_drop_quiet_frames() -> None:
    times = [i * 0.2 for i in range(12)]
    scores = [0, 0, 0.1, 0.2, 0, 0, 0.05, 0, 0, 0, 0, 0.3]
    found = segments(times, scores, threshold=0.01, min_gap=0.5, frame_step=0.2)
    assert found == [Segment(0.4, 1.4, 0.2), Segment(2.2, 2.4, 0.3)]
    assert segments(times, [0.0] * 12, 0.01, 0.5, 0.2) == []
    assert gate([0.0, 0.3, 1.5, 1.8, 2.0], found, padding=0.2) == [False, True, True, False, True]


def test_boxes_move_linearly_between_samples_and_unmatched_ones_are_held() -> None:
    tracks = Tracks([(0.0, [(0, 0, 10, 10)]), (1.0, [(10, 0, 10, 10), (100, 100, 5, 5)])])
    assert tracks.boxes_at(-1) == [(0, 0, 10, 10)]
    assert tracks.boxes_at(0.5) == [(5.0, 0.0, 10.0, 10.0), (100, 100, 5, 5)]
    assert tracks.boxes_at(2.0) == [(10, 0, 10, 10), (100, 100, 5, 5)]
    # A face seen only before a gap is kept blurred through it.
    held = Tracks([(0.0, [(0, 0, 10, 10)]), (1.0, [])])
    assert held.boxes_at(0.9) == [(0, 0, 10, 10)]
    assert Tracks([]).boxes_at(0.3) == []


def _sharpness(image: np.ndarray, box: tuple[float, ...]) -> float:
    x, y, w, h = (round(v) for v in box)
    region = cv2.cvtColor(image[max(0, y) : y + h, max(0, x) : x + w], cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(region, cv2.CV_64F).var())


def test_blurring_destroys_detail_inside_the_box_only() -> None:
    photo = load_photo("astronaut")
    face, elsewhere = (180, 65, 85, 115), (330, 300, 120, 120)
    before = (_sharpness(photo, face), _sharpness(photo, elsewhere))
    blurred = photo.copy()
    assert blur_boxes(blurred, [face]) == 1
    assert _sharpness(blurred, face) < 0.05 * before[0]
    assert _sharpness(blurred, elsewhere) == pytest.approx(before[1])


def test_thumbnails_prefer_frames_with_detections_spread_over_the_clip() -> None:
    frames = [{"i": i, "t": i / 5, "detections": [1] if i % 2 else []} for i in range(20)]
    chosen = pick(frames, 4)
    assert [f["i"] for f in chosen] == [1, 7, 13, 19]
    assert [f["i"] for f in pick([{"i": 0, "t": 0, "detections": []}], 4)] == [0]


def _frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.mark.slow
def test_privacy_blurs_the_face_in_every_frame_of_a_real_h264_video(
    settings: Settings, clips: SampleClips, tmp_path: Path
) -> None:
    [result] = process_files(
        settings, "privacy", [clips.face], "acme", "door", 300, out_dir=tmp_path
    )
    assert result["status"] == "succeeded", result["error"]
    video = Path(result["saved_to"]) / "anonymized.mp4"
    assert result["artifacts"]["anonymized_video"].endswith("/anonymize/anonymized.mp4")

    source, anonymized = _frames(clips.face), _frames(video)
    assert len(anonymized) == len(source) == 45
    capture, info = open_video(video)
    capture.release()
    assert (info.codec, info.fps, info.width, info.height) == ("h264", 15.0, 640, 480)
    assert info.duration == pytest.approx(3.0)

    inside, outside = [], []
    for index, (before, after) in enumerate(zip(source, anonymized, strict=True)):
        face = clips.true_face_box("face", index)
        inside.append(_sharpness(after, face) / _sharpness(before, face))
        corner = (420.0, 330.0, 200.0, 140.0)  # the suit and the helmet, far from the face
        outside.append(_sharpness(after, corner) / _sharpness(before, corner))
    assert max(inside) < 0.15, inside  # the face is blurred in every single frame
    assert 0.75 < float(np.median(outside)) < 1.25, outside  # the rest barely changes


@pytest.mark.slow
def test_motion_is_found_where_something_moves_and_not_on_a_still_scene(
    settings: Settings, motion_clips: dict[str, Path], tmp_path: Path
) -> None:
    moving, still = process_files(
        settings,
        "motion",
        [motion_clips["moving"], motion_clips["still"]],
        "acme",
        "door",
        300,
        out_dir=tmp_path,
    )
    assert moving["status"] == still["status"] == "succeeded"
    [segment] = moving["motion"]["segments"]
    assert 1.4 <= segment["start"] <= 1.8 and 2.8 <= segment["end"] <= 3.2, segment
    assert still["motion"]["segments"] == [] and still["motion"]["frames_with_motion"] == 0


@pytest.mark.slow
def test_the_motion_gate_spares_the_model_frames_without_motion(
    settings: Settings, motion_clips: dict[str, Path], tmp_path: Path
) -> None:
    [result] = process_files(
        settings, "privacy", [motion_clips["moving"]], "acme", "door", 300, out_dir=tmp_path
    )
    faces = next(s for s in result["stages"] if s["name"] == "faces")["metrics"]
    assert faces["frames"] == 20
    assert faces["frames_analysed"] < faces["frames"]
    # The subject carries a face while it crosses: found during the motion only.
    seen = [f["t"] for f in result["frames"] if f["detections"]]
    assert seen and min(seen) >= 1.4 and max(seen) <= 3.2
