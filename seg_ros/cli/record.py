"""``seg-ros record OUT_BAG --topics ...``: capture live ROS 2 topics into a rosbag2.

For machines without ``ros2 bag record``. Messages are stored as received (CDR bytes) with their
receive time as the bag timestamp. Topics are subscribed as soon as a publisher appears, with the
publishers' reliability (reliable when all of them are, else best effort), like rosbag2 does.
Stops on Ctrl-C / SIGTERM, after ``--duration`` seconds or ``--max-messages``; the bag is always
closed properly.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .. import bags
from ..errors import ConfigError
from .play import StopFlag, init_ros, qos_profile, ros_message_class, shutdown_ros

MessageHook = Callable[[str, bytes, int], None]


class Recorder:
    """Subscribes to ``topics`` (raw) as their publishers appear and writes them to ``writer``.

    ``on_message(topic, rawdata, receive_ns)`` hooks let a caller compute live statistics.
    """

    def __init__(self, node: Any, writer: bags.BagWriter, topics: list[str], qos: str = "auto",
                 depth: int = 100, on_message: MessageHook | None = None) -> None:
        self.node, self.writer, self.qos, self.depth = node, writer, qos, depth
        self.on_message = on_message
        self.pending = [node.resolve_topic_name(t) for t in topics]
        self.subscriptions: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.warned: set[str] = set()

    def poll_topics(self) -> list[str]:
        """Subscribe to the pending topics that now have publishers; returns the new ones."""
        if not self.pending:
            return []
        types = dict(self.node.get_topic_names_and_types())
        new = []
        for topic in list(self.pending):
            pubs = self.node.get_publishers_info_by_topic(topic)
            if topic not in types or not pubs:
                continue
            msgtype = types[topic][0]
            cls = ros_message_class(msgtype)
            if cls is None or msgtype not in bags.typestore().fielddefs:
                if topic not in self.warned:
                    print(
                        f"record: cannot record {topic}: type {msgtype} unknown here",
                        file=sys.stderr,
                    )
                    self.warned.add(topic)
                continue
            self.writer.add_topic(topic, msgtype)
            self.counts[topic] = 0
            self.subscriptions[topic] = self.node.create_subscription(
                cls,
                topic,
                self._callback(topic),
                qos_profile(self._reliability(pubs), self.depth),
                raw=True,
            )
            self.pending.remove(topic)
            new.append(topic)
        return new

    def _reliability(self, pubs: list[Any]) -> str:
        if self.qos != "auto":
            return self.qos
        from rclpy.qos import ReliabilityPolicy

        return (
            "reliable"
            if all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in pubs)
            else "best_effort"
        )

    def _callback(self, topic: str) -> Callable[[bytes], None]:
        def receive(raw: bytes) -> None:
            now = self.node.get_clock().now().nanoseconds
            self.writer.write_raw(topic, now, raw)
            self.counts[topic] += 1
            if self.on_message is not None:
                self.on_message(topic, raw, now)
        return receive

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="capture live ROS 2 topics into a rosbag2",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output bag: NAME.mcap / NAME.db3 or a directory name")
    p.add_argument("--topics", nargs="+", required=True)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--max-messages", type=int, default=None, help="stop after N messages in all")
    p.add_argument("--qos", choices=["auto", "reliable", "best_effort"], default="auto")
    p.add_argument("--depth", type=int, default=100, help="subscription queue depth")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.duration is not None and args.duration <= 0:
        raise ConfigError(f"--duration must be > 0, got {args.duration}")
    from rclpy.executors import SingleThreadedExecutor
    stop = StopFlag()
    ctx, node = init_ros("seg_ros_recorder")
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    t_start = time.monotonic()
    try:
        with bags.BagWriter(args.out, storage=args.storage, overwrite=args.overwrite) as writer:
            rec = Recorder(node, writer, args.topics, args.qos, args.depth)
            print(f"recording {', '.join(rec.pending)} to {args.out} (Ctrl-C to stop)", flush=True)
            last_poll = 0.0
            while not stop.stop:
                now = time.monotonic()
                if rec.pending and now - last_poll > 0.1:
                    for t in rec.poll_topics():
                        print(f"subscribed {t}", flush=True)
                    last_poll = now
                executor.spin_once(timeout_sec=0.05)
                if args.duration is not None and now - t_start >= args.duration:
                    break
                if args.max_messages is not None and rec.total >= args.max_messages:
                    break
    finally:
        executor.shutdown()
        shutdown_ros(ctx, node)
    detail = ", ".join(f"{t}: {n}" for t, n in rec.counts.items()) or "nothing"
    print(
        f"recorded {rec.total} messages in {time.monotonic() - t_start:.1f} s to {args.out} "
        f"({detail})"
    )
    if rec.pending:
        print(f"record: never saw a publisher on {', '.join(rec.pending)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m seg_ros.cli.record``: this command alone.

    Without importing torch, so it starts fast.
    """
    from .main import run_command
    parser = argparse.ArgumentParser(prog="seg-ros")
    register(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(["record", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
