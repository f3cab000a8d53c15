"""ONNX export of a registry model, with the pipeline's metadata kept in the file.

One exporter for ``seg-ros export``, the onnxruntime backend's cache and the TensorRT engine
build, so all three run the same graph. The network is exported as the pipeline prepares it
(batch norm folded), in fp32 NCHW, input ``input`` (1, 3, H, W) normalised RGB, output
``logits`` (1, C, H/s, W/s). Adaptive average pools with more than one bin (PSPNet's pyramid)
are rewritten as two small averaging matmuls, which compute the same values and export for
any input size (ONNX has no adaptive pooling).
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from .optional import require_onnx
from .registry import BackendContext

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17
METADATA_PREFIX = "seg_ros."
log = logging.getLogger("seg_ros")


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/seg_ros`` (``~/.cache/seg_ros``), overridable with ``SEG_ROS_CACHE``."""
    if os.environ.get("SEG_ROS_CACHE"):
        return Path(os.environ["SEG_ROS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "seg_ros"


def model_digest(model: nn.Module) -> str:
    """Content hash of a model's parameters and buffers (names, dtypes, shapes, values).

    Two models with the same digest export the same graph, whatever file they were loaded from.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


class AdaptiveAvgPoolMatmul(nn.Module):
    """``nn.AdaptiveAvgPool2d(bins)`` as matrix products, which ONNX exports for any size.

    ``nn.AdaptiveAvgPool2d(bins)`` as ``P_h @ x @ P_w^T`` with 0/1-window averaging matrices
    built from the input size (PyTorch's bin edges: floor(i*n/b) .. ceil((i+1)*n/b)).
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.bins = (
            (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        )

    @staticmethod
    def _matrix(n: Any, bins: int, x: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(bins, device=x.device)
        start = torch.div(idx * n, bins, rounding_mode="floor")
        end = torch.div((idx + 1) * n + bins - 1, bins, rounding_mode="floor")
        pos = torch.arange(n, device=x.device)
        mask = ((pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])).to(x.dtype)
        return mask / mask.sum(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = self._matrix(x.shape[2], self.bins[0], x)
        pw = self._matrix(x.shape[3], self.bins[1], x)
        return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))


def exportable_copy(model: nn.Module) -> nn.Module:
    """Return a CPU fp32 NCHW copy of ``model`` with multi-bin adaptive pools made exportable."""
    m = (
        copy.deepcopy(model)
        .to("cpu", torch.float32)
        .to(memory_format=torch.contiguous_format)
        .eval()
    )
    for module in list(m.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size not in (1, (1, 1)):
                setattr(module, name, AdaptiveAvgPoolMatmul(child.output_size))
    return m


def pipeline_metadata(pipe: Any) -> dict[str, str]:
    """Return what a consumer of the ONNX file needs besides the graph.

    Classes, normalisation, sizes (the pipeline's
    :class:`~seg_ros.backends.registry.BackendContext` carries it).
    """
    return {
        "model": pipe.config.model,
        "classes": json.dumps(pipe.classes.to_dicts()),
        "classes_name": pipe.classes.name,
        "ignore_id": "" if pipe.classes.ignore_id is None else str(pipe.classes.ignore_id),
        "num_classes": str(pipe.classes.num_classes),
        "mean": json.dumps([round(v, 6) for v in pipe.mean]),
        "std": json.dumps([round(v, 6) for v in pipe.std]),
        "size_divisor": str(pipe.size_divisor),
        "weights": str(pipe.weights_path or "random-init"),
        "trained": str(bool(pipe.trained)).lower(),
        "input_layout": "NCHW float32 RGB, (x/255 - mean)/std",
    }


def export_onnx(model: nn.Module, path: str | os.PathLike, input_hw: tuple[int, int], *,
                dynamic: bool = False, opset: int = DEFAULT_OPSET,
                metadata: Mapping[str, str] | None = None) -> Path:
    """Export ``model`` to ``path`` (written atomically).

    Add ``metadata`` as metadata_props (keys prefixed ``seg_ros.``), and check the result with
    onnx's checker.
    """
    onnx = require_onnx()
    if opset < 17:
        raise ConfigError(
            f"ONNX opset must be 17 or later (LayerNorm/resize semantics), got {opset}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = exportable_copy(model)
    h, w = (int(v) for v in input_hw)
    x = torch.zeros(1, 3, h, w)
    dynamic_axes = (
        {INPUT_NAME: {2: "height", 3: "width"}, OUTPUT_NAME: {2: "out_height", 3: "out_width"}}
        if dynamic
        else None
    )
    buf = io.BytesIO()
    with (
        warnings.catch_warnings(),
        torch.inference_mode(False),
        torch.no_grad(),
        redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        # The TorchScript exporter: no onnxscript dependency, and TensorRT parses its output well.
        torch.onnx.export(
            m,
            (x,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buf.getvalue())
    meta = {"input_size": f"{h}x{w}", "dynamic": str(bool(dynamic)).lower(), "opset": str(opset),
            "exporter": f"torch {torch.__version__}", **(metadata or {})}
    del proto.metadata_props[:]
    for key, value in meta.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = METADATA_PREFIX + key, str(value)
    proto.producer_name = "seg_ros"
    onnx.checker.check_model(proto, full_check=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """Return the ``seg_ros.*`` metadata_props of an ONNX file, prefix stripped."""
    onnx = require_onnx()
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key[len(METADATA_PREFIX):]: p.value for p in proto.metadata_props
            if p.key.startswith(METADATA_PREFIX)}


def check_onnx_file(path: str | os.PathLike) -> None:
    """Onnx's checker on a file; ConfigError naming the file when it is not a valid model."""
    onnx = require_onnx()
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # checker raises ValidationError, decode errors, OSError
        raise ConfigError(
            f"ONNX file {path} is not a valid model: {str(exc).splitlines()[0]}"
        ) from None


def onnx_cache_name(
    model_name: str, digest: str, shape: tuple[int, int] | None, opset: int
) -> str:
    """File name of a cached export: everything that changes the graph is in it."""
    size = "dynamic" if shape is None else f"{shape[0]}x{shape[1]}"
    torch_ver = torch.__version__.split("+")[0]
    return f"{model_name}-{digest}-{size}-op{opset}-torch{torch_ver}.onnx"


class OnnxCache:
    """Exports of one prepared model.

    Per input shape (None: dynamic H/W), cached on disk under ``cache_dir`` (default
    ``~/.cache/seg_ros/onnx``) by weight digest, model name, shape, opset and exporter version.
    Untrained (random-init) models export into a temporary directory unless ``cache_dir`` is given,
    so throwaway weights never fill the persistent cache.
    """

    def __init__(self, model: nn.Module, context: BackendContext | None = None,
                 cache_dir: str | os.PathLike | None = None, opset: int = DEFAULT_OPSET) -> None:
        self.model, self.context, self.opset = model, context, int(opset)
        self.model_name = context.model_name if context else type(model).__name__
        self._tmp: tempfile.TemporaryDirectory | None = None
        if cache_dir:
            self.cache_dir = Path(cache_dir).expanduser()
        elif context is not None and not context.trained:
            self._tmp = tempfile.TemporaryDirectory(prefix="seg_ros_onnx_")
            self.cache_dir = Path(self._tmp.name)
        else:
            self.cache_dir = default_cache_root() / "onnx"
        self._digest: str | None = None

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = model_digest(self.model)
        return self._digest

    def path_for(self, shape: tuple[int, int] | None) -> Path:
        return self.cache_dir / onnx_cache_name(self.model_name, self.digest, shape, self.opset)

    def get(self, shape: tuple[int, int] | None) -> Path:
        """Return the ONNX file for ``shape``.

        Exported first when missing or not carrying its key.
        """
        path = self.path_for(shape)
        if path.is_file():
            try:
                if read_metadata(path).get("cache_key") == path.stem:
                    return path
            except Exception as exc:  # a truncated or foreign file: export again
                log.warning("cached ONNX file %s is unreadable (%s)", path, exc)
            log.warning("cached ONNX file %s does not carry its own key; exporting it again", path)
        hw = shape or self.example_shape()
        log.info("exporting %s to ONNX (%s) at %s", self.model_name,
                 "dynamic H/W" if shape is None else f"{hw[0]}x{hw[1]}", path)
        start = time.perf_counter()
        meta = dict(self.context.metadata) if self.context else {"model": self.model_name}
        export_onnx(self.model, path, hw, dynamic=shape is None, opset=self.opset,
                    metadata={**meta, "cache_key": path.stem})
        log.info("ONNX export took %.1f s", time.perf_counter() - start)
        return path

    def example_shape(self) -> tuple[int, int]:
        div = self.context.size_divisor if self.context else 8
        return (div * 8, div * 12)
