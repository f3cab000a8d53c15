"""A deterministic synthetic road scene, for benchmarks and tests where no camera data is at hand.

Sky gradient, building blocks, trees, a road with lane markings, a car and sensor-like noise:
it exercises the pipeline like a camera frame (smooth regions, edges, texture), unlike pure noise.
"""
from __future__ import annotations

import numpy as np


def sample_road_image(height: int = 512, width: int = 1024, seed: int = 0) -> np.ndarray:
    """RGB uint8 (height, width, 3)."""
    rng = np.random.default_rng(seed)
    h, w = height, width
    img = np.empty((h, w, 3), np.float32)
    rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    img[:] = np.stack([110 + 60 * rows, 150 + 50 * rows, 210 + 20 * rows], -1)  # sky
    horizon = int(h * 0.45)
    x = 0
    while x < w:  # building blocks of varied height and colour
        bw = int(rng.integers(w // 16, w // 6))
        top = int(rng.integers(int(h * 0.1), horizon - 4))
        img[top:horizon, x:x + bw] = rng.integers(60, 160, 3)
        for wy in range(top + 6, horizon - 6, 14):  # windows
            img[wy:wy + 6, x + 4:x + bw - 4:10] = 40
        x += bw
    for _ in range(6):  # trees
        cx, cy, r = (
            int(rng.integers(0, w)),
            int(rng.integers(int(h * 0.2), horizon)),
            int(rng.integers(h // 20, h // 8)),
        )
        yy, xx = np.ogrid[:h, :w]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (70, 110, 40)
    yy, xx = np.mgrid[horizon:h, 0:w]
    img[horizon:h] = (95, 95, 100)  # road
    half = (yy - horizon) / max(1, h - horizon) * w * 0.9 + w * 0.02
    img[horizon:h][np.abs(xx - w / 2) > half] = (150, 140, 130)  # sidewalk
    lane = (np.abs(xx - w / 2) < 1 + (yy - horizon) * 0.02) & (((yy // max(1, h // 24)) % 2) == 0)
    img[horizon:h][lane] = 235
    cy, cx = int(h * 0.7), int(w * 0.3)
    img[cy - h // 10:cy, cx - w // 12:cx + w // 12] = (150, 20, 30)  # a car
    img[cy - 4:cy, cx - w // 14:cx - w // 20] = 20
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
