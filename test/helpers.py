"""Helpers shared by the test modules and scripts/.

Data, images in ROS encodings, bags, the node as a process with a DDS peer, and the ROS 2 command
line. Fixtures live in conftest.py, which uses these; test modules import from here, never from
each other.

Nothing here imports rclpy at import time: modules without ROS (bags, eval) use it too.
"""
from __future__ import annotations

import importlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from seg_ros import bags
from seg_ros.cli.live_node import NodeProcess as LiveNodeProcess
from seg_ros.cli.live_node import node_command as live_node_command
from seg_ros.cli.live_node import private_env, random_domain, ros_env_here, spin_in_background

REPO = Path(__file__).resolve().parent.parent
CAMVID = Path(os.environ.get("SEG_ROS_CAMVID", REPO.parent / "shared" / "datasets" / "camvid"))
SMALL = (120, 160)  # (height, width) of the small frames the node tests send

if TYPE_CHECKING:
    from sensor_msgs.msg import Image


# -- data --------------------------------------------------------------------------------------
def camvid_available() -> bool:
    return (CAMVID / "val").is_dir() and (CAMVID / "valannot").is_dir()


requires_camvid = pytest.mark.skipif(not camvid_available(),
                                     reason=f"CamVid not found at {CAMVID} (../shared absent)")


def save_test_weights(path: Path, model: str = "ddrnet23_slim", **options) -> Path:
    """Return random (seed 0) weights for ``model`` with CamVid class metadata.

    The same tensors every time.
    """
    import torch
    from seg_ros.classes import load_classes
    from seg_ros.models import build_model, save_weights
    classes = load_classes("camvid")
    torch.manual_seed(0)
    save_weights(path, build_model(model, classes.num_classes, **options),
                 {"arch": model, "classes": classes.to_dicts(), "classes_name": classes.name,
                  "num_classes": classes.num_classes, "ignore_id": classes.ignore_id})
    return path


# -- state-dict layouts written from the reference projects' code, for checkpoint-compatibility
# tests
Layout = dict[str, tuple[int, ...]]


def conv_layout(
    name: str, cin: int, cout: int, k: int, bias: bool = False, transposed: bool = False
) -> Layout:
    """Return the keys and shapes of a (transposed) convolution.

    As nn.Conv2d / nn.ConvTranspose2d store them.
    """
    out = {f"{name}.weight": (cin, cout, k, k) if transposed else (cout, cin, k, k)}
    if bias:
        out[f"{name}.bias"] = (cout,)
    return out


def bn_layout(name: str, c: int) -> Layout:
    """Keys and shapes of an nn.BatchNorm2d."""
    return {f"{name}.weight": (c,), f"{name}.bias": (c,), f"{name}.running_mean": (c,),
            f"{name}.running_var": (c,), f"{name}.num_batches_tracked": ()}


# -- images in ROS encodings, written from the encoding definitions (not with image_codec) --
def rgb_to_yuv(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = (img[..., i].astype(np.float64) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    return tuple(np.clip(np.round(c), 0, 255).astype(np.uint8) for c in (y, u, v))


def pack_yuv422(img: np.ndarray, order: str) -> np.ndarray:
    """``order`` 'uyvy' (ROS yuv422) or 'yuyv' (ROS yuv422_yuy2); chroma from the left pixel."""
    y, u, v = rgb_to_yuv(img)
    h, w = y.shape
    out = np.empty((h, w // 2, 4), np.uint8)
    planes = {"y0": y[:, 0::2], "y1": y[:, 1::2], "u": u[:, 0::2], "v": v[:, 0::2]}
    layout = ("u", "y0", "v", "y1") if order == "uyvy" else ("y0", "u", "y1", "v")
    for i, name in enumerate(layout):
        out[:, :, i] = planes[name]
    return out.reshape(h, w * 2)


def mosaic(img: np.ndarray, pattern: str) -> np.ndarray:
    """Bayer mosaic: ``pattern`` names the colours of pixels (0,0) (0,1) (1,0) (1,1)."""
    idx = {"r": 0, "g": 1, "b": 2}
    out = np.empty(img.shape[:2], np.uint8)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[dy::2, dx::2] = img[dy::2, dx::2, idx[pattern[k]]]
    return out


def scan_range(jpeg: bytes) -> tuple[int, int]:
    """Byte range of the entropy-coded data (after the SOS segment, before EOI)."""
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2: sos + 4], "big"), len(jpeg) - 2


def corrupt_entropy(jpeg: bytes, seed: int, n: int = 64) -> bytes:
    """Overwrite ``n`` bytes in the middle of the scan with random non-0xFF bytes.

    Every marker stays intact (OpenCV decodes this silently into grey and garbage blocks).
    """
    start, end = scan_range(jpeg)
    at = (start + end) // 2
    data = bytearray(jpeg)
    data[at: at + n] = np.random.default_rng(seed).integers(0, 255, n, dtype=np.uint8).tobytes()
    return bytes(data)


def damaged_files(jpeg: bytes, png: bytes) -> dict[str, bytes]:
    """Each kind of damage that made OpenCV's libjpeg/libpng print to stderr."""
    start, end = scan_range(jpeg)
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0x10  # caught by the chunk CRC / zlib checksum
    filters = bytearray(png)
    idat = png.index(b"IDAT")
    filters[idat + 4: idat + 64] = bytes(60)
    return {"entropy": corrupt_entropy(jpeg, 7), "truncated_jpeg": jpeg[: len(jpeg) // 2],
            "truncated_jpeg_with_eoi": jpeg[: (start + end) // 2] + b"\xff\xd9",
            "junk_before_eoi": jpeg[:-2] + bytes(range(1, 33)) + b"\xff\xd9",
            "jpeg_garbage_after_soi": jpeg[:3] + bytes(500),
            "truncated_png": png[: len(png) // 2], "png_bit_flip": bytes(flipped),
            "png_bad_filters": bytes(filters)}


# -- bags written with the rosbags library directly (not through seg_ros.bags) -------------
# (topic, ROS 2 type name, bag timestamp ns, message object)
Record = tuple[str, str, int, Any]


def legacy_name(msgtype: str) -> str:
    """'sensor_msgs/msg/Image' -> 'sensor_msgs/Image' (the older spelling)."""
    pkg, _, name = msgtype.split("/")
    return f"{pkg}/{name}"


def write_legacy_bag(path: Path, records: Iterable[Record], storage: str = "sqlite3") -> Path:
    """Return a rosbag2 whose connections use the older type spelling.

    ``path`` ending in ``.mcap`` / ``.db3`` becomes a single storage file, any other path a bag
    directory with metadata.yaml.
    """
    ts = bags.typestore()
    single = path.suffix in (".mcap", ".db3")
    folder = path.with_name(path.name + ".dir") if single else path
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(folder, version=8, storage_plugin=plugin)
    writer.open()
    conns: dict[str, Any] = {}
    for topic, msgtype, stamp, msg in records:
        if topic not in conns:
            msgdef, _ = ts.generate_msgdef(msgtype, ros_version=2)
            conns[topic] = writer.add_connection(topic, legacy_name(msgtype), msgdef=msgdef,
                                                 rihs01=ts.hash_rihs01(msgtype))
        writer.write(conns[topic], stamp, ts.serialize_cdr(msg, msgtype))
    writer.close()
    if single:
        (folder / f"{folder.name}{bags.STORAGE_SUFFIX[storage]}").replace(path)
        shutil.rmtree(folder)
    return path


# -- the node as a process, and a test peer over DDS (test_node*.py, test_lifecycle_node.py) --
PARAMS_FILE = REPO / "config" / "segment.yaml"
INPUT = "/cam/image_raw"
NODE = "/perception/segment_node"


def node_env(domain: int) -> dict[str, str]:
    return private_env(domain)


def node_command(weights: str | Path, *params: str, backend: str | None = "torch",
                 executable: list[str] | None = None) -> list[str]:
    """Return the tools' command line (live_node.node_command) for the node under test.

    This checkout's params file, ``weights``, ``INPUT`` remapped, namespace /perception.
    ``backend`` is set to torch, the offline reference's backend, unless None (the node's default,
    auto).
    """
    first = [f"weights:={weights}", *([f"backend:={backend}"] if backend else [])]
    return live_node_command(*first, *params, namespace="/perception", input_topic=INPUT,
                             params_file=PARAMS_FILE, executable=executable)


class NodeProcess(LiveNodeProcess):
    """The node under test (seg_ros/cli/live_node.py).

    Run from the repository root; its output is collected for the log assertions.
    """

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        super().__init__(cmd, env, cwd=REPO)


class Peer:
    """The test side: a ROS node in this process, spun in a background thread."""

    def __init__(self, domain: int, transport: str = "raw") -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.parameter_client import AsyncParameterClient
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        from seg_ros.node.qos import diagnostics_qos, latched_qos, output_qos

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node("segment_node_test_peer", context=self.ctx)
        self.cond = threading.Condition()
        self.received: dict[str, dict[str, object]] = {
            t: {} for t in ("labels", "color_mask", "overlay", "confidence")
        }
        self.received_at: dict[str, float] = {}
        self.class_info: dict | None = None
        self.diagnostics: list[tuple[float, object]] = []
        if transport == "compressed":
            self.pub = self.node.create_publisher(
                CompressedImage, INPUT + "/compressed", output_qos(1)
            )
        else:
            self.pub = self.node.create_publisher(Image, INPUT, output_qos(1))
        self.subs = [
            self.node.create_subscription(
                Image, f"{NODE}/{topic}", self._collector(topic), output_qos(10)
            )
            for topic in self.received
        ]
        self.node.create_subscription(
            String, f"{NODE}/class_info", self._on_class_info, latched_qos()
        )
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diag, diagnostics_qos()
        )
        self.params = AsyncParameterClient(self.node, NODE)
        self.executor = spin_in_background(self.node, self.ctx)

    def _collector(self, topic: str):
        def store(msg) -> None:
            with self.cond:
                self.received[topic][msg.header.frame_id] = msg
                if topic == "labels":
                    self.received_at[msg.header.frame_id] = time.monotonic()
                self.cond.notify_all()
        return store

    def _on_class_info(self, msg) -> None:
        with self.cond:
            self.class_info = json.loads(msg.data)
            self.cond.notify_all()

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name == f"seg_ros: {NODE}":
                with self.cond:
                    self.diagnostics.append((time.monotonic(), status))
                    self.cond.notify_all()

    def wait(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (result := predicate()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                self.cond.wait(left)
        return result

    def wait_ready(self, node: NodeProcess, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.class_info is None or self.pub.get_subscription_count() < 1:
            if node.proc.poll() is not None:
                raise AssertionError(f"node exited with {node.proc.returncode}:\n{node.log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"node not ready after {timeout} s:\n{node.log}")
            time.sleep(0.1)

    def roundtrip(self, msg, topics=("labels",), timeout: float = 30.0) -> dict[str, Image]:
        """Publish ``msg`` until every topic has a result with its frame_id.

        Publish ``msg`` until every topic has a result with its frame_id (the node may not yet
        have discovered this process's subscriptions; a repeated frame is harmless).
        """
        fid = msg.header.frame_id
        deadline = time.monotonic() + timeout
        while True:
            self.pub.publish(msg)
            try:
                self.wait(lambda: all(fid in self.received[t] for t in topics), 1.5, fid)
                return {t: self.received[t][fid] for t in topics}
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def latest_diag(self, after: float = 0.0):
        return self.wait(
            lambda: next((s for t, s in reversed(self.diagnostics) if t > after), None),
            10.0,
            "diagnostics",
        )

    def diag_values(self, after: float = 0.0) -> dict[str, str]:
        return {kv.key: kv.value for kv in self.latest_diag(after).values}

    def set_params(self, **values):
        from rclpy.parameter import Parameter

        future = self.params.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        deadline = time.monotonic() + 10
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done(), "set_parameters timed out"
        return future.result().results

    def get_params(self, *names):
        self.params.wait_for_services(10.0)
        future = self.params.get_parameters(list(names))
        deadline = time.monotonic() + 10
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        return future.result().values

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.ctx.try_shutdown()


_counter = iter(range(1, 1 << 30))


def header_for(msg, tag: str) -> str:
    n = next(_counter)
    msg.header.frame_id = f"{tag}_{n}"
    msg.header.stamp.sec = 1_700_000_000 + n
    msg.header.stamp.nanosec = 123_456_789 - n
    return msg.header.frame_id


def image_msg(encoding: str, rows: np.ndarray, height: int, width: int, bigendian: int = 0,
              extra: int = 0, tag: str | None = None) -> Image:
    """Return an Image with ``extra`` padding bytes after every row."""
    from sensor_msgs.msg import Image

    rows = np.ascontiguousarray(rows).reshape(height, -1).view(np.uint8)
    padded = np.full((height, rows.shape[1] + extra), 0xEE, np.uint8)
    padded[:, :rows.shape[1]] = rows
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=bigendian,
                step=padded.shape[1])
    msg.data = padded.tobytes()
    header_for(msg, tag or encoding)
    return msg


@contextmanager
def running_node(cmd: list[str], peer_type: type = None, **peer_kwargs):
    """Start the node from ``cmd`` with a test peer; yield (node process, peer).

    The node started from ``cmd`` on a fresh ROS domain and a test peer that has seen it ready;
    both are stopped on exit. Yields (node process, peer).
    """
    domain = random_domain()
    env = node_env(domain)
    node = NodeProcess(cmd, env)
    with ros_env_here(env):
        peer = (peer_type or Peer)(domain, **peer_kwargs)
    try:
        peer.wait_ready(node)
        yield node, peer
    finally:
        peer.close()
        node.stop()


def check_outputs(out: dict[str, Image], sent: Image, expected, offline) -> None:
    h, w = expected.labels.shape
    for topic, msg in out.items():
        assert msg.header.frame_id == sent.header.frame_id
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (sent.header.stamp.sec,
                                                                     sent.header.stamp.nanosec)
        assert (msg.height, msg.width, msg.is_bigendian) == (h, w, 0)
    labels = out["labels"]
    assert labels.encoding == "mono8" and labels.step == w
    got = np.frombuffer(labels.data, np.uint8).reshape(h, w)
    np.testing.assert_array_equal(got, expected.labels)
    if "color_mask" in out:
        cm = out["color_mask"]
        assert cm.encoding == "rgb8" and cm.step == w * 3
        np.testing.assert_array_equal(np.frombuffer(cm.data, np.uint8).reshape(h, w, 3),
                                      offline.classes.colors[expected.labels])
    if "overlay" in out:
        ov = out["overlay"]
        assert ov.encoding == "rgb8" and ov.step == w * 3
        np.testing.assert_array_equal(
            np.frombuffer(ov.data, np.uint8).reshape(h, w, 3), expected.overlay
        )


# -- the ROS 2 command line as a user runs it (test_ros2_cli.py, scripts/) ------------------
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRACEBACK = "Traceback (most recent call last)"
STOP_WITHIN_S = 5.0


def ros2_executable(name: str) -> str | None:
    """``ros2`` / ``colcon`` next to this Python (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def require_module(name: str, reason: str | None = None) -> Any:
    """Import ``name``, or skip without it; under CI a missing dev dependency is a failure.

    ``pytest.importorskip`` for what requirements-dev.txt installs: CI must run these tests.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        why = reason or f"{name} is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run this test: {why} ({exc})", pytrace=False)
        pytest.skip(why, allow_module_level=True)


def require_ros2_cli() -> None:
    """Skip without the ROS 2 command line, with the reason; under CI that is a failure."""
    missing = [name for name in ("ros2", "colcon") if ros2_executable(name) is None]
    if not missing:
        return
    reason = (
        f"{' and '.join(missing)} not found: install a ROS 2 distribution or run `make setup` "
        "with ../shared/ros2-cli present"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the ROS 2 CLI tests: {reason}")
    pytest.skip(reason)


def repo_files() -> list[str]:
    """Return the files of a clean checkout: tracked, plus untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def build_workspace(root: Path) -> Path:
    """Return a colcon workspace with a clean copy of this repository in src/.

    Returns its install/.
    """
    src = root / "src" / "seg_ros"
    for rel in repo_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    done = subprocess.run([ros2_executable("colcon"), "build", "--packages-select", "seg_ros"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"colcon build failed:\n{done.stdout}\n{done.stderr}"
    return root / "install"


def sourced_env(install: Path, domain: int, log_dir: Path) -> dict[str, str]:
    """Return the environment after `. install/setup.sh`, on its own ROS domain, localhost only."""
    dump = subprocess.run(["bash", "-c", f". '{install}/setup.sh' && env -0"], capture_output=True,
                          check=True, env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:"
                                                              f"{os.environ.get('PATH', '')}"))
    sourced = dict(line.split("=", 1) for line in dump.stdout.decode().split("\0") if "=" in line)
    return dict(private_env(domain, base=sourced), ROS_LOG_DIR=str(log_dir))


def ros2(env: dict[str, str], *args: str, timeout: float = 60.0,
         attempts: int = 3) -> subprocess.CompletedProcess:
    """One `ros2 ...` command, as typed.

    The daemon is not used (tests run on many domains and leave nothing behind), so a node or
    parameter query discovers the graph itself: on a loaded CPU that can miss the node ('Unable to
    find node', 'Node not found'), and the query is repeated, as a user would.
    """
    cmd = [ros2_executable("ros2"), *args]
    if (
        args[0] in ("param", "node")
        and args[1] in ("get", "set", "list", "info", "describe", "dump")
        or args[0] == "lifecycle"
    ):
        cmd += ["--no-daemon", "--spin-time", "2"]
    for attempt in range(attempts):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if not re.search(r"Unable to find node|Node not found", done.stdout + done.stderr):
            break
        if "--spin-time" in cmd:  # discovery was slower than the spin: give the next one longer
            cmd[cmd.index("--spin-time") + 1] = str(min(10, 2 * 2 ** (attempt + 1)))
        time.sleep(1.0)
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
        self.proc = subprocess.Popen(
            [ros2_executable("ros2"), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
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
        """Return the first log line matching ``pattern``.

        Fails if the process exits or time runs out.
        """
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
        """Do what a terminal does on Ctrl-C: SIGINT to every process of the foreground group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> tuple[int | None, float]:
        """(exit code, seconds) once it exits.

        The code is None (and all is killed) after ``timeout``.
        """
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
    """Return the one process ``pid`` started (`ros2 run` runs the executable as its child)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


# where each lifecycle transition leads when it succeeds
GOAL_STATES = {"configure": "inactive", "activate": "active", "deactivate": "inactive",
               "cleanup": "unconfigured", "shutdown": "finalized"}
LOST_ANSWER = ("a service answer can be lost: a server that has not yet discovered the caller's "
               "reader (slow discovery on a loaded CPU) drops it")


class LifecycleClient:
    """``~/change_state`` and ``~/get_state`` of the managed node ``target``.

    Called from ``node`` (an rclpy node that something else spins). A lost answer (LOST_ANSWER) is
    handled as a manager would: ask for the state, and repeat the request if nothing happened.
    """

    def __init__(self, node, target: str) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState

        self._types = ChangeState, GetState
        self._change = node.create_client(ChangeState, f"{target}/change_state")
        self._get = node.create_client(GetState, f"{target}/get_state")

    @staticmethod
    def _call(client, request, timeout: float):
        """Return the answer, or None when none came within ``timeout``."""
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
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from seg_ros.node.qos import latched_qos, output_qos

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node("ros2_cli_test_peer", context=self.ctx)
        self.pub = self.node.create_publisher(Image, input_topic, output_qos(1))
        self.labels: dict[str, object] = {}
        self.class_info: str | None = None
        self._cond = threading.Condition()
        self.node.create_subscription(Image, f"{node}/labels", self._on_labels, output_qos(10))
        self.node.create_subscription(String, f"{node}/class_info", self._on_info, latched_qos())
        self.executor = spin_in_background(self.node, self.ctx)

    def _on_labels(self, msg) -> None:
        with self._cond:
            self.labels[msg.header.frame_id] = msg
            self._cond.notify_all()

    def _on_info(self, msg) -> None:
        with self._cond:
            self.class_info = msg.data
            self._cond.notify_all()

    def roundtrip(self, rgb, frame_id: str, timeout: float = 60.0):
        """Publish ``rgb`` until its labels come back; return them.

        Publish ``rgb`` (rgb8) until labels with ``frame_id`` come back (publishing again
        covers discovery: this peer's subscription may not be matched yet); returns them.
        """
        from sensor_msgs.msg import Image

        msg = Image(
            height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3
        )
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
        self.ctx.try_shutdown()


# -- Ctrl-C at random moments (scripts/shutdown_race.py; a few runs in test_ros2_cli.py) ---------
def stream_frames(peer: FramePeer, stop: threading.Event, rate_hz: float = 30.0) -> None:
    from sensor_msgs.msg import Image

    msg = Image(height=360, width=480, encoding="rgb8", step=480 * 3)
    msg.data = bytes(360 * 480 * 3)
    while not stop.wait(1.0 / rate_hz):
        msg.header.frame_id = f"race_{time.monotonic_ns()}"
        peer.pub.publish(msg)


def one_run(env: dict[str, str], delay: float, after_ready: bool) -> dict:
    """Launch, press Ctrl-C ``delay`` s after launch printed the node's pid.

    Or after the node said it is ready.
    """
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
        result = one_run(
            env, rng.uniform(0.0, 3.0) if after_ready else rng.uniform(0.2, max_delay), after_ready
        )
        results.append(result)
        print(f"run {i + 1:2d}: Ctrl-C at {result['after']} +{result['delay_s']:.2f} s "
              f"({result['phase']}): exit "
              f"{result['exit_code']} in {result['stop_s']:.2f} s, "
              f"{'clean' if result['clean'] else 'NOT CLEAN'}", flush=True)
    return results


READY = r"segment_node\]: ready: "


def readme_commands(heading: str = "## Using it on a ROS 2 machine") -> list[str]:
    """Return the command lines of the first bash block under a README heading.

    The command lines of the first bash block under the README's ``heading`` (comments
    dropped).
    """
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    return [line.split("  #")[0].strip() for line in block.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def small_frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)


def assert_stopped_cleanly(proc: Ros2Process, launched: bool) -> None:
    """Exit code 0 within STOP_WITHIN_S, no traceback, no process left behind."""
    code, seconds = proc.wait(STOP_WITHIN_S + 10)
    log = proc.log
    assert code == 0, f"exit code {code}:\n{log}"
    assert seconds < STOP_WITHIN_S, f"took {seconds:.1f} s to stop:\n{log}"
    assert TRACEBACK not in log and "KeyboardInterrupt" not in log, log
    if launched:
        assert "process has finished cleanly" in log, log
    assert all(process_gone(pid) for pid in proc.node_pids()), f"left running:\n{log}"
