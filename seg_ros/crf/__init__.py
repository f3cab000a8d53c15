"""Optional CRF refinement of the network's labels.

``dense`` (DeepLab's fully connected CRF via pydensecrf) or ``fast`` (local-window mean-field in
PyTorch, on the model's device).

A refiner is a callable ``refiner(image, logits, out_hw) -> labels``: ``image`` the (H, W, 3)
uint8 RGB frame as a tensor, ``logits`` the network's (1, C, h, w) class scores, ``out_hw`` the
label size wanted; it returns (out_h, out_w) int64 class ids on the logits' device. The unary is
the softmax of the logits upsampled to the refiner's working resolution. The pipeline feeds it
through :meth:`SegmentationPipeline.refine`, reusing the logits of the raw result.

This module stays free of torch and pydensecrf imports so the parameter table (and the dense
mode's helper process) load quickly.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError

CRF_MODES = ("off", "dense", "fast")
DEFAULT_CONFIG_FILE = "config/crf.yaml"  # relative to the share directory: DeepLab v2's settings
# named profiles shipped beside it: name -> file (relative to the share directory)
PROFILES = {"deeplab_v2": DEFAULT_CONFIG_FILE, "camvid": "config/crf_camvid.yaml"}

# field -> (description, range). Ranges keep every value meaningful (a zero width divides by
# zero, a huge window or iteration count only burns time); the node's parameter table is built
# from this, so the node, the tools and config/crf.yaml share one set of limits.
_FIELDS: dict[str, tuple[str, tuple[float, float]]] = {
    "iterations": ("dense CRF mean-field iterations", (1, 100)),
    "bilateral_weight": ("w1: weight of the bilateral (appearance) kernel", (0.0, 100.0)),
    "theta_alpha": ("bilateral kernel spatial std (pixels of the output labels)", (0.1, 1000.0)),
    "theta_beta": ("bilateral kernel colour std (0..255 RGB units)", (0.1, 255.0)),
    "gaussian_weight": ("w2: weight of the Gaussian (smoothness) kernel", (0.0, 100.0)),
    "theta_gamma": ("Gaussian kernel spatial std (pixels of the output labels)", (0.1, 1000.0)),
    "fast_iterations": ("fast CRF mean-field iterations", (1, 50)),
    "fast_window": (
        "fast CRF window side k (odd): kernels are truncated to k x k neighbours",
        (3, 15),
    ),
    "fast_scale": ("fast CRF working resolution as a fraction of the output size", (0.05, 1.0)),
}


@dataclass
class CRFConfig:
    """CRF parameters.

    Defaults: DeepLab v2's published dense-CRF settings (see config/crf.yaml).
    """

    iterations: int = 10
    bilateral_weight: float = 4.0
    theta_alpha: float = 67.0
    theta_beta: float = 3.0
    gaussian_weight: float = 3.0
    theta_gamma: float = 1.0
    fast_iterations: int = 5
    fast_window: int = 7
    fast_scale: float = 0.5

    def validate(self) -> "CRFConfig":
        """Raise ConfigError naming the first invalid parameter and why; returns self."""
        for f in fields(self):
            reason = check_value(f.name, getattr(self, f.name))
            if reason:
                raise ConfigError(f"CRF parameter {f.name!r} {reason}")
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "CRF config") -> "CRFConfig":
        """Return a validated config from ``values`` (missing keys keep their defaults)."""
        if not isinstance(values, dict):
            raise ConfigError(
                f"{source}: expected a mapping of CRF parameters, got {type(values).__name__}"
            )
        unknown = sorted(set(values) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"{source}: unknown CRF parameter(s) {', '.join(unknown)}; "
                              f"known: {', '.join(_FIELDS)}")
        config = cls()
        for name, value in values.items():
            reason = check_value(name, value)
            if reason:
                raise ConfigError(f"{source}: CRF parameter {name!r} {reason}")
            setattr(config, name, value)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parameter_table() -> list[tuple[str, Any, str, tuple[float, float]]]:
    """(name, default, description, (min, max)) per CRF parameter, for the node's parameters."""
    defaults = CRFConfig()
    return [(name, getattr(defaults, name), desc, rng) for name, (desc, rng) in _FIELDS.items()]


def check_value(name: str, value: Any) -> str | None:
    """Why ``value`` is invalid for CRF parameter ``name`` (None when valid)."""
    if name not in _FIELDS:
        return f"is unknown (known: {', '.join(_FIELDS)})"
    lo, hi = _FIELDS[name][1]
    integer = isinstance(getattr(CRFConfig, name), int)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (integer and not isinstance(value, int))
    ):
        return f"must be {'an integer' if integer else 'a number'}, got {value!r}"
    if not math.isfinite(value) or not lo <= value <= hi:
        return f"must be in {lo:g}..{hi:g}, got {value!r}"
    if name == "fast_window" and value % 2 == 0:
        return f"must be odd (a window centred on the pixel), got {value}"
    return None


def load_crf_config(path: str | Path | None = None) -> CRFConfig:
    """Return the CRF parameters of a YAML file or a shipped profile name.

    The CRF parameters of a YAML file or a shipped profile name (``deeplab_v2``, the default,
    or ``camvid``: tuned for the shipped CamVid weights, docs/crf.md).
    """
    import yaml

    from ..resources import share_path

    if path is None or str(path) in PROFILES:
        file = share_path(PROFILES[str(path or "deeplab_v2")])
    else:
        file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"CRF config {file} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"CRF config {file} is not valid YAML: {' '.join(str(exc).split())}"
        ) from None
    return CRFConfig.from_dict(data or {}, source=f"CRF config {file}")


def dense_unavailable_reason() -> str | None:
    """Why the dense mode cannot run here (None when pydensecrf imports)."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except Exception as exc:  # ImportError, or a broken native build
        return (
            "crf 'dense' needs pydensecrf (pip install pydensecrf2, builds from source with a "
            "C++ "
            f"compiler and Cython), which is not importable here: {type(exc).__name__}: {exc}"
        )
    return None


Refiner = Callable[..., Any]


def create_refiner(mode: str, config: CRFConfig | None = None, device: Any = "cpu",
                   *, isolate: bool = False) -> Refiner | None:
    """Return the refiner for ``mode`` (None for ``off``).

    ``isolate`` runs the dense CRF in a helper process: pydensecrf holds the GIL for the whole
    inference, which would stall every other thread of a node for seconds. Raises ConfigError with
    the reason when it cannot run.
    """
    if mode not in CRF_MODES:
        raise ConfigError(f"crf must be one of {', '.join(CRF_MODES)}, got {mode!r}")
    if mode == "off":
        return None
    config = (config or CRFConfig()).validate()
    if mode == "dense":
        reason = dense_unavailable_reason()
        if reason:
            raise ConfigError(reason)
        from .dense import DenseCRF
        return DenseCRF(config, isolate=isolate)
    from .fast import FastCRF
    return FastCRF(config, device)
