"""vidpipe.agreement, the metric every "same detections as the reference" test uses."""

from __future__ import annotations

import numpy as np

from vidpipe.agreement import agree


def frame(boxes, labels, scores):
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(labels), np.array(scores, np.float32)


def test_matches_need_class_overlap_and_score():
    ref = frame([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], [0.9, 0.5])
    ours = frame([[0, 0, 10, 10.5], [20, 20, 30, 30], [50, 50, 60, 60]], [1, 3, 1], [0.91, 0.5, 0.4])
    found = agree([ours], [ref], iou=0.9, score_tol=0.02)
    assert (found.matched, found.reference, found.extra) == (1, 2, 1)  # the second differs in class
    assert agree([ours], [ref], iou=0.9, score_tol=0.001).matched == 0  # scores 0.01 apart


def test_boxes_without_area_match_only_themselves():
    """A box clipped to a frame edge has no area and no defined IoU: the same box matches, another
    does not (without this, exact implementations disagreed on every clipped box)."""
    ref = frame([[5, 7, 5, 20], [0, 3, 9, 3]], [1, 1], [0.5, 0.4])
    same = agree([ref], [ref], iou=0.9)
    moved = agree([frame([[5, 7, 5, 21], [0, 3, 9, 3]], [1, 1], [0.5, 0.4])], [ref], iou=0.9)
    assert same.matched == 2 and moved.matched == 1
