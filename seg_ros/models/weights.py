"""Reading, normalising and saving weight files.

Accepted checkpoint shapes: a flat state dict, or a dict holding one under ``state_dict``,
``model_state`` or ``model`` (the conventions of mmseg/semseg, DeepLabV3Plus-Pytorch and others),
with keys optionally prefixed by ``module.`` (DataParallel) or ``model.`` (the DDRNet authors'
training wrapper). The project's own files add a ``meta`` dict (architecture, classes, colours,
normalisation, input size, training provenance) so a weights file alone configures the pipeline.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import WeightsError
from .base import SegmentationModel

FORMAT_TAG = "seg_ros.weights/1"
_NESTED_KEYS = ("state_dict", "model_state", "model")
_PREFIXES = ("module.", "model.", "base.")  # base.: the DeepLab v2 port's multi-scale wrapper
# Buffers a training wrapper may store beside the network (e.g. class-weighted loss).
_TRAINING_ONLY_PREFIXES = ("loss.", "criterion.")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_MAGIC = b"\x80"  # the legacy format: a bare pickle (protocol 2+)


@dataclass
class WeightsFile:
    """A checkpoint's tensors with normalised keys, plus the project metadata if present."""

    path: str
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    state = {k: v for k, v in state.items() if not k.startswith(_TRAINING_ONLY_PREFIXES)}
    changed = True
    while changed and state:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _find_state_dict(obj: Any, path: str) -> tuple[Mapping[str, Any], dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"weights file {path}: expected a dict of tensors, found {type(obj).__name__}"
        )
    meta = dict(obj.get("meta") or {}) if obj.get("format") == FORMAT_TAG else {}
    for key in _NESTED_KEYS:
        inner = obj.get(key)
        if (
            isinstance(inner, Mapping)
            and inner
            and all(isinstance(v, torch.Tensor) for v in inner.values())
        ):
            return inner, meta
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"weights file {path}: no tensors found (looked for a flat state dict "
                           f"and under {', '.join(_NESTED_KEYS)})")
    return tensors, meta


def read_weights(path: str | os.PathLike) -> WeightsFile:
    """Load a checkpoint safely (``weights_only``) and normalise its keys.

    WeightsError on failure.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"weights file {path} does not exist")
    if not os.path.isfile(path):
        raise WeightsError(f"weights file {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise WeightsError(f"weights file {path} is not readable (permission denied)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. notes on the pickle protocol of foreign files
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise WeightsError(f"weights file {path} is not a valid weights file: "
                           f"{_why_unloadable(path, exc)}") from None
    state, meta = _find_state_dict(obj, path)
    return WeightsFile(path=path, state_dict=_strip_prefixes(state), meta=meta)


def _why_unloadable(path: str, exc: Exception) -> str:
    """Why ``torch.load`` refused ``path``, in plain words.

    PyTorch's own message for files holding Python objects advises loading with
    ``weights_only=False``, i.e. running whatever code the file carries: never repeated to a user.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "it is empty"
    unpickling = isinstance(exc, pickle.UnpicklingError)
    unsafe = re.search(r"GLOBAL ([\w.]+)", str(exc)) if unpickling else None
    if unsafe:
        return (f"it holds Python objects, not only tensors ({unsafe.group(1)}), which are never "
                f"loaded because they can run code; save the model's state_dict() instead")
    if head.startswith(_ZIP_MAGIC):
        return "it is a damaged (truncated or corrupt) PyTorch checkpoint"
    if head.startswith(_PICKLE_MAGIC):
        return "it is a pickle without plain tensors, or a damaged (truncated or corrupt) one"
    return "it is not a PyTorch checkpoint at all (neither a zip archive nor a pickle)"


def _optional_missing(model: SegmentationModel, missing: list[str]) -> bool:
    """Return True when only training-only parts are missing (the aux head, BN step counters)."""
    aux = model.aux_head_prefix
    return all(k.endswith("num_batches_tracked") or (aux and k.startswith(aux)) for k in missing)


def _drop_aux_heads(model: SegmentationModel, missing: list[str]) -> None:
    aux = model.aux_head_prefix
    if aux and any(k.startswith(aux) for k in missing):
        model.drop_aux_head()


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                     strict: bool = True) -> None:
    """Copy ``state`` into ``model``; strict mode raises one WeightsError listing every mismatch.

    A checkpoint without the auxiliary (training-only) head still loads; the head is removed.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                   for k in own if k in state and state[k].shape != own[k].shape]
    tolerated = not missing or _optional_missing(model, missing)
    if wrong_shape or (strict and (unexpected or not tolerated)):
        parts = []
        if missing and not tolerated:
            parts.append(f"missing keys ({len(missing)}): {_abbrev(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_abbrev(unexpected)}")
        if wrong_shape:
            parts.append(f"wrong-shaped keys ({len(wrong_shape)}): {_abbrev(wrong_shape)}")
        raise WeightsError(f"weights file {source} does not fit model "
                           f"{type(model).__name__}: " + "; ".join(parts))
    converted = {k: v.to(own[k].dtype) for k, v in state.items() if k in own}
    model.load_state_dict(converted, strict=False)
    _drop_aux_heads(model, missing)


def _abbrev(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> WeightsFile:
    """Load a checkpoint in any supported layout into ``model``.

    Returns the file with its metadata.
    """
    weights = read_weights(path)
    apply_state_dict(model, weights.state_dict, weights.path, strict=strict)
    return weights


def save_weights(path: str | os.PathLike, model: nn.Module, meta: Mapping[str, Any],
                 half: bool = True) -> None:
    """Write the project's weights format: tensors (fp16 when ``half``) plus metadata."""
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        state[k] = v.half() if half and v.is_floating_point() else v.clone()
    tmp = os.fspath(path) + ".tmp"
    torch.save({"format": FORMAT_TAG, "meta": dict(meta), "state_dict": state}, tmp)
    os.replace(tmp, path)
