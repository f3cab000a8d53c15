"""``seg-ros replay BAG --out OUT_BAG``: segment every image of a bag, offline, deterministically.

How a model is qualified on recorded drives before it goes on a vehicle: the output bag holds every
input message unchanged plus ``<topic>/labels`` (mono8), ``<topic>/color_mask`` and
``<topic>/overlay`` (rgb8) per image message, at the input's bag timestamp and with its header.
Frames that cannot be decoded or segmented are counted by reason and do not stop the replay.

Many bags (``seg-ros replay BAG_OR_FOLDER_OR_GLOB ... --out FOLDER``, or any option of the "many
bags" group): outputs mirror the input tree under --out, with a per-bag summary, a JSON-lines
manifest and replay_summary.json; in-process, on --workers N processes or on Ray.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError
from ..fleet.control import Control
from ..fleet.runner import FleetJob
from ..fleet.segment import OUTPUT_SUFFIXES, ReplayOptions, latency_summary, replay_bag, summarize
from ..fleet.sources import is_single_bag, plan_bag
from ..fleet.tasks import REPLAY
from ..tta import offline_pipeline
from .common import add_pipeline_args, pipeline_from_args, refiner_from_args
from .fleet_args import (add_fleet_args, check_fleet_args, fleet_requested, print_outcome,
                         run_fleet, spec_from_args)

__all__ = ["OUTPUT_SUFFIXES", "VideoSink", "format_latency", "latency_summary", "replay",
           "untrained_banner"]


def format_latency(lat: dict[str, float | None]) -> str:
    if lat["p50"] is None:
        return "n/a"
    return "  ".join(f"{k} {lat[k]:.1f}" for k in ("mean", "p50", "p90", "p99", "max")) + " ms"


def untrained_banner(pipe: Any) -> str | None:
    """Return the plain-words warning every tool prints when the model has no trained weights."""
    if pipe.trained:
        return None
    return (f"NOTE: model {pipe.config.model} is UNTRAINED (random initialisation, no weights "
            f"file): its labels are meaningless; this run only shows the tooling working")


class VideoSink:
    """Overlay frames -> an .mp4 (OpenCV ``mp4v``); off with one warning on failure."""

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
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"),
                                          self.fps, self.size)
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
    p.add_argument("inputs", nargs="*", metavar="BAG",
                   help="input rosbag2: directory, .mcap or .db3; several, folders (searched "
                        "recursively) or globs make a fleet run")
    p.add_argument("--out", type=Path, required=True,
                   help="output bag: NAME.mcap / NAME.db3 (one file) or a directory name; for a "
                        "fleet run the output folder")
    p.add_argument("--topic", dest="topics", action="append", default=None,
                   help="image topic to segment (repeatable; default: every "
                        "Image/CompressedImage topic)")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default=None,
                   help="storage of a directory output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N image messages")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="overlay opacity of the colour mask (0..1)")
    p.add_argument("--video", type=Path, default=None, help="also write the overlays as an .mp4")
    p.add_argument("--video-fps", type=float, default=10.0)
    p.add_argument("--json", type=Path, default=None, help="write the summary as JSON")
    p.add_argument("--crf-replaces-labels", action="store_true",
                   help="with --crf: write the refined labels as <topic>/labels, color_mask, "
                        "overlay (default: raw labels there, refined ones on "
                        "<topic>/labels_refined, ...)")
    p.add_argument("--tta", action="store_true",
                   help="offline quality mode: average scales 0.75/1/1.25 and flips (6x the time)")
    add_pipeline_args(p)
    add_fleet_args(p)
    p.set_defaults(func=run)


def replay(bag_path: Path, out_path: Path, pipe: Any, topics: Sequence[str] | None = None, *,
           max_frames: int | None = None, alpha: float = 0.5, video: VideoSink | None = None,
           storage: str | None = None, overwrite: bool = False, refiner: Any = None,
           crf_replaces_labels: bool = False) -> dict[str, Any]:
    """Copy ``bag_path`` to ``out_path`` adding the segmentation topics; return the summary.

    The topics come from seg_ros.fleet.segment, with a progress bar. With a CRF ``refiner`` the
    refined outputs go to ``<topic>/<suffix>_refined`` (or replace the raw ones).
    """
    options = ReplayOptions(tuple(topics) if topics else None, max_frames, alpha, storage,
                            overwrite, crf_replaces_labels)
    total = plan_bag(bag_path, options.topics, None, max_frames).frames
    with tqdm(total=total, desc="replay", unit="frame", disable=None) as bar:
        part = replay_bag(bag_path, out_path, pipe, options, refiner=refiner, video=video,
                          control=Control(bar.update))
    crf = getattr(refiner, "mode", "off")
    return summarize([part], str(out_path), pipe.describe(), pipe.trained, crf)


def print_summary(s: dict[str, Any]) -> None:
    print(f"replayed {s['input']} -> {s['output']}")
    print(f"  topics:      {', '.join(s['topics'])}")
    print(f"  frames:      {s['frames']} read, {s['segmented']} segmented, {s['failed']} failed")
    for kind, n in s["failures"].items():
        print(f"    failed {n} x {kind}: e.g. {s['failure_examples'][kind]}")
    fps = s["throughput_fps"]
    print(f"  throughput:  {fps:.2f} frames/s over {s['elapsed_s']:.1f} s" if fps
          else "  throughput:  n/a")
    print(f"  latency:     {format_latency(s['latency_ms'])} "
          f"(decode + segment + encode, per frame)")
    d = s["pipeline"]
    print(f"  model:       {d['model']} on {d['device']} ({d['precision']}), "
          f"weights {d['weights']}")


def run(args: argparse.Namespace) -> int:
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {args.max_frames}")
    if not args.inputs and not args.bag_list:
        raise ConfigError("give the bag(s) to replay (or --bag-list FILE)")
    if len(args.inputs) == 1 and is_single_bag(args.inputs[0]) and not fleet_requested(args):
        return run_single(args, Path(args.inputs[0]))
    return run_many(args)


def run_single(args: argparse.Namespace, bag: Path) -> int:
    """One bag to one output bag, in this process (the tool's original form)."""
    pipe = offline_pipeline(pipeline_from_args(args), args.tta, args.crf)
    banner = untrained_banner(pipe)
    if banner:
        print(banner, file=sys.stderr)
    video = VideoSink(args.video, args.video_fps) if args.video else None
    try:
        summary = replay(bag, args.out, pipe, args.topics, max_frames=args.max_frames,
                         alpha=args.alpha, video=video, storage=args.storage,
                         overwrite=args.overwrite, refiner=refiner_from_args(args, pipe),
                         crf_replaces_labels=args.crf_replaces_labels)
    finally:
        if video is not None:
            video.close()
    report_single(args, summary, video)
    if banner:
        print(banner)
    return 0 if summary["segmented"] or not summary["frames"] else 1


def report_single(args: argparse.Namespace, summary: dict[str, Any],
                  video: VideoSink | None) -> None:
    """Print the summary, note the video written, and write the --json summary."""
    if video is not None and not video.error:
        summary["video"] = str(args.video)
        print(f"wrote {video.frames} overlay frames to {args.video}")
    print_summary(summary)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))


def run_many(args: argparse.Namespace) -> int:
    """Run over a fleet: every bag the inputs name, outputs mirrored under --out (a folder)."""
    check_fleet_args(args)
    if args.video or args.json or args.tta:
        raise ConfigError("--video, --json and --tta are for one bag; a run over many bags writes "
                          "OUT/<bag>.summary.json per bag and OUT/replay_summary.json")
    if args.chunk_frames and args.max_frames:
        raise ConfigError("--max-frames and --chunk-frames cannot be combined")
    topics = tuple(args.topics) if args.topics else None
    options = ReplayOptions(topics, args.max_frames, args.alpha, args.storage, args.overwrite,
                            args.crf_replaces_labels)
    job = FleetJob(REPLAY, args.inputs, args.out.absolute(), spec_from_args(args), replay=options,
                   list_file=args.bag_list, chunk_frames=args.chunk_frames, resume=args.resume,
                   overwrite=args.overwrite, attempts=1 + args.retries)
    outcome = run_fleet(job, args)
    print_outcome(outcome, "replay")
    return outcome.exit_code
