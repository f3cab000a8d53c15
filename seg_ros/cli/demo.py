"""``seg-ros demo``: the whole product on the bundled bag, in one command (``make demo``).

Starts ``segment_node`` and ``seg-ros play`` as separate processes talking over DDS, records the
camera and the node's outputs into an output bag (in this process), and writes an overlay video,
a PNG strip of overlay frames and a stats summary (frames in/out, latency, drops). Where the node
cannot run (no rclpy), it says so and replays the bag offline through the same pipeline instead.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .. import bags, image_codec
from ..errors import ConfigError
from ..pipeline import weights_file_for
from ..resources import share_path
from .live_node import NodeProcess, node_command, private_env, ros_env_here
from .replay import VideoSink, format_latency, latency_summary

DEMO_BAG = ("demo", "camvid_val_30.mcap")
CAMERA = "/camera/image_raw"
NODE = "segment_node"
OUTPUTS = ("labels", "color_mask", "overlay")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the node on the bundled bag over DDS; write video, strip, stats",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--bag", type=Path, default=None, help=f"input bag (default: the bundled {DEMO_BAG[1]})"
    )
    p.add_argument("--topic", default=CAMERA, help="camera topic in the bag")
    p.add_argument(
        "--out", type=Path, default=Path("demo_output"), help="output folder (replaced files)"
    )
    p.add_argument("--max-frames", type=int, default=None, help="play only the first N frames")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    p.add_argument("--weights", default="default", help="'default', 'none' or a weights file")
    p.add_argument("--model", default="ddrnet23_slim")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU inference threads (0 = library default; 1 helps on a CPU shared with other "
             "work)",
    )
    p.add_argument(
        "--offline", action="store_true", help="skip DDS: replay through the pipeline in-process"
    )
    p.add_argument("--timeout", type=float, default=120.0, help="give up after this many seconds")
    p.set_defaults(func=run)


def expect_trained(model: str, weights: str) -> bool:
    """Whether the node will load real weights (it also says so in /diagnostics 'trained').

    WeightsError, before anything starts, for a setting the node would refuse.
    """
    return weights_file_for(model, weights) is not None


def header_stamp(raw: bytes) -> int:
    """Header stamp (ns) of a CDR-serialised message that starts with std_msgs/Header."""
    endian = "<" if raw[1] == 1 else ">"
    sec, nsec = struct.unpack_from(endian + "iI", raw, 4)
    return sec * 10**9 + nsec


def node_available() -> str | None:
    """None when the live demo can run, else why not."""
    try:
        import rclpy  # noqa: F401
        import sensor_msgs.msg  # noqa: F401
    except ImportError as exc:
        return f"rclpy / sensor_msgs are not importable ({exc})"
    try:
        import seg_ros.node.segment_node  # noqa: F401
    except ImportError as exc:
        return f"seg_ros.node.segment_node cannot be imported ({exc})"
    return None


class LiveStats:
    """Frames in/out and input-to-output latency, from the recorder hook.

    Inputs and outputs are matched by header stamp.
    """

    def __init__(self) -> None:
        self.inputs: dict[int, int] = {}
        self.latencies_ms: list[float] = []
        self.outputs: dict[str, int] = {k: 0 for k in OUTPUTS}
        self.overlays: list[tuple[int, np.ndarray]] = []
        self.diagnostics: dict[str, str] = {}
        self.last_output = time.monotonic()

    def node_done(self) -> bool:
        """Return whether the node's counters account for every frame we saw go in (drops too)."""
        d = self.diagnostics
        try:
            settled = sum(
                int(d[k])
                for k in (
                    "frames_processed",
                    "frames_dropped",
                    "frames_failed",
                    "frames_skipped_no_subscribers",
                )
            )
            return (
                int(d["frames_received"]) >= len(self.inputs)
                and settled >= int(d["frames_received"])
                and self.outputs["labels"] >= int(d["frames_processed"])
            )
        except (KeyError, ValueError):
            return False

    def on_message(self, topic: str, raw: bytes, now_ns: int) -> None:
        if topic == CAMERA:
            self.inputs[header_stamp(raw)] = now_ns
            return
        if topic == "/diagnostics":
            msg = bags.typestore().deserialize_cdr(raw, "diagnostic_msgs/msg/DiagnosticArray")
            for status in msg.status:
                if NODE in status.name:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
            return
        kind = topic.rsplit("/", 1)[-1]
        self.outputs[kind] += 1
        self.last_output = time.monotonic()
        stamp = header_stamp(raw)
        if kind == "labels" and stamp in self.inputs:
            self.latencies_ms.append((now_ns - self.inputs[stamp]) / 1e6)
        if kind == "overlay":
            msg = bags.typestore().deserialize_cdr(raw, bags.IMAGE_TYPE)
            img, order = image_codec.decode_image(msg.encoding, msg.height, msg.width, msg.step,
                                                  msg.is_bigendian, msg.data)
            self.overlays.append(
                (stamp, np.ascontiguousarray(img if order == "rgb" else img[:, :, ::-1]))
            )


def demo_env() -> dict[str, str]:
    """Return the user's ROS_DOMAIN_ID and discovery range.

    Else a random domain in 50..101 (off a robot's domain 0; <= 101 keeps DDS ports off the
    ephemeral range) on this machine only.
    """
    domain = os.environ.get("ROS_DOMAIN_ID") or random.randint(50, 101)
    return private_env(int(domain), discovery_range=os.environ.get(
        "ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"))


class LiveSession:
    """What ``run_live`` drives: the node process, this process's recorder and the clock.

    Every wait spins the recorder and gives up, with the node's log named, when the node exits or
    the demo's time is up.
    """

    def __init__(self, node: NodeProcess, rec: Any, executor: Any, deadline: float,
                 log: Path) -> None:
        self.node, self.rec, self.executor, self.deadline, self.log = (node, rec, executor,
                                                                       deadline, log)

    def spin(self, seconds: float, timeout_s: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.rec.poll_topics()
            self.executor.spin_once(timeout_sec=0.02)
            if self.node.proc.poll() is not None:
                raise ConfigError(f"{NODE} exited with code {self.node.proc.returncode}; "
                                  f"see {self.log}")
            if time.monotonic() > self.deadline:
                raise ConfigError(f"demo timed out after {timeout_s:g} s; see {self.log}")

    def node_matched(self) -> bool:
        """Return whether the node is up: its output publishers matched with our subscriptions."""
        rec = self.rec
        return not (any(f"/{NODE}/{k}" in rec.pending for k in OUTPUTS)
                    or any(s.get_publisher_count() == 0
                           for t, s in rec.subscriptions.items() if NODE in t))


def player_command(args: argparse.Namespace, bag_path: Path) -> list[str]:
    """``seg-ros play`` of the camera topic, waiting for two subscribers: the node and us."""
    cmd = [sys.executable, "-m", "seg_ros.cli.play", str(bag_path), "--topics", args.topic,
           "--remap", f"{args.topic}:={CAMERA}", "--rate", str(args.rate),
           "--wait-subscribers", "2", "--wait-timeout", "60", "--start-delay", "0.5"]
    return cmd + (["--max-messages", str(args.max_frames)] if args.max_frames else [])


def play_and_drain(session: LiveSession, stats: "LiveStats", args: argparse.Namespace,
                   bag_path: Path, env: dict[str, str]) -> tuple[str, float]:
    """Wait for the node.

    Play the bag, wait for the node's last outputs and final counters; (the player's output,
    seconds from the start of playing).
    """
    while not session.node_matched():
        session.spin(0.1, args.timeout)
    player = subprocess.Popen(player_command(args, bag_path), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        t_play = time.monotonic()
        while player.poll() is None:
            session.spin(0.1, args.timeout)
    finally:
        if player.poll() is None:
            player.kill()
    play_out = player.stdout.read()
    if player.returncode != 0:
        raise ConfigError(f"player failed (exit {player.returncode}): {play_out.strip()[-500:]}")
    stats.last_output = max(stats.last_output, time.monotonic())  # the node may still work
    while (stats.outputs["labels"] < len(stats.inputs) and not stats.node_done()
           and time.monotonic() - stats.last_output < 5.0):
        session.spin(0.1, args.timeout)
    session.spin(1.1, args.timeout)  # one more /diagnostics period, for the final counters
    return play_out, time.monotonic() - t_play


def run_live(args: argparse.Namespace, bag_path: Path, out_bag: Path,
             log_dir: Path) -> dict[str, Any]:
    """Node + player as processes over DDS; this process records and measures."""
    from rclpy.executors import SingleThreadedExecutor
    from .play import init_ros, shutdown_ros
    from .record import Recorder

    env = demo_env()
    print(f"demo: ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}, starting {NODE} and the player over DDS")
    log = log_dir / "node.log"
    node = NodeProcess(node_command(f"model:={args.model}", f"weights:={args.weights}",
                                    f"device:={args.device}", f"num_threads:={args.threads}",
                                    namespace=None, input_topic=CAMERA), env, log_path=log)
    stats = LiveStats()
    with ros_env_here(env):  # the recorder in this process joins the same graph
        ctx, ros_node = init_ros("seg_ros_demo_recorder")
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(ros_node)
    topics = [CAMERA, *(f"/{NODE}/{k}" for k in OUTPUTS), "/diagnostics"]
    try:
        with bags.BagWriter(out_bag, overwrite=True) as writer:
            rec = Recorder(ros_node, writer, topics, on_message=stats.on_message)
            session = LiveSession(node, rec, executor, time.monotonic() + args.timeout, log)
            play_out, wall = play_and_drain(session, stats, args, bag_path, env)
    finally:
        node.stop(timeout=10.0, strict=False)
        executor.shutdown()
        shutdown_ros(ctx, ros_node)
    return live_summary(args, stats, play_out, wall)


def live_summary(args: argparse.Namespace, stats: "LiveStats", play_out: str,
                 wall: float) -> dict[str, Any]:
    published = (int(play_out.split("published ", 1)[1].split()[0])
                 if "published " in play_out else None)
    frames_in, frames_out = len(stats.inputs), stats.outputs["labels"]
    trained = stats.diagnostics.get("trained",
                                    str(expect_trained(args.model, args.weights)).lower())
    return {"mode": "live (segment_node + seg-ros play over DDS)", "frames_published": published,
            "frames_in": frames_in, "frames_out": frames_out, "drops": frames_in - frames_out,
            "outputs": stats.outputs, "wall_s": wall,
            "latency_ms": latency_summary(stats.latencies_ms),
            "latency_note": "camera message received -> labels received, both in the recorder",
            "node_diagnostics": stats.diagnostics, "overlays": stats.overlays,
            "trained": trained == "true"}


def run_offline(args: argparse.Namespace, bag_path: Path, out_bag: Path) -> dict[str, Any]:
    """Return the same pipeline in-process, every frame (no DDS)."""
    from ..pipeline import SegmentationPipeline
    from .replay import replay
    pipe = SegmentationPipeline(model=args.model, weights=args.weights, device=args.device,
                                num_threads=args.threads)
    s = replay(bag_path, out_bag, pipe, [args.topic], max_frames=args.max_frames, overwrite=True)
    overlays = []
    for f in bags.iter_bag_frames(out_bag, [f"{args.topic}/overlay"]):
        overlays.append((f.stamp_ns, np.ascontiguousarray(f.image)))
    return {
        "mode": "offline replay (no DDS)",
        "frames_published": None,
        "frames_in": s["frames"],
        "frames_out": s["segmented"],
        "drops": s["frames"] - s["segmented"],
        "outputs": {"labels": s["segmented"]},
        "wall_s": s["elapsed_s"],
        "latency_ms": s["latency_ms"],
        "latency_note": "decode + segment + encode per frame",
        "failures": s["failures"],
        "node_diagnostics": {},
        "overlays": overlays,
        "trained": s["trained"],
    }


def stamp_label(img: np.ndarray, label: str | None) -> np.ndarray:
    """Write ``label`` in the bottom-left corner (so a picture of an untrained model says so)."""
    if label:
        img = img.copy()
        scale = img.shape[1] / 640
        org = (int(6 * scale) + 4, img.shape[0] - int(10 * scale) - 4)
        cv2.putText(img, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(
            img, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), 1, cv2.LINE_AA
        )
    return img


def write_strip(path: Path, overlays: list[np.ndarray], count: int = 6, width: int = 320,
                label: str | None = None) -> None:
    """Write evenly spaced overlay frames side by side.

    ``width`` pixels each; ``label`` stamped on each.
    """
    idx = np.linspace(0, len(overlays) - 1, min(count, len(overlays))).round().astype(int)
    tiles = []
    for i in idx:
        img = overlays[i]
        h = int(round(img.shape[0] * width / img.shape[1]))
        tiles.append(stamp_label(cv2.resize(img, (width, h), interpolation=cv2.INTER_AREA), label))
    h = min(t.shape[0] for t in tiles)
    gap = np.full((h, 4, 3), 255, np.uint8)
    row = [x for t in tiles for x in (t[:h], gap)][:-1]
    cv2.imwrite(str(path), cv2.cvtColor(np.hstack(row), cv2.COLOR_RGB2BGR))


def check_args(args: argparse.Namespace) -> Path:
    """Return the bag to play; ConfigError for options that cannot work."""
    bag_path = args.bag or share_path(*DEMO_BAG)
    if not bag_path.exists():
        raise ConfigError(f"demo bag {bag_path} not found (is the package installed with its "
                          f"share/demo data?)")
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.rate <= 0:
        raise ConfigError(f"--rate must be > 0, got {args.rate}")
    return bag_path


def run(args: argparse.Namespace) -> int:
    bag_path = check_args(args)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    out_bag = out / "demo_output.mcap"
    if not expect_trained(args.model, args.weights):
        print(f"demo: NOTE: the model {args.model} has NO trained weights yet (weights "
              f"'{args.weights}'): it runs with random initialisation, so the colours are "
              f"meaningless. The demo shows the tooling working.")
    why_not = "--offline given" if args.offline else node_available()
    if why_not is None:
        summary = run_live(args, bag_path, out_bag, out)
    else:
        print(f"demo: the live node cannot run here ({why_not}); replaying the bag offline "
              f"through the same pipeline instead")
        summary = run_offline(args, bag_path, out_bag)
    files = write_pictures(summary.pop("overlays"), summary["trained"], out, args.rate)
    summary.update(input_bag=str(bag_path), files={"bag": str(out_bag), **files})
    report(summary, args, bag_path, out)
    return 0 if summary["frames_out"] > 0 else 1


def write_pictures(stamped: list[tuple[int, np.ndarray]], trained: bool, out: Path,
                   rate: float) -> dict[str, str]:
    """Overlay strip, one overlay frame and the overlay video, in stamp order; their paths."""
    overlays = [img for _, img in sorted(stamped, key=lambda x: x[0])]
    if not overlays:
        return {}
    label = None if trained else "UNTRAINED MODEL (random weights)"
    write_strip(out / "overlay_strip.png", overlays, label=label)
    frame = stamp_label(overlays[len(overlays) // 2], label)
    cv2.imwrite(str(out / "overlay_frame.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    files = {"strip": str(out / "overlay_strip.png"), "frame": str(out / "overlay_frame.png")}
    video = VideoSink(out / "overlay.mp4", fps=10.0 * rate)
    for img in overlays:
        video.add(img)
    video.close()
    if not video.error:
        files["video"] = str(out / "overlay.mp4")
    return files


def report(summary: dict[str, Any], args: argparse.Namespace, bag_path: Path, out: Path) -> None:
    """stats.json, and the summary printed and written to stats.txt."""
    (out / "stats.json").write_text(json.dumps(summary, indent=2))
    files = summary["files"]
    published = summary["frames_published"]
    lines = [f"demo summary ({summary['mode']})",
             f"  input:     {bag_path}"
             + (f" (first {args.max_frames} frames)" if args.max_frames else ""),
             f"  frames:    {summary['frames_in']} in, {summary['frames_out']} out, "
             f"{summary['drops']} dropped"
             + (f" ({published} published)" if published is not None else ""),
             f"  latency:   {format_latency(summary['latency_ms'])} ({summary['latency_note']})"]
    diag = summary["node_diagnostics"]
    if diag:
        lines.append(f"  node:      {diag.get('model')} on {diag.get('device')}, weights "
                     f"{diag.get('weights')}; received {diag.get('frames_received')}, processed "
                     f"{diag.get('frames_processed')}, dropped {diag.get('frames_dropped')}, "
                     f"failed {diag.get('frames_failed')}")
    lines += [f"  outputs:   {', '.join(f'{k}: {v}' for k, v in files.items())}",
              f"  stats:     {out / 'stats.json'}"]
    if not summary["trained"]:
        lines.append("  NOTE: UNTRAINED model (random initialisation): the segmentation is "
                     "meaningless; train or install weights to see real results")
    print("\n".join(lines))
    (out / "stats.txt").write_text("\n".join(lines) + "\n")
