"""segment_node with ``input_transport: compressed`` over real DDS: JPEG and PNG frames on
``image/compressed`` (resolved from the remapped ``image``), corrupt data skipped and counted,
reliable input QoS, and a clean exit on SIGTERM."""
from __future__ import annotations

import signal
import time

import cv2
import numpy as np
import pytest

from test_node import (INPUT, SMALL, check_outputs, header_for, node_command, offline, rclpy,  # noqa: F401
                       running_node, small_image)

from sensor_msgs.msg import CompressedImage  # noqa: E402


pytestmark = pytest.mark.timeout(180)



@pytest.fixture(scope="module")
def ros(weights_file):
    with running_node(node_command(weights_file, "input_transport:=compressed", "qos_reliability:=reliable",
                                   "publish_overlay:=false", "publish_confidence:=true",
                                   "diagnostics_period:=0.25", "stale_input_timeout:=1.0", "error_threshold:=2"),
                      transport="compressed") as both:
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
    return peer.wait(lambda: next((s for t, s in peer.diagnostics if t > after and s.level == level
                                   and words in s.message), None), 10, f"diagnostics level {level!r}")


def test_stale_input_warns(ros):
    """Before any frame (stale_input_timeout 1 s): WARN naming the input topic."""
    node, peer = ros
    status = level_of(peer, 0.0, b"\x01", "no frame on")
    assert f"{INPUT}/compressed" in status.message


@pytest.mark.parametrize("fmt,ext", [("jpeg", ".jpg"), ("bgr8; png compressed bgr8", ".png")])
def test_compressed_frames(ros, offline, small_image, fmt, ext):
    node, peer = ros
    data = encode(small_image, ext)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # the pixels the node sees
    sent = compressed_msg(fmt, data, ext[1:])
    out = peer.roundtrip(sent, ("labels", "color_mask", "confidence"))
    expected = offline(decoded, "bgr", confidence=True)
    check_outputs(out, sent, expected, offline)
    conf = out["confidence"]
    assert (conf.encoding, conf.step, conf.is_bigendian) == ("32FC1", SMALL[1] * 4, 0)
    np.testing.assert_allclose(np.frombuffer(conf.data, "<f4").reshape(SMALL), expected.confidence, rtol=1e-6)
    assert not peer.received["overlay"], "publish_overlay:=false must publish no overlay"


@pytest.mark.parametrize("case", ["corrupt_jpeg", "truncated_png", "truncated_jpeg"])
def test_corrupt_compressed_is_skipped_and_counted(ros, offline, small_image, case):
    node, peer = ros
    if case == "corrupt_jpeg":
        data = bytearray(encode(small_image, ".jpg"))
        data[2:200] = bytes(198)  # destroys the JPEG headers
        fmt = "jpeg"
    else:
        ext = ".png" if case == "truncated_png" else ".jpg"
        data = encode(small_image, ext)
        data = data[: len(data) // 2]
        fmt = ext[1:].replace("jpg", "jpeg")
    before = int(peer.diag_values().get("errors.corrupt_compressed", "0"))
    bad = compressed_msg(fmt, bytes(data), case)
    peer.pub.publish(bad)
    t0 = time.monotonic()
    peer.wait(lambda: any(int({kv.key: kv.value for kv in s.values}["errors.corrupt_compressed"]) > before
                          for t, s in peer.diagnostics if t > t0), 10, "errors.corrupt_compressed")
    assert bad.header.frame_id not in peer.received["labels"]
    data = encode(small_image, ".png")
    good = compressed_msg("png", data, f"after_{case}")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    check_outputs(peer.roundtrip(good), good, offline(decoded, "bgr"), offline)


def test_repeated_failures_raise_error_then_recover(ros, offline, small_image):
    """error_threshold 2: two corrupt frames in a row -> ERROR; the next good frame -> OK."""
    node, peer = ros
    for i in range(2):
        before = int(peer.diag_values()["errors.corrupt_compressed"])
        peer.pub.publish(compressed_msg("jpeg", b"\xff\xd8garbage" * 20, f"fail_{i}"))
        t0 = time.monotonic()
        peer.wait(lambda: any(int({kv.key: kv.value for kv in s.values}["errors.corrupt_compressed"]) > before
                              for t, s in peer.diagnostics if t > t0), 10, "errors.corrupt_compressed")
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
