"""The node's cameras: for each, its input topics, output publishers and statistics.

One table, :data:`OUTPUTS`, says which result each output topic carries, how it is encoded and
which parameter switches it; raw and CRF-refined outputs are published by the same loop
(:meth:`OutputSet.publish`). Without a ``cameras`` parameter the node has one camera named ``""``
with today's topics (``image`` -> ``~/labels``...); a camera ``front`` reads ``front/image`` and
``front/camera_info`` and publishes ``~/front/labels``... and ``~/front/camera_info``.
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from sensor_msgs.msg import CameraInfo, Image

from .. import image_codec
from ..camera_info import Intrinsics, resize_factors
from ..pipeline import FrameOptions, SegmentationResult
from .diagnostics import NodeStats


@dataclass(frozen=True)
class OutputSpec:
    """One output image topic.

    ``~/<camera/>topic`` (``topic_refined`` for the CRF's), the result field it carries, its
    encoder and the ``publish_*`` parameter that switches it.
    """

    topic: str
    field: str
    encode: Callable[[np.ndarray], tuple[str, int, Any]]
    setting: str
    refinable: bool = True


OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec("labels", "labels", image_codec.encode_labels, "publish_labels"),
    OutputSpec("color_mask", "color", image_codec.encode_rgb, "publish_color_mask"),
    OutputSpec("overlay", "overlay", image_codec.encode_rgb, "publish_overlay"),
    OutputSpec("confidence", "confidence", image_codec.encode_float, "publish_confidence",
               refinable=False),
)


def image_msg(header, encoding: str, step: int, data, array_2d: np.ndarray) -> Image:
    """Return an Image sharing ``header``.

    The pixels are copied once, into the array.array rclpy uses (``check_fields=True`` makes the
    setter keep that array instead of copying it again).
    """
    msg = Image(check_fields=True)
    msg.header = header
    msg.height, msg.width = int(array_2d.shape[0]), int(array_2d.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = encoding, 0, int(step)
    buf = array.array("B")
    buf.frombytes(data)
    msg.data = buf
    return msg


class OutputSet:
    """The publishers of one camera's raw (or refined) outputs."""

    def __init__(self, create: Callable[[type, str], Any], prefix: str, refined: bool) -> None:
        suffix = "_refined" if refined else ""
        self.specs = tuple(s for s in OUTPUTS if s.refinable or not refined)
        self.publishers = {s.field: create(Image, f"~/{prefix}{s.topic}{suffix}")
                           for s in self.specs}

    def wanted(self, settings: Any) -> dict[str, bool]:
        """Which outputs to compute: switched on and subscribed to."""
        return {s.field: getattr(settings, s.setting)
                and self.publishers[s.field].get_subscription_count() > 0 for s in self.specs}

    def publish(self, result: SegmentationResult, header, wanted: dict[str, bool]) -> None:
        for spec in self.specs:
            if wanted.get(spec.field):
                data = getattr(result, spec.field)
                self.publishers[spec.field].publish(image_msg(header, *spec.encode(data), data))


def frame_options(wanted: dict[str, bool], settings: Any, keep_scores: bool) -> FrameOptions:
    """Return the pipeline's per-frame options for the outputs wanted and run-time parameters."""
    return FrameOptions(color=wanted.get("color", False), overlay=wanted.get("overlay", False),
                        confidence=wanted.get("confidence", False),
                        overlay_alpha=settings.overlay_alpha, keep_scores=keep_scores,
                        keep_aspect=settings.keep_aspect,
                        output_resolution=settings.output_resolution,
                        max_input_pixels=settings.max_input_pixels)


class Camera:
    """One camera: where its frames and camera_info come from.

    Where its results go, and its statistics. ``name`` is ``""`` for the single-camera node.
    """

    def __init__(self, name: str, resolve: Callable[[str], str], transport: str) -> None:
        self.name = name
        self.prefix = f"{name}/" if name else ""
        image_topic = resolve(f"{self.prefix}image")
        self.input_topic = (image_topic.rstrip("/") + "/compressed" if transport == "compressed"
                            else image_topic)
        self.info_topic = resolve(f"{self.prefix}camera_info")
        self.raw: OutputSet | None = None
        self.refined: OutputSet | None = None
        self.pub_info: Any = None
        self.stats = NodeStats()
        self._info: CameraInfo | None = None
        self._scaled: tuple[tuple[float, float], CameraInfo] | None = None

    def create_outputs(self, create: Callable[[type, str], Any], refined: bool) -> None:
        self.raw = OutputSet(create, self.prefix, refined=False)
        self.refined = OutputSet(create, self.prefix, refined=True) if refined else None
        self.pub_info = create(CameraInfo, f"~/{self.prefix}camera_info")

    def on_camera_info(self, msg: CameraInfo) -> None:
        """Keep the newest CameraInfo (republished with the next labels)."""
        self._info, self._scaled = msg, None

    def publish_camera_info(self, header, frame_hw: tuple[int, int],
                            labels_hw: tuple[int, int]) -> None:
        """Publish the newest CameraInfo with the labels' header.

        Scaled to the labels' size; nothing when none came in or nobody listens.
        """
        info = self._info
        if info is None or self.pub_info.get_subscription_count() == 0:
            return
        factors = resize_factors(frame_hw, labels_hw)
        if self._scaled is None or self._scaled[0] != factors:
            self._scaled = (factors, scaled_camera_info(info, *factors))
        out = self._scaled[1]
        out.header = header
        self.pub_info.publish(out)



def scaled_camera_info(info: CameraInfo, scale_x: float, scale_y: float) -> CameraInfo:
    """Return a copy of ``info`` for its image resized by the factors (seg_ros.camera_info)."""
    roi = info.roi
    scaled = Intrinsics(
        info.width,
        info.height,
        tuple(info.k),
        tuple(info.p),
        (roi.x_offset, roi.y_offset, roi.width, roi.height),
    ).scaled(scale_x, scale_y)
    out = CameraInfo()
    out.header = info.header
    out.distortion_model, out.d, out.r = info.distortion_model, list(info.d), info.r
    out.binning_x, out.binning_y = info.binning_x, info.binning_y
    out.width, out.height = scaled.width, scaled.height
    out.k, out.p = list(scaled.k), list(scaled.p)
    out.roi.x_offset, out.roi.y_offset, out.roi.width, out.roi.height = scaled.roi
    out.roi.do_rectify = roi.do_rectify
    return out
