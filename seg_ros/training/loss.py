"""Cross entropy with ignore id, optional OHEM and class weights, auxiliary-head weighting."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def median_frequency_weights(labels: list[np.ndarray], num_classes: int) -> torch.Tensor:
    """Compute SegNet's median frequency balancing weights.

    w_c = median(freq) / freq_c, the frequencies over the images containing c.
    """
    pixels = np.zeros(num_classes)
    image_pixels = np.zeros(num_classes)
    for lab in labels:
        counts = np.bincount(lab.ravel(), minlength=256)[:num_classes]
        pixels += counts
        image_pixels += (counts > 0) * lab.size
    freq = np.where(image_pixels > 0, pixels / np.maximum(image_pixels, 1), 0)
    med = np.median(freq[freq > 0])
    weights = np.where(freq > 0, med / np.maximum(freq, 1e-12), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class SegLoss(torch.nn.Module):
    """Segmentation loss: cross entropy, OHEM, class weights, auxiliary head.

    CE on logits upsampled to the label size; OHEM keeps pixels with p(true) < ``ohem_thresh``
    (at least ``ohem_min_kept``); the auxiliary logits add ``aux_weight`` times the same loss.
    """

    def __init__(self, ignore_id: int, ohem: bool = False, ohem_thresh: float = 0.7,
                 ohem_min_kept: int = 100_000, aux_weight: float = 0.4,
                 class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.ignore_id, self.ohem = ignore_id, ohem
        self.thresh, self.min_kept = ohem_thresh, ohem_min_kept
        self.aux_weight = aux_weight
        self.register_buffer("class_weights", class_weights if class_weights is not None else None)

    def _single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over valid (OHEM: hard) pixels; written without host syncs, which stall a GPU."""
        logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear",
                               align_corners=False)
        log_prob = F.log_softmax(logits, 1)  # once: the loss and OHEM's p(true) share it
        pixel = F.nll_loss(log_prob, target, weight=self.class_weights,
                           ignore_index=self.ignore_id, reduction="none")  # 0 at ignored pixels
        valid = target != self.ignore_id
        plain = pixel.sum() / valid.sum().clamp(min=1)
        if not self.ohem:
            return plain
        with torch.no_grad():
            true = target.clamp(0, logits.shape[1] - 1).unsqueeze(1)
            prob = log_prob.gather(1, true).squeeze(1).exp_().masked_fill_(~valid, 2.0)
            hard = prob < self._ohem_threshold(prob)
            kept = hard.sum()
        return torch.where(kept > 0, (pixel * hard).sum() / kept.clamp(min=1), plain)

    def _ohem_threshold(self, prob: torch.Tensor) -> torch.Tensor | float:
        """Return the OHEM probability threshold of a batch.

        max(thresh, the (min_kept + 1)-th smallest p(true)); ignored pixels hold 2.0, above
        every probability, so fewer valid pixels than that keep them all. On the CPU the order
        statistic is skipped when at least that many pixels are below ``thresh`` anyway.
        """
        k = min(self.min_kept + 1, prob.numel())
        if prob.device.type == "cpu" and int((prob < self.thresh).sum()) >= k:
            return self.thresh
        return prob.flatten().kthvalue(k).values.clamp(min=self.thresh)

    def forward(self, outputs, target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, (tuple, list)):
            main, aux = outputs
            return self._single(main, target) + self.aux_weight * self._single(aux, target)
        return self._single(outputs, target)
