"""``seg-ros bench-fleet``: frames/s of a fleet replay in-process.

On local worker processes and on Ray, the engines' start-up and per-bag overhead, and the host-side
cost of a frame.

Makes ``--bags`` small bags (CamVid val frames when ../shared is present, else a synthetic road
scene, at ``--size``, rgb8 at 10 Hz), replays them with each engine through the fleet runner (the
code ``seg-ros replay`` runs), and checks the labels are byte-identical across engines. Per engine:
start-up (workers loading the model), steady frames/s (after start-up), task time per frame,
idle per bag = (workers x steady wall time - time inside tasks) / bags (what dispatching, result
transfer, manifest, bookkeeping and the last bags' tail cost a worker slot per bag) and dispatch
per bag (median of: task submitted -> its result seen by the driver, minus the time inside it).
Host-side cost: decoding a frame message and encoding + serialising the three outputs at
``--host-size``, which a GPU worker still pays on its CPU. Prints a Markdown table; ``--json``
writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from .. import bags
from ..benchmark import percentiles, time_call
from ..fleet.engines import InProcessEngine, LocalProcessEngine, RayEngine
from ..fleet.manifest import Manifest
from ..fleet.runner import EngineFactory, FleetJob, FleetRunner
from ..fleet.segment import ReplayOptions, output_messages
from ..fleet.tasks import REPLAY, PipelineSpec
from ..metrics import confusion_matrix
from ..pipeline import PipelineConfig, SegmentationPipeline
from ..sample import sample_road_image
from .common import parse_size

CAMVID_VAL = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "camvid" / "val"
ENGINES = ("in-process", "in-process-1-thread", "workers", "ray")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-fleet",
                       help="fleet replay frames/s: in-process vs local workers vs Ray")
    p.add_argument("--bags", type=int, default=8)
    p.add_argument("--frames", type=int, default=20, help="frames per bag")
    p.add_argument("--size", type=parse_size, default=(360, 480),
                   help="frame size HxW of the bags")
    p.add_argument("--workers", type=int, default=2, help="local worker processes / Ray actors")
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    p.add_argument("--model", default="ddrnet23_slim")
    p.add_argument("--weights", default="default")
    p.add_argument("--host-size", type=parse_size, default=(1024, 2048),
                   help="frame size of the host-side (decode + encode) cost")
    p.add_argument("--keep", type=Path, default=None,
                   help="keep the bags and outputs in this folder")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=run)


def source_frames(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """CamVid val frames (sorted by name) resized to ``size``, else shifted synthetic scenes."""
    h, w = size
    files = sorted(CAMVID_VAL.glob("*.png"))[:n] if CAMVID_VAL.is_dir() else []
    if len(files) == n:
        rgb = [cv2.imread(str(f))[:, :, ::-1] for f in files]
        return [cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) for img in rgb]
    base = sample_road_image(h, w)
    return [np.roll(base, 13 * i, axis=1) for i in range(n)]


def make_bags(folder: Path, count: int, frames: int, size: tuple[int, int]) -> list[Path]:
    images = source_frames(count * frames, size)
    paths = []
    for b in range(count):
        path = folder / f"drive_{b:02d}.mcap"
        with bags.BagWriter(path) as w:
            w.add_topic("/camera/image_raw", bags.IMAGE_TYPE)
            for i in range(frames):
                stamp = 1_700_000_000 * 10**9 + (b * frames + i) * 10**8
                header = bags.make_header(stamp, "camera")
                msg = bags.image_msg_from_array(header, images[b * frames + i])
                w.write("/camera/image_raw", stamp, msg)
        paths.append(path)
    return paths


def factories(workers: int) -> dict[str, tuple[EngineFactory, int]]:
    """Engine factory and worker count per engine; workers get one thread each (2 cores here)."""
    return {
        "in-process": (lambda spec, progress: InProcessEngine(spec, progress), 1),
        "in-process-1-thread": (
            lambda spec, progress: InProcessEngine(spec.with_threads(1), progress), 1),
        "workers": (
            lambda spec, progress: LocalProcessEngine(spec.with_threads(1), workers, progress),
            workers),
        "ray": (
            lambda spec, progress: RayEngine(spec.with_threads(1), workers, progress), workers),
    }


def run_engine(name: str, factory: EngineFactory, workers: int, src: Path, out: Path,
               spec: PipelineSpec, frames: int, bags_n: int) -> dict[str, Any]:
    job = FleetJob(REPLAY, [str(src)], out, spec, replay=ReplayOptions(("/camera/image_raw",)),
                   overwrite=True)
    runner = FleetRunner(job, factory, threading.Event())
    t0 = time.perf_counter()
    outcome = runner.run()
    wall = time.perf_counter() - t0
    task_s = sum(e["seconds"] for e in Manifest(out).entries().values())
    steady = runner.timings["drive_s"]
    return {"engine": name, "workers": workers, "bags_ok": outcome.ok, "frames": outcome.frames,
            "wall_s": wall, "startup_s": runner.timings["startup_s"], "steady_s": steady,
            "close_s": runner.timings["close_s"], "fps_overall": frames / wall,
            "fps_steady": frames / steady,
            "task_s": task_s, "task_ms_per_frame": 1e3 * task_s / frames,
            "overhead_s_per_bag": (workers * steady - task_s) / bags_n,
            "dispatch_ms_per_bag": 1e3 * float(np.median(runner.task_overheads_s)),
            "load_avg_1min": os.getloadavg()[0]}


def labels_of(out: Path) -> list[bytes]:
    data = []
    for path in sorted(out.glob("*.mcap")):
        with bags.BagReader(path) as b:
            data += [m.rawdata for m in b.messages(["/camera/image_raw/labels"])]
    return data


def host_cost(size: tuple[int, int], model: str) -> dict[str, Any]:
    """Return what a worker's CPU does per frame besides inference.

    At ``size``: read a frame message (raw rgb8, or JPEG), build and serialise the three replay
    outputs, or score the labels (eval). MB: the bytes a frame takes in a bag.
    """
    h, w = size
    pipe = SegmentationPipeline(model=model, weights="none", device="cpu", input_size=(64, 128))
    rgb = sample_road_image(h, w)
    header = bags.make_header(1)
    store = bags.typestore()
    raw = bytes(store.serialize_cdr(bags.image_msg_from_array(header, rgb), bags.IMAGE_TYPE))
    jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
    compressed = bags.make_compressed(header, "jpeg", jpeg)
    jpeg_raw = bytes(store.serialize_cdr(compressed, bags.COMPRESSED_TYPE))
    result = pipe(rgb, "rgb", color=True, overlay=True)
    gt = np.roll(result.labels, 9, axis=1)

    def read(data: bytes, msgtype: str) -> Callable[[], object]:
        return lambda: bags.decode_image_msg(store.deserialize_cdr(data, msgtype), msgtype, None)

    def outputs() -> list[bytes]:
        messages = output_messages(header, result).values()
        return [store.serialize_cdr(m, bags.IMAGE_TYPE) for m in messages]

    k = pipe.classes.num_classes
    steps = {"read_raw_rgb8": read(raw, bags.IMAGE_TYPE),
             "read_jpeg": read(jpeg_raw, bags.COMPRESSED_TYPE), "replay_outputs": outputs,
             "eval_confusion": lambda: confusion_matrix(gt, result.labels, k)}
    return {"size": f"{h}x{w}", "raw_mb": len(raw) / 2**20, "jpeg_mb": len(jpeg_raw) / 2**20,
            "outputs_mb": sum(len(b) for b in outputs()) / 2**20,
            "ms": {name: percentiles(time_call(fn, runs=15, warmup=2))["median"]
                   for name, fn in steps.items()}}


def machine() -> str:
    return (f"{os.cpu_count()}-core {platform.machine()} CPU, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| engine | workers | start-up s | close s | wall s | frames/s overall | frames/s "
             "steady | task ms/frame | idle s/bag | dispatch ms/bag | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['engine']} | {r['workers']} | {r['startup_s']:.1f} | "
                     f"{r['close_s']:.1f} | {r['wall_s']:.1f} | {r['fps_overall']:.2f} | "
                     f"{r['fps_steady']:.2f} | {r['task_ms_per_frame']:.0f} | "
                     f"{r['overhead_s_per_bag']:.2f} | {r['dispatch_ms_per_bag']:.0f} | "
                     f"{r['load_avg_1min']:.1f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    spec = PipelineSpec(PipelineConfig(model=args.model, weights=args.weights, device="cpu"))
    frames = args.bags * args.frames
    with tempfile.TemporaryDirectory(prefix="bench_fleet_") as tmp:
        root = args.keep or Path(tmp)
        src = root / "bags"
        make_bags(src, args.bags, args.frames, args.size)
        rows, labels = [], {}
        engines = factories(args.workers)
        for name in args.engines:
            factory, workers = engines[name]
            out = root / f"out_{name}"
            rows.append(run_engine(name, factory, workers, src, out, spec, frames, args.bags))
            labels[name] = labels_of(out)
            print(f"{name}: {rows[-1]['fps_steady']:.2f} frames/s steady", flush=True)
    first = next(iter(labels.values()))
    report = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "load_avg": os.getloadavg(),
              "bags": args.bags, "frames_per_bag": args.frames, "size": list(args.size),
              "model": args.model, "weights": args.weights, "engines": rows,
              "labels_identical": all(v == first for v in labels.values()),
              "host_side": host_cost(args.host_size, args.model)}
    print(table(rows))
    print(f"labels byte-identical across engines: {report['labels_identical']}")
    hs = report["host_side"]
    steps = ", ".join(f"{k} {v:.1f} ms" for k, v in hs["ms"].items())
    print(f"host side per frame at {hs['size']} (one core): {steps}; a frame is "
          f"{hs['raw_mb']:.1f} MB raw, {hs['jpeg_mb']:.2f} MB JPEG, outputs "
          f"{hs['outputs_mb']:.1f} MB")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["labels_identical"] else 1
