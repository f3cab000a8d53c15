"""Model registry: one name -> one builder, shared by the pipeline, node, tools and tests."""
from __future__ import annotations

import inspect
from typing import Callable


from ..errors import ConfigError
from .base import SegmentationModel

ModelBuilder = Callable[..., SegmentationModel]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Add a builder ``f(num_classes, **options) -> nn.Module`` under ``name`` (a decorator)."""

    def wrap(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = builder
        return builder

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_options(name: str) -> list[str]:
    """Return the build options a registered model takes (e.g. ``output_stride``).

    Callers offer only those.
    """
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None
    return [p for p in inspect.signature(builder).parameters if p != "num_classes"]


def build_model(name: str, num_classes: int, **options) -> SegmentationModel:
    """Build a registered model with random initialisation.

    Raises ConfigError listing the known names when ``name`` is unknown.
    """
    known = model_options(name)
    builder = _REGISTRY[name]
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"model {name!r} does not take option(s) {', '.join(unknown)}; "
                          f"it takes: {', '.join(known) or 'none'}")
    model = builder(num_classes, **options)
    if not isinstance(model, SegmentationModel):  # the contract the pipeline and trainer rely on
        raise TypeError(
            f"builder of {name!r} returned {type(model).__name__}, not a SegmentationModel"
        )
    return model
