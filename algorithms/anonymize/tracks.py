"""Where faces are between sampled frames, and blurring them. Pure of S3 and files.

Detections exist only for sampled frames (say 5 of every 15). For the frames between,
a box matched across its two neighbouring samples moves linearly between them; a box
seen in only one of them is held over the whole gap. Erring on the side of blurring
too much is the right error for anonymization.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import cv2
import numpy as np

Box = tuple[float, float, float, float]  # x, y, w, h


def _distance(a: Box, b: Box) -> float:
    """Centre distance in units of the boxes' mean size: 1.0 = moved one face-width."""
    dx = (a[0] + a[2] / 2) - (b[0] + b[2] / 2)
    dy = (a[1] + a[3] / 2) - (b[1] + b[3] / 2)
    size = (a[2] + a[3] + b[2] + b[3]) / 4
    return (dx * dx + dy * dy) ** 0.5 / size if size > 0 else float("inf")


def _match(before: Sequence[Box], after: Sequence[Box], max_distance: float) -> dict[int, int]:
    """Greedy nearest-first pairing. Centres, not overlap: between two samples a face
    may move further than its own width, and then boxes no longer overlap at all."""
    pairs = sorted(
        (_distance(a, b), i, j) for i, a in enumerate(before) for j, b in enumerate(after)
    )
    matched: dict[int, int] = {}
    used: set[int] = set()
    for distance, i, j in pairs:
        if distance > max_distance:
            break
        if i not in matched and j not in used:
            matched[i] = j
            used.add(j)
    return matched


class Tracks:
    def __init__(
        self, samples: Sequence[tuple[float, Sequence[Box]]], max_distance: float = 1.5
    ) -> None:
        self.samples = sorted(samples, key=lambda s: s[0])
        self.times = [t for t, _ in self.samples]
        self.max_distance = max_distance

    def boxes_at(self, t: float) -> list[Box]:
        if not self.samples:
            return []
        k = bisect_right(self.times, t)
        if k == 0:
            return list(self.samples[0][1])
        if k == len(self.samples):
            return list(self.samples[-1][1])
        (t0, before), (t1, after) = self.samples[k - 1], self.samples[k]
        if t == t0:
            return list(before)
        alpha = (t - t0) / (t1 - t0)
        matched = _match(before, after, self.max_distance)
        boxes: list[Box] = []
        for i, a in enumerate(before):
            if i in matched:
                b = after[matched[i]]
                boxes.append(tuple(av + alpha * (bv - av) for av, bv in zip(a, b, strict=True)))
            else:
                boxes.append(a)
        boxes += [b for j, b in enumerate(after) if j not in set(matched.values())]
        return boxes


def blur_boxes(frame: np.ndarray, boxes: Sequence[Box], margin: float = 0.15) -> int:
    """Blurs each box (grown by ``margin`` of its size on every side) in place, beyond
    recognition; returns how many were blurred."""
    height, width = frame.shape[:2]
    done = 0
    for x, y, w, h in boxes:
        x0 = int(max(0, x - margin * w))
        y0 = int(max(0, y - margin * h))
        x1 = int(min(width, x + w * (1 + margin)))
        y1 = int(min(height, y + h * (1 + margin)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        region = frame[y0:y1, x0:x1]
        # Pixelate, then smooth the blocks: no detail survives, and no blocky edges.
        small = cv2.resize(
            region, (max(1, (x1 - x0) // 12), max(1, (y1 - y0) // 12)), interpolation=cv2.INTER_AREA
        )
        coarse = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        kernel = max(3, (min(x1 - x0, y1 - y0) // 4) | 1)
        frame[y0:y1, x0:x1] = cv2.GaussianBlur(coarse, (kernel, kernel), 0)
        done += 1
    return done
