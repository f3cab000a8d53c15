"""``seg-ros bench``: forward alone vs the whole pipeline (and plain eager as a baseline).

Timed on a real-looking frame (a CamVid frame via ``--image``, else a synthetic road scene) resized
to ``--size``, or on the recorded frames of a bag (``--bag``; frames keep their size, ``--size``
sets the network's). Each timed frame goes the node's way: a serialised ROS message is decoded, run
through the pipeline, and labels, colour mask and overlay are serialised back into
sensor_msgs/Image messages, so the per-stage table covers decode ... serialise. Prints a table;
``--json`` writes ``{"model", "backend", "device", "size", "timings_ms": {stage: {"median",
"p95"}}}``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .. import bags
from ..benchmark import percentiles, time_call
from ..errors import ConfigError
from ..models import build_model
from ..pipeline import SegmentationPipeline
from ..sample import sample_road_image
from .common import add_pipeline_args, parse_size, pipeline_from_args, refiner_from_args
from .segment import read_image_rgb

PIPELINE_STAGES = ("preprocess", "forward", "postprocess", "color", "overlay", "download")
MESSAGE_STAGES = ("decode", "pipeline", "serialise", "message_to_messages")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time the model forward and the whole pipeline")
    p.add_argument(
        "--size", type=parse_size, default=(512, 1024), help="frame size HxW (default 512x1024)"
    )
    p.add_argument(
        "--runs", type=int, default=20, help="timed runs per measurement (after warm-up)"
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--image", type=Path, default=None, help="image file to time on (resized to --size)"
    )
    p.add_argument(
        "--bag", type=Path, default=None, help="rosbag2 whose image frames are timed (as recorded)"
    )
    p.add_argument(
        "--topic", action="append", default=None, help="image topic of --bag (default: all)"
    )
    p.add_argument(
        "--max-frames", type=int, default=30, help="frames read from --bag (default 30)"
    )
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip timing the plain eager fp32 NCHW network")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    add_pipeline_args(p)
    p.set_defaults(func=run)


@dataclass
class RecordedFrame:
    """A frame as it arrives at the node: serialised message bytes and their type."""

    rawdata: bytes
    msgtype: str


def bench_frames(args: argparse.Namespace) -> list[RecordedFrame]:
    """Return the frames to time.

    As serialised messages (a bag's own, or one rgb8 Image made from a picture).
    """
    if args.bag is not None:
        frames = [
            RecordedFrame(f.message.rawdata, f.msgtype)
            for f in bags.iter_bag_frames(args.bag, args.topic, args.max_frames)
            if f.error is None
        ]
        if not frames:
            raise ConfigError(
                f"bag {args.bag} has no decodable image frames on {args.topic or 'any topic'}"
            )
        return frames
    h, w = args.size
    if args.image is not None:
        image = cv2.resize(read_image_rgb(args.image), (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        image = sample_road_image(h, w)
    msg = bags.image_msg_from_array(bags.make_header(0, "camera"), image, "rgb")
    return [
        RecordedFrame(bytes(bags.typestore().serialize_cdr(msg, bags.IMAGE_TYPE)), bags.IMAGE_TYPE)
    ]


class MessageLoop:
    """Time the node's work on one message, by stage.

    message bytes -> decode -> pipeline -> labels/colour/overlay Image messages -> bytes.
    """

    def __init__(self, pipe: SegmentationPipeline, frames: list[RecordedFrame]) -> None:
        self.pipe, self.frames, self.store = pipe, frames, bags.typestore()
        self.count = 0
        self.samples: dict[str, list[float]] = {s: [] for s in MESSAGE_STAGES + PIPELINE_STAGES}

    def decode(self, frame: RecordedFrame) -> tuple[Any, np.ndarray, str]:
        msg = self.store.deserialize_cdr(frame.rawdata, frame.msgtype)
        image, order = bags.decode_image_msg(msg, frame.msgtype, self.pipe.config.max_input_pixels)
        return msg, image, order

    def __call__(self) -> None:
        frame = self.frames[self.count % len(self.frames)]
        self.count += 1
        t0 = time.perf_counter()
        msg, image, order = self.decode(frame)
        t1 = time.perf_counter()
        res = self.pipe(image, order, color=True, overlay=True, profile=True)
        t2 = time.perf_counter()
        for array, kind in ((res.labels, "labels"), (res.color, "rgb"), (res.overlay, "rgb")):
            self.store.serialize_cdr(
                bags.image_msg_from_array(msg.header, array, kind), bags.IMAGE_TYPE
            )
        t3 = time.perf_counter()
        stages = {
            "decode": t1 - t0,
            "pipeline": t2 - t1,
            "serialise": t3 - t2,
            "message_to_messages": t3 - t0,
        }
        for stage, seconds in stages.items():
            self.samples[stage].append(seconds * 1e3)
        for stage, ms in res.timings_ms.items():
            self.samples.setdefault(stage, []).append(ms)


def eager_baseline(pipe: SegmentationPipeline, x: torch.Tensor) -> torch.nn.Module:
    """Return the eager fp32 NCHW baseline of the same network.

    The same network as plain eager fp32 NCHW with unfolded batch norm (random weights: the
    arithmetic, not the values, sets the time).
    """
    model = build_model(
        pipe.config.model, pipe.classes.num_classes, **pipe.config.model_options
    ).eval()
    return model.to(pipe.device)


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    pipe = pipeline_from_args(args, input_size=args.size)
    frames = bench_frames(args)
    loop = MessageLoop(pipe, frames)
    _, frame, order = loop.decode(frames[0])
    dev = pipe.device
    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        # the network input of the real frame, exactly as the pipeline prepares it
        x = pipe.network_input(frame, order)
        results["forward"] = percentiles(
            time_call(lambda: pipe.backend(x), args.runs, args.warmup, dev)
        )
        if args.baseline and not pipe.half:
            base = eager_baseline(pipe, x)
            x_nchw = x.float().contiguous()
            results["forward_eager_fp32_nchw"] = percentiles(
                time_call(lambda: base(x_nchw), args.runs, args.warmup, dev))
            del base
    time_call(loop, args.runs, args.warmup, dev)
    for stage, samples in loop.samples.items():
        if samples[args.warmup:]:
            results[stage] = percentiles(samples[args.warmup:])
    refiner = refiner_from_args(args, pipe)
    if refiner is not None:  # the CRF stage alone, on the logits of one frame (--crf)
        kept = pipe(frame, order, keep_scores=True)
        results[f"crf_{refiner.mode}"] = percentiles(
            time_call(lambda: pipe.refine(kept, refiner), args.runs, args.warmup, dev))
    report = {
        "model": pipe.config.model,
        "backend": pipe.config.backend,
        "device": str(dev),
        "precision": "fp16" if pipe.half else "fp32",
        "size": list(frame.shape[:2]),
        "inference_size": list(pipe.inference_size_for(frame.shape[:2])),
        "threads": torch.get_num_threads(),
        "weights": pipe.describe()["weights"],
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "timings_ms": results,
        "crf": args.crf,
        "source": str(args.bag or args.image or "synthetic road scene"),
        "frames": len(frames),
    }
    ratios = {}
    if "forward_eager_fp32_nchw" in results:
        ratios["forward_vs_eager"] = round(
            results["forward"]["median"] / results["forward_eager_fp32_nchw"]["median"], 3
        )
    ratios["pipeline_vs_forward"] = round(
        results["pipeline"]["median"] / results["forward"]["median"], 3
    )
    report["ratios"] = ratios
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def print_table(report: dict) -> None:
    h, w = report["size"]
    print(f"\n{report['model']}  {report['backend']}/{report['device']} {report['precision']}  "
          f"{h}x{w} (network {report['inference_size'][0]}x{report['inference_size'][1]}), "
          f"{report['threads']} threads")
    print(f"{'stage':28s} {'median ms':>10s} {'p95 ms':>10s}")
    for stage, t in report["timings_ms"].items():
        print(f"{stage:28s} {t['median']:10.2f} {t['p95']:10.2f}")
    for name, value in report["ratios"].items():
        print(f"{name:28s} {value:10.3f}")
