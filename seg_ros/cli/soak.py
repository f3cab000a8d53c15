"""``seg-ros soak``: a live segment_node under a long stream of frames, good and malformed.

Starts ``segment_node`` as its own process (seg_ros/cli/live_node.py, default DDS environment),
subscribes to every output (labels, colour mask, overlay, confidence), publishes ``--frames``
frames at ``--rate`` Hz, each once, cycling over the ``--size`` values (several sizes: a camera
whose resolution keeps changing), with a malformed frame every ``--malformed-every`` frames
(unknown encoding, zero size, too many pixels, short step, truncated or surplus data, odd YUV
width), and samples the node's resident memory. Per window of frames: good frames sent and
delivered (every output), drops, latency percentiles (stamp -> last output received), RSS.

Writes ``soak_summary.json``, ``soak_summary.txt`` and ``soak.png`` (RSS and latency over the
run) to ``--out``. Exit code 1 when a processed frame missed an output, the node counted a
malformed frame under the wrong kind, the node died, its RSS grew faster than
``--max-rss-slope`` or more than ``--max-late`` frames were late.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..sample import sample_road_image
from .common import parse_size
from .live_node import (OUTPUTS, LiveClient, NodeProcess, idle_counters, image_message,
                        isolated_env, latency_percentiles, node_command, random_domain, settle,
                        stream, warm_up)

# how a good rgb8 frame is spoilt -> the kind the node must count it under (errors.<kind>)
EXPECTED_KIND = {"unknown_encoding": "unknown_encoding", "empty": "empty",
                 "too_large": "too_large", "short_step": "size_mismatch",
                 "truncated": "truncated", "surplus_data": "size_mismatch",
                 "odd_yuv_width": "size_mismatch"}
Sample = tuple[float, int, float]  # RSS sample: (seconds, frames sent so far, MiB)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("soak", help="long run of a live segment_node: memory, drops, latency, "
                                    "malformed frames",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=1000,
                   help="frames to send, malformed ones included")
    p.add_argument("--rate", type=float, default=10.0, help="frames per second")
    p.add_argument("--size", type=parse_size, nargs="+", default=[(360, 480)],
                   help="frame size HxW (rgb8); several: frames cycle through them")
    p.add_argument("--malformed-every", type=int, default=20,
                   help="every Nth frame is malformed, cycling through the kinds (0 = none)")
    p.add_argument("--window", type=int, default=500, help="frames per reported window")
    p.add_argument("--late", type=float, default=1.0,
                   help="a frame delivered later than this (s) is late")
    p.add_argument("--max-late", type=int, default=0,
                   help="fail when more good frames than this are late")
    p.add_argument("--max-rss-slope", type=float, default=5.0,
                   help="fail when RSS grows faster than this (MiB per 1000 frames, least "
                        "squares after the first window)")
    p.add_argument("--rss-interval", type=float, default=1.0, help="seconds between RSS samples")
    p.add_argument("--model", default="ddrnet23_slim")
    p.add_argument("--weights", default="default",
                   help="'default' (shipped), 'none' or a weights file")
    p.add_argument("--threads", type=int, default=0,
                   help="the node's CPU threads (0 = library default)")
    p.add_argument("--out", type=Path, default=Path("soak_output"), help="output folder")
    p.set_defaults(func=run)


def malformed_message(kind: str, frame: np.ndarray):
    """Return a sensor_msgs/Image the node must refuse and count under EXPECTED_KIND[kind]."""
    msg = image_message(frame)
    h, w = frame.shape[:2]
    if kind == "unknown_encoding":
        msg.encoding = "rgb9"
    elif kind == "empty":
        msg.height, msg.width, msg.step, msg.data = 0, 0, 0, b""
    elif kind == "too_large":  # the header alone is refused, before the data is looked at
        msg.height, msg.width, msg.step, msg.data = 8192, 8192, 8192 * 3, frame[:4].tobytes()
    elif kind == "short_step":
        msg.step = w * 3 - 3
    elif kind == "truncated":
        msg.data = frame[: h // 2].tobytes()
    elif kind == "surplus_data":
        msg.data = frame.tobytes() + bytes(w * 3)
    elif kind == "odd_yuv_width":
        msg.encoding, msg.width, msg.step = "yuv422", w - 1, (w - 1) * 2
        msg.data = bytes((w - 1) * 2 * h)
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return msg


def frame_plan(frames: int, malformed_every: int) -> list[tuple[str, str]]:
    """(frame_id, kind) for every frame to send: 'good' or a malformed kind, interleaved."""
    kinds = itertools.cycle(EXPECTED_KIND)
    every = malformed_every
    return [(f"soak-{i}", next(kinds) if every and i % every == every - 1 else "good")
            for i in range(frames)]


def error_counts(diagnostics: dict[str, str]) -> dict[str, int]:
    """Return the node's refused-frame counters by kind (its ``errors.<kind>`` values)."""
    return {k[len("errors."):]: int(v) for k, v in diagnostics.items() if k.startswith("errors.")}


class RssSampler:
    """Samples the node's RSS every ``interval`` s in a thread, with the frames sent so far."""

    def __init__(self, node: NodeProcess, interval: float) -> None:
        self.node, self.interval = node, interval
        self.samples: list[Sample] = []
        self.frames_sent = 0
        self._start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        mib = self.node.rss_mib()
        if math.isnan(mib):  # the node exited
            return
        self.samples.append((time.monotonic() - self._start, self.frames_sent, mib))

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(5)
            self.sample()


def rss_trend(samples: list[Sample], skip_frames: int) -> dict[str, Any]:
    """RSS after ``skip_frames`` of warm-up and at the end, and the least-squares slope."""
    kept = [(f, m) for _, f, m in samples if f >= skip_frames] or [(f, m) for _, f, m in samples]
    frames = np.array([f for f, _ in kept], np.float64)
    mib = np.array([m for _, m in kept], np.float64)
    slope = float(np.polyfit(frames, mib, 1)[0] * 1000) if len(set(frames)) > 1 else float("nan")
    return {"start_mib": round(float(mib[0]), 1), "end_mib": round(float(mib[-1]), 1),
            "max_mib": round(float(max(m for _, _, m in samples)), 1),
            "slope_mib_per_1000_frames": round(slope, 2), "from_frame": int(frames[0]),
            "samples": len(samples)}


def rss_warm_up_frames(frames: int, window: int) -> int:
    """Frames left out of the RSS slope: the first window (new sizes' graphs, caches filling)."""
    return window if frames >= 2 * window else frames // 10


def window_rows(plan: list[tuple[str, str]], client: LiveClient, window: int, late_s: float,
                rss: list[Sample]) -> list[dict[str, Any]]:
    """Per window of sent frames: good ones, delivered, dropped, latency, RSS at its end."""
    rows = []
    for start in range(0, len(plan), window):
        part = plan[start:start + window]
        good = [fid for fid, kind in part if kind == "good"]
        lat_ms = [x * 1e3 for x in map(client.delivered, good) if x is not None]
        end = start + len(part)
        rss_end = next((m for _, f, m in rss if f >= end), rss[-1][2] if rss else float("nan"))
        rows.append({"frames": f"{start}-{end - 1}", "good": len(good),
                     "malformed": len(part) - len(good), "delivered": len(lat_ms),
                     "dropped": len(good) - len(lat_ms),
                     "late": sum(x > late_s * 1e3 for x in lat_ms),
                     "latency_ms": latency_percentiles(lat_ms), "rss_mib": round(rss_end, 1)})
    return rows


def send(client: LiveClient, plan: list[tuple[str, str]], frames: list[np.ndarray],
         rate: float, sampler: RssSampler, window: int) -> dict[str, float]:
    """Stream the plan, a progress line per window; returns frame_id -> seconds when sent."""
    good = [image_message(f) for f in frames]
    bad = {kind: malformed_message(kind, frames[0]) for kind in EXPECTED_KIND}
    msgs = [(good[i % len(good)] if kind == "good" else bad[kind], fid)
            for i, (fid, kind) in enumerate(plan)]
    sent_at: dict[str, float] = {}
    start = time.monotonic()

    def tick(i: int) -> None:
        sent_at[plan[i][0]] = time.monotonic() - start
        sampler.frames_sent = i + 1
        if (i + 1) % window == 0 or i + 1 == len(plan):
            ids = [fid for fid, kind in plan[max(0, i + 1 - window):i + 1] if kind == "good"]
            got = sum(client.delivered(f) is not None for f in ids)
            rss = sampler.samples[-1][2] if sampler.samples else float("nan")
            print(f"soak: {i + 1}/{len(plan)} frames sent; {got}/{len(ids)} good ones of this "
                  f"window delivered so far; node RSS {rss:.1f} MiB", flush=True)

    stream(client, msgs, rate, on_frame=tick)
    return sent_at


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak itself: node + client, stream, settle; return the summary."""
    frames = [sample_road_image(h, w, seed=s) for s in range(4) for h, w in args.size]
    plan = frame_plan(args.frames, args.malformed_every)
    env = isolated_env(random_domain())
    args.out.mkdir(parents=True, exist_ok=True)
    node = NodeProcess(node_command(f"weights:={args.weights}", f"model:={args.model}",
                                    "device:=cpu", f"num_threads:={args.threads}",
                                    "publish_confidence:=true", "diagnostics_period:=0.5",
                                    "stale_input_timeout:=30.0"),
                       env, log_path=args.out / "node.log")
    client = LiveClient(env, OUTPUTS)
    sampler = None
    try:
        client.wait_ready(node)
        warm_up(client, image_message(frames[0]), "soak", 2)
        before = idle_counters(client)
        errors_before = error_counts(client.diagnostics)
        sampler = RssSampler(node, args.rss_interval)
        t0 = time.monotonic()
        sent_at = send(client, plan, frames, args.rate, sampler, args.window)
        wall = time.monotonic() - t0
        done = settle(client, [fid for fid, kind in plan if kind == "good"], before, timeout=6.0)
        sampler.stop()
        errors = {k: n - errors_before.get(k, 0)
                  for k, n in error_counts(client.diagnostics).items()}
        alive = node.proc.poll() is None
        return summarise(args, plan, client, sampler.samples, sent_at, done, errors, wall, alive)
    finally:
        if sampler is not None:
            sampler.stop()
        client.close()
        node.stop()


def malformed_summary(plan: list[tuple[str, str]], errors: dict[str, int]) -> dict[str, Any]:
    """Malformed frames sent by kind vs counted by the node.

    A frame the node drops from its one-frame slot (latest frame wins) is never decoded, so fewer
    may be counted, never more.
    """
    expected: dict[str, int] = {}
    for _, kind in plan:
        if kind != "good":
            expected[EXPECTED_KIND[kind]] = expected.get(EXPECTED_KIND[kind], 0) + 1
    counted = {k: n for k, n in errors.items() if n}
    return {"sent": sum(expected.values()), "sent_by_kind": expected, "counted_by_node": counted,
            "unseen": sum(expected.values()) - sum(counted.values()),
            "counted_right": all(n <= expected.get(k, 0) for k, n in counted.items())}


def summarise(args: argparse.Namespace, plan: list[tuple[str, str]], client: LiveClient,
              rss: list[Sample], sent_at: dict[str, float], done: dict[str, int],
              errors: dict[str, int], wall: float, alive: bool) -> dict[str, Any]:
    """Return the summary (JSON-ready); also write the plot."""
    lat = {fid: client.delivered(fid) for fid, kind in plan if kind == "good"}
    lat_ms = [x * 1e3 for x in lat.values() if x is not None]
    malformed = malformed_summary(plan, errors)
    partial = sum(x is None and client.arrived_outputs(f) > 0 for f, x in lat.items())
    delivery = {"good_sent": len(lat), "delivered": len(lat_ms), "partial": partial,
                "late": sum(x > args.late * 1e3 for x in lat_ms), "late_s": args.late,
                "latency_ms": latency_percentiles(lat_ms),
                "lost_before_node": len(plan) - done["frames_received"],
                "dropped_by_node": done["frames_dropped"],
                "lost_after_node": max(0, done["frames_processed"] - len(lat_ms))}
    summary = {"date": time.strftime("%Y-%m-%d %H:%M"),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (load average at the end "
                          f"{os.getloadavg()[0]:.1f})",
               "model": args.model, "weights": args.weights,
               "size": ",".join(f"{h}x{w}" for h, w in args.size), "rate_hz": args.rate,
               "frames": len(plan), "wall_s": round(wall, 1), "outputs": list(client.outputs),
               "node_counters": done, "delivery": delivery, "malformed": malformed,
               "node_alive": alive,
               "rss": rss_trend(rss, skip_frames=rss_warm_up_frames(len(plan), args.window)),
               "windows": window_rows(plan, client, args.window, args.late, rss)}
    summary["limits"] = {"max_late": args.max_late, "max_rss_slope": args.max_rss_slope}
    summary["failures"] = failures(summary)
    summary["ok"] = not summary["failures"]
    write_plot(args.out / "soak.png", rss,
               [(sent_at[f], x * 1e3) for f, x in lat.items() if x is not None],
               [sent_at[f] for f, x in lat.items() if x is None and f in sent_at], summary)
    return summary


def failures(summary: dict[str, Any]) -> list[str]:
    """Why the soak failed (empty: it passed), from the summary and its limits."""
    d, r, limits = summary["delivery"], summary["rss"], summary["limits"]
    checks = [
        (summary["node_alive"], "the node died"),
        (summary["malformed"]["counted_right"], "malformed frames counted under a wrong kind"),
        (d["partial"] == 0, f"{d['partial']} frames missed an output"),
        (d["lost_after_node"] == 0, f"{d['lost_after_node']} processed frames never arrived"),
        (d["late"] <= limits["max_late"],
         f"{d['late']} frames later than {d['late_s']:g} s (limit {limits['max_late']})"),
        (not r["slope_mib_per_1000_frames"] > limits["max_rss_slope"],
         f"RSS grew {r['slope_mib_per_1000_frames']:+.2f} MiB per 1000 frames "
         f"(limit {limits['max_rss_slope']:g})"),
    ]
    return [why for ok, why in checks if not ok]


def write_plot(path: Path, rss: list[Sample], latencies: list[tuple[float, float]],
               lost_at: list[float], summary: dict[str, Any]) -> None:
    """RSS and per-frame latency against time since the first frame; undelivered frames marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_lat) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True, dpi=80)
    ax_rss.plot([t for t, _, _ in rss], [m for _, _, m in rss], lw=1.2, color="tab:blue")
    ax_rss.set_ylabel("node RSS (MiB)")
    r = summary["rss"]
    ax_rss.set_title(f"seg-ros soak: {summary['frames']} frames {summary['size']} at "
                     f"{summary['rate_hz']:g} Hz - RSS {r['start_mib']:.0f} -> {r['end_mib']:.0f} "
                     f"MiB ({r['slope_mib_per_1000_frames']:+.2f} MiB / 1000 frames)", fontsize=9)
    ax_rss.grid(alpha=0.3)
    if latencies:
        ax_lat.scatter([t for t, _ in latencies], [ms for _, ms in latencies], s=2,
                       color="tab:green", label="delivered (last output)", rasterized=True)
    if lost_at:  # a rug along the bottom: these frames have no latency
        ax_lat.plot(lost_at, [0.02] * len(lost_at), "|", ms=6, color="tab:red",
                    transform=ax_lat.get_xaxis_transform(), label="not delivered (node dropped)")
    ax_lat.axhline(summary["delivery"]["late_s"] * 1e3, ls="--", lw=0.8, color="gray",
                   label="late")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("stamp -> received (ms)")
    ax_lat.set_xlabel("seconds since the first frame")
    ax_lat.grid(alpha=0.3, which="both")
    ax_lat.legend(loc="upper right", fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summary_text(s: dict[str, Any]) -> str:
    d, m, r = s["delivery"], s["malformed"], s["rss"]
    lat = d["latency_ms"]
    lines = [
        f"seg-ros soak {s['date']} on {s['machine']}",
        f"  {s['frames']} frames {s['size']} rgb8 at {s['rate_hz']:g} Hz in {s['wall_s']} s, "
        f"model {s['model']} ({s['weights']}), outputs {', '.join(s['outputs'])}",
        f"  good frames: {d['good_sent']} sent, {d['delivered']} delivered on every output; the "
        f"node dropped {d['dropped_by_node']} frames of all kinds (latest frame wins); "
        f"{d['lost_before_node']} lost before the node, {d['lost_after_node']} after it, "
        f"{d['partial']} partial",
        f"  latency (stamp -> last output): p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
        f"max {lat['max']} ms; {d['late']} later than {d['late_s']:g} s",
        f"  malformed: {m['sent']} sent {m['sent_by_kind']}; counted by the node "
        f"{m['counted_by_node']}; {m['unseen']} unseen (dropped from the node's one-frame slot "
        f"before decoding) -> {'counted right' if m['counted_right'] else 'MISCOUNTED'}",
        f"  node RSS: {r['start_mib']} MiB at frame {r['from_frame']} -> {r['end_mib']} MiB at "
        f"the end (max {r['max_mib']}), slope {r['slope_mib_per_1000_frames']:+.2f} MiB per 1000 "
        f"frames ({r['samples']} samples); node alive at the end: {s['node_alive']}",
        f"  {'window':>11s} {'good':>5s} {'bad':>4s} {'deliv':>6s} {'drop':>5s} {'late':>5s} "
        f"{'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s} {'RSS MiB':>8s}"]
    for w in s["windows"]:
        q = w["latency_ms"]
        lines.append(f"  {w['frames']:>11s} {w['good']:5d} {w['malformed']:4d} "
                     f"{w['delivered']:6d} {w['dropped']:5d} {w['late']:5d} "
                     f"{q['p50'] or 0:8.1f} {q['p95'] or 0:8.1f} {q['max'] or 0:8.1f} "
                     f"{w['rss_mib']:8.1f}")
    lines.append(f"  result: {'OK' if s['ok'] else 'FAILED: ' + '; '.join(s['failures'])}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.rate <= 0 or args.window < 1 or args.malformed_every < 0:
        raise ConfigError("--frames and --window must be >= 1, --rate > 0, "
                          "--malformed-every >= 0")
    summary = run_soak(args)
    (args.out / "soak_summary.json").write_text(json.dumps(summary, indent=2))
    text = summary_text(summary)
    (args.out / "soak_summary.txt").write_text(text + "\n")
    print(text)
    print(f"wrote {args.out}/soak_summary.json, soak_summary.txt, soak.png")
    return 0 if summary["ok"] else 1
