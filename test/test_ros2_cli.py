"""seg_ros as a ROS 2 user runs it.

Colcon build of a clean copy of the repository, then the real `ros2 launch`, `ros2 run`, `ros2
param`, `ros2 node` commands, frames over DDS, and Ctrl-C the way a terminal sends it (SIGINT to
the whole process group, launch forwarding another).

Needs the `ros2` command line (a ROS install, or ../shared/ros2-cli via `make setup`): skipped
without it, except under CI, where these tests must run.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import (READY, REPO, STOP_WITHIN_S, TRACEBACK, FramePeer, Ros2Process,
                     assert_stopped_cleanly, ctrl_c_race, node_log_text, process_gone,
                     readme_commands, require_module, ros2, small_frame, sourced_env)
from seg_ros.cli.live_node import random_domain
from seg_ros.node.params import PARAMETERS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

@pytest.fixture()
def env(workspace, tmp_path) -> dict[str, str]:
    return sourced_env(workspace, random_domain(), tmp_path / "log")


def test_colcon_build_installs_the_package(workspace, env):
    lines = readme_commands()
    assert "colcon build --packages-select seg_ros" in lines
    assert "source install/setup.bash" in lines  # what sourced_env does
    executables = ros2(env, "pkg", "executables", "seg_ros")
    assert "seg_ros segment_node" in executables.stdout.splitlines(), executables
    share = workspace / "seg_ros" / "share" / "seg_ros"
    for rel in ("package.xml", "launch/segment.launch.py", "config/segment.yaml",
                "config/classes/camvid.yaml", "weights/ddrnet23_slim_camvid.pt"):
        assert (share / rel).is_file(), rel


def test_readme_commands(env):
    """Every `ros2` line of the README, as typed, against the node it starts."""
    commands = readme_commands()
    launch = next(c for c in commands if c.startswith("ros2 launch"))
    run = next(c for c in commands if c.startswith("ros2 run"))
    queries = [c for c in commands if c.startswith(("ros2 node", "ros2 param"))]
    assert len(queries) == 3, queries
    domain = int(env["ROS_DOMAIN_ID"])
    input_topic = re.search(r"input_topic:=(\S+)", launch).group(1)

    proc = Ros2Process(env, *shlex.split(launch)[1:])
    try:
        proc.wait_for(READY, 120)
        peer = FramePeer(domain, input_topic, "/segment_node")
        try:
            labels = peer.roundtrip(small_frame(), "readme_launch")
        finally:
            peer.close()
        assert (labels.height, labels.width, labels.encoding) == (96, 128, "mono8")
        assert (labels.header.stamp.sec, labels.header.stamp.nanosec) == (1_700_000_123, 456_789)
        for command in queries:
            done = ros2(env, *shlex.split(command)[1:])
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            if command.startswith("ros2 node info"):
                for topic in documented_topics("/segment_node", input_topic):
                    assert topic in done.stdout, (topic, done.stdout)
            elif " get " in command:
                assert done.stdout.strip() == "String value is: ddrnet23_slim", done.stdout
            else:
                assert done.stdout.strip() == "Set parameter successful", done.stdout
        proc.wait_for(r"parameters changed: overlay_alpha=0.3", 10)
    finally:
        proc.terminal_ctrl_c()
    assert_stopped_cleanly(proc, launched=True)

    proc = Ros2Process(env, *shlex.split(run)[1:])
    try:
        proc.wait_for(READY, 120)
        peer = FramePeer(domain, "/camera/image_raw", "/segment_node")
        try:
            peer.roundtrip(small_frame(), "readme_run")
        finally:
            peer.close()
        got = ros2(env, "param", "get", "/segment_node", "overlay_alpha")
        assert got.stdout.strip() == "Double value is: 0.3", got
    finally:
        proc.terminal_ctrl_c()
    assert_stopped_cleanly(proc, launched=False)


def documented_topics(node: str, input_topic: str) -> list[str]:
    """Return the README's topic table (CRF topics aside), resolved for ``node``."""
    text = (REPO / "README.md").read_text()
    names = re.findall(r"^\| `(~/\w+|/\w+)` ", text, flags=re.M)
    assert {"~/labels", "~/color_mask", "~/overlay", "~/class_info", "/diagnostics"} <= set(names)
    return [input_topic] + [n.replace("~", node) for n in names if "refined" not in n]


# -- every launch argument, on one launched node ---------------------------------------------
LAUNCH_ARGUMENTS = {"model": "ddrnet23_slim", "weights": "none", "classes": "cityscapes",
                    "backend": "onnxruntime", "device": "cpu", "input_topic": "/test/cam",
                    "namespace": "/perception", "use_sim_time": "true"}
NODE = "/perception/segment_node"


@pytest.fixture(scope="module")
def launched(workspace, tmp_path_factory):
    """`ros2 launch` with every argument.

    The params file sets model ddrnet23 (overridden by the model argument) and overlay_alpha /
    publish_confidence (kept).
    """
    require_module("onnxruntime")
    tmp = tmp_path_factory.mktemp("launch_args")
    installed = workspace / "seg_ros" / "share" / "seg_ros" / "config" / "segment.yaml"
    params = yaml.safe_load(installed.read_text())
    params["/**"]["ros__parameters"].update(model="ddrnet23", overlay_alpha=0.25,
                                            publish_confidence=True)
    params_file = tmp / "my_params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    env = sourced_env(workspace, random_domain(), tmp / "log")
    args = [f"{k}:={v}" for k, v in LAUNCH_ARGUMENTS.items()] + [f"params_file:={params_file}"]
    proc = Ros2Process(env, "launch", "seg_ros", "segment.launch.py", *args)
    try:
        proc.wait_for(READY, 180)
        yield proc, env
    finally:
        proc.terminal_ctrl_c()
        proc.wait(STOP_WITHIN_S + 10)


def param_value(env, name: str) -> str:
    done = ros2(env, "param", "get", NODE, name)
    assert done.returncode == 0, done
    return done.stdout.strip().split(" value is: ", 1)[1]


def test_every_launch_argument_takes_effect(launched):
    proc, env = launched
    for name in ("model", "weights", "classes", "backend", "device"):
        assert param_value(env, name) == LAUNCH_ARGUMENTS[name], name
    assert param_value(env, "use_sim_time") == "True"
    assert param_value(env, "overlay_alpha") == "0.25"  # from params_file
    assert param_value(env, "publish_confidence") == "True"
    info = ros2(env, "node", "info", NODE).stdout
    subscribers = info[info.index("Subscribers:"):info.index("Publishers:")]
    assert "/test/cam: sensor_msgs/msg/Image" in subscribers, info
    assert "/test/camera_info: sensor_msgs/msg/CameraInfo" in subscribers, info  # beside it
    assert "/clock: rosgraph_msgs/msg/Clock" in subscribers, info  # use_sim_time
    peer = FramePeer(int(env["ROS_DOMAIN_ID"]), "/test/cam", NODE)
    try:
        labels = peer.roundtrip(small_frame(), "launch_args")
        assert len(yaml.safe_load(peer.class_info)["classes"]) == 19  # cityscapes
    finally:
        peer.close()
    assert labels.header.frame_id == "launch_args"
    assert (labels.header.stamp.sec, labels.header.stamp.nanosec) == (1_700_000_123, 456_789)
    assert int(np.frombuffer(bytes(labels.data), np.uint8).max()) < 19


def _valid_and_invalid(spec) -> tuple[str, str, str]:
    """Return (a valid value other than the default, an invalid value, words of its refusal)."""
    if isinstance(spec.default, bool):
        return str(not spec.default).lower(), "maybe", "Wrong parameter type"
    if spec.choices is not None:
        other = next(c for c in spec.choices if c != spec.default)
        return other, "nonsense", "must be one of"
    if spec.float_range is not None:
        low, high = spec.float_range
        return str(round(low + (high - low) * 0.3, 3)), str(high + 1.0), "out of range"
    low, high = spec.int_range
    return str(min(high, spec.default + 1)), str(high + 1), "out of range"


def test_param_set_every_runtime_parameter(launched):
    proc, env = launched
    runtime = [spec for spec in PARAMETERS if spec.in_yaml and not spec.read_only]
    assert len(runtime) >= 10
    expected = {}
    for spec in runtime:
        valid, invalid, refusal = _valid_and_invalid(spec)
        done = ros2(env, "param", "set", NODE, spec.name, valid)
        assert done.stdout.strip() == "Set parameter successful", (spec.name, valid, done)
        proc.wait_for(rf"parameters changed: {spec.name}=", 10)  # the node applies it
        done = ros2(env, "param", "set", NODE, spec.name, invalid)
        said = done.stdout + done.stderr
        assert "Setting parameter failed" in said, (spec.name, invalid, done)
        assert refusal in said, (spec.name, said)
        expected[spec.name] = yaml.safe_load(valid)
    done = ros2(env, "param", "set", NODE, "model", "unet")
    assert "read-only" in done.stdout + done.stderr, done
    dumped = yaml.safe_load(ros2(env, "param", "dump", NODE).stdout)[NODE]["ros__parameters"]
    assert {name: dumped[name] for name in expected} == expected
    assert dumped["model"] == "ddrnet23_slim"


# -- several cameras ---------------------------------------------------------------------------
def test_launch_several_cameras_from_the_example_params_file(workspace, env):
    """config/multi_camera.yaml as the params file.

    Its camera list overridden by `cameras:=`: one node reads each camera's image and camera_info
    and publishes its outputs, and segments a frame sent to one of them.
    """
    example = workspace / "seg_ros" / "share" / "seg_ros" / "config" / "multi_camera.yaml"
    assert yaml.safe_load(example.read_text())["/**"]["ros__parameters"]["cameras"]
    proc = Ros2Process(env, "launch", "seg_ros", "segment.launch.py", f"params_file:={example}",
                       "cameras:=[front, rear]", "namespace:=/sensors", "weights:=none")
    try:
        proc.wait_for(READY, 180)
        assert param_value_of(env, "/sensors/segment_node", "cameras") == "['front', 'rear']"
        info = ros2(env, "node", "info", "/sensors/segment_node").stdout
        subscribers = info[info.index("Subscribers:"):info.index("Publishers:")]
        publishers = info[info.index("Publishers:"):info.index("Service Servers:")]
        for camera in ("front", "rear"):
            assert f"/sensors/{camera}/image: sensor_msgs/msg/Image" in subscribers, info
            assert f"/sensors/{camera}/camera_info: sensor_msgs/msg/CameraInfo" in subscribers
            for topic in ("labels", "color_mask", "overlay", "confidence", "camera_info"):
                assert f"/sensors/segment_node/{camera}/{topic}:" in publishers, info
        assert "front_left" not in info, info  # the file's list was replaced, not merged
        peer = FramePeer(int(env["ROS_DOMAIN_ID"]), "/sensors/rear/image",
                         "/sensors/segment_node/rear")
        try:
            labels = peer.roundtrip(small_frame(), "rear_camera")
        finally:
            peer.close()
        assert labels.header.frame_id == "rear_camera"
        assert (labels.height, labels.width) == (360, 480)  # output_resolution inference
    finally:
        proc.terminal_ctrl_c()
    assert_stopped_cleanly(proc, launched=True)


def param_value_of(env, node: str, name: str) -> str:
    done = ros2(env, "param", "get", node, name)
    assert done.returncode == 0, done
    return done.stdout.strip().split(" values are: ", 1)[-1].split(" value is: ", 1)[-1]


# -- stopping ---------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["ctrl_c_during_start_up", "sigint_to_the_node_alone",
                                 "sigterm_to_launch"])
def test_stops_cleanly(env, how):
    proc = Ros2Process(env, "launch", "seg_ros", "segment.launch.py", "input_topic:=/cam")
    try:
        if how == "ctrl_c_during_start_up":
            proc.wait_for(r"process started with pid", 60)
            time.sleep(1.0)  # imports or model loading
            proc.terminal_ctrl_c()
        elif how == "sigint_to_the_node_alone":
            proc.wait_for(READY, 120)
            os.kill(proc.node_pids()[0], signal.SIGINT)
            # launch then ends by itself: nothing is left to run
        else:
            proc.wait_for(READY, 120)
            proc.signal(signal.SIGTERM)
    except BaseException:
        proc.kill()
        raise
    if how == "sigterm_to_launch":  # launch dies at once (upstream); the node must follow it
        code, _ = proc.wait(STOP_WITHIN_S)
        assert code is not None, f"launch still running {STOP_WITHIN_S} s after SIGTERM"
        deadline = time.monotonic() + STOP_WITHIN_S
        while not all(process_gone(pid) for pid in proc.node_pids()):
            assert time.monotonic() < deadline, f"node orphaned:\n{proc.log}"
            time.sleep(0.1)
        assert TRACEBACK not in proc.log, proc.log
        # its stdout went with launch: the node's own log file says how it ended
        node_log = node_log_text(Path(env["ROS_LOG_DIR"]), proc.node_pids()[0])
        assert "SIGTERM: shutting down" in node_log, node_log
        assert TRACEBACK not in node_log, node_log
    else:
        assert_stopped_cleanly(proc, launched=True)


@pytest.mark.parametrize("moment", ["imports", "warm-up"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_start_up_stops_with_one_line(workspace, env, signum, moment):
    """The installed executable (what `ros2 run` starts), signalled while it imports or traces."""
    import subprocess

    exe = workspace / "seg_ros" / "lib" / "seg_ros" / "segment_node"
    proc = subprocess.Popen([str(exe), "--ros-args", "-r", "image:=/cam"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if moment == "imports":
        time.sleep(0.3)
    else:  # the warm-up's first log line; the watchdog ends a node that never prints it
        watchdog = threading.Timer(120, proc.kill)
        watchdog.start()
        reached = any("building a fused CPU graph" in line for line in proc.stdout)
        watchdog.cancel()
        assert reached, "the node never started its warm-up"
    proc.send_signal(signum)
    try:
        out, _ = proc.communicate(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"still running {STOP_WITHIN_S} s after {signum!r}")
    assert proc.returncode == 0, out
    assert TRACEBACK not in out and "KeyboardInterrupt" not in out, out
    stop_lines = [
        line for line in out.splitlines() if "stopped by" in line or "shutting down" in line
    ]
    assert len(stop_lines) == 1, out


def test_ctrl_c_at_random_moments(env):
    """A few runs of scripts/shutdown_race.py's race (20 runs there, results in docs/node.md)."""
    results = ctrl_c_race(env, runs=4, seed=int(time.time()), max_delay=6.0)
    assert all(r["clean"] for r in results), results
