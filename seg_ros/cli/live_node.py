"""A live ``segment_node`` for the tools and tests that drive one (bench-node, soak, demo, tests).

The node runs as its own process on a ROS domain of its own; :class:`LiveClient`, a ROS node in
this process, publishes frames to it and records when each output arrives *as a subscriber sees
it*: arrival time minus the frame's header stamp (both wall clock, one machine), one publish per
frame and no retries, so DDS delays and losses show. rclpy is imported only when a client is
made, so the CLI works without ROS.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..memory import resident_mib
from ..node.dds_transport import USER_VARS as FASTDDS_USER_VARS
from ..resources import share_path

NODE = "segment_node"
OUTPUTS = ("labels", "color_mask", "overlay", "confidence")


def node_executable() -> list[str]:
    """Return the installed ``segment_node`` script beside this Python, else ``python -m``."""
    script = Path(sys.executable).with_name(NODE)
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "seg_ros.node.segment_node"]


def node_command(*params: str, namespace: str | None = "/bench",
                 input_topic: str = "/bench/image", params_file: Path | None = None,
                 executable: list[str] | None = None) -> list[str]:
    """Return the command line the launch file produces.

    Params file, ``-p`` overrides (``NAME:=VALUE``), remap and namespace (None: the root one). The
    one way the tools and the tests start the node; ``executable``: another entry point (default
    :func:`node_executable`).
    """
    cmd = [*(executable or node_executable()), "--ros-args", "--params-file",
           str(params_file or share_path("config", "segment.yaml"))]
    for p in params:
        cmd += ["-p", p]
    cmd += ["-r", f"image:={input_topic}"]
    return cmd + ["-r", f"__ns:={namespace}"] if namespace else cmd


def random_domain() -> int:
    """1..101: the ROS_DOMAIN_IDs whose DDS ports stay clear of Linux's ephemeral port range."""
    return random.Random(os.getpid() * 1000003 + time.monotonic_ns()).randint(1, 101)


DISCOVERY_VARS = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY")


def private_env(domain: int, base: Mapping[str, str] | None = None,
                discovery_range: str = "LOCALHOST") -> dict[str, str]:
    """Return ``base`` (default: this process's environment) for processes of one ROS graph.

    Domain ``domain``, discovery ``discovery_range`` (this machine only by default), output
    unbuffered. ``ROS_LOCALHOST_ONLY`` is removed: Jazzy deprecates it and it conflicts with the
    range.
    """
    env = dict(os.environ if base is None else base, ROS_DOMAIN_ID=str(domain),
               ROS_AUTOMATIC_DISCOVERY_RANGE=discovery_range,
               PYTHONUNBUFFERED="1", RCUTILS_LOGGING_BUFFERED_STREAM="0")
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


def isolated_env(domain: int) -> dict[str, str]:
    """:func:`private_env` without the user's Fast DDS settings.

    So node and client run as with a default environment.
    """
    env = private_env(domain)
    for name in FASTDDS_USER_VARS:
        env.pop(name, None)
    return env


@contextmanager
def ros_env_here(env: Mapping[str, str]) -> Iterator[None]:
    """Set this process's DDS variables as in ``env`` while the block starts ROS.

    This process's DDS variables as in ``env`` only while the block creates a ROS context and
    its first node, restored after. rclpy takes a domain id but no discovery range or Fast DDS
    profile: rcl reads those from the environment at init, Fast DDS at the first participant.
    """
    names = (*DISCOVERY_VARS, *FASTDDS_USER_VARS)
    saved = {name: os.environ.get(name) for name in names}
    try:
        for name in names:
            _set_or_unset(name, env.get(name))
        yield
    finally:
        for name, value in saved.items():
            _set_or_unset(name, value)


def _set_or_unset(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class NodeProcess:
    """The node as a subprocess; its output lines are kept (and written to ``log_path``)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path | None = None,
                 cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, cwd=cwd)
        self.lines: list[str] = []
        self._log_file = log_path.open("w") if log_path else None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self._log_file:
                self._log_file.write(line)
                self._log_file.flush()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def rss_mib(self) -> float:
        """Return the node's resident memory in MiB; NaN once it has exited."""
        return resident_mib(self.proc.pid)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0, strict: bool = True) -> int:
        """Signal the node and wait.

        Killed if it does not exit in time, and then, if ``strict``, a RuntimeError with the end of
        its log.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                if strict:
                    raise RuntimeError(f"{NODE} did not exit within {timeout} s of signal "
                                       f"{sig}:\n{self.log[-3000:]}") from None
        self._reader.join(5)
        if self._log_file:
            self._log_file.close()
        return self.proc.returncode


def image_message(frame: np.ndarray, encoding: str = "rgb8"):
    """Return a sensor_msgs/Image of an HxWx3 (or HxW) uint8 array.

    Its stamp and frame_id unset.
    """
    from sensor_msgs.msg import Image
    height, width = frame.shape[:2]
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=0,
                step=frame.strides[0] if frame.ndim > 1 else width)
    msg.data = np.ascontiguousarray(frame).tobytes()
    return msg


def spin_in_background(node, context):
    """Spin ``node`` in a daemon thread; return its single-threaded executor.

    A single-threaded executor spinning ``node`` in a daemon thread until ``context`` is shut
    down (call ``executor.shutdown()`` first).
    """
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin() -> None:
        try:
            executor.spin()
        except Exception:  # the context was shut down
            pass

    threading.Thread(target=spin, daemon=True).start()
    return executor


class LiveClient:
    """Publishes frames to the node and records, per output, each frame's delivery latency."""

    def __init__(self, env: Mapping[str, str], outputs: tuple[str, ...] = OUTPUTS,
                 namespace: str = "/bench", input_topic: str = "/bench/image",
                 output_depth: int = 10) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from ..node.qos import diagnostics_qos, latched_qos, output_qos

        self._rclpy, self._Image, self._output_qos = rclpy, Image, output_qos
        self.node_name = f"{namespace.rstrip('/')}/{NODE}"
        self.output_depth = output_depth
        self.ctx = rclpy.Context()
        with ros_env_here(env):  # the node's domain, discovery range and Fast DDS settings
            rclpy.init(context=self.ctx, domain_id=int(env["ROS_DOMAIN_ID"]))
            self.node = rclpy.create_node("seg_ros_live_client", context=self.ctx)
        self.pub = self.node.create_publisher(Image, input_topic, output_qos(1))
        self.cond = threading.Condition()
        self.latency: dict[str, dict[str, float]] = {}  # output -> frame_id -> seconds
        self.ready = False
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_at = 0.0
        self.subs: dict[str, Any] = {}
        self.node.create_subscription(String, f"{self.node_name}/class_info", self._on_info,
                                      latched_qos())
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics,
                                      diagnostics_qos())
        self.set_outputs(outputs)
        self.executor = spin_in_background(self.node, self.ctx)

    def set_outputs(self, outputs: tuple[str, ...]) -> None:
        """Subscribe to exactly ``outputs`` (the node computes only what is subscribed)."""
        for topic in list(self.subs):
            if topic not in outputs:
                self.node.destroy_subscription(self.subs.pop(topic))
        for topic in outputs:
            if topic not in self.subs:
                self.latency.setdefault(topic, {})
                self.subs[topic] = self.node.create_subscription(
                    self._Image, f"{self.node_name}/{topic}", self._arrival(topic),
                    self._output_qos(self.output_depth))
        self.outputs = tuple(outputs)

    def _on_info(self, _msg) -> None:
        with self.cond:
            self.ready = True
            self.cond.notify_all()

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name == f"seg_ros: {self.node_name}":
                with self.cond:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                    self.diagnostics_at = time.time()
                    self.cond.notify_all()

    def _arrival(self, topic: str) -> Callable[[Any], None]:
        def store(msg) -> None:
            now = time.time()
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            with self.cond:
                self.latency[topic][msg.header.frame_id] = now - stamp
                self.cond.notify_all()
        return store

    def wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """``predicate()`` (under the lock) once true, or its last value after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (result := predicate()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return result
                self.cond.wait(left)
            return result

    def wait_ready(self, node: NodeProcess, timeout: float = 120.0) -> None:
        """Until the node published its class info and every endpoint of ours is matched."""
        deadline = time.monotonic() + timeout
        while not (self.ready and self.pub.get_subscription_count() > 0
                   and all(s.get_publisher_count() > 0 for s in self.subs.values())):
            if node.proc.poll() is not None:
                raise RuntimeError(f"{NODE} exited with code {node.proc.returncode}:\n"
                                   f"{node.log[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{NODE} not ready after {timeout:g} s:\n{node.log[-3000:]}")
            time.sleep(0.1)

    def publish(self, msg, frame_id: str) -> None:
        """Publish ``msg`` once as frame ``frame_id``, stamped now (wall clock)."""
        now = time.time()
        msg.header.frame_id = frame_id
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(now), int((now % 1.0) * 1e9)
        self.pub.publish(msg)

    def delivered(self, frame_id: str) -> float | None:
        """Latency of the last subscribed output of ``frame_id`` in s; None until all arrived."""
        with self.cond:
            got = [self.latency[t].get(frame_id) for t in self.outputs]
        return None if None in got else max(got)

    def arrived_outputs(self, frame_id: str) -> int:
        with self.cond:
            return sum(frame_id in self.latency[t] for t in self.outputs)

    def diagnostics_after(self, t_wall: float, timeout: float = 5.0) -> dict[str, str]:
        """Return the node's /diagnostics values from a message after ``t_wall`` ({} if none)."""
        fresh = self.wait(lambda: self.diagnostics_at > t_wall, timeout)
        return dict(self.diagnostics) if fresh else {}

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.ctx)


# -- streams of frames: delivery as a subscriber sees it ---------------------------------------
COUNTERS = ("frames_received", "frames_processed", "frames_dropped", "frames_failed",
            "frames_skipped_no_subscribers")


def latency_percentiles(values_ms: list[float]) -> dict[str, float | None]:
    """p50 / p95 / max in ms, rounded to 0.1 (None when there are no values)."""
    if not values_ms:
        return {"p50": None, "p95": None, "max": None}
    a = np.asarray(values_ms, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 1),
            "p95": round(float(np.percentile(a, 95)), 1), "max": round(float(a.max()), 1)}


def counters(diagnostics: dict[str, str]) -> dict[str, int]:
    """Return the node's cumulative frame counters from its /diagnostics values."""
    return {k: int(diagnostics.get(k, 0)) for k in COUNTERS}


def _idle(counts: dict[str, int]) -> bool:
    """Return whether the node holds no frame: every frame received is accounted for."""
    return counts["frames_received"] == sum(counts[k] for k in COUNTERS[1:])


def idle_counters(client: LiveClient, timeout: float = 10.0) -> dict[str, int]:
    """Return the node's counters once it holds no frame.

    The node's counters once it holds no frame (its outputs go out before they are counted).
    """
    deadline = time.monotonic() + timeout
    while True:
        now = counters(client.diagnostics_after(time.time(), timeout=2.0) or client.diagnostics)
        if _idle(now) or time.monotonic() > deadline:
            return now


def stream(client: LiveClient, frames: list[tuple[Any, str]], rate_hz: float,
           on_frame: Callable[[int], None] | None = None) -> None:
    """Publish (message, frame_id) pairs at ``rate_hz``, once each; ``on_frame(i)`` after each."""
    start = time.monotonic()
    for i, (msg, frame_id) in enumerate(frames):
        client.publish(msg, frame_id)
        if on_frame is not None:
            on_frame(i)
        time.sleep(max(0.0, start + (i + 1) / rate_hz - time.monotonic()))


def settle(client: LiveClient, frame_ids: list[str], before: dict[str, int], timeout: float = 5.0
           ) -> dict[str, int]:
    """Wait until every frame the node processed since ``before`` was delivered on every output.

    Or ``timeout`` s (longer than Fast DDS's default 3 s heartbeat, so stalled frames are seen).
    Returns the node's counters since ``before``.
    """
    deadline = time.monotonic() + timeout
    time.sleep(0.5)  # the last frame on its way in
    while True:
        now = counters(client.diagnostics_after(time.time(), timeout=2.0) or client.diagnostics)
        done = {k: now[k] - before[k] for k in COUNTERS}
        complete = sum(client.delivered(f) is not None for f in frame_ids)
        if (_idle(done) and complete >= done["frames_processed"]) or time.monotonic() > deadline:
            return done


def delivery_summary(client: LiveClient, frame_ids: list[str], node_counts: dict[str, int],
                     late_s: float = 1.0) -> dict[str, Any]:
    """Summarise the delivery of ``frame_ids`` as the client and the node saw it.

    Delivery of ``frame_ids`` as the client saw it (latency of the last subscribed output of
    each frame, in ms), with the node's own counts and latency (receipt -> published, its last
    200 frames): frames that never reached the node were lost by DDS on the way in, processed
    frames without all outputs were lost on the way out.
    """
    latencies = [client.delivered(f) for f in frame_ids]
    got_ms = [x * 1e3 for x in latencies if x is not None]
    partial = sum(x is None and client.arrived_outputs(f) > 0
                  for f, x in zip(frame_ids, latencies))
    return {"sent": len(frame_ids), "outputs": list(client.outputs), "complete": len(got_ms),
            "partial": int(partial), "late": sum(x > late_s * 1e3 for x in got_ms),
            "late_s": late_s,
            "latency_ms": latency_percentiles(got_ms), "node": node_counts,
            "node_latency_ms": {k: float(client.diagnostics.get(f"latency_{k}_ms", "nan"))
                                for k in ("median", "p95")},
            "lost_before_node": len(frame_ids) - node_counts["frames_received"],
            "lost_after_node": max(0, node_counts["frames_processed"] - len(got_ms))}


def roundtrip(client: LiveClient, msg, frame_id: str, timeout: float) -> float | None:
    """Seconds from publishing ``frame_id`` (once) to its last subscribed output; None if lost."""
    client.publish(msg, frame_id)
    client.wait(lambda: client.delivered(frame_id) is not None, timeout)
    return client.delivered(frame_id)


def warm_up(client: LiveClient, msg, key: str, frames: int, timeout: float = 120.0) -> None:
    """``frames`` frames through the node before timing.

    The first of a size traces the model's graph. Not timed, so a frame lost on the way in is
    simply sent again.
    """
    for i in range(frames):
        deadline = time.monotonic() + timeout
        while roundtrip(client, msg, f"{key}-warmup-{i}", timeout=2.0) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no output for {key} within {timeout:g} s of warm-up frames")
