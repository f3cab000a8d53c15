"""The PyTorch backend: the prepared (BN-folded, channels_last) module run eagerly."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import register_backend


@register_backend("torch")
class TorchBackend:
    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device, half: bool, **_: Any) -> None:
        self.model, self.device, self.half = model, device, half

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}
