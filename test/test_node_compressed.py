"""segment_node with ``input_transport: compressed`` over real DDS.

JPEG and PNG frames on ``image/compressed`` (resolved from the remapped ``image``),
image_transport's channel order, corrupt, depth and non-JPEG/PNG data skipped and counted without
any decoder output in the log, reliable input QoS, and a clean exit on SIGTERM.
"""
from __future__ import annotations

import re
import signal
import struct
import time

import cv2
import numpy as np
import pytest

from helpers import (INPUT, SMALL, check_outputs, corrupt_entropy, damaged_files, header_for,
                     node_command, require_module, running_node)

rclpy = require_module("rclpy", reason="rclpy (ROS 2) is not installed")

from sensor_msgs.msg import CompressedImage  # noqa: E402

from seg_ros.node.qos import output_qos  # noqa: E402
from seg_ros.node.segment_node import WARN_THROTTLE_S  # noqa: E402

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]  # a node process over DDS


@pytest.fixture(scope="module")
def ros(weights_file):
    with running_node(
        node_command(
            weights_file,
            "input_transport:=compressed",
            "qos_reliability:=reliable",
            "publish_overlay:=false",
            "publish_confidence:=true",
            "diagnostics_period:=0.25",
            "stale_input_timeout:=1.0",
            "error_threshold:=2",
        ),
        transport="compressed",
    ) as both:
        yield both


def compressed_msg(fmt: str, data: bytes, tag: str) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = data
    header_for(msg, tag)
    return msg


def encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return buf.tobytes()


def level_of(peer, after: float, level: bytes, words: str):
    return peer.wait(
        lambda: next(
            (
                s
                for t, s in peer.diagnostics
                if t > after and s.level == level and words in s.message
            ),
            None,
        ),
        10,
        f"diagnostics level {level!r}",
    )


def test_stale_input_warns(ros):
    """Before any frame (stale_input_timeout 1 s): WARN naming the input topic."""
    node, peer = ros
    status = level_of(peer, 0.0, b"\x01", "no frame on")
    assert f"{INPUT}/compressed" in status.message


@pytest.mark.parametrize("fmt,ext", [("jpeg", ".jpg"), ("bgr8; png compressed bgr8", ".png")])
def test_compressed_frames(ros, offline, small_image, fmt, ext):
    node, peer = ros
    data = encode(small_image, ext)
    decoded = cv2.imdecode(
        np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR
    )  # the pixels the node sees
    sent = compressed_msg(fmt, data, ext[1:])
    out = peer.roundtrip(sent, ("labels", "color_mask", "confidence"))
    expected = offline(decoded, "bgr", confidence=True)
    check_outputs(out, sent, expected, offline)
    conf = out["confidence"]
    assert (conf.encoding, conf.step, conf.is_bigendian) == ("32FC1", SMALL[1] * 4, 0)
    np.testing.assert_allclose(
        np.frombuffer(conf.data, "<f4").reshape(SMALL), expected.confidence, rtol=1e-6
    )
    assert not peer.received["overlay"], "publish_overlay:=false must publish no overlay"


def test_legacy_rgb_png_is_read_as_rgb(ros, offline, small_image):
    """A legacy 'rgb8; png compressed rgb8' frame is read as RGB.

    'rgb8; png compressed rgb8': publishers before 2012 handed the RGB pixels to OpenCV's encoder,
    so (image_transport's rule) the file's red and blue are swapped; the labels are the pipeline's
    on the RGB image.
    """
    node, peer = ros
    data = cv2.imencode(".png", np.ascontiguousarray(small_image))[1].tobytes()  # RGB straight in
    sent = compressed_msg("rgb8; png compressed rgb8", data, "legacy_rgb")
    expected = offline(small_image, "rgb")
    swapped = offline(np.ascontiguousarray(small_image[..., ::-1]), "rgb")
    assert (swapped.labels != expected.labels).any(), "the test must tell the channel orders apart"
    check_outputs(peer.roundtrip(sent, ("labels", "color_mask")), sent, expected, offline)


def bad_frame(case: str, image: np.ndarray) -> tuple[str, str, bytes]:
    """(error kind, format, data) of a frame the node must skip and count."""
    if case == "corrupt_jpeg":
        data = bytearray(encode(image, ".jpg"))
        data[2:200] = bytes(198)  # destroys the JPEG headers
        return "corrupt_compressed", "jpeg", bytes(data)
    if case == "corrupt_entropy":  # markers intact: OpenCV used to segment it silently
        return "corrupt_compressed", "jpeg", corrupt_entropy(encode(image, ".jpg"), 1)
    if case in ("truncated_png", "truncated_jpeg"):
        data = encode(image, ".png" if case == "truncated_png" else ".jpg")
        return "corrupt_compressed", case[10:], data[: len(data) // 2]
    if case == "depth":  # compressed_depth_image_transport: config header + 16-bit PNG
        depth = np.arange(SMALL[0] * SMALL[1], dtype=np.uint16).reshape(SMALL)
        return "unsupported_format", "16UC1; compressedDepth png", (
            struct.pack("<iff", 0, 0.0, 0.0) + cv2.imencode(".png", depth)[1].tobytes())
    assert case == "webp_as_jpeg"
    return "unsupported_format", "jpeg", cv2.imencode(".webp", image)[1].tobytes()


def values_of(status) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def errors_of(status, kind: str) -> int:
    return int(values_of(status)[f"errors.{kind}"])


@pytest.mark.parametrize("case", ["corrupt_jpeg", "corrupt_entropy", "truncated_png",
                                  "truncated_jpeg", "depth", "webp_as_jpeg"])
def test_bad_compressed_is_skipped_and_counted(ros, offline, small_image, case):
    node, peer = ros
    kind, fmt, data = bad_frame(case, small_image)
    before = int(peer.diag_values().get(f"errors.{kind}", "0"))
    bad = compressed_msg(fmt, data, case)
    peer.pub.publish(bad)
    t0 = time.monotonic()
    peer.wait(lambda: any(errors_of(s, kind) > before for t, s in peer.diagnostics if t > t0), 10,
              f"errors.{kind}")
    assert bad.header.frame_id not in peer.received["labels"]
    data = encode(small_image, ".png")
    good = compressed_msg("png", data, f"after_{case}")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    check_outputs(peer.roundtrip(good), good, offline(decoded, "bgr"), offline)


# A line of the node's own (rcutils) logger; anything else in its output came from elsewhere
NODE_LOG_LINE = re.compile(r"^\[(DEBUG|INFO|WARN|ERROR|FATAL)\] \[\d+\.\d+\] "
                           r"\[perception\.segment_node\]: ")
FLOOD = 100


def delta(after: dict[str, str], before: dict[str, str], key: str) -> int:
    return int(after[key]) - int(before[key])


def test_flood_of_damaged_frames_gives_counters_and_throttled_warnings_only(ros, offline,
                                                                            small_image):
    """Count damaged frames, segment none, warn only throttled, and process the next good one.

    100 damaged JPEG/PNG frames at 50/s (each kind of damage that made OpenCV's libjpeg/libpng
    print to stderr): every frame the node receives is counted, none segmented, the node's output
    has only its own throttled warnings, and the next good frame is processed. (With its
    keep-last-1 input a busy node's DDS reader may lose a few; they never reach the node.)
    """
    node, peer = ros
    files = damaged_files(encode(small_image, ".jpg"), encode(small_image, ".png"))
    frames = [(name, files[name]) for name in list(files) * (FLOOD // len(files) + 1)][:FLOOD]
    pub = peer.node.create_publisher(CompressedImage, INPUT + "/compressed", output_qos(FLOOD))
    default_pub, peer.pub = peer.pub, pub
    try:  # a good frame through the new publisher: the node receives from it
        peer.roundtrip(compressed_msg("png", encode(small_image, ".png"), "flood_handshake"))
    finally:
        peer.pub = default_pub
    before = peer.diag_values(after=time.monotonic())
    first_line, t_start = len(node.lines), time.monotonic()
    for i, (name, data) in enumerate(frames):
        pub.publish(compressed_msg("png" if "png" in name else "jpeg", data, f"flood_{i}"))
        time.sleep(0.02)
    t_sent = time.monotonic()

    def settled(values: dict[str, str]) -> bool:
        handled = sum(delta(values, before, f"frames_{what}")
                      for what in ("failed", "dropped", "processed", "skipped_no_subscribers"))
        return delta(values, before, "frames_received") == handled

    after = peer.wait(lambda: next((v for t, s in reversed(peer.diagnostics)
                                    if t > t_sent + 1.0 and settled(v := values_of(s))), None),
                      30, "the node to account for the frames it received")
    t_accounted = time.monotonic()
    received = delta(after, before, "frames_received")
    failed = delta(after, before, "frames_failed")
    assert received >= FLOOD // 2, f"DDS delivered only {received} of {FLOOD} frames"
    assert delta(after, before, "frames_processed") == 0
    assert failed + delta(after, before, "frames_dropped") == received and failed > 0
    assert delta(after, before, "errors.corrupt_compressed") == failed
    good = compressed_msg("png", encode(small_image, ".png"), "after_flood")
    check_outputs(peer.roundtrip(good), good, offline(small_image, "rgb"), offline)
    warned = [line for line in node.lines[first_line:] if "skipped frame" in line]
    assert len(warned) <= 1 + int((t_accounted - t_start) / WARN_THROTTLE_S), "\n".join(warned)
    # once the throttle has passed, the next warning says how many were not shown: every failed
    # frame of the flood was either shown or counted in a later line
    time.sleep(max(0.0, t_accounted + WARN_THROTTLE_S + 0.2 - time.monotonic()))
    mark = len(node.lines)
    peer.pub.publish(compressed_msg("jpeg", files["entropy"], "after_throttle"))
    peer.wait(lambda: any("since the last warning" in line for line in node.lines[mark:]), 10,
              "the throttled warning with its count")
    counts = [int(m.group(1)) for line in node.lines[first_line:]
              if (m := re.search(r"\((\d+) more 'corrupt_compressed' frames", line))]
    assert len(warned) + sum(counts) >= failed, (warned, counts)
    lines = node.lines[first_line:]
    assert all(NODE_LOG_LINE.match(line) for line in lines), "\n".join(lines)
    peer.node.destroy_publisher(pub)


def test_repeated_failures_raise_error_then_recover(ros, offline, small_image):
    """error_threshold 2: two corrupt frames in a row -> ERROR; the next good frame -> OK."""
    node, peer = ros
    for i in range(2):
        before = int(peer.diag_values()["errors.corrupt_compressed"])
        peer.pub.publish(compressed_msg("jpeg", b"\xff\xd8garbage" * 20, f"fail_{i}"))
        t0 = time.monotonic()
        peer.wait(lambda: any(errors_of(s, "corrupt_compressed") > before
                              for t, s in peer.diagnostics if t > t0), 10,
                  "errors.corrupt_compressed")
    status = level_of(peer, t0, b"\x02", "consecutive frames failed")
    assert "corrupt_compressed" in status.message
    good = compressed_msg("png", encode(small_image, ".png"), "recovered")
    peer.roundtrip(good)
    level_of(peer, time.monotonic(), b"\x00", "running")


def test_compressed_topic_name_follows_the_remap(ros):
    node, peer = ros
    assert f"input {INPUT}/compressed (compressed, reliable)" in node.log


def test_zz_sigterm_shuts_down_cleanly(ros):
    node, peer = ros
    assert node.stop(signal.SIGTERM) == 0, node.log
    assert "Traceback" not in node.log, node.log
