"""``seg-ros bench-sizes``: frames whose sizes cycle (issue 18).

One at a time, as a camera whose size changes sends them: latency per frame, frames/s, RSS over the
run, graph builds, frames resized into a kept size, and how many labels differ from running every
frame at its own size.

Run one configuration per process (RSS is the process's). ``--min-frames-per-new-size 1`` gives
the plain LRU (every new size built at once); ``--backend-option max_graphs=N`` keeps N graphs.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..benchmark import percentiles
from ..memory import resident_mib
from ..errors import ConfigError
from ..pipeline import SegmentationPipeline
from ..sample import sample_road_image
from .common import add_pipeline_args, pipeline_from_args
from .segment import read_image_rgb


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-sizes", help="latency and memory when frame sizes cycle")
    p.add_argument("--height", type=int, default=360, help="frame height (default 360)")
    p.add_argument("--widths", default="500,520,540,560,580",
                   help="frame widths, cycled one frame each (default 500,520,540,560,580)")
    p.add_argument("--frames", type=int, default=80, help="frames to run (default 80)")
    p.add_argument("--image", type=Path, default=None, help="picture stretched to each size")
    p.add_argument("--min-frames-per-new-size", type=int, default=None,
                   help="pipeline option (default: the pipeline's, 100); 1 = plain LRU")
    p.add_argument("--no-agreement", dest="agreement", action="store_false",
                   help="skip comparing the labels with each frame run at its own size")
    p.add_argument("--json", type=Path, default=None,
                   help="write the summary and the per-frame records")
    add_pipeline_args(p)
    p.set_defaults(func=run)


@dataclass
class FrameRecord:
    """One frame of the cycle: its width, the size the network ran at, wall time, RSS after it."""

    width: int
    ran_at: tuple[int, int]
    latency_ms: float
    rss_mb: float


def cycled_frames(image: np.ndarray, height: int, widths: list[int]) -> list[np.ndarray]:
    """``image`` stretched to ``height`` x each width (real content at every size)."""
    return [cv2.resize(image, (w, height), interpolation=cv2.INTER_AREA) for w in widths]


def run_cycle(pipe: SegmentationPipeline, frames: list[np.ndarray], count: int
              ) -> tuple[list[FrameRecord], dict[int, np.ndarray]]:
    """``count`` frames, cycling through ``frames``; the records and the last labels per width."""
    records, labels = [], {}
    for i in range(count):
        frame = frames[i % len(frames)]
        start = time.perf_counter()
        result = pipe(frame, "rgb", color=True, overlay=True)
        elapsed = (time.perf_counter() - start) * 1e3
        ran_at = (pipe.sizes.kept()[-1] if pipe.backend.max_shapes
                  else pipe.inference_size_for(frame.shape[:2]))
        records.append(FrameRecord(frame.shape[1], ran_at, round(elapsed, 2),
                                   round(resident_mib(), 1)))
        labels[frame.shape[1]] = result.labels
    return records, labels


def label_agreement(args: argparse.Namespace, frames: list[np.ndarray],
                    labels: dict[int, np.ndarray]) -> dict[int, float]:
    """Per width, the fraction of pixels labelled as when the frame runs at its own size."""
    options = {**dict(args.backend_options or []), "max_graphs": len(frames) + 1}
    exact = pipeline_from_args(args, min_frames_per_new_size=1, backend_options=options)
    return {f.shape[1]: round(float((exact(f, "rgb").labels == labels[f.shape[1]]).mean()), 5)
            for f in frames}


def summarise(pipe: SegmentationPipeline, records: list[FrameRecord], wall_s: float) -> dict:
    later = records[len(records) // 2:]
    fused = getattr(pipe.backend, "fused", None)
    return {
        "frames": len(records), "frames_per_s": round(len(records) / wall_s, 2),
        "latency_ms": percentiles([r.latency_ms for r in records]),
        "latency_ms_second_half": percentiles([r.latency_ms for r in later]),
        "rss_mb": {"first": records[0].rss_mb, "max": max(r.rss_mb for r in records),
                   "last": records[-1].rss_mb,
                   "second_half_growth": round(later[-1].rss_mb - later[0].rss_mb, 1)},
        "graph_builds": fused.graphs.builds if fused is not None else None,
        "kept_sizes": [list(s) for s in pipe.sizes.kept()],
        "frames_resized_into_kept_size": pipe.sizes.resized, "sizes_replaced": pipe.sizes.replaced,
    }


def run(args: argparse.Namespace) -> int:
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    if not widths or args.frames < 1 or args.height < 8:
        raise ConfigError("bench-sizes needs --widths, --frames >= 1 and --height >= 8")
    overrides = {}
    if args.min_frames_per_new_size is not None:
        overrides["min_frames_per_new_size"] = args.min_frames_per_new_size
    start = time.perf_counter()
    pipe = pipeline_from_args(args, **overrides)
    warmed = pipe.warm_up()
    ready_s = time.perf_counter() - start
    if args.image is not None:
        image = read_image_rgb(args.image)
    else:
        image = sample_road_image(args.height, max(widths))
    frames = cycled_frames(image, args.height, widths)
    rss_ready = resident_mib()
    start = time.perf_counter()
    records, labels = run_cycle(pipe, frames, args.frames)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "model": pipe.config.model, "weights": pipe.describe()["weights"],
              "warm_up_size": warmed, "ready_s": round(ready_s, 2),
              "rss_mb_ready": rss_ready, "widths": widths, "height": args.height,
              "min_frames_per_new_size": pipe.config.min_frames_per_new_size,
              "backend_options": pipe.config.backend_options,
              **summarise(pipe, records, time.perf_counter() - start)}
    if args.agreement:
        report["label_agreement"] = label_agreement(args, frames, labels)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        records_json = [asdict(r) for r in records]
        args.json.write_text(json.dumps({**report, "records": records_json}, indent=1))
    return 0
