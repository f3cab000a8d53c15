"""``seg-ros play`` and ``seg-ros record`` over real DDS between separate processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from seg_ros import bags

from helpers import require_module, write_legacy_bag

rclpy = require_module("rclpy", reason="rclpy not installed: live DDS tests need it")
pytestmark = pytest.mark.slow  # player and recorder processes over DDS

N = 20
CLI = [sys.executable, "-m", "seg_ros.cli.main"]


@pytest.fixture()
def dds_env(ros_domain_id):
    return dict(os.environ)


def _small_bag(path, legacy: bool = False):
    """N frames on /cam at 100 Hz recorded timing; frame_id carries the sequence number.

    ``legacy``: the type spelled 'sensor_msgs/Image' (earlier ROS 2 releases, other tools).
    """
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (8, 12, 3), dtype=np.uint8) for _ in range(N)]
    records = [("/cam", bags.IMAGE_TYPE, 10**9 + i * 10**7,
                bags.image_msg_from_array(bags.make_header(i, f"seq{i}"), img))
               for i, img in enumerate(frames)]
    if legacy:
        write_legacy_bag(path, records)
        return path, frames
    with bags.BagWriter(path) as w:
        w.add_topic("/cam", bags.IMAGE_TYPE)
        for topic, _, stamp, msg in records:
            w.write(topic, stamp, msg)
    return path, frames


@pytest.fixture()
def small_bag(tmp_path):
    return _small_bag(tmp_path / "in.db3")


@pytest.mark.parametrize("spelling", ["current", "legacy"])
def test_play_delivers_every_message_in_order(tmp_path, dds_env, spelling):
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    path, frames = _small_bag(tmp_path / "in.db3", legacy=spelling == "legacy")
    ctx = Context()
    rclpy.init(context=ctx)
    node = Node("play_test_listener", context=ctx)
    got: list[Image] = []
    qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE
    )
    node.create_subscription(Image, "/camera/image_raw", got.append, qos)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    player = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seg_ros.cli.play",
            str(path),
            "--remap",
            "/cam:=/camera/image_raw",
            "--wait-subscribers",
            "1",
            "--wait-timeout",
            "30",
            "--start-delay",
            "0.3",
        ],
        env=dds_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while (
            len(got) < N
            and time.monotonic() < deadline
            and (player.poll() is None or len(got) < N)
        ):
            executor.spin_once(timeout_sec=0.1)
            if player.poll() is not None:
                end = time.monotonic() + 2  # drain what is still in flight
                while len(got) < N and time.monotonic() < end:
                    executor.spin_once(timeout_sec=0.1)
                break
        out = player.communicate(timeout=30)[0]
    finally:
        if player.poll() is None:
            player.kill()
        executor.shutdown()
        node.destroy_node()
        ctx.try_shutdown()
    assert player.returncode == 0, out
    assert f"published {N} messages" in out
    assert [m.header.frame_id for m in got] == [f"seq{i}" for i in range(N)]
    for m, img in zip(got, frames):
        np.testing.assert_array_equal(np.asarray(m.data, np.uint8).reshape(8, 12, 3), img)


def test_record_captures_played_messages_and_closes_the_bag_on_sigint(
    small_bag, dds_env, tmp_path
):
    path, frames = small_bag
    out = tmp_path / "rec.mcap"
    recorder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "seg_ros.cli.record",
            str(out),
            "--topics",
            "/cam",
            "/nobody",
            "--qos",
            "reliable",
        ],
        env=dds_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert "recording" in recorder.stdout.readline()
        player = subprocess.run(
            [
                *CLI,
                "play",
                str(path),
                "--wait-subscribers",
                "1",
                "--wait-timeout",
                "30",
                "--start-delay",
                "0.3",
            ],
            env=dds_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert player.returncode == 0, player.stdout + player.stderr
        time.sleep(1.0)  # play waited for acknowledgements; leave the recorder a moment to write
        recorder.send_signal(signal.SIGINT)  # Ctrl-C must still leave a complete, readable bag
        rec_out = recorder.communicate(timeout=30)[0]
    finally:
        if recorder.poll() is None:
            recorder.kill()
    assert recorder.returncode == 0, rec_out
    assert "never saw a publisher on /nobody" in rec_out
    got = list(bags.iter_bag_frames(out))
    assert [f.msg.header.frame_id for f in got] == [f"seq{i}" for i in range(N)]
    for f, img in zip(got, frames):
        np.testing.assert_array_equal(f.image, img)
    stamps = [f.timestamp for f in got]
    assert stamps == sorted(stamps)  # receive times
