"""``seg-ros replay BAG --out OUT_BAG``: segment every image of a bag, offline and deterministically.

How a model is qualified on recorded drives before it goes on a vehicle: the output bag holds every
input message unchanged plus ``<topic>/labels`` (mono8), ``<topic>/color_mask`` and
``<topic>/overlay`` (rgb8) per image message, at the input's bag timestamp and with its header.
Frames that cannot be decoded or segmented are counted by reason and do not stop the replay.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from .. import bags
from ..errors import ConfigError, InputError
from .common import add_pipeline_args, pipeline_from_args, refiner_from_args

OUTPUT_SUFFIXES = ("labels", "color_mask", "overlay")


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | None]:
    """mean / p50 / p90 / p99 / max of a list of latencies (ms); None when empty."""
    if not len(values_ms):
        return {k: None for k in ("mean", "p50", "p90", "p99", "max")}
    a = np.asarray(values_ms, dtype=np.float64)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def format_latency(lat: dict[str, float | None]) -> str:
    if lat["p50"] is None:
        return "n/a"
    return "  ".join(f"{k} {lat[k]:.1f}" for k in ("mean", "p50", "p90", "p99", "max")) + " ms"


def untrained_banner(pipe: Any) -> str | None:
    """The plain-words warning every tool prints when the model has no trained weights."""
    if pipe.trained:
        return None
    return (f"NOTE: model {pipe.config.model} is UNTRAINED (random initialisation, no weights file): "
            f"its labels are meaningless; this run only shows the tooling working")


class VideoSink:
    """Overlay frames -> an .mp4 (OpenCV ``mp4v``); turns itself off with one warning on failure."""

    def __init__(self, path: Path | None, fps: float) -> None:
        self.path, self.fps = path, fps
        self.writer: Any = None
        self.size: tuple[int, int] | None = None
        self.frames = 0
        self.error: str | None = None

    def add(self, rgb: np.ndarray) -> None:
        import cv2
        if self.path is None or self.error:
            return
        if self.writer is None:
            self.size = (rgb.shape[1], rgb.shape[0])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
            if not self.writer.isOpened():
                self.error = f"OpenCV cannot write {self.path} (no mp4v encoder in this build)"
                print(f"warning: {self.error}; no video written", file=sys.stderr)
                return
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="segment every image of a rosbag2 into a new bag",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", type=Path, help="input rosbag2: directory, .mcap or .db3")
    p.add_argument("--out", type=Path, required=True,
                   help="output bag: NAME.mcap / NAME.db3 (one file) or a directory name")
    p.add_argument("--topic", dest="topics", action="append", default=None,
                   help="image topic to segment (repeatable; default: every Image/CompressedImage topic)")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default=None, help="storage of a directory output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N image messages")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colour mask (0..1)")
    p.add_argument("--video", type=Path, default=None, help="also write the overlays as an .mp4")
    p.add_argument("--video-fps", type=float, default=10.0)
    p.add_argument("--json", type=Path, default=None, help="write the summary as JSON")
    p.add_argument("--crf-replaces-labels", action="store_true",
                   help="with --crf: write the refined labels as <topic>/labels, color_mask, overlay "
                        "(default: raw labels there, refined ones on <topic>/labels_refined, ...)")
    add_pipeline_args(p)
    p.set_defaults(func=run)


def replay(bag_path: Path, out_path: Path, pipe: Any, topics: Sequence[str] | None = None, *,
           max_frames: int | None = None, alpha: float = 0.5, video: VideoSink | None = None,
           storage: str | None = None, overwrite: bool = False, refiner: Any = None,
           crf_replaces_labels: bool = False) -> dict[str, Any]:
    """Copy ``bag_path`` to ``out_path`` adding the segmentation topics; returns the summary.
    With a CRF ``refiner`` the refined outputs go to ``<topic>/<suffix>_refined`` (or replace the raw ones)."""
    refined_suffix = "" if crf_replaces_labels else "_refined"
    suffixes = OUTPUT_SUFFIXES + (tuple(s + "_refined" for s in OUTPUT_SUFFIXES)
                                  if refiner is not None and refined_suffix else ())
    failures: Counter[str] = Counter()
    examples: dict[str, str] = {}
    latencies: list[float] = []
    frames = ok = 0
    with bags.BagReader(bag_path) as bag:
        chosen = bag.select_topics(topics, image_only=True)
        total = sum(bag.topics[t].count for t in chosen)
        if max_frames is not None:
            total = min(total, max_frames)
        with bags.BagWriter(out_path, storage=storage, overwrite=overwrite) as out:
            for t in chosen:
                for suffix in suffixes:
                    out.add_topic(f"{t}/{suffix}", bags.IMAGE_TYPE)
            bar = tqdm(total=total, desc="replay", unit="frame", disable=None)
            t_start = time.perf_counter()
            for m in bag.messages():
                if m.topic in chosen and max_frames is not None and frames >= max_frames:
                    break  # the output is the input's prefix up to the last frame asked for
                out.add_like(m.connection, bag.store)
                out.write_raw(m.topic, m.timestamp, m.rawdata)
                if m.topic not in chosen:
                    continue
                frames += 1
                t0 = time.perf_counter()
                try:
                    msg = bag.deserialize(m)
                    image, order = bags.decode_image_msg(msg, m.msgtype, pipe.config.max_input_pixels)
                    res = pipe(image, order, color=True, overlay=True, overlay_alpha=alpha,
                               keep_scores=refiner is not None)
                    outs = {"labels": bags.image_msg_from_array(msg.header, res.labels, "labels"),
                            "color_mask": bags.image_msg_from_array(msg.header, res.color),
                            "overlay": bags.image_msg_from_array(msg.header, res.overlay)}
                    if refiner is not None:
                        res = pipe.refine(res, refiner, color=True, overlay=True, overlay_alpha=alpha)
                        outs.update({
                            f"labels{refined_suffix}": bags.image_msg_from_array(msg.header, res.labels, "labels"),
                            f"color_mask{refined_suffix}": bags.image_msg_from_array(msg.header, res.color),
                            f"overlay{refined_suffix}": bags.image_msg_from_array(msg.header, res.overlay)})
                except InputError as exc:
                    failures[exc.kind] += 1
                    examples.setdefault(exc.kind, f"{m.topic} t={m.timestamp}: {exc}")
                    bar.update(1)
                    continue
                latencies.append((time.perf_counter() - t0) * 1e3)
                for suffix, out_msg in outs.items():
                    out.write(f"{m.topic}/{suffix}", m.timestamp, out_msg)
                if video is not None:
                    video.add(res.overlay)
                ok += 1
                bar.update(1)
            elapsed = time.perf_counter() - t_start
            bar.close()
    return {"input": str(bag_path), "output": str(out_path), "topics": list(chosen),
            "frames": frames, "segmented": ok, "failed": sum(failures.values()),
            "failures": dict(failures), "failure_examples": examples,
            "elapsed_s": elapsed, "throughput_fps": ok / elapsed if elapsed > 0 else None,
            "latency_ms": latency_summary(latencies), "pipeline": pipe.describe(),
            "trained": bool(pipe.trained), "crf": getattr(refiner, "mode", "off")}


def print_summary(s: dict[str, Any]) -> None:
    print(f"replayed {s['input']} -> {s['output']}")
    print(f"  topics:      {', '.join(s['topics'])}")
    print(f"  frames:      {s['frames']} read, {s['segmented']} segmented, {s['failed']} failed")
    for kind, n in s["failures"].items():
        print(f"    failed {n} x {kind}: e.g. {s['failure_examples'][kind]}")
    fps = s["throughput_fps"]
    print(f"  throughput:  {fps:.2f} frames/s over {s['elapsed_s']:.1f} s" if fps else "  throughput:  n/a")
    print(f"  latency:     {format_latency(s['latency_ms'])} (decode + segment + encode, per frame)")
    d = s["pipeline"]
    print(f"  model:       {d['model']} on {d['device']} ({d['precision']}), weights {d['weights']}")


def run(args: argparse.Namespace) -> int:
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {args.max_frames}")
    pipe = pipeline_from_args(args)
    banner = untrained_banner(pipe)
    if banner:
        print(banner, file=sys.stderr)
    video = VideoSink(args.video, args.video_fps) if args.video else None
    try:
        summary = replay(args.bag, args.out, pipe, args.topics, max_frames=args.max_frames, alpha=args.alpha,
                         video=video, storage=args.storage, overwrite=args.overwrite,
                         refiner=refiner_from_args(args, pipe), crf_replaces_labels=args.crf_replaces_labels)
    finally:
        if video is not None:
            video.close()
    if video is not None and not video.error:
        summary["video"] = str(args.video)
        print(f"wrote {video.frames} overlay frames to {args.video}")
    print_summary(summary)
    if banner:
        print(banner)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["segmented"] or not summary["frames"] else 1
