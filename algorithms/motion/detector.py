"""Motion by background subtraction (OpenCV MOG2), and motion segments. Pure of S3."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

#: Frames are scored at this width: enough for people and cars, cheap, and it
#: smooths the encoder's noise.
SCORE_WIDTH = 320


class MotionScorer:
    """Feeds frames in order; returns the share of the frame that moved (0..1)."""

    def __init__(self, history: int = 50, var_threshold: float = 25.0) -> None:
        self.subtractor = cv2.createBackgroundSubtractorMOG2(
            history=history, varThreshold=var_threshold, detectShadows=False
        )
        self.kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self.seen = 0

    def score(self, image_bgr: np.ndarray) -> float:
        height, width = image_bgr.shape[:2]
        small = cv2.resize(
            image_bgr,
            (SCORE_WIDTH, max(1, round(height * SCORE_WIDTH / width))),
            interpolation=cv2.INTER_AREA,
        )
        gray = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (5, 5), 0)
        mask = self.subtractor.apply(gray)
        self.seen += 1
        if self.seen == 1:
            return 0.0  # the first frame is all "new": it only seeds the background
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self.kernel)
        return float(np.count_nonzero(mask)) / mask.size


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    peak: float


def segments(
    times: Sequence[float],
    scores: Sequence[float],
    threshold: float,
    min_gap: float,
    frame_step: float,
) -> list[Segment]:
    """Runs of frames scoring at least ``threshold``; runs less than ``min_gap`` seconds
    apart are one segment. A segment ends one frame step after its last moving frame."""
    found: list[Segment] = []
    for t, score in zip(times, scores, strict=True):
        if score < threshold:
            continue
        if found and t - found[-1].end <= min_gap:
            last = found[-1]
            found[-1] = Segment(last.start, t + frame_step, max(last.peak, score))
        else:
            found.append(Segment(t, t + frame_step, score))
    return [Segment(round(s.start, 3), round(s.end, 3), round(s.peak, 4)) for s in found]


def gate(times: Iterable[float], spans: Sequence[Segment], padding: float) -> list[bool]:
    """For each time: inside a motion segment (widened by ``padding``)?"""
    return [any(s.start - padding <= t <= s.end + padding for s in spans) for t in times]
