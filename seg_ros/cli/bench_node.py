"""``seg-ros bench-node``: end-to-end latency of segment_node against the pipeline alone.

``segment_node`` runs as its own process; this one publishes frames over DDS one at a time (so
nothing queues) and times publish -> outputs received, alternating frame by frame with the
pipeline alone on the same frame in this process (in a worker thread, like the node), so both
see the same load on a shared machine. The target of issue 3 is end-to-end <= 1.25 x pipeline + 5 ms.
Needs rclpy; prints a table, ``--json`` writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ..backends import list_backends
from ..benchmark import percentiles, time_call
from ..pipeline import PipelineConfig, SegmentationPipeline
from ..resources import share_path
from ..sample import sample_road_image
from .common import parse_size
from .segment import read_image_rgb

OUTPUT_SETS = {"labels": ("labels",), "all": ("labels", "color_mask", "overlay")}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-node", help="segment_node end-to-end latency vs the pipeline alone")
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(512, 1024), (1024, 2048)])
    p.add_argument("--frames", type=int, default=15, help="timed frames per measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--outputs", choices=sorted(OUTPUT_SETS), nargs="+", default=["labels", "all"],
                   help="'labels': only ~/labels subscribed; 'all': labels, color_mask and overlay")
    p.add_argument("--model", default="ddrnet23_slim")
    p.add_argument("--weights", default="none", help="weights for both sides (random init by default: "
                                                       "the arithmetic, not the values, sets the time)")
    p.add_argument("--image", type=Path, default=None, help="image to time on (default: a synthetic road scene)")
    p.add_argument("--backend", default="torch", choices=list_backends(), help="backend on both sides")
    p.add_argument("--threads", type=int, default=0, help="CPU threads on both sides (0 = library default)")
    p.add_argument("--fastdds-profile", default=str(share_path("config", "fastdds_large_images.xml")),
                   help="Fast DDS XML profile for both processes ('' = Fast DDS defaults, which lose most "
                        "best-effort frames above 512 KiB)")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(func=run)


def node_command(weights: str, model: str, threads: int = 0, backend: str = "torch") -> list[str]:
    exe = Path(sys.executable).parent / "segment_node"
    if not exe.exists():
        found = shutil.which("segment_node")
        exe = Path(found) if found else None
    cmd = [str(exe)] if exe else [sys.executable, "-m", "seg_ros.node.segment_node"]
    return cmd + ["--ros-args", "--params-file", str(share_path("config", "segment.yaml")),
                  "-p", f"weights:={weights}", "-p", f"model:={model}", "-p", "device:=cpu",
                  "-p", f"num_threads:={threads}", "-p", f"backend:={backend}",
                  "-r", "image:=/bench/image", "-r", "__ns:=/bench"]


class _Client:
    """Publishes frames to the node and records when each frame's outputs arrive."""

    def __init__(self, domain: int, topics: tuple[str, ...]) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from ..node.qos import latched_qos, output_qos

        self.rclpy, self.Image = rclpy, Image
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node("bench_node_client", context=self.ctx)
        self.pub = self.node.create_publisher(Image, "/bench/image", output_qos(1))
        self.cond = threading.Condition()
        self.arrivals: dict[str, dict[str, float]] = {}
        self.ready = False
        self.subs = {}
        self.node.create_subscription(String, "/bench/segment_node/class_info", self._on_info, latched_qos())
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.output_qos = output_qos
        self.set_topics(topics)
        threading.Thread(target=self._spin, daemon=True).start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:
            pass

    def set_topics(self, topics: tuple[str, ...]) -> None:
        for topic in list(self.subs):
            if topic not in topics:
                self.node.destroy_subscription(self.subs.pop(topic))
        for topic in topics:
            if topic not in self.subs:
                self.subs[topic] = self.node.create_subscription(
                    self.Image, f"/bench/segment_node/{topic}", self._arrival(topic), self.output_qos(1))
        self.topics = topics

    def _on_info(self, _msg) -> None:
        with self.cond:
            self.ready = True
            self.cond.notify_all()

    def _arrival(self, topic: str):
        def store(msg) -> None:
            now = time.perf_counter()
            with self.cond:
                self.arrivals.setdefault(msg.header.frame_id, {})[topic] = now
                self.cond.notify_all()
        return store

    def frame_msg(self, frame: np.ndarray):
        msg = self.Image(height=frame.shape[0], width=frame.shape[1], encoding="rgb8", is_bigendian=0,
                         step=frame.shape[1] * 3)
        msg.data = frame.tobytes()
        return msg

    def roundtrip(self, msg, frame_id: str, timeout: float) -> float | None:
        """Seconds from publish to the last subscribed output of ``frame_id``; None if lost."""
        msg.header.frame_id = frame_id
        start = time.perf_counter()
        self.pub.publish(msg)
        deadline = start + timeout
        with self.cond:
            while len(self.arrivals.get(frame_id, {})) < len(self.topics):
                left = deadline - time.perf_counter()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return max(self.arrivals[frame_id].values()) - start

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.ctx)


def _frame(args: argparse.Namespace, h: int, w: int) -> np.ndarray:
    if args.image is not None:
        return cv2.resize(read_image_rgb(args.image), (w, h), interpolation=cv2.INTER_LINEAR)
    return sample_road_image(h, w)


def _in_thread(fn):
    """Run ``fn`` in a worker thread, as the node runs the pipeline (on a busy 2-core machine
    the main thread and a worker thread time differently, so the comparison uses the same)."""
    result = []
    worker = threading.Thread(target=lambda: result.append(fn()))
    worker.start()
    worker.join()
    return result[0]


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    pipe = SegmentationPipeline(PipelineConfig(model=args.model, weights=args.weights, device="cpu",
                                                   num_threads=args.threads, backend=args.backend))
    rows = []
    describe = pipe.describe()
    domain = random.randint(1, 101)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    env.pop("ROS_LOCALHOST_ONLY", None)
    if args.fastdds_profile:
        env["FASTRTPS_DEFAULT_PROFILES_FILE"] = args.fastdds_profile
        os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = args.fastdds_profile  # this process too
    node = subprocess.Popen(node_command(args.weights, args.model, args.threads, args.backend), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = _Client(domain, OUTPUT_SETS[args.outputs[0]])
    try:
        with client.cond:
            if not client.cond.wait_for(lambda: client.ready, timeout=120):
                raise RuntimeError("segment_node did not start within 120 s")
        for size in args.sizes:
            frame = _frame(args, *size)
            msg = client.frame_msg(frame)
            for outputs in args.outputs:
                full = outputs == "all"
                client.set_topics(OUTPUT_SETS[outputs])
                time.sleep(1.0)  # let the node discover the subscriptions
                key = f"{size[0]}x{size[1]}-{outputs}"
                lost, e2e, alone = 0, [], []
                # alternate the two measurements frame by frame, so both see the same machine load
                for i in range(args.warmup + args.frames):
                    p_ms = _in_thread(lambda: time_call(lambda: pipe(frame, "rgb", color=full, overlay=full), 1, 0))[0]
                    t = client.roundtrip(msg, f"{key}-{i}", timeout=15)
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
                rows.append({"size": f"{size[0]}x{size[1]}", "outputs": outputs, "pipeline_ms": pm,
                             "e2e_ms": em, "overhead_ms": round(em["median"] - pm["median"], 2),
                             "paired_overhead_median_ms": round(float(np.median(np.subtract(e2e, alone))), 2)
                             if e2e else float("nan"),
                             "target_ms": round(target, 2), "meets_target": bool(em["median"] <= target),
                             "lost": lost})
                print(f"{key}: pipeline {pm} e2e {em} lost {lost}", flush=True)
    finally:
        client.close()
        node.send_signal(2)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "torch_threads": torch.get_num_threads(), "model": describe["model"],
              "backend": describe["backend"], "device": describe["device"], "weights": describe["weights"],
              "fastdds_profile": args.fastdds_profile or "default", "rows": rows}
    print(f"\n{'size':>10s} {'outputs':>7s} {'pipeline med/p95 ms':>20s} {'e2e med/p95 ms':>17s} "
          f"{'overhead':>9s} {'paired':>7s} {'target':>8s}  ok")
    for r in rows:
        print(f"{r['size']:>10s} {r['outputs']:>7s} {r['pipeline_ms']['median']:9.1f}/{r['pipeline_ms']['p95']:<9.1f}"
              f" {r['e2e_ms']['median']:8.1f}/{r['e2e_ms']['p95']:<8.1f} {r['overhead_ms']:9.1f} "
              f"{r['paired_overhead_median_ms']:7.1f} "
              f"{r['target_ms']:8.1f}  {'yes' if r['meets_target'] else 'NO'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0 if all(r["meets_target"] for r in rows) else 1
