"""``seg-ros bench-node --cameras N [N ...]``: one node for N cameras against N one-camera nodes.

For each size and camera count, in the same run: one ``segment_node`` with ``cameras: [cam0,
...]`` (batched inference), then N ``segment_node`` processes with one camera each. Every camera
publishes frames at ``--camera-rate`` Hz for ``--seconds`` (more than the CPU can segment: both
set-ups run saturated, dropping stale frames as they must); this process subscribes every
camera's labels and reports total labels/s, each camera's latency (header stamp -> labels
received, p50/p99) and the total resident memory of the node processes.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from sensor_msgs.msg import Image

from ..node.qos import output_qos
from ..sample import sample_road_image
from .live_node import (NodeProcess, image_message, isolated_env, node_command, random_domain,
                        ros_env_here, spin_in_background)

NAMESPACE = "/bench"


@dataclass
class Setup:
    """One way of serving N cameras: its node processes and each camera's labels topic."""

    name: str
    nodes: list[NodeProcess]
    image_topics: list[str]
    labels_topics: list[str]

    def rss_mib(self) -> float:
        return sum(node.rss_mib() for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_batched(n: int, size: tuple[int, int], common: list[str], env: dict[str, str]) -> Setup:
    cameras = [f"cam{i}" for i in range(n)]
    node = NodeProcess(node_command(*common, f"cameras:=[{', '.join(cameras)}]",
                                    f"input_size:=[{size[0]}, {size[1]}]",
                                    namespace=NAMESPACE), env)
    return Setup(f"1 node, {n} cameras", [node],
                 [f"{NAMESPACE}/{c}/image" for c in cameras],
                 [f"{NAMESPACE}/segment_node/{c}/labels" for c in cameras])


def start_separate(n: int, size: tuple[int, int], common: list[str],
                   env: dict[str, str]) -> Setup:
    nodes, images, labels = [], [], []
    for i in range(n):
        namespace = f"{NAMESPACE}/n{i}"
        nodes.append(NodeProcess(node_command(*common, f"input_size:=[{size[0]}, {size[1]}]",
                                              namespace=namespace,
                                              input_topic=f"{namespace}/image"), env))
        images.append(f"{namespace}/image")
        labels.append(f"{namespace}/segment_node/labels")
    return Setup(f"{n} nodes, 1 camera each", nodes, images, labels)


class Cameras:
    """This process's side: one publisher per camera, one labels subscription per camera."""

    def __init__(self, env: dict[str, str], setup: Setup) -> None:
        self.context = rclpy.Context()
        with ros_env_here(env):
            rclpy.init(context=self.context, domain_id=int(env["ROS_DOMAIN_ID"]))
            self.node = rclpy.create_node("bench_cameras", context=self.context)
        self.pubs = [self.node.create_publisher(Image, t, output_qos(1))
                     for t in setup.image_topics]
        self.latencies: list[list[float]] = [[] for _ in setup.labels_topics]
        self.counting = False
        for i, topic in enumerate(setup.labels_topics):
            self.node.create_subscription(Image, topic, self._arrival(i), output_qos(10))
        self.executor = spin_in_background(self.node, self.context)

    def _arrival(self, camera: int):
        def store(msg: Image) -> None:
            if self.counting:
                stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                self.latencies[camera].append((time.time() - stamp) * 1e3)
        return store

    def ready(self, setup: Setup) -> bool:
        return all(p.get_subscription_count() > 0 for p in self.pubs) and all(
            "ready:" in node.log for node in setup.nodes)

    def publish_for(self, msg: Image, seconds: float, rate_hz: float) -> None:
        """Every camera publishes ``msg`` (stamped now) at ``rate_hz`` for ``seconds``."""
        period = 1.0 / rate_hz
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.monotonic()
            for pub in self.pubs:
                now = time.time()
                msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int(now % 1 * 1e9)
                pub.publish(msg)
            time.sleep(max(0.0, period - (time.monotonic() - started)))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def measure(setup: Setup, env: dict[str, str], frame: np.ndarray, args: Any) -> dict[str, Any]:
    """Wait until ready, warm up, then run all cameras for ``args.seconds``."""
    cams = Cameras(env, setup)
    try:
        deadline = time.monotonic() + 300
        while not cams.ready(setup):
            dead = [n for n in setup.nodes if n.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{setup.name} did not start:\n{(dead or setup.nodes)[0].log}")
            time.sleep(0.2)
        msg = image_message(frame)
        cams.publish_for(msg, args.warmup_seconds, args.camera_rate)
        cams.counting = True
        cams.publish_for(msg, args.seconds, args.camera_rate)
        time.sleep(1.0)  # the frames in flight
        cams.counting = False
        per_camera = [{"labels": len(lat),
                       "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat else None,
                       "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat else None}
                      for lat in cams.latencies]
        return {"setup": setup.name, "processes": len(setup.nodes),
                "labels_per_s": round(sum(len(lat) for lat in cams.latencies) / args.seconds, 2),
                "rss_mib": round(setup.rss_mib(), 1), "cameras": per_camera}
    finally:
        cams.close()


def run(args: Any) -> int:
    env = isolated_env(random_domain())
    common = [f"weights:={args.weights}", f"model:={args.model}", "device:=cpu",
              f"num_threads:={args.threads}", f"backend:={args.backend}",
              "publish_color_mask:=false", "publish_overlay:=false"]
    rows = []
    for size in args.sizes:
        frame = sample_road_image(*size)
        for n in args.cameras:
            for start in (start_batched, start_separate):
                setup = start(n, size, common, env)
                try:
                    row = measure(setup, env, frame, args)
                finally:
                    setup.stop()
                row.update(size=f"{size[0]}x{size[1]}", n=n)
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {"date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
                         f"{os.getloadavg()[0]:.1f} at the end",
              "model": args.model, "weights": args.weights, "backend": args.backend,
              "camera_rate_hz": args.camera_rate, "seconds": args.seconds, "rows": rows}
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'size':>9s} {'N':>2s} {'set-up':>24s} {'labels/s':>9s} {'RSS MiB':>8s}  "
          f"per-camera p50/p99 ms")
    for r in rows:
        lat = "  ".join(f"{c['p50_ms']}/{c['p99_ms']}" for c in r["cameras"])
        print(f"{r['size']:>9s} {r['n']:2d} {r['setup']:>24s} {r['labels_per_s']:9.2f} "
              f"{r['rss_mib']:8.1f}  {lat}")
