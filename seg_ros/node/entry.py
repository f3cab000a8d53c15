"""Console scripts ``segment_node`` and ``segment_lifecycle_node`` (the managed variant).

Installs the stop-signal guard before importing the node (rclpy, PyTorch: seconds of imports), so
that Ctrl-C or SIGTERM at any moment of start-up ends the process with one line and exit code 0
instead of a ``KeyboardInterrupt`` traceback (see :mod:`seg_ros.node.shutdown`).
"""
from __future__ import annotations

import os
import sys

from .shutdown import EXIT_WITH_PARENT_ENV, ShutdownRequested, SignalGuard, exit_with_parent

NODE_NAME = "segment_node"


def main(argv: list[str] | None = None) -> int:
    """``segment_node``: loads, warms up and runs from start-up to exit."""
    return _guarded_run(argv, managed=False)


def lifecycle_main(argv: list[str] | None = None) -> int:
    """``segment_lifecycle_node``: the same node, managed through ROS 2 lifecycle transitions."""
    return _guarded_run(argv, managed=True)


def _guarded_run(argv: list[str] | None, managed: bool) -> int:
    guard = SignalGuard().install()
    try:
        if os.environ.get(EXIT_WITH_PARENT_ENV) == "1":
            exit_with_parent()
        from .segment_node import SegmentNode, run

        node_class = SegmentNode
        if managed:
            from .lifecycle_node import SegmentLifecycleNode as node_class
        return run(sys.argv if argv is None else argv, guard, node_class)
    except ShutdownRequested as stop:
        print(f"[{NODE_NAME}] stopped by {stop} during start-up", file=sys.stderr, flush=True)
        return 0
    finally:
        guard.ignore_from_now()


if __name__ == "__main__":
    sys.exit(main())
