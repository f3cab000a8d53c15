"""``dense`` CRF: DeepLab's fully connected CRF (Kraehenbuehl & Koltun 2011) through pydensecrf.

Mean-field inference over all pixel pairs with a Gaussian and a bilateral kernel (permutohedral
lattice filtering), Potts compatibility, at the output resolution, on the CPU. pydensecrf holds
the GIL for the whole inference (seconds per frame), so a process that must stay responsive
(the node) runs it in a helper process (``isolate=True``).
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from . import CRFConfig


def dense_labels(image: np.ndarray, probs: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """Argmax of the dense CRF's marginals: image (H, W, 3) uint8 RGB, probs (C, H, W) float32."""
    import pydensecrf.densecrf as dcrf

    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    unary = -np.log(np.maximum(probs, 1e-8, dtype=np.float32)).reshape(c, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    if config["gaussian_weight"] > 0:
        crf.addPairwiseGaussian(sxy=config["theta_gamma"], compat=config["gaussian_weight"])
    if config["bilateral_weight"] > 0:
        crf.addPairwiseBilateral(sxy=config["theta_alpha"], srgb=config["theta_beta"],
                                 rgbim=np.ascontiguousarray(image, dtype=np.uint8),
                                 compat=config["bilateral_weight"])
    q = np.asarray(crf.inference(config["iterations"]), dtype=np.float32).reshape(c, h, w)
    return q.argmax(axis=0).astype(np.uint16 if c > 256 else np.uint8)


def _ignore_sigint() -> None:
    """Leave Ctrl-C to the parent, which shuts helper processes down."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class DenseCRF:
    """Refiner (see :mod:`seg_ros.crf`); the image and unary go to the CPU whatever the device."""

    mode = "dense"

    def __init__(self, config: CRFConfig, isolate: bool = False) -> None:
        self.config = config.validate()
        self._pool: ProcessPoolExecutor | None = None
        if isolate:
            import multiprocessing
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_ignore_sigint)

    def __call__(self, image: Any, logits: Any, out_hw: tuple[int, int]) -> Any:
        import torch

        from .unary import class_probabilities, image_at

        with torch.inference_mode():
            probs = class_probabilities(logits, out_hw)[0].cpu().numpy()
            rgb = image_at(image, out_hw)[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
            rgb = np.ascontiguousarray(rgb.cpu().numpy())
        args = (rgb, probs, self.config.to_dict())
        labels = (
            self._pool.submit(dense_labels, *args).result() if self._pool else dense_labels(*args)
        )
        return torch.from_numpy(labels.astype(np.int64)).to(logits.device)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
