"""ROS image messages <-> numpy, without ROS: shared by the node and the rosbag tools.

Works on the *fields* of sensor_msgs/Image and CompressedImage (rclpy messages and ``rosbags``
messages have the same ones), so no rclpy or cv_bridge import is needed. Decoding views the
message buffer with numpy wherever the encoding allows (rgb8/bgr8, and rgba8/bgra8 by skipping
the alpha byte), honouring ``step`` row padding; other encodings are converted with one OpenCV
call. Compressed images follow image_transport's conventions (see :func:`decode_compressed`);
JPEG and PNG only, checked by their magic bytes and header size before decoding. Every malformed
frame raises :class:`~seg_ros.errors.InputError` whose ``kind`` is a short stable key for
counters and whose message names the problem; nothing is printed.
"""
from __future__ import annotations

import array
import io
import struct
import sys
import zlib
from typing import Any

import cv2
import numpy as np
import simplejpeg
from PIL import Image, PngImagePlugin

from .errors import InputError

# Error kinds (``InputError.kind``) raised here; the node counts frames per kind.
KIND_UNKNOWN_ENCODING = "unknown_encoding"
KIND_SIZE_MISMATCH = "size_mismatch"
KIND_TRUNCATED = "truncated"
KIND_EMPTY = "empty"
KIND_TOO_LARGE = "too_large"
KIND_CORRUPT_COMPRESSED = "corrupt_compressed"
KIND_UNSUPPORTED_FORMAT = "unsupported_format"
ERROR_KINDS = (KIND_UNKNOWN_ENCODING, KIND_SIZE_MISMATCH, KIND_TRUNCATED, KIND_EMPTY,
               KIND_TOO_LARGE, KIND_CORRUPT_COMPRESSED, KIND_UNSUPPORTED_FORMAT)

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
    """Return a flat uint8 view of a message's ``data``.

    A flat uint8 view of a message's ``data`` (bytes, bytearray, memoryview, array.array,
    numpy array); copies only for plain sequences such as lists.
    """
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
        raise InputError(
            KIND_UNKNOWN_ENCODING,
            f"unknown image encoding {name!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}",
        )
    if height <= 0 or width <= 0:
        raise InputError(KIND_EMPTY, f"image is empty: {height}x{width} (height x width)")
    if max_pixels is not None and height * width > max_pixels:
        raise InputError(
            KIND_TOO_LARGE,
            f"image has {height}x{width} = {height * width} pixels, more "
            f"than max_input_pixels = {max_pixels}",
        )
    if step < width * bpp:
        raise InputError(
            KIND_SIZE_MISMATCH,
            f"step {step} is smaller than width {width} x {bpp} bytes "
            f"per pixel = {width * bpp} for encoding {encoding}",
        )
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


def _keep_high_byte(buf: np.ndarray, height: int, width: int, step: int, pixel_bytes: int,
                    channels: int, is_bigendian: bool) -> np.ndarray:
    """Apply the one 16-bit -> 8-bit rule: keep the most significant byte.

    The one 16-bit -> 8-bit rule (raw rgb16/bgr16/mono16 and 16-bit PNG): keep the most significant
    byte of each of the first ``channels`` samples of every pixel (value >> 8). A strided view of
    those bytes, made C-contiguous: one copy.
    """
    high = np.ndarray(shape=(height, width, channels), dtype=np.uint8, buffer=buf,
                      offset=0 if is_bigendian else 1, strides=(step, pixel_bytes, 2))
    return np.ascontiguousarray(high)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """(H, W) uint8 (rows may be padded) -> (H, W, 3) with three equal channels."""
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)


def _demosaic(mosaic: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W) uint8 Bayer mosaic named by a ROS ``encoding`` -> (H, W, 3) RGB (bilinear)."""
    return cv2.cvtColor(np.ascontiguousarray(mosaic), _BAYER_TO_RGB[encoding])


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
            return _grey_to_rgb(_rows(buf, height, width, step, 1)[:, :, 0]), "rgb"
        if encoding in _YUV_TO_RGB:
            packed = np.ascontiguousarray(_rows(buf, height, width, step, 2))
            return cv2.cvtColor(packed, _YUV_TO_RGB[encoding]), "rgb"
        if encoding in _BAYER_TO_RGB:
            return _demosaic(_rows(buf, height, width, step, 1)[:, :, 0], encoding), "rgb"
        channels = bpp // 2
        high = _keep_high_byte(buf, height, width, step, bpp, channels, bool(is_bigendian))
        if encoding == "mono16":
            return _grey_to_rgb(high[:, :, 0]), "rgb"
        return high, encoding[:3]
    except cv2.error as exc:
        raise InputError(KIND_SIZE_MISMATCH, f"cannot convert {height}x{width} {encoding} image: "
                                             f"{str(exc).strip().splitlines()[-1]}") from None


# -- compressed images (sensor_msgs/CompressedImage) -----------------------------------------
# Formats follow image_transport's compressed subscriber (compressed_image_transport): the codec
# is taken from the data, the channel order from ``format``. JPEG is decoded by simplejpeg
# (libjpeg-turbo's TurboJPEG API) and PNG by Pillow, not by OpenCV: OpenCV's libjpeg and libpng
# print their warnings and errors straight to stderr (past the node's throttled log) and hide
# libjpeg's warnings about damaged data, which these two report as exceptions instead.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_SOS = 0xDA
# First bytes of other image files: named in the error, never decoded
_OTHER_IMAGE_MAGIC = (
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"),
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"qoif", "QOI"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"), (b"\xff\x0a", "JPEG XL"),
    (b"v/1\x01", "OpenEXR"), (b"#?RADIANCE", "Radiance HDR"), (b"#?RGBE", "Radiance HDR"),
    (b"\x59\xa6\x6a\x95", "Sun raster"), (b"PF\n", "PFM"), (b"Pf\n", "PFM"),
)
_PNM_TYPES = b"1234567"  # P1 .. P7: PBM/PGM/PPM/PAM


def decode_compressed(format: str, data: Any, *,
                      max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """sensor_msgs/CompressedImage fields -> (H, W, 3) uint8 image and its colour order.

    image_transport's rules: the data is JPEG or PNG whatever ``format`` says (an empty format
    is accepted); a format without ';' ('jpeg', 'png') or whose part after ';' says 'compressed
    bgr...' ('bgr8; jpeg compressed bgr8') is an ordinary image file; any other ';' format
    ('rgb8; png compressed rgb8', written by publishers before 2012) has red and blue swapped.
    Grey data ('mono8; png compressed ') comes out as three equal channels, a PNG mosaic whose
    format names a Bayer encoding is demosaiced as the raw one is, 16-bit PNG keeps the high byte
    of each sample as raw 16-bit encodings do, and depth ('16UC1; compressedDepth png') is refused.
    Before anything is decoded the magic bytes must be JPEG's or PNG's and the size in the file
    header at most ``max_pixels``; a JPEG that libjpeg reports as damaged is refused (see
    :func:`_decode_jpeg`). EXIF orientation is ignored, as image_transport does.
    """
    fmt = str(format or "").strip()
    encoding, file_order = _parse_format(fmt)
    buf = as_uint8_buffer(data)
    if buf.size == 0:
        raise InputError(KIND_EMPTY, f"compressed image ({fmt or 'no format'}) has no data")
    what = f"compressed image ({fmt or 'no format'}, {buf.size} bytes)"
    codec = _codec_of(buf, what)
    size = _checked_header_size(buf, codec, what, max_pixels)
    if codec == "jpeg":
        image, order = _decode_jpeg(buf, what), file_order
    else:
        image, order = _decode_png(buf, what, encoding, file_order)
    if image.shape[:2] != size:
        h, w = image.shape[:2]
        raise InputError(KIND_CORRUPT_COMPRESSED, f"{what} decoded to {h}x{w}, its header says "
                                                  f"{size[0]}x{size[1]}")
    return image, order


def _parse_format(fmt: str) -> tuple[str, str]:
    """(raw encoding named before ';' or '', 'rgb' | 'bgr': the true order of the file's R, G, B).

    image_transport's compressed subscriber: without ';' or with 'compressed bgr' after it the
    publisher encoded a BGR image with OpenCV, so the file is an ordinary RGB image file; else
    (older publishers) it encoded RGB pixels as if they were BGR, so the file's R holds blue.
    """
    lower = fmt.lower()
    if "compresseddepth" in lower:
        raise InputError(KIND_UNSUPPORTED_FORMAT, f"compressed format {fmt!r} is a depth image "
                                                  "(compressed_depth_image_transport); seg_ros "
                                                  "segments colour and grey images only")
    if lower and not any(word in lower for word in ("jpeg", "jpg", "png")):
        raise InputError(KIND_UNSUPPORTED_FORMAT, f"unsupported compressed format {fmt!r}; "
                                                  f"supported: {', '.join(COMPRESSED_FORMATS)}")
    encoding, sep, rest = lower.partition(";")
    plain = not sep or "compressed bgr" in rest
    return (encoding.strip() if sep else ""), ("rgb" if plain else "bgr")


def _codec_of(buf: np.ndarray, what: str) -> str:
    """'jpeg' or 'png' from the magic bytes; anything else is refused here, undecoded."""
    head = buf[:16].tobytes()
    if head.startswith(_JPEG_SOI):
        return "jpeg"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    other = _other_image_type(head)
    if other is not None:
        raise InputError(KIND_UNSUPPORTED_FORMAT, f"{what} is a {other} image; only JPEG and PNG "
                                                  "are supported")
    raise InputError(KIND_CORRUPT_COMPRESSED, f"{what} is not a JPEG or PNG file: it starts with "
                                              f"{head[:8].hex(' ')}")


def _other_image_type(head: bytes) -> str | None:
    """Return the name of a known non-JPEG/PNG image file type from its first bytes, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp":
        return "ISO media (AVIF/HEIF)"
    if head[:1] == b"P" and head[1:2] and head[1] in _PNM_TYPES and head[2:3].isspace():
        return "PNM"
    return next((name for magic, name in _OTHER_IMAGE_MAGIC if head.startswith(magic)), None)


def _checked_header_size(buf: np.ndarray, codec: str, what: str,
                         max_pixels: int | None) -> tuple[int, int]:
    """(H, W) from the file header, checked against ``max_pixels`` before any pixel is decoded."""
    size = _jpeg_size(buf) if codec == "jpeg" else _png_size(buf)
    if size is None or 0 in size:
        found = "" if size is None else f" (it says {size[0]}x{size[1]})"
        raise InputError(KIND_CORRUPT_COMPRESSED, f"{what} has no readable {codec.upper()} header "
                                                  f"with its size{found}")
    h, w = size
    if max_pixels is not None and h * w > max_pixels:
        raise InputError(KIND_TOO_LARGE, f"compressed image is {h}x{w} = {h * w} pixels, more "
                                         f"than max_input_pixels = {max_pixels}")
    return size


def _png_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(H, W) from the PNG IHDR chunk (signature already checked), or None."""
    if buf.size < 24 or buf[12:16].tobytes() != b"IHDR":
        return None
    w, h = (int.from_bytes(buf[i:i + 4].tobytes(), "big") for i in (16, 20))
    return h, w


def _jpeg_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(H, W) from the JPEG start-of-frame header.

    Walking the marker segments from SOI; None when the walk breaks or reaches the scan first.
    Without an image library, so none of its own size limits or warnings come in; stricter than
    libjpeg (no skipping of stray bytes), so a size this walk cannot read is never decoded.
    """
    b = memoryview(buf)
    i, n = 2, len(b)
    while i + 9 < n:
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in _JPEG_SOF:
            return b[i + 5] << 8 | b[i + 6], b[i + 7] << 8 | b[i + 8]
        if marker == _JPEG_SOS:
            return None
        i += 2 + (b[i + 2] << 8 | b[i + 3])
    return None


def _decode_jpeg(buf: np.ndarray, what: str) -> np.ndarray:
    """(H, W, 3) uint8 in the file's channel order, decoded straight into a new array.

    Damaged data is refused (corrupt_compressed), not segmented: libjpeg carries on past corrupt
    entropy data, a missing end or stray bytes with a warning and fills the rest with grey or
    garbage blocks, and labels of such blocks are confidently wrong while nothing downstream can
    tell; a skipped, counted frame is what the node's contract promises for bad input. (strict:
    TurboJPEG raises on libjpeg's first warning, with its message.) A camera that appends junk
    to every frame is thus refused frame by frame, visibly (errors.corrupt_compressed, the ERROR
    diagnostic quoting libjpeg), not silently.
    """
    try:
        return simplejpeg.decode_jpeg(buf, colorspace="RGB", strict=True)
    except ValueError as exc:
        raise InputError(KIND_CORRUPT_COMPRESSED, f"cannot decode {what}: {exc}") from None


# Pillow modes of 16-bit grey PNG ('I;16'; 'I' in older Pillow): the samples go through
# _keep_high_byte. 16-bit colour PNG opens as 'RGB': Pillow's 'RGB;16B' unpacker keeps
# the most significant byte of each sample, the same rule (tested against decode_image).
_PIL_GREY16 = ("I;16", "I;16B", "I;16L", "I")
# Pillow's exceptions for data it cannot read (its decoders raise OSError; headers SyntaxError)
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def _decode_png(buf: np.ndarray, what: str, encoding: str, order: str) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 and its order.

    PngImageFile, not Image.open: no other decoder is tried and max_pixels (checked before) is the
    only size limit.
    """
    try:
        with PngImagePlugin.PngImageFile(io.BytesIO(buf.tobytes())) as im:
            im.load()
            return _png_pixels(im, encoding, order)
    except _PIL_ERRORS as exc:
        raise InputError(KIND_CORRUPT_COMPRESSED, f"cannot decode {what}: {exc}") from None


def _png_pixels(im: Image.Image, encoding: str, order: str) -> tuple[np.ndarray, str]:
    if im.mode in _PIL_GREY16:
        samples = np.asarray(im)
        if samples.dtype.itemsize != 2:  # 'I' holds the 16-bit values in int32
            samples = samples.astype(np.uint16)
        h, w = samples.shape
        order_mark = samples.dtype.byteorder
        big = order_mark == ">" or (order_mark == "=" and sys.byteorder == "big")
        grey = _keep_high_byte(samples.reshape(-1).view(np.uint8), h, w, w * 2, 2, 1, big)[:, :, 0]
        return _grey_to_rgb(grey), "rgb"
    if im.mode in ("L", "1"):
        grey = np.asarray(im if im.mode == "L" else im.convert("L"))
        if encoding in _BAYER_TO_RGB:  # image_transport sends a Bayer mosaic as grey PNG
            return _demosaic(grey, encoding), "rgb"
        return _grey_to_rgb(grey), "rgb"
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB")), order


# -- encoding outputs ---------------------------------------------------------------------
def _flat(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def encode_labels(labels: np.ndarray) -> tuple[str, int, np.ndarray]:
    """Encode (H, W) class ids as ('mono8' | 'mono16', step, flat contiguous uint8 data).

    Little-endian.
    """
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
