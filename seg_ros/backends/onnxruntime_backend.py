"""The onnxruntime backend: the pipeline's network exported to ONNX and run by onnxruntime.

CPU execution provider (CUDA's where onnxruntime-gpu is installed), intra-op threads from the
``num_threads`` option or the pipeline's ``num_threads``. Inputs and outputs are bound to torch
tensors' memory (I/O binding), so no numpy copies are made. The ONNX file is exported on first use
into a cache keyed by the model's weight digest, name, input shape and exporter, or read from
``onnx_path``. By default one fixed-shape session is kept per input shape (``dynamic: false``): on
the CPU it ran faster than one dynamic-shape session (see docs/backends.md).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Hashable

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .onnx_export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, OnnxCache, check_onnx_file
from .optional import require_onnxruntime
from .registry import BackendContext, register_backend
from .shape_cache import ShapeCache

log = logging.getLogger("seg_ros")
DYNAMIC = "dynamic"


class _Session:
    """One onnxruntime session with its I/O binding to torch memory."""

    def __init__(
        self, ort: Any, path: Path, providers: list, threads: int, device: torch.device
    ) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.path, self.device = path, device
        self.binding = self.session.io_binding()
        self.dev_type = "cuda" if device.type == "cuda" else "cpu"
        self.dev_id = device.index or 0
        out = self.session.get_outputs()[0]
        self._fixed_out = all(isinstance(d, int) for d in out.shape)
        self._out_shapes: dict[tuple[int, ...], list[int]] = {}
        if self._fixed_out:
            self._out_shapes[tuple(int(d) for d in self.session.get_inputs()[0].shape)] = list(
                out.shape
            )

    def input_shape(self) -> list:
        return list(self.session.get_inputs()[0].shape)

    def num_classes(self) -> int | None:
        c = self.session.get_outputs()[0].shape[1]
        return c if isinstance(c, int) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).contiguous()
        in_shape = tuple(x.shape)
        out_shape = self._out_shapes.get(in_shape)
        if out_shape is None:  # dynamic output size: learn it from one plain run
            logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.cpu().numpy()})[0]
            self._out_shapes[in_shape] = list(logits.shape)
            return torch.from_numpy(logits).to(self.device)
        if self.device.type == "cuda":
            torch.cuda.current_stream(
                self.device
            ).synchronize()  # onnxruntime runs on its own stream
        out = torch.empty(out_shape, dtype=torch.float32, device=self.device)
        self.binding.bind_input(
            INPUT_NAME, self.dev_type, self.dev_id, np.float32, list(in_shape), x.data_ptr()
        )
        self.binding.bind_output(
            OUTPUT_NAME, self.dev_type, self.dev_id, np.float32, out_shape, out.data_ptr()
        )
        self.session.run_with_iobinding(self.binding)
        return out


@register_backend("onnxruntime")
class OnnxRuntimeBackend:
    """The onnxruntime backend.

    Options: ``onnx_path`` (use this file), ``cache_dir``, ``num_threads``, ``dynamic`` (one
    dynamic-shape export instead of one per shape), ``max_shapes``, ``opset``.
    """

    name = "onnxruntime"
    max_batch = 1  # the exported graphs have a fixed batch of 1

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        half: bool,
        context: BackendContext | None = None,
        onnx_path: str | None = None,
        cache_dir: str | None = None,
        num_threads: int | None = None,
        dynamic: bool = False,
        max_shapes: int = 4,
        opset: int = DEFAULT_OPSET,
        **_: Any,
    ) -> None:
        self.ort = require_onnxruntime()
        if half:
            raise ConfigError("backend onnxruntime runs the fp32 ONNX model: use precision fp32 "
                              "(the tensorrt backend builds fp16 and int8 engines)")
        if device.type == "cuda":
            available = self.ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise ConfigError(
                    f"backend onnxruntime on {device} needs onnxruntime-gpu "
                    "(CUDAExecutionProvider); "
                    f"installed providers: {', '.join(available)}; use device cpu or backend torch"
                )
            self.providers: list = [("CUDAExecutionProvider", {"device_id": device.index or 0}),
                                    "CPUExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self.model, self.device, self.context = model, device, context
        threads = num_threads if num_threads is not None else (context.num_threads if context
                                                               else 0)
        self.threads = int(threads or 0)
        self.dynamic = bool(dynamic)
        self.opset = int(opset)
        self.onnx_path = Path(onnx_path).expanduser() if onnx_path else None
        self.exports = OnnxCache(model, context, cache_dir, opset)
        self.cache_dir = self.exports.cache_dir
        self._fixed: _Session | None = None
        if self.onnx_path is not None:
            if not self.onnx_path.is_file():
                raise ConfigError(f"onnx_path {self.onnx_path} does not exist")
            check_onnx_file(self.onnx_path)
            self._fixed = self._open(self.onnx_path)
        self._sessions: ShapeCache[_Session] = ShapeCache(self._build, max_entries=max_shapes,
                                                          what="onnxruntime session")
        self.max_shapes = None if self.dynamic or self._fixed is not None else int(max_shapes)

    # -- sessions ---------------------------------------------------------------------------
    def _open(self, path: Path) -> _Session:
        sess = _Session(self.ort, path, self.providers, self.threads, self.device)
        want = self.context.num_classes if self.context else None
        got = sess.num_classes()
        if want is not None and got is not None and got != want:
            raise ConfigError(
                f"ONNX file {path} outputs {got} classes, the pipeline's classes have {want}"
            )
        return sess

    def cached_onnx(self, shape: tuple[int, int] | None) -> Path:
        """Return the ONNX file for ``shape`` (None: dynamic H/W).

        Exported into the cache if missing.
        """
        return self.exports.get(shape)

    def _build(self, key: Hashable) -> _Session:
        return self._open(self.cached_onnx(None if key == DYNAMIC else key))  # type: ignore[arg-type]

    def session_for(self, shape: tuple[int, int]) -> _Session:
        if self._fixed is not None:
            fixed = self._fixed.input_shape()[2:]
            if all(isinstance(d, int) for d in fixed) and tuple(fixed) != tuple(shape):
                raise ConfigError(
                    f"ONNX file {self.onnx_path} has a fixed {fixed[0]}x{fixed[1]} input but this "
                    f"frame needs {shape[0]}x{shape[1]}: set input_size to {fixed[0]}x{fixed[1]} "
                    f"with keep_aspect false, or export with --dynamic"
                )
            return self._fixed
        return self._sessions.require(DYNAMIC if self.dynamic else tuple(shape))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.session_for(tuple(x.shape[-2:]))(x)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "providers": [p if isinstance(p, str) else p[0] for p in self.providers],
            "threads": self.threads,
            "dynamic": self.dynamic,
            "onnx_path": str(self.onnx_path or self.cache_dir),
        }
