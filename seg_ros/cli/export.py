"""``seg-ros export``: the pipeline's network as an ONNX file, checked against torch.

The file carries the pipeline's metadata (classes, mean/std, model, input size) as ONNX
metadata_props, passes onnx's checker, and its logits are compared with the torch model's on a
real image (``--image``, else a synthetic road scene) before the command succeeds.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..backends.onnx_export import DEFAULT_OPSET, export_onnx, pipeline_metadata, read_metadata
from ..backends.parity import verify_against_torch
from ..sample import sample_road_image
from .common import add_pipeline_args, parse_size, pipeline_from_args
from .segment import read_image_rgb


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the model to ONNX (checked against torch)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    p.add_argument(
        "--size",
        type=parse_size,
        required=True,
        help="network input size HxW (rounded to the "
        "model's size divisor); with --dynamic only the example size",
    )
    p.add_argument("--dynamic", action="store_true", help="dynamic height and width")
    p.add_argument("--out", type=Path, required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument(
        "--image",
        type=Path,
        default=None,
        help="image to verify on (default: a synthetic road scene)",
    )
    p.add_argument(
        "--tolerance", type=float, default=1e-3, help="max abs logit difference allowed (fp32)"
    )
    p.add_argument(
        "--no-verify", dest="verify", action="store_false", help="skip the onnxruntime comparison"
    )
    add_pipeline_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    pipe = pipeline_from_args(
        args, device="cpu", precision="fp32", backend="torch", input_size=None
    )
    h, w = pipe.inference_size_for(args.size)
    meta = pipeline_metadata(pipe)
    print(f"exporting {pipe.config.model} ({pipe.describe()['weights']}) at {h}x{w}"
          f"{' (dynamic H/W)' if args.dynamic else ''}, opset {args.opset} -> {args.out}")
    export_onnx(
        pipe.model, args.out, (h, w), dynamic=args.dynamic, opset=args.opset, metadata=meta
    )
    print(f"onnx checker: ok; metadata: {', '.join(sorted(read_metadata(args.out)))}")
    if args.verify:
        image = read_image_rgb(args.image) if args.image else sample_road_image(h, w)
        diff = verify_against_torch(pipe, args.out, image, size=(h, w))
        ok = diff < args.tolerance
        print(json.dumps({"max_abs_logit_diff": diff, "tolerance": args.tolerance, "ok": ok}))
        if not ok:
            print(
                f"seg-ros export: error: onnxruntime and torch differ by {diff:.3g} > "
                f"{args.tolerance}"
            )
            return 1
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0
