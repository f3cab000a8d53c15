"""Turning the user's device / precision choice into a torch device, with the reasons logged."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("fp32", "fp16")


@dataclass
class DeviceChoice:
    device: torch.device
    half: bool
    notes: list[str] = field(default_factory=list)


def resolve_device(device: str, precision: str = "fp32") -> DeviceChoice:
    """``auto`` picks CUDA when present and says so when it falls back to the CPU.

    An explicit ``cuda`` without CUDA, or fp16 on an explicit CPU, is a ConfigError.
    """
    notes: list[str] = []
    base = device.split(":", 1)[0]
    if base not in DEVICE_CHOICES:
        raise ConfigError(
            f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {device!r}"
        )
    if precision not in PRECISION_CHOICES:
        raise ConfigError(
            f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}"
        )
    if base == "auto":
        if torch.cuda.is_available():
            dev = torch.device("cuda")
        else:
            dev = torch.device("cpu")
            notes.append("device 'auto': CUDA is not available, running on the CPU")
    elif base == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available "
                              "(use device 'auto' or 'cpu')")
        dev = torch.device(device)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    else:
        dev = torch.device("cpu")
    half = precision == "fp16"
    if half and dev.type == "cpu":
        if base == "cpu":
            raise ConfigError("precision 'fp16' needs a CUDA device; use 'fp32' on the CPU")
        notes.append("precision 'fp16' needs CUDA: using fp32 on the CPU")
        half = False
    return DeviceChoice(dev, half, notes)
