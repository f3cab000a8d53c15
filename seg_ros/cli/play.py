"""``seg-ros play BAG``: publish a bag's messages into DDS with their recorded timing.

For machines without ``ros2 bag play`` (pip-installed rclpy): the live node can be tested on
recorded data. Messages are published as their recorded CDR bytes (no re-serialisation), so any
message type whose Python package is importable can be played. On a ROS install,
``ros2 bag play`` works on the same bags.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .. import bags
from ..errors import ConfigError


def ros_message_class(msgtype: str) -> Any:
    """'sensor_msgs/msg/Image' (or the older 'sensor_msgs/Image') -> the rclpy message class.

    Or None when its package is missing.
    """
    pkg, kind, name = bags.normalize_type(msgtype).split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError):
        return None


def qos_profile(reliability: str, depth: int) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        durability=DurabilityPolicy.VOLATILE,
        reliability=(
            ReliabilityPolicy.RELIABLE
            if reliability == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        ),
    )


class StopFlag:
    """SIGINT / SIGTERM end the loop cleanly (the bag or the publishers are closed properly)."""

    def __init__(self) -> None:
        self.stop = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, *_: Any) -> None:
        self.stop = True


def init_ros(name: str) -> tuple[Any, Any]:
    """Return a private rclpy context and node that leave signal handling to us."""
    import rclpy
    from rclpy.context import Context
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions
    ctx = Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    return ctx, Node(name, context=ctx)


def shutdown_ros(ctx: Any, node: Any) -> None:
    node.destroy_node()
    ctx.try_shutdown()


def parse_remaps(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        src, sep, dst = item.partition(":=")
        if not sep or not src or not dst:
            raise ConfigError(f"--remap expects FROM:=TO, got {item!r}")
        out[src] = dst
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "play",
        help="publish a bag's messages into ROS 2 with their recorded timing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bag", type=Path)
    p.add_argument("--topics", nargs="+", default=None, help="topics to play (default: all)")
    p.add_argument("--rate", type=float, default=1.0, help="speed factor of the recorded timing")
    p.add_argument(
        "--loop", action="store_true", help="play again from the start until interrupted"
    )
    p.add_argument("--max-messages", type=int, default=None, help="stop after N messages")
    p.add_argument(
        "--remap",
        nargs="+",
        default=[],
        metavar="FROM:=TO",
        help="publish a topic under another name",
    )
    p.add_argument("--qos", choices=["reliable", "best_effort"], default="reliable")
    p.add_argument("--depth", type=int, default=10, help="publisher queue depth (keep last)")
    p.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                   help="before playing, wait until every topic has N matched subscribers")
    p.add_argument(
        "--wait-timeout", type=float, default=30.0, help="seconds to wait for subscribers"
    )
    p.add_argument(
        "--start-delay", type=float, default=0.0, help="seconds to wait before the first message"
    )
    p.set_defaults(func=run)


def wait_for_subscribers(
    publishers: dict[str, Any], count: int, timeout: float, stop: StopFlag
) -> bool:
    deadline = time.monotonic() + timeout
    while not stop.stop:
        missing = [t for t, pub in publishers.items() if pub.get_subscription_count() < count]
        if not missing:
            return True
        if time.monotonic() > deadline:
            print(
                f"play: warning: after {timeout:g} s fewer than {count} subscribers on "
                f"{', '.join(missing)}; "
                f"playing anyway",
                file=sys.stderr,
            )
            return False
        time.sleep(0.05)
    return False


def run(args: argparse.Namespace) -> int:
    if args.rate <= 0:
        raise ConfigError(f"--rate must be > 0, got {args.rate}")
    remaps = parse_remaps(args.remap)
    stop = StopFlag()
    with bags.BagReader(args.bag) as bag:
        topics = bag.select_topics(args.topics)
        ctx, node = init_ros("seg_ros_player")
        try:
            publishers = create_publishers(node, bag, topics, remaps, args)
            if args.wait_subscribers > 0:
                wait_for_subscribers(publishers, args.wait_subscribers, args.wait_timeout, stop)
            if args.start_delay > 0:
                time.sleep(args.start_delay)
            t_begin = time.monotonic()
            counts = play_messages(bag, publishers, args, stop)
            if args.qos == "reliable":
                wait_acked(publishers)
            elapsed = time.monotonic() - t_begin
        finally:
            shutdown_ros(ctx, node)
    detail = ", ".join(f"{remaps.get(t, t)}: {n}" for t, n in counts.items())
    print(f"published {sum(counts.values())} messages in {elapsed:.1f} s ({detail})"
          + (" [interrupted]" if stop.stop else ""))
    return 0


def create_publishers(node: Any, bag: bags.BagReader, topics: list[str],
                      remaps: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """Return a publisher per playable topic (under its remapped name).

    ConfigError when none is.
    """
    publishers: dict[str, Any] = {}
    for t in topics:
        cls = ros_message_class(bag.topics[t].msgtype)
        if cls is None:
            print(f"play: skipping {t}: message type {bag.topics[t].msgtype} is not installed",
                  file=sys.stderr)
            continue
        publishers[t] = node.create_publisher(cls, remaps.get(t, t),
                                              qos_profile(args.qos, args.depth))
    if not publishers:
        raise ConfigError(f"bag {args.bag}: no playable topic")
    return publishers


def play_messages(bag: bags.BagReader, publishers: dict[str, Any], args: argparse.Namespace,
                  stop: StopFlag) -> dict[str, int]:
    """Publish the recorded messages with their recorded timing; return the count per topic.

    Publish the recorded messages with their recorded timing (scaled by --rate), once or
    --loop, at most --max-messages; the count per topic.
    """
    counts = {t: 0 for t in publishers}
    total = 0
    while not stop.stop:
        t0_wall, t0_bag = time.monotonic(), None
        for m in bag.messages(list(publishers)):
            if stop.stop or (args.max_messages is not None and total >= args.max_messages):
                break
            t0_bag = m.timestamp if t0_bag is None else t0_bag
            delay = t0_wall + (m.timestamp - t0_bag) / 1e9 / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publishers[m.topic].publish(m.rawdata)
            counts[m.topic] += 1
            total += 1
        if not args.loop or (args.max_messages is not None and total >= args.max_messages):
            break
    return counts


def wait_acked(publishers: dict[str, Any], seconds: float = 2.0) -> None:
    """Let reliable readers get the tail before we leave."""
    from rclpy.duration import Duration
    for pub in publishers.values():
        pub.wait_for_all_acked(Duration(seconds=seconds))


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m seg_ros.cli.play``: this command alone.

    Without importing torch, so it starts fast.
    """
    from .main import run_command
    parser = argparse.ArgumentParser(prog="seg-ros")
    register(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(["play", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
