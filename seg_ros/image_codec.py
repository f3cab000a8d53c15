"""ROS image messages <-> numpy, without ROS: shared by the node and the rosbag tools.

Works on the *fields* of sensor_msgs/Image and CompressedImage (rclpy messages and ``rosbags``
messages have the same ones), so no rclpy or cv_bridge import is needed. Decoding views the
message buffer with numpy wherever the encoding allows (rgb8/bgr8, and rgba8/bgra8 by skipping
the alpha byte), honouring ``step`` row padding; other encodings are converted with one OpenCV
call. Every malformed frame raises :class:`~seg_ros.errors.InputError` whose ``kind`` is a short
stable key for counters and whose message names the problem.
"""
from __future__ import annotations

import array
from typing import Any

import cv2
import numpy as np

from .errors import InputError

# Error kinds (``InputError.kind``) raised here; the node counts frames per kind.
KIND_UNKNOWN_ENCODING = "unknown_encoding"
KIND_SIZE_MISMATCH = "size_mismatch"
KIND_TRUNCATED = "truncated"
KIND_EMPTY = "empty"
KIND_TOO_LARGE = "too_large"
KIND_CORRUPT_COMPRESSED = "corrupt_compressed"
KIND_UNKNOWN_FORMAT = "unknown_format"
ERROR_KINDS = (KIND_UNKNOWN_ENCODING, KIND_SIZE_MISMATCH, KIND_TRUNCATED, KIND_EMPTY, KIND_TOO_LARGE,
               KIND_CORRUPT_COMPRESSED, KIND_UNKNOWN_FORMAT)

# encoding -> bytes per pixel
BYTES_PER_PIXEL: dict[str, int] = {
    "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1,
    "yuv422": 2, "uyvy": 2, "yuv422_yuy2": 2, "yuyv": 2,
    "bayer_rggb8": 1, "bayer_bggr8": 1, "bayer_gbrg8": 1, "bayer_grbg8": 1,
    "rgb16": 6, "bgr16": 6, "mono16": 2,
}
SUPPORTED_ENCODINGS = tuple(BYTES_PER_PIXEL)
COMPRESSED_FORMATS = ("jpeg", "png")

# OpenCV names a Bayer pattern after the 2x2 block starting at pixel (1, 1), ROS after (0, 0).
_BAYER_TO_RGB = {
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB,
    "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB,
    "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}
_YUV_TO_RGB = {
    "yuv422": cv2.COLOR_YUV2RGB_UYVY, "uyvy": cv2.COLOR_YUV2RGB_UYVY,
    "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2, "yuyv": cv2.COLOR_YUV2RGB_YUY2,
}


def as_uint8_buffer(data: Any) -> np.ndarray:
    """A flat uint8 view of a message's ``data`` (bytes, bytearray, memoryview, array.array,
    numpy array); copies only for plain sequences such as lists."""
    if isinstance(data, np.ndarray):
        if data.dtype == np.uint8 and data.ndim == 1:
            return data
        if data.flags.c_contiguous:
            return data.reshape(-1).view(np.uint8)
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        if isinstance(data, memoryview) and not data.c_contiguous:
            data = data.tobytes()
        return np.frombuffer(data, dtype=np.uint8)
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(KIND_SIZE_MISMATCH, f"image data of type {type(data).__name__} is not a "
                                             f"byte buffer: {exc}") from None


def _check_geometry(encoding: str, height: int, width: int, step: int, nbytes: int,
                    max_pixels: int | None, name: str) -> int:
    """Validate the header against the buffer; returns bytes per pixel."""
    bpp = BYTES_PER_PIXEL.get(encoding)
    if bpp is None:
        raise InputError(KIND_UNKNOWN_ENCODING,
                         f"unknown image encoding {name!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    if height <= 0 or width <= 0:
        raise InputError(KIND_EMPTY, f"image is empty: {height}x{width} (height x width)")
    if max_pixels is not None and height * width > max_pixels:
        raise InputError(KIND_TOO_LARGE, f"image has {height}x{width} = {height * width} pixels, more "
                                         f"than max_input_pixels = {max_pixels}")
    if step < width * bpp:
        raise InputError(KIND_SIZE_MISMATCH, f"step {step} is smaller than width {width} x {bpp} bytes "
                                             f"per pixel = {width * bpp} for encoding {encoding}")
    if bpp in (2, 6) and encoding.endswith("16") and step % 2:
        raise InputError(KIND_SIZE_MISMATCH, f"step {step} is odd for 16-bit encoding {encoding}")
    if encoding in _YUV_TO_RGB and width % 2:
        raise InputError(KIND_SIZE_MISMATCH, f"width {width} is odd; {encoding} packs pixel pairs")
    expected = step * height
    if nbytes < expected:
        raise InputError(KIND_TRUNCATED, f"image data is truncated: {nbytes} bytes, header says "
                                         f"step {step} x height {height} = {expected}")
    if nbytes > expected:
        raise InputError(KIND_SIZE_MISMATCH, f"image data has {nbytes} bytes but step {step} x "
                                             f"height {height} = {expected}")
    return bpp


def _rows(buf: np.ndarray, height: int, width: int, step: int, channels: int,
          itemsize: int = 1, dtype: np.dtype | str = np.uint8) -> np.ndarray:
    """(H, W, C) view of a row-padded buffer: no copy."""
    return np.ndarray(shape=(height, width, channels), dtype=dtype, buffer=buf,
                      strides=(step, channels * itemsize, itemsize))


def decode_image(encoding: str, height: int, width: int, step: int, is_bigendian: bool | int,
                 data: Any, *, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """sensor_msgs/Image fields -> (H, W, 3) uint8 image and its colour order ('rgb' or 'bgr').

    rgb8/bgr8 (and rgba8/bgra8, alpha skipped) are returned as views of ``data``, possibly
    non-contiguous (row padding); call ``np.ascontiguousarray`` if a consumer needs C order.
    The view is writable only when ``data`` is. 16-bit encodings keep the high byte.
    ``max_pixels`` rejects huge frames before any conversion work.
    """
    name = str(encoding).strip()
    encoding = name.lower()
    height, width, step = int(height), int(width), int(step)
    buf = as_uint8_buffer(data)
    bpp = _check_geometry(encoding, height, width, step, buf.size, max_pixels, name)
    try:
        if encoding in ("rgb8", "bgr8"):
            return _rows(buf, height, width, step, 3), encoding[:3]
        if encoding in ("rgba8", "bgra8"):
            return _rows(buf, height, width, step, 4)[:, :, :3], encoding[:3]
        if encoding == "mono8":
            return cv2.cvtColor(_rows(buf, height, width, step, 1)[:, :, 0], cv2.COLOR_GRAY2RGB), "rgb"
        if encoding in _YUV_TO_RGB:
            packed = np.ascontiguousarray(_rows(buf, height, width, step, 2))
            return cv2.cvtColor(packed, _YUV_TO_RGB[encoding]), "rgb"
        if encoding in _BAYER_TO_RGB:
            mosaic = np.ascontiguousarray(_rows(buf, height, width, step, 1)[:, :, 0])
            return cv2.cvtColor(mosaic, _BAYER_TO_RGB[encoding]), "rgb"
        # 16-bit: keep the most significant byte (a view of it; one copy to make it contiguous)
        channels = bpp // 2
        hi = 0 if is_bigendian else 1
        high = np.ndarray(shape=(height, width, channels), dtype=np.uint8, buffer=buf, offset=hi,
                          strides=(step, channels * 2, 2))
        if encoding == "mono16":
            return cv2.cvtColor(np.ascontiguousarray(high[:, :, 0]), cv2.COLOR_GRAY2RGB), "rgb"
        return np.ascontiguousarray(high), encoding[:3]
    except cv2.error as exc:
        raise InputError(KIND_SIZE_MISMATCH, f"cannot convert {height}x{width} {encoding} image: "
                                             f"{str(exc).strip().splitlines()[-1]}") from None


def _compressed_kind(fmt: str) -> str | None:
    """'jpeg' / 'png' from a CompressedImage format such as 'rgb8; jpeg compressed bgr8'."""
    fmt = fmt.lower()
    if "compresseddepth" in fmt:
        return None
    if "png" in fmt:
        return "png"
    if "jpeg" in fmt or "jpg" in fmt:
        return "jpeg"
    return None


def decode_compressed(format: str, data: Any, *, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """sensor_msgs/CompressedImage fields -> (H, W, 3) uint8 image (always 'bgr', OpenCV's order).

    An empty ``format`` is accepted and the codec sniffed from the data. ``max_pixels`` is
    checked on the file header before the pixels are decoded.
    """
    fmt = str(format or "").strip()
    if fmt and _compressed_kind(fmt) is None:
        raise InputError(KIND_UNKNOWN_FORMAT, f"unsupported compressed format {fmt!r}; "
                                              f"supported: {', '.join(COMPRESSED_FORMATS)}")
    buf = as_uint8_buffer(data)
    if buf.size == 0:
        raise InputError(KIND_EMPTY, f"compressed image ({fmt or 'no format'}) has no data")
    if max_pixels is not None:
        size = _header_size(buf)
        if size is not None and size[0] * size[1] > max_pixels:
            h, w = size
            raise InputError(KIND_TOO_LARGE, f"compressed image is {h}x{w} = {h * w} pixels, more than "
                                             f"max_input_pixels = {max_pixels}")
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        image = None
        reason = str(exc).strip().splitlines()[-1]
    else:
        reason = "the data is not a complete image"
    if image is not None and _is_jpeg(buf) and not _jpeg_complete(buf):
        image, reason = None, "the JPEG data is truncated (no end-of-image marker)"
    if image is None or image.size == 0:
        raise InputError(KIND_CORRUPT_COMPRESSED, f"cannot decode compressed image ({fmt or 'no format'}, "
                                                  f"{buf.size} bytes): {reason}")
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:
        h, w = image.shape[:2]
        raise InputError(KIND_TOO_LARGE, f"compressed image is {h}x{w} = {h * w} pixels, more than "
                                         f"max_input_pixels = {max_pixels}")
    return image, "bgr"


def _is_jpeg(buf: np.ndarray) -> bool:
    return buf.size >= 2 and buf[0] == 0xFF and buf[1] == 0xD8


def _jpeg_complete(buf: np.ndarray) -> bool:
    """libjpeg pads a truncated stream with grey and succeeds; the EOI marker tells them apart.
    Some cameras append zero padding after EOI, so trailing zeros are skipped."""
    tail = buf[-64:]
    nz = np.flatnonzero(tail)
    if nz.size == 0:
        return False
    end = int(nz[-1]) + 1
    return end >= 2 and tail[end - 2] == 0xFF and tail[end - 1] == 0xD9


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _header_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(H, W) read from a PNG IHDR or a JPEG start-of-frame header without decoding any pixels
    (and without an image library's own size limits, which would hide a huge image); None when
    unreadable, so the decoder reports corrupt data with its own reason."""
    head = buf[:8].tobytes()
    if head == _PNG_SIGNATURE and buf.size >= 24 and buf[12:16].tobytes() == b"IHDR":
        w, h = (int.from_bytes(buf[i:i + 4].tobytes(), "big") for i in (16, 20))
        return h, w
    if not _is_jpeg(buf):
        return None
    i, n = 2, buf.size
    while i + 9 < n:
        if buf[i] != 0xFF:
            return None
        marker = int(buf[i + 1])
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in _JPEG_SOF:
            return (int(buf[i + 5]) << 8 | int(buf[i + 6]), int(buf[i + 7]) << 8 | int(buf[i + 8]))
        i += 2 + (int(buf[i + 2]) << 8 | int(buf[i + 3]))
    return None


# -- encoding outputs ---------------------------------------------------------------------
def _flat(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def encode_labels(labels: np.ndarray) -> tuple[str, int, np.ndarray]:
    """(H, W) class ids -> ('mono8' | 'mono16', step, flat contiguous uint8 data); little-endian."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {labels.shape}")
    if labels.dtype == np.uint8:
        return "mono8", labels.shape[1], _flat(labels)
    return "mono16", labels.shape[1] * 2, _flat(labels.astype("<u2", copy=False))


def encode_rgb(image: np.ndarray) -> tuple[str, int, np.ndarray]:
    """(H, W, 3) uint8 RGB -> ('rgb8', step, flat contiguous uint8 data)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
    return "rgb8", image.shape[1] * 3, _flat(image)


def encode_float(values: np.ndarray) -> tuple[str, int, np.ndarray]:
    """(H, W) float -> ('32FC1', step, flat contiguous uint8 data), little-endian float32."""
    if values.ndim != 2:
        raise ValueError(f"values must be (H, W), got shape {values.shape}")
    return "32FC1", values.shape[1] * 4, _flat(values.astype("<f4", copy=False))
