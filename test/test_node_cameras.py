"""Several cameras in one node.

Over real DDS: batched inference, per-camera topics and diagnostics, CameraInfo scaled to the
labels, fairness, isolation of one camera's bad frames.
"""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from helpers import require_module

require_module("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from seg_ros.node.qos import diagnostics_qos, output_qos  # noqa: E402
from helpers import NODE, Peer, image_msg, node_command, running_node  # noqa: E402

pytestmark = pytest.mark.slow

CAMERAS = ("front", "left", "right")
# network sizes with the test weights (96x128, keep_aspect): front and left share a batch of 2
SIZES = {"front": (360, 480), "left": (240, 320), "right": (180, 320)}
NS = NODE.rsplit("/", 1)[0]  # the node's namespace: camera topics are relative to it


class CamerasPeer(Peer):
    """The test side for a three-camera node.

    An image and camera_info publisher per camera, and per-camera collectors of labels and
    camera_info (plus a camera the node does not have).
    """

    def __init__(self, domain: int) -> None:
        super().__init__(domain)
        self.images = {c: self.node.create_publisher(Image, f"{NS}/{c}/image", output_qos(1))
                       for c in (*CAMERAS, "rear")}
        self.infos = {c: self.node.create_publisher(CameraInfo, f"{NS}/{c}/camera_info",
                                                    output_qos(1)) for c in CAMERAS}
        self.by_camera: dict[str, dict[str, Image]] = {c: {} for c in (*CAMERAS, "rear")}
        self.camera_info: dict[str, list[CameraInfo]] = {c: [] for c in CAMERAS}
        self.camera_diag: dict[str, dict[str, str]] = {}
        for camera in (*CAMERAS, "rear"):
            self.node.create_subscription(Image, f"{NODE}/{camera}/labels",
                                          self._store_labels(camera), output_qos(10))
        for camera in CAMERAS:
            self.node.create_subscription(CameraInfo, f"{NODE}/{camera}/camera_info",
                                          self._store_info(camera), output_qos(10))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_camera_diag,
                                      diagnostics_qos())

    def _store_labels(self, camera: str):
        def store(msg: Image) -> None:
            with self.cond:
                self.by_camera[camera][msg.header.frame_id] = msg
                self.cond.notify_all()
        return store

    def _store_info(self, camera: str):
        def store(msg: CameraInfo) -> None:
            with self.cond:
                self.camera_info[camera].append(msg)
                self.cond.notify_all()
        return store

    def _on_camera_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            for camera in CAMERAS:
                if status.name == f"seg_ros: {NODE}: {camera}":
                    with self.cond:
                        self.camera_diag[camera] = {kv.key: kv.value for kv in status.values}
                        self.cond.notify_all()

    def wait_ready(self, node, timeout: float = 90.0) -> None:
        """Ready: the class metadata is out and the node subscribes to every camera."""
        deadline = time.monotonic() + timeout
        while self.class_info is None or not self.connected():
            assert node.proc.poll() is None, (
                f"node exited with {node.proc.returncode}:\n{node.log}"
            )
            assert time.monotonic() < deadline, f"node not ready after {timeout} s:\n{node.log}"
            time.sleep(0.1)

    def connected(self) -> bool:
        return all(self.images[c].get_subscription_count() > 0 for c in CAMERAS)

    def send_until_labelled(self, frames: dict[str, Image], timeout: float = 60.0) -> None:
        """Publish each camera's frame until its labels came back (discovery may lag)."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [c for c, m in frames.items()
                       if m.header.frame_id not in self.by_camera[c]]
            if not missing:
                return
            assert time.monotonic() < deadline, f"no labels for {missing}"
            for camera in missing:
                self.images[camera].publish(frames[camera])
            with self.cond:
                self.cond.wait(1.0)


def camera_frames(road_image: np.ndarray, tag: str) -> tuple[dict[str, np.ndarray],
                                                             dict[str, Image]]:
    arrays = {c: cv2.resize(road_image, (w, h), interpolation=cv2.INTER_AREA)
              for c, (h, w) in SIZES.items()}
    msgs = {c: image_msg("rgb8", a, *a.shape[:2], tag=f"{tag}_{c}") for c, a in arrays.items()}
    return arrays, msgs


def labels_of(msg: Image) -> np.ndarray:
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width)


@pytest.fixture(scope="module")
def offline_96(weights_file):
    """Return the offline reference at the node's input size."""
    from seg_ros.pipeline import SegmentationPipeline
    return SegmentationPipeline(weights=str(weights_file), device="cpu", input_size=(96, 128))


@pytest.fixture(scope="module")
def cams(weights_file):
    cmd = node_command(weights_file, "cameras:=[front, left, right]", "input_size:=[96, 128]",
                       "batch_timeout_ms:=50.0",
                       "diagnostics_period:=0.25", "stale_input_timeout:=30.0")
    with running_node(cmd, CamerasPeer) as (node, peer):
        yield node, peer
    assert "Traceback" not in node.log, node.log


def test_three_cameras_of_different_sizes_match_the_offline_pipeline(cams, offline_96,
                                                                    road_image):
    node, peer = cams
    arrays, msgs = camera_frames(road_image, "match")
    peer.send_until_labelled(msgs)
    for camera, msg in msgs.items():
        got = peer.by_camera[camera][msg.header.frame_id]
        assert (got.header.stamp.sec, got.header.stamp.nanosec) == (msg.header.stamp.sec,
                                                                     msg.header.stamp.nanosec)
        assert (got.height, got.width) == SIZES[camera]
        np.testing.assert_array_equal(labels_of(got), offline_96(arrays[camera], "rgb").labels,
                                      err_msg=camera)
    assert not peer.by_camera["rear"], "a camera the node does not have got labels"
    assert peer.node.count_publishers(f"{NODE}/rear/labels") == 0
    assert peer.node.count_subscribers(f"{NS}/rear/image") == 0
    assert "front/image" in node.log and "right/image" in node.log, node.log
    assert "batches of 1..3" in node.log, node.log  # warm-up covered every batch size


def test_batches_are_used_and_reported(cams, road_image):
    """Frames of the three cameras sent together share forward passes.

    Front and left (same network size) in a batch of 2; diagnostics say so, per camera and for the
    node.
    """
    node, peer = cams
    for round_ in range(3):
        _, msgs = camera_frames(road_image, f"batch{round_}")
        for camera in CAMERAS:
            peer.images[camera].publish(msgs[camera])
        peer.send_until_labelled(msgs)
    values = peer.diag_values(after=time.monotonic())
    assert int(values.get("forward_passes_of_2", "0")) > 0, values
    assert values["cameras"] == "front, left, right", values
    assert int(values["batches_of_3"]) >= 1, values
    for camera in CAMERAS:
        diag = peer.wait(lambda: peer.camera_diag.get(camera), 10, f"{camera}'s diagnostics")
        assert int(diag["frames_processed"]) >= 3, (camera, diag)
        assert diag["input_topic"] == f"{NS}/{camera}/image", diag


def test_camera_info_is_scaled_to_the_labels(cams, road_image):
    """Front's CameraInfo comes back with the labels' header.

    At output_resolution 'inference' (labels 96x128 for a 360x480 frame: factor 128/480 = 96/360 =
    4/15) K, P, ROI and the size are scaled as image_proc's resize does; binning, D and R are kept.
    """
    node, peer = cams
    info = CameraInfo(width=480, height=360, distortion_model="plumb_bob", binning_x=1,
                      binning_y=1)
    info.k = [450.0, 0.0, 240.0, 0.0, 375.0, 180.0, 0.0, 0.0, 1.0]
    info.p = [450.0, 0.0, 240.0, -45.0, 0.0, 375.0, 180.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.d = [0.1, -0.2, 0.0, 0.0, 0.0]
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 30, 15, 420, 330
    assert all(r.successful for r in peer.set_params(output_resolution="inference"))
    try:
        deadline = time.monotonic() + 30
        while not peer.camera_info["front"] or peer.camera_info["front"][-1].width != 128:
            assert time.monotonic() < deadline, "no scaled camera_info"
            peer.infos["front"].publish(info)
            _, msgs = camera_frames(road_image, "info")
            peer.images["front"].publish(msgs["front"])
            time.sleep(0.5)
        got = peer.camera_info["front"][-1]
        assert got.header.frame_id.startswith("info_front")
        labels = peer.by_camera["front"].get(got.header.frame_id)
        assert labels is None or (labels.height, labels.width) == (96, 128)
        assert (got.width, got.height) == (128, 96)
        s = 4 / 15
        np.testing.assert_allclose(got.k, [450 * s, 0, 240 * s, 0, 375 * s, 180 * s, 0, 0, 1])
        np.testing.assert_allclose(got.p, [450 * s, 0, 240 * s, -45 * s, 0, 375 * s, 180 * s, 0,
                                           0, 0, 1, 0])
        np.testing.assert_allclose(got.k, [120.0, 0, 64.0, 0, 100.0, 48.0, 0, 0, 1])
        assert (got.roi.x_offset, got.roi.y_offset, got.roi.width, got.roi.height) == (
            8, 4, 112, 88)
        assert list(got.d) == [0.1, -0.2, 0.0, 0.0, 0.0] and (got.binning_x, got.binning_y) == (
            1, 1)
        assert not peer.camera_info["left"], "left sent no camera_info: none must come out"
    finally:
        assert all(r.successful for r in peer.set_params(output_resolution="input"))


def test_one_cameras_bad_frames_do_not_affect_the_others(cams, road_image):
    node, peer = cams
    bad = Image(height=10, width=10, encoding="rgb8", step=30)
    bad.data = bytes(100)  # truncated: 300 bytes needed
    bad.header.frame_id = "bad_left"
    for _ in range(3):
        peer.images["left"].publish(bad)
        time.sleep(0.1)
    _, msgs = camera_frames(road_image, "afterbad")
    peer.send_until_labelled({c: msgs[c] for c in ("front", "right")})
    diag = peer.wait(lambda: (d := peer.camera_diag.get("left")) and int(d["frames_failed"]) > 0
                     and d, 20, "left's failed frames in its diagnostics")
    assert int(diag["errors.truncated"]) >= 1, diag
    for camera in ("front", "right"):
        assert int(peer.camera_diag[camera]["frames_failed"]) == 0, peer.camera_diag[camera]
    peer.send_until_labelled({"left": msgs["left"]})  # left itself goes on


def test_a_fast_camera_does_not_starve_the_others(cams, road_image):
    """Front at ten times the rate of left and right.

    Every left/right frame is still segmented (at most the last one in flight), while front's
    surplus frames are dropped.
    """
    node, peer = cams
    _, base = camera_frames(road_image, "warm")
    peer.send_until_labelled(base)
    sent: dict[str, list[str]] = {c: [] for c in CAMERAS}
    stop = threading.Event()

    def publish(camera: str, period: float, count: int) -> None:
        arrays, _ = camera_frames(road_image, "x")
        for n in range(count):
            if stop.is_set():
                return
            msg = image_msg("rgb8", arrays[camera], *arrays[camera].shape[:2],
                            tag=f"fair_{camera}_{n}")
            peer.images[camera].publish(msg)
            sent[camera].append(msg.header.frame_id)
            time.sleep(period)

    threads = [threading.Thread(target=publish, args=("front", 0.04, 100)),
               threading.Thread(target=publish, args=("left", 0.4, 10)),
               threading.Thread(target=publish, args=("right", 0.4, 10))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(3.0)
    stop.set()
    for camera in ("left", "right"):
        done = [f for f in sent[camera] if f in peer.by_camera[camera]]
        assert len(done) >= len(sent[camera]) - 2, (camera, len(done), len(sent[camera]))
    front_done = [f for f in sent["front"] if f in peer.by_camera["front"]]
    assert front_done and front_done[-1] == sent["front"][-1]


def test_bench_node_compares_one_batched_node_with_separate_nodes(tmp_path):
    """`seg-ros bench-node --cameras 2` runs both set-ups in one go and reports throughput.

    Per-camera latency and memory for each.
    """
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "cams.json"
    exe = Path(sys.executable).with_name("seg-ros")
    done = subprocess.run([str(exe), "bench-node", "--cameras", "2", "--sizes", "96x128",
                           "--seconds", "2", "--warmup-seconds", "1", "--camera-rate", "5",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["setup"] for r in rows] == ["1 node, 2 cameras", "2 nodes, 1 camera each"]
    for row in rows:
        assert row["labels_per_s"] > 0 and row["rss_mib"] > 100, row
        assert len(row["cameras"]) == 2 and all(c["labels"] > 0 for c in row["cameras"]), row
    assert rows[0]["processes"] == 1 and rows[1]["processes"] == 2
