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
    """(K, K) int64 counts for one image.

    Ground truth outside 0..K-1 (and ``ignore_id``) is skipped; a prediction outside 0..K-1 on a
    counted pixel is a caller bug and raises ValueError.
    """
    if gt.shape != pred.shape:
        raise ValueError(
            f"ground truth shape {gt.shape} differs from prediction shape {pred.shape}"
        )
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
    """Return the scores of a confusion matrix: IoU_c = TP / (TP + FP + FN).

    Classes with TP + FP + FN = 0 are NaN and excluded from the mean.
    """
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


# -- boundary F-score ---------------------------------------------------------------------------
def label_boundaries(labels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label (both pixels ``valid``).

    So a change between two classes marks one pixel on each side's first row/column.
    """
    lab = np.asarray(labels)
    b = np.zeros(lab.shape, bool)
    right = lab[:, 1:] != lab[:, :-1]
    down = lab[1:] != lab[:-1]
    if valid is not None:
        right &= valid[:, 1:] & valid[:, :-1]
        down &= valid[1:] & valid[:-1]
    b[:, :-1] |= right
    b[:, 1:] |= right
    b[:-1] |= down
    b[1:] |= down
    return b


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` grown by a disk of ``radius`` pixels (OR of shifted copies; no SciPy needed)."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius:
                out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= \
                    mask[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


class BoundaryAccumulator:
    """Boundary F-score over a dataset.

    A predicted boundary pixel is correct when a ground-truth boundary lies within ``tolerance``
    pixels (precision), and vice versa (recall); counts are summed over images. Boundaries touching
    ignored ground truth are not scored.
    """

    def __init__(
        self, tolerance: int = 3, ignore_id: int | None = None, num_classes: int | None = None
    ) -> None:
        self.tolerance, self.ignore_id, self.num_classes = tolerance, ignore_id, num_classes
        self.matched_pred = self.pred = self.matched_gt = self.gt = 0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        if gt.shape != pred.shape:
            raise ValueError(
                f"ground truth shape {gt.shape} differs from prediction shape {pred.shape}"
            )
        valid = np.ones(gt.shape, bool)
        if self.num_classes is not None:
            valid &= (gt >= 0) & (gt < self.num_classes)
        if self.ignore_id is not None:
            valid &= gt != self.ignore_id
        gt_b = label_boundaries(gt, valid)
        pred_b = label_boundaries(pred, valid)
        self.matched_pred += int((pred_b & dilate_disk(gt_b, self.tolerance)).sum())
        self.matched_gt += int((gt_b & dilate_disk(pred_b, self.tolerance)).sum())
        self.pred += int(pred_b.sum())
        self.gt += int(gt_b.sum())

    def scores(self) -> dict[str, float]:
        """precision, recall and F (NaN where undefined)."""
        p = self.matched_pred / self.pred if self.pred else float("nan")
        r = self.matched_gt / self.gt if self.gt else float("nan")
        f = 2 * p * r / (p + r) if (p + r) > 0 else (0.0 if p == 0 and r == 0 else float("nan"))
        return {
            "boundary_precision": p,
            "boundary_recall": r,
            "boundary_f": f,
            "tolerance_px": self.tolerance,
        }
