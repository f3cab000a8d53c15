"""Segmentation quality from a confusion matrix: IoU per class, mIoU, pixel accuracy.

ROS-free and torch-free so the eval tool, training scripts and tests all score the same way.
Rows of the confusion matrix are ground truth, columns are predictions. Pixels whose ground
truth is the ignore id (or any value outside 0..K-1) are not counted. A class that appears in
neither the ground truth nor the predictions has no IoU (NaN) and is left out of the mean, so a
small evaluation set is not penalised for classes it never shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                     ignore_id: int | None = None) -> np.ndarray:
    """(K, K) int64 counts for one image. Ground truth outside 0..K-1 (and ``ignore_id``) is skipped;
    a prediction outside 0..K-1 on a counted pixel is a caller bug and raises ValueError."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} differs from prediction shape {pred.shape}")
    gt = np.asarray(gt).astype(np.int64, copy=False).ravel()
    pred = np.asarray(pred).astype(np.int64, copy=False).ravel()
    valid = (gt >= 0) & (gt < num_classes)
    if ignore_id is not None:
        valid &= gt != ignore_id
    gt, pred = gt[valid], pred[valid]
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"prediction holds label {int(pred.max())} outside 0..{num_classes - 1}")
    return np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


@dataclass
class Scores:
    """What an evaluation reports. ``per_class_iou`` is NaN for classes absent from both sides."""

    confusion: np.ndarray
    per_class_iou: np.ndarray
    miou: float
    pixel_accuracy: float
    per_class_accuracy: np.ndarray
    mean_accuracy: float
    counted_pixels: int

    def to_dict(self, names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready report: fractions 0..1, ``None`` where a class has no score."""
        def clean(v: float) -> float | None:
            return None if np.isnan(v) else float(v)
        return {
            "miou": clean(self.miou),
            "pixel_accuracy": clean(self.pixel_accuracy),
            "mean_accuracy": clean(self.mean_accuracy),
            "per_class_iou": {n: clean(v) for n, v in zip(names, self.per_class_iou)},
            "per_class_accuracy": {n: clean(v) for n, v in zip(names, self.per_class_accuracy)},
            "counted_pixels": int(self.counted_pixels),
            "class_names": list(names),
            "confusion": self.confusion.astype(int).tolist(),
        }


def scores_from_confusion(confusion: np.ndarray) -> Scores:
    """IoU_c = TP / (TP + FP + FN); classes with TP + FP + FN = 0 are NaN and excluded from the mean."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    gt_count = cm.sum(axis=1)
    pred_count = cm.sum(axis=0)
    union = gt_count + pred_count - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_count > 0, tp / gt_count, np.nan)
    total = cm.sum()
    present = ~np.isnan(iou)
    return Scores(
        confusion=np.asarray(confusion, dtype=np.int64),
        per_class_iou=iou,
        miou=float(iou[present].mean()) if present.any() else float("nan"),
        pixel_accuracy=float(tp.sum() / total) if total > 0 else float("nan"),
        per_class_accuracy=acc,
        mean_accuracy=float(np.nanmean(acc)) if (~np.isnan(acc)).any() else float("nan"),
        counted_pixels=int(total))


class ConfusionAccumulator:
    """Sums confusion matrices over many images (what a dataset's scores are computed from)."""

    def __init__(self, num_classes: int, ignore_id: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_id = ignore_id
        self.matrix = np.zeros((num_classes, num_classes), np.int64)
        self.images = 0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        self.matrix += confusion_matrix(gt, pred, self.num_classes, self.ignore_id)
        self.images += 1

    def scores(self) -> Scores:
        return scores_from_confusion(self.matrix)
