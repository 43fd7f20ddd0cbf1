"""CenterFace's NMS (OpenCV's) keeps exactly what the NumPy loop it replaced kept."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from algorithms.faces.centerface import (
    INPUT_NAME,
    OUTPUT_NAMES,
    CenterFace,
    decode,
    network_size,
    nms,
)
from orchestrator.cli.samples import PHOTOS, load_photo


def reference_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """The greedy NumPy loop the stage used before (boxes as x1, y1, x2, y2)."""
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        inter_w = np.maximum(0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
        inter_h = np.maximum(0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
        inter = inter_w * inter_h
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou < iou_threshold]
    return np.asarray(keep, np.int64)


def _random_boxes(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    # Crowded: many boxes overlap each other by all sorts of amounts.
    x1 = rng.uniform(0, 200, count)
    y1 = rng.uniform(0, 200, count)
    boxes = np.stack(
        [x1, y1, x1 + rng.uniform(1, 80, count), y1 + rng.uniform(1, 80, count)], axis=1
    ).astype(np.float32)
    return boxes, rng.uniform(0.01, 1, count).astype(np.float32)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("iou_threshold", [0.1, 0.3, 0.5, 0.7])
def test_random_boxes_keep_the_same_indices(seed: int, iou_threshold: float) -> None:
    boxes, scores = _random_boxes(np.random.default_rng(seed), 300)
    expected = reference_nms(boxes, scores, iou_threshold)
    assert 1 < len(expected) < len(boxes)  # the case has something to suppress
    assert nms(boxes, scores, iou_threshold).tolist() == expected.tolist()


def test_equal_scores_keep_the_earlier_box_as_before() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [2, 2, 12, 12]], np.float32)
    scores = np.full(3, 0.5, np.float32)
    assert nms(boxes, scores, 0.3).tolist() == reference_nms(boxes, scores, 0.3).tolist() == [0]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.3).tolist() == []


@pytest.fixture(scope="module")
def detector() -> CenterFace:
    return CenterFace()


@pytest.mark.parametrize("photo", sorted(PHOTOS))
@pytest.mark.parametrize("iou_threshold", [0.1, 0.3, 0.5])
def test_the_models_own_boxes_keep_the_same_indices(
    detector: CenterFace, photo: str, iou_threshold: float
) -> None:
    image = load_photo(photo)
    net_w, net_h = network_size(image.shape[1], image.shape[0], 640)
    blob = cv2.dnn.blobFromImage(image, 1.0, (net_w, net_h), (0, 0, 0), swapRB=True)
    heatmap, scale, offset, _ = detector.session.run(list(OUTPUT_NAMES), {INPUT_NAME: blob})
    # A low threshold: the dozens of overlapping candidates around each face.
    boxes, scores = decode(heatmap[0, 0], scale[0], offset[0], (net_w, net_h), 0.02)
    assert len(boxes) > 5
    expected = reference_nms(boxes, scores, iou_threshold)
    assert nms(boxes, scores, iou_threshold).tolist() == expected.tolist()
