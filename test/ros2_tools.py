"""Helpers to run seg_ros exactly as a ROS 2 user does: colcon build, `. install/setup.sh`,
`ros2 launch` / `ros2 run` / `ros2 param` / `ros2 node`, and Ctrl-C the way a terminal sends it.

Used by test_ros2_cli.py and scripts/shutdown_race.py. The `ros2` command comes from a ROS
install or from ../shared/ros2-cli installed into the venv by `make setup`; without it the tests
skip, except under CI (CI=true), where they must run.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from seg_ros.cli.live_node import private_env

REPO = Path(__file__).resolve().parent.parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRACEBACK = "Traceback (most recent call last)"
STOP_WITHIN_S = 5.0


def ros2_executable(name: str) -> str | None:
    """``ros2`` / ``colcon`` next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def require_ros2_cli() -> None:
    """Skip without the ROS 2 command line, with the reason; under CI that is a failure."""
    missing = [name for name in ("ros2", "colcon") if ros2_executable(name) is None]
    if not missing:
        return
    reason = (f"{' and '.join(missing)} not found: install a ROS 2 distribution or run `make setup` "
              "with ../shared/ros2-cli present")
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the ROS 2 CLI tests: {reason}")
    pytest.skip(reason)


def repo_files() -> list[str]:
    """The files of a clean checkout: tracked, plus untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def build_workspace(root: Path) -> Path:
    """A colcon workspace with a clean copy of this repository in src/; returns its install/."""
    src = root / "src" / "seg_ros"
    for rel in repo_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    done = subprocess.run([ros2_executable("colcon"), "build", "--packages-select", "seg_ros"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"colcon build failed:\n{done.stdout}\n{done.stderr}"
    return root / "install"


def sourced_env(install: Path, domain: int, log_dir: Path) -> dict[str, str]:
    """The environment after `. install/setup.sh`, on its own ROS domain, localhost only."""
    dump = subprocess.run(["bash", "-c", f". '{install}/setup.sh' && env -0"], capture_output=True,
                          check=True, env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:"
                                                              f"{os.environ.get('PATH', '')}"))
    sourced = dict(line.split("=", 1) for line in dump.stdout.decode().split("\0") if "=" in line)
    return dict(private_env(domain, base=sourced), ROS_LOG_DIR=str(log_dir))


def ros2(env: dict[str, str], *args: str, timeout: float = 60.0,
         attempts: int = 3) -> subprocess.CompletedProcess:
    """One `ros2 ...` command, as typed. The daemon is not used (tests run on many domains and
    leave nothing behind), so a node or parameter query discovers the graph itself: on a loaded
    CPU that can miss the node ('Unable to find node', 'Node not found'), and the query is
    repeated, as a user would."""
    cmd = [ros2_executable("ros2"), *args]
    if (args[0] in ("param", "node") and args[1] in ("get", "set", "list", "info", "describe", "dump")
            or args[0] == "lifecycle"):
        cmd += ["--no-daemon", "--spin-time", "2"]
    for _ in range(attempts):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if not re.search(r"Unable to find node|Node not found", done.stdout + done.stderr):
            break
    return done


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"


class Ros2Process:
    """`ros2 launch ...` or `ros2 run ...` in its own process group, as in a terminal."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([ros2_executable("ros2"), *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(ANSI.sub("", line.rstrip("\n")))
                self._cond.notify_all()

    @property
    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first log line matching ``pattern``; fails if the process exits or time runs out."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line matching {pattern!r} after {timeout} s:\n"
                                         + "\n".join(self.lines))
                self._cond.wait(min(left, 0.2))

    def node_pids(self) -> list[int]:
        """PIDs of the processes launch started ('process started with pid [N]')."""
        return [int(m) for m in re.findall(r"process started with pid \[(\d+)\]", self.log)]

    def terminal_ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to every process of the foreground group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> tuple[int | None, float]:
        """(exit code, seconds) once it exits; the code is None (and all is killed) after
        ``timeout``."""
        started = time.monotonic()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            self.kill()
        self._reader.join(5)
        return code, time.monotonic() - started

    def kill(self) -> None:
        for pid in [*self.node_pids(), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


def child_pid(pid: int) -> int:
    """The one process that ``pid`` started (`ros2 run` runs the executable as its child)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


# where each lifecycle transition leads when it succeeds
GOAL_STATES = {"configure": "inactive", "activate": "active", "deactivate": "inactive",
               "cleanup": "unconfigured", "shutdown": "finalized"}
LOST_ANSWER = ("a service answer can be lost: a server that has not yet discovered the caller's "
               "reader (slow discovery on a loaded CPU) drops it")


class LifecycleClient:
    """``~/change_state`` and ``~/get_state`` of the managed node ``target``, called from
    ``node`` (an rclpy node that something else spins). A lost answer (LOST_ANSWER) is handled
    as a manager would: ask for the state, and repeat the request if nothing happened."""

    def __init__(self, node, target: str) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState

        self._types = ChangeState, GetState
        self._change = node.create_client(ChangeState, f"{target}/change_state")
        self._get = node.create_client(GetState, f"{target}/get_state")

    @staticmethod
    def _call(client, request, timeout: float):
        """The answer, or None when none came within ``timeout``."""
        assert client.wait_for_service(timeout_sec=60.0), f"no {client.srv_name}"
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                future.cancel()
                return None
            time.sleep(0.01)
        return future.result()

    def _request(self, transition: str):
        request = self._types[0].Request()
        request.transition.label = transition
        return request

    def send(self, transition: str) -> None:
        """Request ``transition`` without waiting for the answer."""
        assert self._change.wait_for_service(timeout_sec=60.0), f"no {self._change.srv_name}"
        self._change.call_async(self._request(transition))

    def change(self, transition: str, timeout: float = 180.0) -> bool:
        """Request ``transition`` by its label (configure, activate, ...): True on success."""
        request = self._request(transition)
        for _ in range(2):
            answer = self._call(self._change, request, timeout)
            if answer is not None:
                return answer.success
            if self.state() == GOAL_STATES[transition]:
                return True
        raise AssertionError(f"no answer to {transition} ({LOST_ANSWER}?)")

    def state(self) -> str:
        for _ in range(3):
            answer = self._call(self._get, self._types[1].Request(), 30.0)
            if answer is not None:
                return answer.current_state.label
        raise AssertionError(f"no answer from {self._get.srv_name}")


class FramePeer:
    """A frame source and label sink in this process, for a node found by its topic names."""

    def __init__(self, domain: int, input_topic: str, node: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from seg_ros.node.qos import latched_qos, output_qos

        self._rclpy = rclpy
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node("ros2_cli_test_peer", context=self.ctx)
        self.pub = self.node.create_publisher(Image, input_topic, output_qos(1))
        self.labels: dict[str, object] = {}
        self.class_info: str | None = None
        self._cond = threading.Condition()
        self.node.create_subscription(Image, f"{node}/labels", self._on_labels, output_qos(10))
        self.node.create_subscription(String, f"{node}/class_info", self._on_info, latched_qos())
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # the context is shut down at close()
            pass

    def _on_labels(self, msg) -> None:
        with self._cond:
            self.labels[msg.header.frame_id] = msg
            self._cond.notify_all()

    def _on_info(self, msg) -> None:
        with self._cond:
            self.class_info = msg.data
            self._cond.notify_all()

    def roundtrip(self, rgb, frame_id: str, timeout: float = 60.0):
        """Publish ``rgb`` (rgb8) until labels with ``frame_id`` come back (publishing again
        covers discovery: this peer's subscription may not be matched yet); returns them."""
        from sensor_msgs.msg import Image

        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
        msg.data = rgb.tobytes()
        msg.header.frame_id = frame_id
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_123, 456_789
        deadline = time.monotonic() + timeout
        with self._cond:
            while frame_id not in self.labels:
                assert time.monotonic() < deadline, f"no labels for {frame_id} after {timeout} s"
                self.pub.publish(msg)
                self._cond.wait(1.0)
            return self.labels[frame_id]

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.ctx)


# -- Ctrl-C at random moments (scripts/shutdown_race.py; a few runs in test_ros2_cli.py) ---------
def stream_frames(peer: FramePeer, stop: threading.Event, rate_hz: float = 30.0) -> None:
    from sensor_msgs.msg import Image

    msg = Image(height=360, width=480, encoding="rgb8", step=480 * 3)
    msg.data = bytes(360 * 480 * 3)
    while not stop.wait(1.0 / rate_hz):
        msg.header.frame_id = f"race_{time.monotonic_ns()}"
        peer.pub.publish(msg)


def one_run(env: dict[str, str], delay: float, after_ready: bool) -> dict:
    """Launch, press Ctrl-C ``delay`` s after launch printed the node's pid, or after the node
    said it is ready."""
    proc = Ros2Process(env, "launch", "seg_ros", "segment.launch.py", "input_topic:=/cam")
    peer = FramePeer(int(env["ROS_DOMAIN_ID"]), "/cam", "/segment_node")
    stop = threading.Event()
    streamer = threading.Thread(target=stream_frames, args=(peer, stop), daemon=True)
    streamer.start()
    try:
        proc.wait_for(r"segment_node\]: ready: " if after_ready else r"process started with pid",
                      120)
        time.sleep(delay)
        phase = "running" if "ready: " in proc.log else "start-up"
        proc.terminal_ctrl_c()
        code, seconds = proc.wait(STOP_WITHIN_S + 10)
    finally:
        stop.set()
        streamer.join(2)
        peer.close()
    log = proc.log
    left = [pid for pid in proc.node_pids() if not process_gone(pid)]
    clean = (code == 0 and seconds < STOP_WITHIN_S and TRACEBACK not in log
             and "KeyboardInterrupt" not in log and "process has finished cleanly" in log
             and not left)
    return {"delay_s": round(delay, 2), "after": "ready" if after_ready else "start",
            "phase": phase, "exit_code": code, "stop_s": round(seconds, 2), "clean": clean,
            "left_running": left,
            "log_tail": log.splitlines()[-4:] if not clean else []}


def ctrl_c_race(env: dict[str, str], runs: int, seed: int, max_delay: float) -> list[dict]:
    rng = random.Random(seed)
    results = []
    for i in range(runs):
        after_ready = i % 2 == 1  # every other run: while frames are being segmented
        result = one_run(env, rng.uniform(0.0, 3.0) if after_ready else rng.uniform(0.2, max_delay),
                         after_ready)
        results.append(result)
        print(f"run {i + 1:2d}: Ctrl-C at {result['after']} +{result['delay_s']:.2f} s "
              f"({result['phase']}): exit "
              f"{result['exit_code']} in {result['stop_s']:.2f} s, "
              f"{'clean' if result['clean'] else 'NOT CLEAN'}", flush=True)
    return results
