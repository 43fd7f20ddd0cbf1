from pathlib import Path

import pytest

from algorithms.decode.video import open_video, output_size, sample_frames
from algorithms.sdk import BadInput
from tests.conftest import SampleClips


def test_a_real_h264_clip_is_probed_and_sampled(clips: SampleClips) -> None:
    capture, info = open_video(clips.face)
    assert (info.width, info.height, info.fps, info.codec) == (640, 480, 15.0, "h264")
    assert info.declared_frames == 45 and info.duration == pytest.approx(3.0)
    frames = list(sample_frames(capture, info, fps=5, size=(320, 240)))
    assert [f.index for f in frames] == list(range(0, 45, 3))
    assert [f.t for f in frames][:3] == pytest.approx([0.0, 0.2, 0.4])
    assert frames[0].image.shape == (240, 320, 3)


def test_frames_wider_than_the_limit_are_scaled_keeping_aspect(clips: SampleClips) -> None:
    _, info = open_video(clips.face)
    assert output_size(info, None) == (640, 480)
    assert output_size(info, 1280) == (640, 480)
    assert output_size(info, 320) == (320, 240)


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("empty", "the clip is empty (0 bytes)"),
        ("not_video", "not a readable video"),
        ("truncated", "not a readable video"),
        ("corrupt", ""),
    ],
)
def test_bad_files_are_refused_with_a_reason(clips: SampleClips, which: str, message: str) -> None:
    path: Path = getattr(clips, which)
    with pytest.raises(BadInput) as caught:
        capture, info = open_video(path)
        list(sample_frames(capture, info, fps=5, size=(info.width, info.height)))
    assert message in str(caught.value)
    assert "upload" in str(caught.value)  # it says what to do
