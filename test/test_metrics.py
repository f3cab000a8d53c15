"""Scores on hand-built cases whose answers are worked out by hand in the comments."""
from __future__ import annotations

import math

import numpy as np
import pytest

from seg_ros.metrics import ConfusionAccumulator, confusion_matrix, scores_from_confusion


def test_perfect_prediction_scores_one():
    gt = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    s = scores_from_confusion(confusion_matrix(gt, gt.copy(), 3))
    assert s.miou == 1.0 and s.pixel_accuracy == 1.0
    assert list(s.per_class_iou) == [1.0, 1.0, 1.0]


def test_known_partial_case():
    # gt   = 0 0 1 1 ; pred = 0 1 1 1  (class 2 appears nowhere)
    # class 0: TP 1, FP 0, FN 1 -> 1/2 ; class 1: TP 2, FP 1, FN 0 -> 2/3 ; mIoU = (1/2 + 2/3) / 2
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    cm = confusion_matrix(gt, pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    s = scores_from_confusion(cm)
    assert s.per_class_iou[0] == pytest.approx(0.5)
    assert s.per_class_iou[1] == pytest.approx(2 / 3)
    assert math.isnan(s.per_class_iou[2])  # absent from both: excluded from the mean
    assert s.miou == pytest.approx((0.5 + 2 / 3) / 2)
    assert s.pixel_accuracy == pytest.approx(3 / 4)


def test_ignore_id_pixels_are_not_counted():
    gt = np.array([[0, 11, 11, 1]])
    pred = np.array([[0, 1, 0, 1]])  # wrong where gt is ignore: must not matter
    s = scores_from_confusion(confusion_matrix(gt, pred, 2, ignore_id=11))
    assert s.counted_pixels == 2
    assert s.miou == 1.0 and s.pixel_accuracy == 1.0
    # An ignore id inside 0..K-1 is honoured too.
    s = scores_from_confusion(
        confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 0]), 3, ignore_id=1)
    )
    assert s.counted_pixels == 1 and s.miou == 1.0


def test_predicted_but_absent_class_counts_against_the_mean():
    # gt all 0, pred half 1: class 0 IoU 1/2, class 1 IoU 0 (a false positive class is not
    # "absent").
    s = scores_from_confusion(confusion_matrix(np.zeros(4, int), np.array([0, 0, 1, 1]), 3))
    assert s.per_class_iou[:2].tolist() == [0.5, 0.0]
    assert s.miou == pytest.approx(0.25)


def test_accumulator_sums_images_and_report_is_json_ready():
    acc = ConfusionAccumulator(2, ignore_id=255)
    acc.add(np.array([0, 0]), np.array([0, 0]))
    acc.add(np.array([1, 255]), np.array([0, 1]))
    rep = acc.scores().to_dict(["a", "b"])
    assert acc.images == 2
    assert rep["confusion"] == [[2, 0], [1, 0]]
    assert rep["per_class_iou"] == {"a": pytest.approx(2 / 3), "b": 0.0}
    assert rep["pixel_accuracy"] == pytest.approx(2 / 3)


def test_shape_mismatch_and_out_of_range_prediction_are_errors():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.zeros(2, int), np.array([0, 5]), 2)
