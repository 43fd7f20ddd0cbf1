import numpy as np
import pytest

from algorithms.faces.centerface import STRIDE, CenterFace, decode, network_size, nms
from orchestrator.cli.samples import PHOTOS, load_photo
from tests.helpers import iou


def test_decode_places_a_box_from_centre_scale_and_offset() -> None:
    heatmap = np.zeros((8, 8), np.float32)
    heatmap[2, 3] = 0.9
    scale = np.zeros((2, 8, 8), np.float32)
    scale[0, 2, 3] = np.log(20 / STRIDE)  # height 20 px
    scale[1, 2, 3] = np.log(10 / STRIDE)  # width 10 px
    offset = np.zeros((2, 8, 8), np.float32)
    offset[0, 2, 3], offset[1, 2, 3] = 0.25, -0.5
    boxes, scores = decode(heatmap, scale, offset, (32, 32), threshold=0.5)
    centre_y, centre_x = (2 + 0.25 + 0.5) * STRIDE, (3 - 0.5 + 0.5) * STRIDE
    np.testing.assert_allclose(
        boxes[0], [centre_x - 5, centre_y - 10, centre_x + 5, centre_y + 10], rtol=1e-5
    )
    assert scores.tolist() == pytest.approx([0.9])


def test_decode_keeps_only_cells_above_threshold_and_clips_to_the_image() -> None:
    heatmap = np.full((4, 4), 0.2, np.float32)
    heatmap[0, 0] = 0.7
    scale = np.full((2, 4, 4), np.log(40 / STRIDE), np.float32)
    boxes, _ = decode(heatmap, scale, np.zeros((2, 4, 4), np.float32), (16, 16), 0.5)
    assert boxes.shape == (1, 4)
    assert boxes.min() >= 0 and boxes.max() <= 16


def test_nms_drops_overlapping_boxes_and_keeps_separate_ones() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.3).tolist() == []


def test_network_input_is_a_multiple_of_32_and_bounded() -> None:
    assert network_size(640, 480, 640) == (640, 480)
    assert network_size(1920, 1080, 640) == (640, 384)
    assert network_size(100, 50, None) == (128, 64)


@pytest.fixture(scope="module")
def detector() -> CenterFace:
    return CenterFace()


@pytest.mark.parametrize("photo", ["astronaut", "camera"])
def test_the_pretrained_model_finds_the_face_where_it_is(detector: CenterFace, photo: str) -> None:
    found = detector.detect(load_photo(photo))
    assert len(found) == 1
    truth = PHOTOS[photo].face
    assert truth is not None
    assert iou(found[0].box, truth) > 0.5, (found, truth)
    assert found[0].score > 0.7


@pytest.mark.parametrize("photo", ["coffee", "chelsea", "brick"])
def test_the_model_finds_no_face_where_there_is_none(detector: CenterFace, photo: str) -> None:
    assert detector.detect(load_photo(photo)) == []


def test_boxes_on_a_downscaled_frame_map_back_to_original_pixels(detector: CenterFace) -> None:
    import cv2

    photo = load_photo("astronaut")
    half = cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA)
    full = detector.detect(photo)[0].box
    mapped = detector.detect(half, scale_to=(2.0, 2.0))[0].box
    assert iou(full, mapped) > 0.8


def test_the_faces_stage_s_session_sleeps_when_idle_and_a_plain_one_spins() -> None:
    """The stage shares cores with its neighbours, so its threads must not spin-wait;
    a plain CenterFace keeps onnxruntime's default (the bench's bare loop uses it)."""
    from algorithms.faces.__main__ import _detector

    key = "session.intra_op.allow_spinning"
    stage = _detector("cpu", 1).session.get_session_options()
    assert stage.get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        CenterFace().session.get_session_options().get_session_config_entry(key)


def test_frames_run_through_the_model_together_find_what_each_alone_finds(
    detector: CenterFace,
) -> None:
    import cv2

    photos = [load_photo(name) for name in ("astronaut", "coffee", "camera", "chelsea")]
    # Two sizes mixed: each batch holds frames of one size, and the order is kept.
    frames = [*photos, cv2.resize(photos[0], (256, 256)), photos[2]]
    alone = [detector.detect(frame, scale_to=(2.0, 1.5)) for frame in frames]
    for batch_size in (1, 3, 16):
        together = detector.detect_many(frames, scale_to=(2.0, 1.5), batch_size=batch_size)
        assert [len(found) for found in together] == [len(found) for found in alone]
        for mine, theirs in zip(together, alone, strict=True):
            for a, b in zip(mine, theirs, strict=True):
                assert iou(a.box, b.box) > 0.99 and abs(a.score - b.score) < 1e-3
    assert [len(found) for found in alone] == [1, 0, 1, 0, 1, 1]
    assert detector.detect_many([]) == []
