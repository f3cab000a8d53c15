"""Training augmentation: random scale, crop padded with the ignore id, flip, photometric jitter.

Outputs are normalised exactly as the inference pipeline normalises (same mean/std, RGB order).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch


@dataclass
class AugmentConfig:
    crop: tuple[int, int] = (360, 480)
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25


def normalize(image: np.ndarray, mean, std) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> (3, H, W) float32, (x / 255 - mean) / std."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def photometric(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    x = image.astype(np.float32)
    x *= 1.0 + rng.uniform(-cfg.brightness, cfg.brightness)
    mean = x.mean()
    x = (x - mean) * (1.0 + rng.uniform(-cfg.contrast, cfg.contrast)) + mean
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * (1.0 + rng.uniform(-cfg.saturation, cfg.saturation)) + gray
    return np.clip(x, 0, 255).astype(np.uint8)


class TrainTransform:
    def __init__(self, cfg: AugmentConfig, mean, std, ignore_id: int, seed: int = 0) -> None:
        self.cfg, self.mean, self.std, self.ignore_id = cfg, mean, std, ignore_id
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rng, cfg = self.rng, self.cfg
        s = rng.uniform(*cfg.scale)
        h, w = label.shape
        nh, nw = max(8, int(h * s + 0.5)), max(8, int(w * s + 0.5))
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)
        ch, cw = cfg.crop
        ph, pw = max(0, ch - nh), max(0, cw - nw)
        if ph or pw:
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=self.ignore_id)
        y = int(rng.integers(0, image.shape[0] - ch + 1))
        x = int(rng.integers(0, image.shape[1] - cw + 1))
        image, label = image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]
        if cfg.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        image = photometric(image, cfg, rng)
        return normalize(image, self.mean, self.std), torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
