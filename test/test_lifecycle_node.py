"""segment_lifecycle_node, the managed variant of segment_node, as a system manager drives it.

A colcon build of a clean copy of the repository (as in test_ros2_cli.py); the node runs as its
own process and is driven through every transition twice over: with the real `ros2 lifecycle
set` command line, and with the ~/change_state service called from rclpy in this process. Frames
go over DDS; labels are compared with the offline SegmentationPipeline loading the same weights.
The launch file's managed:=true autostart:=true/false are run with `ros2 launch`.

Needs the `ros2` command line (skipped without it, except under CI).
"""
from __future__ import annotations

import re
import shlex
import signal
import subprocess
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from helpers import (GOAL_STATES, NODE, READY, SMALL, STOP_WITHIN_S, TRACEBACK, FramePeer,
                     LifecycleClient, NodeProcess, Peer, Ros2Process, assert_stopped_cleanly,
                     check_outputs, child_pid, image_msg, node_command, readme_commands,
                     require_module, ros2, save_test_weights, small_frame, sourced_env)

rclpy = require_module("rclpy", reason="rclpy (ROS 2) is not installed")

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from seg_ros.cli.live_node import random_domain, ros_env_here  # noqa: E402
from seg_ros.memory import resident_bytes  # noqa: E402
from seg_ros.pipeline import SegmentationPipeline  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

UNCONFIGURED = r"segment_node\]: unconfigured: parameters declared"
STATE_IDS = {"unconfigured": 1, "inactive": 2, "active": 3, "finalized": 4}
SUCCESS, FAILURE, ERROR = (TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE,
                           TransitionCallbackReturn.ERROR)
WARMED_UP = r"\[segment_node\]: warmed up at "
RSS_FALL_MIB = 16  # the model, its fused graph and buffers: far more than this on every model


# -- the README's commands: `ros2 run` and `ros2 lifecycle set` ---------------------------------
def lifecycle_set(env: dict[str, str], node: str, transition: str) -> bool:
    """`ros2 lifecycle set NODE TRANSITION`: True on 'Transitioning successful'.

    The command waits for the answer without a time limit; when that answer is lost (LOST_ANSWER),
    check the state and type the command again if nothing happened, as a user would.
    """
    for _ in range(2):
        try:
            done = ros2(env, "lifecycle", "set", node, transition, timeout=150, attempts=5)
        except subprocess.TimeoutExpired:
            if lifecycle_get(env, node).split()[0] == GOAL_STATES[transition]:
                return True
            continue
        said = done.stdout + done.stderr
        assert "Transitioning successful" in said or "Transitioning failed" in said, said
        return "Transitioning successful" in said
    raise AssertionError(f"`ros2 lifecycle set {node} {transition}` got no answer twice")


def lifecycle_get(env: dict[str, str], node: str) -> str:
    """`ros2 lifecycle get NODE`, e.g. 'active [3]' (typed again when its answer is lost)."""
    for _ in range(3):
        try:
            done = ros2(env, "lifecycle", "get", node, timeout=60, attempts=5)
        except subprocess.TimeoutExpired:
            continue
        assert done.returncode == 0, done
        return done.stdout.strip()
    raise AssertionError(f"`ros2 lifecycle get {node}` got no answer three times")


def label_array(msg) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width)


def send_unanswered(peer: FramePeer, tag: str, frames: int = 5, wait_s: float = 2.0) -> list[str]:
    """Publish ``frames`` frames and check that no labels come back for them within ``wait_s``."""
    from sensor_msgs.msg import Image

    rgb = small_frame()
    sent = []
    for i in range(frames):
        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8",
                    step=rgb.shape[1] * 3)
        msg.data = rgb.tobytes()
        msg.header.frame_id = f"{tag}_{i}"
        peer.pub.publish(msg)
        sent.append(msg.header.frame_id)
        time.sleep(wait_s / frames)
    assert not set(sent) & set(peer.labels), f"labels for frames sent while {tag}"
    return sent


@pytest.fixture(scope="module")
def default_offline() -> SegmentationPipeline:
    """Return the shipped weights, as the README's commands run them (auto = torch on CPU)."""
    return SegmentationPipeline(device="cpu")


def test_readme_commands_drive_every_transition(workspace, tmp_path, default_offline):
    """The README's commands drive the node through every transition.

    `ros2 run` the node and `ros2 lifecycle set` it through every transition as the README
    types them: no labels before activation or after deactivation, labels equal to the offline
    pipeline's when active, activate again after deactivate with the model still warm (no second
    warm-up), RSS falls at cleanup, the README's `ros2 param set ... weights` while unconfigured,
    and a second configure loads those weights.
    """
    commands = readme_commands("### Managed (lifecycle) node")
    run = next(c for c in commands if c.startswith("ros2 run"))
    lifecycle = [c for c in commands if c.startswith("ros2 lifecycle")]
    node = re.search(r"ros2 lifecycle get (\S+)", " ".join(lifecycle)).group(1)
    transitions = [shlex.split(c)[-1] for c in lifecycle if " set " in c]
    assert transitions == list(GOAL_STATES), transitions
    param_set = shlex.split(next(c for c in commands if c.startswith("ros2 param set")))
    assert param_set[1:5] == ["param", "set", node, "weights"], param_set
    other_weights = save_test_weights(tmp_path / "other.pt")  # the README's /path/other.pt
    input_topic = re.search(r"image:=(\S+)", run).group(1)
    env = sourced_env(workspace, random_domain(), tmp_path / "log")

    proc = Ros2Process(env, *shlex.split(run)[1:])
    peer = None
    try:
        proc.wait_for(UNCONFIGURED, 120)
        pid = child_pid(proc.proc.pid)
        assert lifecycle_get(env, node) == "unconfigured [1]"
        peer = FramePeer(int(env["ROS_DOMAIN_ID"]), input_topic, node)
        early = send_unanswered(peer, "unconfigured")

        assert lifecycle_set(env, node, "configure")
        assert lifecycle_get(env, node) == "inactive [2]"
        early += send_unanswered(peer, "inactive")
        assert peer.pub.get_subscription_count() == 0  # not even subscribed

        assert lifecycle_set(env, node, "activate")
        assert lifecycle_get(env, node) == "active [3]"
        frame = small_frame()
        expected = default_offline(frame, "rgb").labels
        np.testing.assert_array_equal(label_array(peer.roundtrip(frame, "active_1")), expected)

        assert lifecycle_set(env, node, "deactivate")
        assert lifecycle_get(env, node) == "inactive [2]"
        early += send_unanswered(peer, "deactivated")
        assert lifecycle_set(env, node, "activate")  # again: the model is still loaded and warm
        np.testing.assert_array_equal(label_array(peer.roundtrip(frame, "reactivated")), expected)
        assert len(re.findall(WARMED_UP, proc.log)) == 1, proc.log  # no reload, no new warm-up
        assert lifecycle_set(env, node, "deactivate")
        warm = resident_bytes(pid)

        assert lifecycle_set(env, node, "cleanup")
        assert lifecycle_get(env, node) == "unconfigured [1]"
        released = resident_bytes(pid)
        assert released < warm - RSS_FALL_MIB * 2**20, (warm / 2**20, released / 2**20)

        done = ros2(env, *param_set[1:-1], str(other_weights))  # the README's line, as typed
        assert "Set parameter successful" in done.stdout, done
        assert lifecycle_set(env, node, "configure")  # the same process loads the new weights
        proc.wait_for(rf"configure done in \d+ ms: model \S+ \({re.escape(str(other_weights))}\)",
                      10)
        assert lifecycle_set(env, node, "activate")
        other = SegmentationPipeline(weights=str(other_weights), device="cpu")(frame, "rgb")
        assert not np.array_equal(other.labels, expected)  # else the switch would not show
        np.testing.assert_array_equal(label_array(peer.roundtrip(frame, "active_2")),
                                      other.labels)
        assert not set(early) & set(peer.labels)

        assert lifecycle_set(env, node, "shutdown")
        assert lifecycle_get(env, node) == "finalized [4]"
        assert proc.proc.poll() is None  # finalized, not gone: the owner ends the process
    finally:
        if peer is not None:
            peer.close()
        proc.terminal_ctrl_c()
    assert_stopped_cleanly(proc, launched=False)
    for transition in ("configure", "activate", "deactivate", "cleanup", "shutdown"):
        assert re.search(rf"\[segment_node\]: {transition} done in \d+ ms", proc.log), transition


# -- the ~/change_state service from rclpy -----------------------------------------------------
def go(lifecycle: LifecycleClient, state: str) -> None:
    """From unconfigured to ``state`` (unconfigured, inactive or active)."""
    for transition in ("configure", "activate")[:STATE_IDS[state] - 1]:
        assert lifecycle.change(transition), transition
    assert lifecycle.state() == state


def wait_line(node: NodeProcess, pattern: str, timeout: float) -> str:
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        found = next((line for line in list(node.lines) if regex.search(line)), None)
        if found:
            return found
        assert node.proc.poll() is None, f"node exited with {node.proc.returncode}:\n{node.log}"
        assert time.monotonic() < deadline, f"no line matching {pattern!r}:\n{node.log}"
        time.sleep(0.1)


@contextmanager
def managed_node(workspace, tmp_path, weights, *params: str):
    """Start the installed segment_lifecycle_node, unconfigured, with a test peer.

    The installed segment_lifecycle_node, started as the launch file does (params file,
    remap, namespace), unconfigured; with the test peer and its lifecycle client.
    """
    exe = workspace / "seg_ros" / "lib" / "seg_ros" / "segment_lifecycle_node"
    domain = random_domain()
    env = sourced_env(workspace, domain, tmp_path / "log")
    node = NodeProcess(node_command(weights, "diagnostics_period:=0.25", *params,
                                    executable=[str(exe)]), env)
    with ros_env_here(env):
        peer = Peer(domain)
    try:
        wait_line(node, UNCONFIGURED, 120)
        yield node, peer, LifecycleClient(peer.node, NODE)
    finally:
        peer.close()
        node.stop()


def diag_after(peer: Peer, moment: float) -> tuple[int, dict[str, str]]:
    status = peer.latest_diag(after=moment)
    return status.level[0], {kv.key: kv.value for kv in status.values}


def labels_equal_offline(peer: Peer, pipeline: SegmentationPipeline, image: np.ndarray,
                         tag: str) -> None:
    h, w = image.shape[:2]
    sent = image_msg("rgb8", image, h, w, tag=tag)
    out = peer.roundtrip(sent, ("labels",), timeout=120)
    check_outputs(out, sent, pipeline(image, "rgb"), pipeline)


def test_failed_configure_fixed_and_a_model_switch(workspace, tmp_path, weights_file, offline,
                                                   small_image):
    """A failed configure can be fixed, and a cleaned-up node can load another model.

    ~/change_state from rclpy: configure fails on a missing weights file (one line, still
    unconfigured, alive), succeeds once the parameter is fixed; after cleanup another model and
    weights load in the same process. /diagnostics follows the state.
    """
    missing = tmp_path / "no_such_weights.pt"
    other_weights = save_test_weights(tmp_path / "ddrnet23.pt", "ddrnet23")
    other = SegmentationPipeline(model="ddrnet23", weights=str(other_weights), device="cpu")
    with managed_node(workspace, tmp_path, missing) as (node, peer, lifecycle):
        level, values = diag_after(peer, time.monotonic())
        assert values["lifecycle_state"] == "unconfigured" and "model" not in values and level == 0
        early = image_msg("rgb8", small_image, *SMALL, tag="before_activation")
        peer.pub.publish(early)

        assert not lifecycle.change("configure")
        assert lifecycle.state() == "unconfigured" and node.proc.poll() is None
        errors = [line for line in node.lines if "[ERROR]" in line or "[FATAL]" in line]
        assert len(errors) == 1, errors
        assert str(missing) in errors[0] and "does not exist" in errors[0], errors
        assert peer.set_params(weights=str(weights_file))[0].successful  # allowed: unconfigured

        assert lifecycle.change("configure")
        assert lifecycle.state() == "inactive"
        refused = peer.set_params(weights=str(other_weights))[0]
        assert not refused.successful and "unconfigured" in refused.reason, refused
        level, values = diag_after(peer, time.monotonic())
        assert (values["lifecycle_state"], values["model"]) == ("inactive", "ddrnet23_slim")
        assert level == 0
        peer.pub.publish(early)

        assert lifecycle.change("activate")
        peer.wait_ready(node)
        labels_equal_offline(peer, offline, small_image, "first_model")
        assert peer.class_info["model"] == "ddrnet23_slim"
        level, values = diag_after(peer, time.monotonic())
        assert values["lifecycle_state"] == "active" and int(values["frames_processed"]) >= 1

        assert lifecycle.change("deactivate")
        warm = resident_bytes(node.proc.pid)
        assert lifecycle.change("cleanup")
        released = resident_bytes(node.proc.pid)
        assert released < warm - RSS_FALL_MIB * 2**20, (warm / 2**20, released / 2**20)
        assert list(peer.get_params("class_names")) == [], "class metadata: nothing is loaded"

        results = peer.set_params(model="ddrnet23", weights=str(other_weights))
        assert all(r.successful for r in results), results
        peer.class_info = None
        assert lifecycle.change("configure") and lifecycle.change("activate")
        peer.wait_ready(node)
        assert peer.class_info["model"] == "ddrnet23"
        labels_equal_offline(peer, other, small_image, "second_model")
        assert early.header.frame_id not in peer.received["labels"]
        assert lifecycle.change("deactivate") and lifecycle.change("cleanup")
        assert lifecycle.state() == "unconfigured"
    assert node.proc.returncode == 0, node.log
    assert TRACEBACK not in node.log, node.log


def interrupted_cleanly(node: NodeProcess, signum: signal.Signals = signal.SIGINT) -> str:
    """``signum`` (SIGINT: Ctrl-C; SIGTERM: a supervisor) to the node.

    Exit code 0 within STOP_WITHIN_S, no traceback, one stop line naming the signal and no error
    line. Returns its log.
    """
    started = time.monotonic()
    code = node.stop(signum)
    seconds = time.monotonic() - started
    log = node.log
    assert code == 0, log
    assert seconds < STOP_WITHIN_S, f"took {seconds:.1f} s to stop:\n{log}"
    assert TRACEBACK not in log and "KeyboardInterrupt" not in log, log
    stops = [line for line in log.splitlines() if "shutting down" in line]
    assert len(stops) == 1 and f"{signum.name}: shutting down" in stops[0], log
    assert not [line for line in log.splitlines() if "[ERROR]" in line], log
    return log


@pytest.mark.parametrize(("state", "how"), [
    *[(state, how) for how in ("shutdown_transition", "SIGINT")
      for state in ("unconfigured", "inactive", "active")],
    ("active", "SIGTERM"),
])
def test_shutdown_from_each_state(workspace, tmp_path, weights_file, state, how):
    """The shutdown transition and stop signals from each state end the node cleanly.

    The shutdown transition (~/change_state) from each primary state reaches finalized with
    everything released, and the process then stops cleanly on SIGINT; SIGINT in each state (and
    SIGTERM, a supervisor's stop, once) runs the shutdown transition itself: exit code 0, no
    traceback, one stop line.
    """
    with managed_node(workspace, tmp_path, weights_file) as (node, peer, lifecycle):
        go(lifecycle, state)
        if how == "shutdown_transition":
            assert lifecycle.change("shutdown")
            assert lifecycle.state() == "finalized"
            level, values = diag_after(peer, time.monotonic())
            assert values["lifecycle_state"] == "finalized" and "model" not in values
        log = interrupted_cleanly(node, signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
    assert len(re.findall(rf"shutdown done in \d+ ms: finalized from {state}", log)) == 1, log


def test_sigint_during_configure(workspace, tmp_path, weights_file):
    """A stop signal while configure traces the graph (which cannot be interrupted).

    The node gives the configure up and exits cleanly without waiting for the trace.
    """
    with managed_node(workspace, tmp_path, weights_file, "input_size:=[360, 480]") as (
            node, peer, lifecycle):
        lifecycle.send("configure")
        wait_line(node, r"building a fused CPU graph", 120)
        log = interrupted_cleanly(node)
    assert "configure abandoned" in log and "warmed up" not in log, log


@contextmanager
def node_in_process(*params: str, node_class: type | None = None):
    """Start a managed node in this process (``node_class``, default SegmentLifecycleNode).

    Started with ``-p`` ``params`` on a domain of its own; transitions are called directly.
    """
    from seg_ros.node.lifecycle_node import SegmentLifecycleNode

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=random_domain(),
               args=["test", "--ros-args", *[a for p in params for a in ("-p", p)]])
    node = (node_class or SegmentLifecycleNode)(context=context)
    try:
        yield node
    finally:
        node.stop()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def set_param(node, name: str, value) -> None:
    result = node.set_parameters([Parameter(name, value=value)])[0]
    assert result.successful, result.reason


def test_bad_parameters_then_error_processing(weights_file, capfd):
    """A configure that fails on a bad parameter, then a transition that raises.

    Values that pass the type check but not config_values() (``model: nosuch``, ``device: tpu``)
    fail configure: FAILURE, one error line naming the parameter, still unconfigured; each is
    fixed by setting the parameter, and configure then succeeds. A transition that raises (here
    activate, as if the camera driver vanished: a fault injected by overriding subscribe) is
    logged once; error processing stops frames and releases the model and returns to
    unconfigured, from where a manager can configure again.
    """
    from seg_ros.node.lifecycle_node import SegmentLifecycleNode

    class CameraGone(SegmentLifecycleNode):
        broken = True

        def subscribe(self, first=None) -> None:
            if self.broken:
                raise RuntimeError("camera driver gone")
            super().subscribe(first)

    with node_in_process(f"weights:={weights_file}", "backend:=torch", "model:=nosuch",
                         "device:=tpu", node_class=CameraGone) as node:
        capfd.readouterr()
        for name, fixed in (("model", "ddrnet23_slim"), ("device", "cpu")):
            assert node.trigger_configure() == FAILURE
            assert node.lifecycle_state() == "unconfigured" and node.pipeline is None
            errors = [line for line in capfd.readouterr().err.splitlines() if "[ERROR]" in line]
            assert len(errors) == 1, errors
            assert f"configure failed: parameter {name!r} " in errors[0], errors
            assert errors[0].endswith("; still unconfigured"), errors
            set_param(node, name, fixed)  # allowed: unconfigured
        assert node.trigger_configure() == SUCCESS

        assert node.trigger_activate() == ERROR
        assert node.lifecycle_state() == "unconfigured"
        assert node.pipeline is None and not node.has_parameter("class_names")
        outputs = [p.topic_name for p in node.publishers
                   if p.topic_name.endswith(("labels", "class_info"))]
        assert node.crf_worker is None and not outputs, outputs
        node.broken = False
        assert node.trigger_configure() == SUCCESS
        assert node.trigger_activate() == SUCCESS
        assert node.trigger_shutdown() == SUCCESS
        assert node.lifecycle_state() == "finalized" and node.pipeline is None
    err = capfd.readouterr().err
    assert err.count("activate failed: RuntimeError: camera driver gone") == 1, err
    assert "error processing (from inactive)" in err, err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cleanup_frees_gpu_memory(weights_file):
    """Cleanup gives the model's GPU memory back: allocated as before configure, cache emptied.

    A first configure/cleanup leaves what stays for the life of the process (CUDA context,
    cuDNN/cuBLAS handles and workspaces); the second configure is measured against that.
    """
    with node_in_process(f"weights:={weights_file}", "backend:=torch", "device:=cuda") as node:
        assert node.trigger_configure() == SUCCESS and node.trigger_cleanup() == SUCCESS
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        assert node.trigger_configure() == SUCCESS
        assert node.info["device"].startswith("cuda"), node.info
        torch.cuda.synchronize()
        loaded, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        assert loaded > before, (loaded, before)  # the model is on the GPU
        assert node.trigger_cleanup() == SUCCESS
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == before, (torch.cuda.memory_allocated(), before)
        assert torch.cuda.memory_reserved() < reserved, (torch.cuda.memory_reserved(), reserved)


# -- launch: managed:=true ---------------------------------------------------------------------
@pytest.mark.parametrize("autostart", ["true", "false"])
def test_launch_managed(workspace, tmp_path, autostart):
    """`ros2 launch ... managed:=true`.

    Autostart:=true configures and activates it through launch's lifecycle events; autostart:=false
    leaves it unconfigured until a manager (here `ros2 lifecycle set`) moves it. Ctrl-C stops
    either cleanly.
    """
    env = sourced_env(workspace, random_domain(), tmp_path / "log")
    proc = Ros2Process(env, "launch", "seg_ros", "segment.launch.py", "managed:=true",
                       f"autostart:={autostart}", "input_topic:=/cam")
    peer = None
    try:
        proc.wait_for(UNCONFIGURED, 120)
        if autostart == "true":
            proc.wait_for(READY, 180)
            assert lifecycle_get(env, "/segment_node") == "active [3]"
        else:
            time.sleep(3.0)  # launch would have configured it by now
            assert lifecycle_get(env, "/segment_node") == "unconfigured [1]"
            assert "configure done" not in proc.log
            assert lifecycle_set(env, "/segment_node", "configure")
            assert lifecycle_set(env, "/segment_node", "activate")
        peer = FramePeer(int(env["ROS_DOMAIN_ID"]), "/cam", "/segment_node")
        labels = peer.roundtrip(small_frame(), f"launch_autostart_{autostart}")
        assert (labels.height, labels.width) == small_frame().shape[:2]
    finally:
        if peer is not None:
            peer.close()
        proc.terminal_ctrl_c()
    assert_stopped_cleanly(proc, launched=True)
    assert "shutdown done" in proc.log and "finalized from active" in proc.log, proc.log
