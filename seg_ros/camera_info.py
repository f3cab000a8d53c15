"""Camera intrinsics for label images of another resolution than the camera's frames.

Labels published at the inference size are a resized image, so a planner that projects them into
3D needs the intrinsics of that resized image. They are scaled as image_proc's resize node does
in its scale mode: width and height, fx, cx, fy, cy of K, fx', cx', Tx, fy', cy' of P and the ROI
(offsets and size, truncated to whole pixels) scale by the resize factors; D, R and the binning
are unchanged. The factors are the labels' size over the frame's size, which keeps a binned or
ROI-cropped camera consistent: its full-resolution geometry scales by the same factors.

ROS-free: the node copies a ``sensor_msgs/CameraInfo`` into :class:`Intrinsics` and back.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Intrinsics:
    """The resolution-dependent fields of a CameraInfo.

    ``k`` (3x3) and ``p`` (3x4) row-major, ``roi`` as (x_offset, y_offset, width, height).
    """

    width: int
    height: int
    k: tuple[float, ...]
    p: tuple[float, ...]
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)

    def scaled(self, scale_x: float, scale_y: float) -> "Intrinsics":
        """Return these intrinsics for the image scaled by ``scale_x`` across, ``scale_y`` down."""
        if scale_x == 1.0 and scale_y == 1.0:
            return self
        k, p = list(self.k), list(self.p)
        for i in (0, 2):  # fx, cx
            k[i] *= scale_x
        for i in (4, 5):  # fy, cy
            k[i] *= scale_y
        for i in (0, 2, 3):  # fx', cx', Tx = -fx' * baseline
            p[i] *= scale_x
        for i in (5, 6):  # fy', cy'
            p[i] *= scale_y
        x, y, w, h = self.roi
        return replace(
            self,
            width=int(self.width * scale_x),
            height=int(self.height * scale_y),
            k=tuple(k),
            p=tuple(p),
            roi=(int(x * scale_x), int(y * scale_y), int(w * scale_x), int(h * scale_y)),
        )


def resize_factors(frame_hw: tuple[int, int], labels_hw: tuple[int, int]) -> tuple[float, float]:
    """(scale_x, scale_y) that take a frame of ``frame_hw`` to labels of ``labels_hw``."""
    return labels_hw[1] / frame_hw[1], labels_hw[0] / frame_hw[0]
