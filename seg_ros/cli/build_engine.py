"""``seg-ros build-engine``: build (or find) the cached TensorRT engine ahead of time.

Run it once on the vehicle after installing or updating weights, TensorRT or JetPack: the node
then loads the engine at start instead of spending minutes building it on its first frame.
"""
from __future__ import annotations

import argparse
import json
import time

from ..backends.optional import require_tensorrt
from ..backends.tensorrt_backend import PRECISIONS
from ..device import resolve_device
from .common import add_pipeline_args, parse_size, pipeline_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-engine", help="build the cached TensorRT engine ahead of time")
    p.add_argument(
        "--size",
        type=parse_size,
        required=True,
        help="network input size HxW: the size the node runs at (frame size, or its input_size)",
    )
    p.add_argument("--trt-precision", default=None, choices=PRECISIONS,
                   help="engine precision (default: fp16 with --precision fp16, else fp32)")
    p.add_argument(
        "--calib-images", default=None, help="folder of camera-like frames for int8 calibration"
    )
    p.add_argument("--calib-max-images", type=int, default=64)
    p.add_argument(
        "--onnx", default=None, help="use this ONNX file instead of exporting the model"
    )
    p.add_argument("--cache-dir", default=None, help="cache root (default ~/.cache/seg_ros)")
    p.add_argument("--workspace-mb", type=int, default=4096)
    add_pipeline_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_tensorrt(
        resolve_device(args.device, args.precision).device
    )  # refuse before loading anything
    options = {
        "precision": args.trt_precision,
        "calib_images": args.calib_images,
        "calib_max_images": args.calib_max_images,
        "onnx_path": args.onnx,
        "cache_dir": args.cache_dir,
        "workspace_mb": args.workspace_mb,
    }
    pipe = pipeline_from_args(
        args,
        backend="tensorrt",
        input_size=None,
        backend_options={
            **dict(args.backend_options),
            **{k: v for k, v in options.items() if v is not None},
        },
    )
    shape = pipe.inference_size_for(args.size)
    start = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    progress(
        f"{pipe.config.model} at {shape[0]}x{shape[1]}, {pipe.backend.precision}, "
        f"{pipe.backend.gpu}"
    )
    pipe.backend.engine_bytes(shape, progress=progress)
    print(json.dumps(pipe.backend.describe()))
    return 0
