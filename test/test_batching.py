"""The core of multi-camera batching.

LatestFrames (per-camera latest-wins slots gathered into a batch), the pipeline's segment_batch,
and CameraInfo scaling. No ROS needed.
"""
from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from helpers import require_module
from seg_ros.batching import LatestFrames
from seg_ros.camera_info import Intrinsics, resize_factors
from seg_ros.errors import ConfigError, InputError
from seg_ros.pipeline import FrameOptions, PipelineConfig, SegmentationPipeline


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_latest_frame_wins_per_camera_and_a_batch_takes_one_frame_each():
    frames = LatestFrames(["front", "left"])
    assert frames.put("front", 1) is False
    assert frames.put("front", 2) is True  # replaced, counted as dropped by the caller
    assert frames.put("left", 10) is False
    assert frames.gather(timeout=0.1) == {"front": 2, "left": 10}
    assert frames.gather(timeout=0.01) == {}


def test_gather_waits_for_live_cameras_but_not_for_quiet_ones():
    clock = FakeClock()
    frames = LatestFrames(["a", "b", "c"], live_within_s=1.0, clock=clock)
    frames.put("a", "a1")
    frames.put("b", "b1")
    frames.gather(timeout=0.1)  # a and b are live now; c never sent anything
    frames.put("a", "a2")
    started = time.monotonic()
    threading.Timer(0.05, lambda: frames.put("b", "b2")).start()
    assert frames.gather(timeout=0.1, wait_s=2.0) == {"a": "a2", "b": "b2"}
    assert time.monotonic() - started < 1.0  # b's frame ended the wait, c was not waited for
    clock.now += 5.0  # b has gone quiet: a's frame waits for nobody
    frames.put("a", "a3")
    started = time.monotonic()
    assert frames.gather(timeout=0.1, wait_s=2.0) == {"a": "a3"}
    assert time.monotonic() - started < 1.0


def test_gather_waits_at_most_wait_s_and_close_wakes_it():
    frames = LatestFrames(["a", "b"])
    frames.put("a", 1)
    frames.put("b", 1)
    frames.gather(timeout=0.1)
    frames.put("a", 2)
    started = time.monotonic()
    assert frames.gather(timeout=0.1, wait_s=0.2) == {"a": 2}  # b is live but did not send
    assert 0.15 < time.monotonic() - started < 1.5
    threading.Timer(0.05, frames.close).start()
    assert frames.gather(timeout=5.0) == {}
    assert frames.closed and frames.gather(timeout=5.0) == {}


def test_camera_info_scaling_follows_image_procs_resize():
    info = Intrinsics(640, 480, (500.0, 0, 320.0, 0, 400.0, 240.0, 0, 0, 1),
                      (500.0, 0, 320.0, -50.0, 0, 400.0, 240.0, 0, 0, 0, 1, 0), (10, 20, 300, 200))
    sx, sy = resize_factors((480, 640), (240, 320))
    assert (sx, sy) == (0.5, 0.5)
    half = info.scaled(sx, sy)
    assert (half.width, half.height) == (320, 240)
    assert half.k == (250.0, 0, 160.0, 0, 200.0, 120.0, 0, 0, 1)
    assert half.p == (250.0, 0, 160.0, -25.0, 0, 200.0, 120.0, 0, 0, 0, 1, 0)
    assert half.roi == (5, 10, 150, 100)
    assert info.scaled(1.0, 1.0) is info
    odd = info.scaled(*resize_factors((480, 640), (96, 129)))  # ROI truncated as image_proc does
    assert odd.roi == (2, 4, 60, 40) and odd.width == 129 and odd.height == 96


@pytest.fixture(scope="module")
def batch_pipe(weights_file):
    return SegmentationPipeline(weights=str(weights_file), device="cpu", input_size=(96, 128),
                                max_batch=3)


def test_segment_batch_equals_one_frame_at_a_time(batch_pipe, road_image):
    import cv2

    frames = [cv2.resize(road_image, (w, h)) for h, w in ((360, 480), (240, 320), (180, 320))]
    alone = [batch_pipe(f, "rgb", color=True).labels for f in frames]
    before = dict(batch_pipe.forward_batch_sizes)
    batch = batch_pipe.segment_batch([(f, "rgb") for f in frames], FrameOptions(color=True))
    for single, batched in zip(alone, batch):
        np.testing.assert_array_equal(single, batched.labels)
        assert batched.color is not None
    # 360x480 and 240x320 share 96x128: one pass of 2; 180x320 runs at 72x128 alone
    assert batch_pipe.forward_batch_sizes[2] == before.get(2, 0) + 1
    bgr = np.ascontiguousarray(frames[0][..., ::-1])
    mixed = batch_pipe.segment_batch([(frames[0], "rgb"), (bgr, "bgr")],
                                     [FrameOptions(), FrameOptions(overlay=True)])
    np.testing.assert_array_equal(mixed[0].labels, mixed[1].labels)
    assert mixed[0].overlay is None and mixed[1].overlay is not None


def test_segment_batch_refuses_bad_frames_and_mismatched_options(batch_pipe, small_image):
    with pytest.raises(InputError):
        batch_pipe.segment_batch([(small_image, "rgb"), (small_image[..., :2], "rgb")],
                                 FrameOptions())
    with pytest.raises(ConfigError):
        batch_pipe.segment_batch([(small_image, "rgb")], [FrameOptions(), FrameOptions()])
    with pytest.raises(InputError):  # a per-frame pixel limit
        batch_pipe(small_image, "rgb", max_input_pixels=100)


def test_config_is_frozen_and_overrides_leave_the_callers_object_alone(weights_file):
    config = PipelineConfig(weights=str(weights_file), device="cpu")
    pipe = SegmentationPipeline(config, keep_aspect=False)
    assert config.keep_aspect is True and pipe.config.keep_aspect is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        pipe.config.keep_aspect = True  # type: ignore[misc]
    with pytest.raises(ConfigError, match="unknown pipeline option"):
        SegmentationPipeline(config, no_such_option=1)
    with pytest.raises(ConfigError, match="max_batch"):
        SegmentationPipeline(config, max_batch=0)
    with pytest.raises(ConfigError, match="overlay_alpha"):
        pipe(np.zeros((8, 8, 3), np.uint8), "rgb", overlay_alpha=2.0)


def test_a_backend_that_takes_one_frame_per_pass_gets_one(weights_file, small_image):
    """Onnxruntime's exported graphs have a batch of 1.

    A batch of 3 runs as 3 passes, with the same labels as one frame at a time.
    """
    require_module("onnxruntime")
    pipe = SegmentationPipeline(weights=str(weights_file), device="cpu", backend="onnxruntime",
                                max_batch=3)
    assert pipe.batch_limit() == 1
    results = pipe.segment_batch([(small_image, "rgb")] * 3, FrameOptions())
    assert dict(pipe.forward_batch_sizes) == {1: 3}
    alone = pipe(small_image, "rgb").labels
    for result in results:
        np.testing.assert_array_equal(result.labels, alone)
