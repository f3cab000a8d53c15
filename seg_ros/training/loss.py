"""Cross entropy with ignore id, optional OHEM and class weights, auxiliary-head weighting."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def median_frequency_weights(labels: list[np.ndarray], num_classes: int) -> torch.Tensor:
    """SegNet's median frequency balancing: w_c = median(freq) / freq_c over images containing c."""
    pixels = np.zeros(num_classes)
    image_pixels = np.zeros(num_classes)
    for lab in labels:
        counts = np.bincount(lab.ravel(), minlength=256)[:num_classes]
        pixels += counts
        image_pixels += (counts > 0) * lab.size
    freq = np.where(image_pixels > 0, pixels / np.maximum(image_pixels, 1), 0)
    med = np.median(freq[freq > 0])
    return torch.tensor(np.where(freq > 0, med / np.maximum(freq, 1e-12), 0.0), dtype=torch.float32)


class SegLoss(torch.nn.Module):
    """CE on logits upsampled to the label size; OHEM keeps pixels with p(true) < ``ohem_thresh``
    (at least ``ohem_min_kept``); the auxiliary logits add ``aux_weight`` times the same loss."""

    def __init__(self, ignore_id: int, ohem: bool = False, ohem_thresh: float = 0.7,
                 ohem_min_kept: int = 100_000, aux_weight: float = 0.4,
                 class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.ignore_id, self.ohem, self.thresh, self.min_kept = ignore_id, ohem, ohem_thresh, ohem_min_kept
        self.aux_weight = aux_weight
        self.register_buffer("class_weights", class_weights if class_weights is not None else None)

    def _single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        pixel = F.cross_entropy(logits.float(), target, weight=self.class_weights,
                                ignore_index=self.ignore_id, reduction="none").flatten()
        valid = target.flatten() != self.ignore_id
        if not valid.any():
            return logits.sum() * 0.0
        if not self.ohem:
            return pixel[valid].mean()
        with torch.no_grad():
            prob = torch.softmax(logits.float(), 1).gather(
                1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).flatten()
            prob = prob[valid]
            kept = min(self.min_kept, prob.numel() - 1)
            thresh = max(self.thresh, prob.kthvalue(kept + 1).values.item()) if kept >= 0 else self.thresh
        hard = pixel[valid][prob < thresh]
        return hard.mean() if hard.numel() else pixel[valid].mean()

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, (tuple, list)):
            main, aux = outputs
            return self._single(main, target) + self.aux_weight * self._single(aux, target)
        return self._single(outputs, target)
