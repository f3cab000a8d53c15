"""``seg-ros bench-models``: every registry model side by side at one frame size.

Per model: trainable parameters (as built for inference, auxiliary heads not counted, and with
them), GFLOPs of one forward pass (``torch.utils.flop_counter``: convolutions and matrix
products, 2 FLOPs per multiply-add, counted on the meta device so nothing is computed), and the
median wall time of the backend's forward (after ``--warmup`` untimed calls) and of the whole
pipeline (labels + colour mask, after one more untimed call) on a synthetic road frame. Random
weights: the arithmetic, not the values, sets the time.
Writes a JSON report and a markdown table (for docs/models.md).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..benchmark import percentiles, time_call
from ..classes import load_classes
from ..errors import ConfigError
from ..models import build_model, list_models, model_options
from ..pipeline import SegmentationPipeline
from ..sample import sample_road_image
from .common import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench-models", help="params, GFLOPs and CPU/GPU time of every registry model"
    )
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated registry names (default: all: " + ", ".join(list_models()) + ")",
    )
    p.add_argument(
        "--size", type=parse_size, default=(512, 1024), help="frame size HxW (default 512x1024)"
    )
    p.add_argument(
        "--runs", type=int, default=3, help="timed runs per measurement (after warm-up)"
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = library default)")
    p.add_argument(
        "--classes",
        default="cityscapes",
        help="class set fixing the class count (default cityscapes)",
    )
    p.add_argument("--output-stride", type=int, default=None,
                   help="output_stride for the models that take one (default: each model's own)")
    p.add_argument(
        "--no-timing", dest="timing", action="store_false", help="params and GFLOPs only"
    )
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    p.add_argument("--markdown", type=Path, default=None, help="write the table as markdown")
    p.set_defaults(func=run)


def _options(name: str, output_stride: int | None) -> dict:
    """Return ``{'output_stride': n}`` when asked for and the model takes it.

    DDRNet has a fixed stride.
    """
    if output_stride is None or "output_stride" not in model_options(name):
        return {}
    return {"output_stride": output_stride}


def count_static(name: str, num_classes: int, size: tuple[int, int], options: dict) -> dict:
    """Parameters and GFLOPs from a meta-device model: no memory, no arithmetic."""
    with torch.device("meta"):
        model = build_model(name, num_classes, **options).eval()
        total = sum(p.numel() for p in model.parameters())
        aux = model.aux_head_prefix
        aux_params = sum(
            p.numel() for k, p in model.named_parameters() if aux and k.startswith(aux)
        )
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            out = model(torch.empty(1, 3, *size))
    return {"params": total - aux_params, "params_with_aux": total,
            "gflops": round(counter.get_total_flops() / 1e9, 1),
            "output_stride": model.output_stride,
            "logits_size": list(out.shape[-2:])}


def time_model(name: str, args: argparse.Namespace, options: dict) -> dict:
    torch.manual_seed(0)
    pipe = SegmentationPipeline(
        model=name,
        weights="none",
        classes=args.classes,
        device=args.device,
        precision=args.precision,
        input_size=args.size,
        num_threads=args.threads,
        model_options=options,
    )
    frame = sample_road_image(*args.size)
    with torch.inference_mode():
        # the backend (fused CPU graph, CUDA graph, ...) on the frame's own network input
        x = pipe.network_input(frame, "rgb")
        forward = time_call(lambda: pipe.backend(x), args.runs, args.warmup, pipe.device)
    # one untimed call more: per-shape artefacts are keyed by the input's layout as well
    whole = time_call(lambda: pipe(frame, "rgb", color=True), args.runs, 1, pipe.device)
    return {"forward_ms": percentiles(forward), "pipeline_ms": percentiles(whole),
            "device": str(pipe.device), "precision": "fp16" if pipe.half else "fp32"}


def markdown_table(rows: list[dict], timing: bool) -> str:
    head = "| model | output stride | params (M) | params with aux (M) | GFLOPs |"
    rule = "|---|---:|---:|---:|---:|"
    if timing:
        head += " forward ms (median) | pipeline ms (median) |"
        rule += "---:|---:|"
    lines = [head, rule]
    for r in rows:
        line = (f"| {r['model']} | {r['output_stride'] or '-'} | {r['params'] / 1e6:.2f} | "
                f"{r['params_with_aux'] / 1e6:.2f} | {r['gflops']:.1f} |")
        if timing:
            line += f" {r['forward_ms']['median']:.0f} | {r['pipeline_ms']['median']:.0f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    names = (
        [n.strip() for n in args.models.split(",") if n.strip()] if args.models else list_models()
    )
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise ConfigError(
            f"unknown model(s) {', '.join(unknown)}; known models: {', '.join(list_models())}"
        )
    if args.runs < 1 or args.warmup < 0:
        raise ConfigError(
            f"--runs must be >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}"
        )
    num_classes = load_classes(args.classes).num_classes
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in names:
        options = _options(name, args.output_stride)
        row = {
            "model": name,
            "options": options,
            **count_static(name, num_classes, args.size, options),
        }
        if args.timing:
            row |= time_model(name, args, options)
        rows.append(row)
        timing = (
            f", forward {row['forward_ms']['median']:.0f} ms, pipeline "
            f"{row['pipeline_ms']['median']:.0f} ms"
            if args.timing
            else ""
        )
        print(
            f"{name}: {row['params'] / 1e6:.2f} M params, {row['gflops']:.1f} GFLOPs{timing}",
            flush=True,
        )
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "size": list(args.size),
        "num_classes": num_classes,
        "runs": args.runs,
        "warmup": args.warmup,
        "results": rows,
    }
    table = markdown_table(rows, args.timing)
    print("\n" + table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
        print(f"wrote {args.markdown}")
    return 0
