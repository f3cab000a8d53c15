"""The weights files the package ships.

Declared beside their builders (as torchvision's weights enums are): one :class:`ShippedWeights`
entry per file, what ``weights: default`` loads.

An entry repeats what the file's own metadata says (model, classes, input size, normalisation)
plus its validation metrics from the model card, so tools and docs can name them without loading
the file; ``test/test_shipped_weights.py`` checks that entry and file agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..resources import share_path


@dataclass(frozen=True)
class ShippedWeights:
    """One shipped weights file.

    ``file``: relative to the share directory; ``metrics``: what the model card (``card``) reports
    on the validation split, as fractions.
    """

    file: str
    model: str
    classes: str
    num_classes: int
    ignore_id: int | None
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    metrics: dict[str, float] = field(default_factory=dict)
    card: str = ""

    def path(self) -> Path:
        """Where the file is installed (it may be missing: check ``is_file()``)."""
        return share_path(self.file)


# model name -> the weights ``weights: default`` loads for it
SHIPPED_WEIGHTS: dict[str, ShippedWeights] = {}


def register_weights(entry: ShippedWeights) -> ShippedWeights:
    """Make ``entry`` its model's default weights; one default per model."""
    if entry.model in SHIPPED_WEIGHTS:
        raise ValueError(f"model {entry.model!r} has two default weights: "
                         f"{SHIPPED_WEIGHTS[entry.model].file} and {entry.file}")
    SHIPPED_WEIGHTS[entry.model] = entry
    return entry


def shipped_weights(model: str) -> ShippedWeights | None:
    """Return the default weights of ``model``, or None when the package ships none for it."""
    return SHIPPED_WEIGHTS.get(model)


def list_shipped_weights() -> list[ShippedWeights]:
    return [SHIPPED_WEIGHTS[name] for name in sorted(SHIPPED_WEIGHTS)]
