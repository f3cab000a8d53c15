#!/usr/bin/env python3
"""Measure how long segment_lifecycle_node's transitions take and what cleanup gives back.

Builds the package with colcon (a clean copy of this repository), starts the installed node with
`ros2 run` as the README does (shipped weights, backend auto), and drives it through
configure -> activate -> deactivate -> activate again (the model still warm) -> deactivate ->
cleanup ``--cycles`` times with the ~/change_state service from rclpy. Per transition: the node's
own time (its 'X done in N ms' log line) and the round trip seen by the caller; the node's RSS
once configured and after each cleanup, per cycle (memory growth over configure/cleanup cycles).

    .venv/bin/python scripts/lifecycle_times.py --cycles 10       # results: docs/node.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))

from helpers import (LifecycleClient, Ros2Process, build_workspace, child_pid,  # noqa: E402
                     sourced_env)

from seg_ros.memory import resident_bytes  # noqa: E402

# one cycle: (transition, row in the table)
STEPS = (("configure", "configure"), ("activate", "activate"), ("deactivate", "deactivate"),
         ("activate", "activate again (warm)"), ("deactivate", "deactivate again"),
         ("cleanup", "cleanup"))
DONE = re.compile(r"\]: (configure|activate|deactivate|cleanup) done in (\d+) ms")


def drive(env: dict[str, str], cycles: int, params: list[str]) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    proc = Ros2Process(env, "run", "seg_ros", "segment_lifecycle_node", "--ros-args",
                       "-r", "image:=/camera/image_raw", *[a for p in params for a in ("-p", p)])
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(env["ROS_DOMAIN_ID"]))
    node = rclpy.create_node("lifecycle_times", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    client = LifecycleClient(node, "/segment_node")
    round_trips: dict[str, list[float]] = {row: [] for _, row in STEPS}
    rss: dict[str, list[float]] = {"unconfigured (start)": [], "configured": [],
                                   "after cleanup": []}
    try:
        proc.wait_for(r"unconfigured: parameters declared", 120)
        pid = child_pid(proc.proc.pid)
        rss["unconfigured (start)"].append(resident_bytes(pid) / 2**20)
        for _ in range(cycles):
            for transition, row in STEPS:
                started = time.monotonic()
                assert client.change(transition), f"{transition} failed:\n{proc.log}"
                round_trips[row].append((time.monotonic() - started) * 1e3)
                if transition in ("configure", "cleanup"):
                    time.sleep(0.5)  # let the RSS settle
                    key = "configured" if transition == "configure" else "after cleanup"
                    rss[key].append(resident_bytes(pid) / 2**20)
        assert client.change("shutdown")
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        proc.terminal_ctrl_c()
        proc.wait(15)
    node_ms = node_times(proc.log, cycles)
    node_ms["(warm-up, in configure)"] = [float(s) * 1e3 for s in
                                          re.findall(r"warmed up at \S+ in ([\d.]+) s", proc.log)]
    return {"node_ms": node_ms, "round_trip_ms": round_trips, "rss_mib": rss,
            "ready": re.findall(r"ready: .*", proc.log)[:1]}


def node_times(log: str, cycles: int) -> dict[str, list[float]]:
    """Return the node's own 'done in N ms' times per table row (the log's order: STEPS')."""
    done = DONE.findall(log)
    assert [t for t, _ in done] == [t for t, _ in STEPS] * cycles, done
    times: dict[str, list[float]] = {row: [] for _, row in STEPS}
    for (_, ms), (_, row) in zip(done, STEPS * cycles):
        times[row].append(float(ms))
    return times


def table(result: dict) -> str:
    rows = ["| transition | node median / max ms | round trip median / max ms |",
            "|---|---|---|"]
    for t, node in result["node_ms"].items():
        trip = result["round_trip_ms"].get(t)
        trips = f"{statistics.median(trip):.0f} / {max(trip):.0f}" if trip else "-"
        rows.append(f"| {t} | {statistics.median(node):.0f} / {max(node):.0f} | {trips} |")
    rss = result["rss_mib"]
    rows += ["", f"RSS MiB unconfigured at start: {rss['unconfigured (start)'][0]:.0f}", "",
             "| cycle | RSS MiB configured | RSS MiB after cleanup |", "|---|---|---|"]
    rows += [f"| {i} | {loaded:.0f} | {released:.0f} |"
             for i, (loaded, released) in enumerate(zip(rss["configured"], rss["after cleanup"]),
                                                    start=1)]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--param", action="append", default=[],
                        help="extra node parameter name:=value (repeatable)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lifecycle_times_"))
    env = sourced_env(build_workspace(root), 1 + os.getpid() % 101, root / "log")
    load_before = os.getloadavg()
    result = drive(env, args.cycles, args.param)
    result["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                         "python": platform.python_version(),
                         "load_average_before_after": [load_before[0], os.getloadavg()[0]]}
    import torch

    result["machine"]["torch"] = torch.__version__
    print(table(result))
    print(f"machine: {result['machine']}")
    print(f"node: {result['ready']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
