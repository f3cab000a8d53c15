"""``seg-ros bench-node``: segment_node's latency as a subscriber sees it.

``segment_node`` runs as its own process (seg_ros/cli/live_node.py); this one publishes frames to
it over DDS and subscribes to its outputs. Two measurements per size and output set:

- end-to-end vs the pipeline alone: frames one at a time (nothing queues), publish -> last output
  received, alternating frame by frame with the pipeline alone on the same frame in this process
  (in a worker thread, like the node), so both see the same load. Issue 3's target:
  end-to-end <= 1.25 x pipeline + 5 ms.
- delivery: a stream of frames at ``--rate`` Hz, each published once (no retries), and for each
  frame the arrival of its last subscribed output minus its header stamp; frames later than
  ``--late`` s and frames the node processed whose outputs never came are counted (issue 18).

Both processes run with a default DDS environment (your Fast DDS settings removed) unless
``--fastdds-profile`` or ``--node-env`` say otherwise. Needs rclpy; prints tables, ``--json``
writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..backends import list_backends
from ..benchmark import percentiles, time_call
from ..pipeline import PipelineConfig, SegmentationPipeline
from ..sample import sample_road_image
from .common import parse_size
from .live_node import (LiveClient, NodeProcess, delivery_summary, idle_counters, image_message,
                        isolated_env, node_command, random_domain, roundtrip, settle, stream,
                        warm_up)
from .segment import read_image_rgb

OUTPUT_SETS = {"labels": ("labels",), "all": ("labels", "color_mask", "overlay")}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-node", help="segment_node latency as a subscriber sees it "
                                          "(end-to-end, delivery)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(512, 1024), (1024, 2048)])
    p.add_argument("--frames", type=int, default=15,
                   help="timed frames per end-to-end measurement (0 = skip it)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--stream-frames", type=int, default=30,
                   help="frames per delivery measurement, sent at --rate (0 = skip it)")
    p.add_argument("--rate", type=float, default=5.0,
                   help="frames per second of the delivery stream")
    p.add_argument("--late", type=float, default=1.0,
                   help="a frame delivered later than this (s) is late")
    p.add_argument("--outputs", choices=sorted(OUTPUT_SETS), nargs="+", default=["labels", "all"],
                   help="'labels': only ~/labels subscribed; 'all': labels, color_mask, overlay")
    p.add_argument("--model", default="ddrnet23_slim")
    p.add_argument("--weights", default="none",
                   help="weights for both sides (random init by default: the arithmetic, not the "
                        "values, sets the time)")
    p.add_argument("--image", type=Path, default=None,
                   help="image to time on (default: a synthetic road scene)")
    p.add_argument("--backend", default="torch", choices=list_backends(),
                   help="backend on both sides")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads on both sides (0 = library default)")
    p.add_argument("--fastdds-profile", default="",
                   help="Fast DDS XML profile for both processes ('' = none: this process runs as "
                        "a default-configured camera and subscriber; the node applies its own)")
    p.add_argument("--node-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the node only, repeatable ('KEY=' removes KEY); e.g. "
                        "FASTDDS_BUILTIN_TRANSPORTS=DEFAULT runs it on Fast DDS's own defaults "
                        "(as before issue 18)")
    p.add_argument("--cameras", type=int, nargs="+", default=[],
                   help="compare one node serving N cameras (batched) with N single-camera "
                        "nodes, for each N given (seg_ros/cli/bench_cameras.py)")
    p.add_argument("--camera-rate", type=float, default=15.0,
                   help="with --cameras: frames per second each camera publishes")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="with --cameras: measured seconds per set-up")
    p.add_argument("--warmup-seconds", type=float, default=5.0,
                   help="with --cameras: unmeasured seconds first")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=run)


def _frame(args: argparse.Namespace, h: int, w: int) -> np.ndarray:
    if args.image is not None:
        return cv2.resize(read_image_rgb(args.image), (w, h), interpolation=cv2.INTER_LINEAR)
    return sample_road_image(h, w)


def _in_thread(fn):
    """Run ``fn`` in a worker thread.

    As the node runs the pipeline (on a busy 2-core machine the main thread and a worker thread
    time differently, so the comparison uses the same).
    """
    result = []
    worker = threading.Thread(target=lambda: result.append(fn()))
    worker.start()
    worker.join()
    return result[0]


def end_to_end(args: argparse.Namespace, client: LiveClient, pipe: SegmentationPipeline,
               frame: np.ndarray, key: str, full: bool) -> dict[str, Any]:
    """Paired end-to-end vs pipeline-alone row (frames one at a time)."""
    msg = image_message(frame)
    lost, e2e, alone = 0, [], []
    def alone_ms() -> float:
        return time_call(lambda: pipe(frame, "rgb", color=full, overlay=full), 1, 0)[0]

    for i in range(args.warmup + args.frames):  # alternate, so both see the same machine load
        p_ms = _in_thread(alone_ms)
        t = roundtrip(client, msg, f"{key}-e2e-{i}", timeout=15)
        if t is None:
            lost += 1
        elif i >= args.warmup:
            e2e.append(t * 1e3)
            alone.append(p_ms)
        time.sleep(0.05)
    nan = {"median": float("nan"), "p95": float("nan"), "runs": 0}
    pm = percentiles(alone) if alone else nan
    em = percentiles(e2e) if e2e else nan
    target = 1.25 * pm["median"] + 5.0
    paired = round(float(np.median(np.subtract(e2e, alone))), 2) if e2e else float("nan")
    return {"pipeline_ms": pm, "e2e_ms": em, "overhead_ms": round(em["median"] - pm["median"], 2),
            "paired_overhead_median_ms": paired, "target_ms": round(target, 2),
            "meets_target": bool(em["median"] <= target), "lost": lost}


def delivery(args: argparse.Namespace, client: LiveClient, frame: np.ndarray,
             key: str) -> dict[str, Any]:
    """Return a stream at ``--rate``.

    Each frame published once, its outputs timed as they arrive.
    """
    msg = image_message(frame)
    warm_up(client, msg, key, args.warmup)
    before = idle_counters(client)
    ids = [f"{key}-stream-{i}" for i in range(args.stream_frames)]
    stream(client, [(msg, fid) for fid in ids], args.rate)
    done = settle(client, ids, before)
    summary = delivery_summary(client, ids, done, late_s=args.late)
    summary["ok"] = (summary["complete"] > 0 and summary["lost_after_node"] == 0
                     and summary["partial"] == 0 and summary["late"] == 0)
    return summary


def _start(args: argparse.Namespace) -> tuple[NodeProcess, LiveClient]:
    """Return the node (its own environment per --node-env) and this process's client, ready."""
    env = isolated_env(random_domain())
    if args.fastdds_profile:
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = args.fastdds_profile
    node_env = dict(env)
    for key, _, value in (kv.partition("=") for kv in args.node_env):
        node_env.pop(key, None) if not value else node_env.update({key: value})
    node = NodeProcess(node_command(f"weights:={args.weights}", f"model:={args.model}",
                                    "device:=cpu", f"num_threads:={args.threads}",
                                    f"backend:={args.backend}", "diagnostics_period:=0.25"),
                       node_env)
    client = LiveClient(env, OUTPUT_SETS[args.outputs[0]])
    try:
        client.wait_ready(node)
    except RuntimeError:
        client.close()
        node.stop()
        raise
    return node, client


def run(args: argparse.Namespace) -> int:
    if args.cameras:
        from . import bench_cameras

        return bench_cameras.run(args)
    torch.manual_seed(0)
    pipe = SegmentationPipeline(PipelineConfig(model=args.model, weights=args.weights,
                                               device="cpu", num_threads=args.threads,
                                               backend=args.backend))
    node, client = _start(args)
    try:
        rows = measure(args, client, pipe)
    finally:
        client.close()
        node.stop()
    report = build_report(args, pipe.describe(), node, rows)
    print_tables(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    ok = [r["meets_target"] for r in rows if "meets_target" in r]
    ok += [r["delivery"]["ok"] for r in rows if "delivery" in r]
    return 0 if all(ok) else 1


def measure(args: argparse.Namespace, client: LiveClient,
            pipe: SegmentationPipeline) -> list[dict[str, Any]]:
    """One row per size and output set: end-to-end vs the pipeline, and delivery of a stream."""
    rows = []
    for size in args.sizes:
        frame = _frame(args, *size)
        for outputs in args.outputs:
            client.set_outputs(OUTPUT_SETS[outputs])
            time.sleep(1.0)  # let the node discover the subscriptions
            key = f"{size[0]}x{size[1]}-{outputs}"
            row: dict[str, Any] = {"size": f"{size[0]}x{size[1]}", "outputs": outputs}
            if args.frames > 0:
                row.update(end_to_end(args, client, pipe, frame, key, outputs == "all"))
            if args.stream_frames > 0:
                row["delivery"] = delivery(args, client, frame, key)
            rows.append(row)
            print(f"{key}: {json.dumps(row)}", flush=True)
    return rows


def build_report(args: argparse.Namespace, describe: dict[str, Any], node: NodeProcess,
                 rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the --json report: when, where, what ran, and the rows."""
    return {"date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "torch_threads": torch.get_num_threads(), "model": describe["model"],
            "backend": describe["backend"], "device": describe["device"],
            "weights": describe["weights"], "fastdds_profile": args.fastdds_profile or "default",
            "node_env": args.node_env,
            "node_dds": next((line for line in node.lines if "DDS:" in line), ""),
            "rate_hz": args.rate, "rows": rows}


def print_tables(rows: list[dict[str, Any]]) -> None:
    e2e = [r for r in rows if "e2e_ms" in r]
    if e2e:
        print(f"\n{'size':>10s} {'outputs':>7s} {'pipeline med/p95 ms':>20s} "
              f"{'e2e med/p95 ms':>17s} {'overhead':>9s} {'paired':>7s} {'target':>8s}  ok")
    for r in e2e:
        pm, em = r["pipeline_ms"], r["e2e_ms"]
        print(f"{r['size']:>10s} {r['outputs']:>7s} {pm['median']:9.1f}/{pm['p95']:<9.1f} "
              f"{em['median']:8.1f}/{em['p95']:<8.1f} {r['overhead_ms']:9.1f} "
              f"{r['paired_overhead_median_ms']:7.1f} {r['target_ms']:8.1f}  "
              f"{'yes' if r['meets_target'] else 'NO'}")
    streams = [r for r in rows if "delivery" in r]
    if streams:
        print(f"\ndelivery (stamp -> last output received, each frame published once)\n"
              f"{'size':>10s} {'outputs':>7s} {'sent':>5s} {'done':>5s} {'p50 ms':>8s} "
              f"{'p95 ms':>8s} {'max ms':>8s} {'late':>5s} {'lost in':>8s} {'lost out':>9s} "
              f"{'partial':>8s} {'node drop':>9s} {'node p95':>9s}  ok")
    fmt = lambda v: f"{v:8.1f}" if v is not None else f"{'-':>8s}"  # noqa: E731
    for r in streams:
        d = r["delivery"]
        lat = d["latency_ms"]
        print(f"{r['size']:>10s} {r['outputs']:>7s} {d['sent']:5d} {d['complete']:5d} "
              f"{fmt(lat['p50'])} {fmt(lat['p95'])} {fmt(lat['max'])} {d['late']:5d} "
              f"{d['lost_before_node']:8d} {d['lost_after_node']:9d} {d['partial']:8d} "
              f"{d['node']['frames_dropped']:9d} {d['node_latency_ms']['p95']:9.1f}  "
              f"{'yes' if d['ok'] else 'NO'}")
