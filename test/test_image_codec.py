"""seg_ros.image_codec: every encoding against a known RGB image, padding, endianness, bad input.

The test encoders below are written from the ROS encoding definitions (byte layouts), not with
the module's own code, so a wrong channel order or Bayer pattern mapping fails here.
"""
from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

from seg_ros.errors import InputError
from seg_ros.image_codec import (BYTES_PER_PIXEL, SUPPORTED_ENCODINGS, decode_compressed, decode_image,
                                 encode_float, encode_labels, encode_rgb)

H, W = 24, 32


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def pad_rows(rows: np.ndarray, extra: int) -> tuple[bytes, int]:
    """(H, row_bytes) uint8 -> data with ``extra`` junk bytes after each row, and its step."""
    h, n = rows.shape
    out = np.full((h, n + extra), 0xAB, np.uint8)
    out[:, :n] = rows
    return out.tobytes(), n + extra


def as_rows(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr).reshape(arr.shape[0], -1).view(np.uint8)


# -- BT.601 limited range (the convention of UYVY/YUY2 cameras and of OpenCV's decoder) ---------
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


def smooth_image(h: int = H, w: int = W) -> np.ndarray:
    """Slowly varying colours, so chroma subsampling and demosaicing lose (almost) nothing."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([40 + 4 * xx, 200 - 3 * yy, 90 + 2 * xx + yy], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def rgb_of(image: np.ndarray, order: str) -> np.ndarray:
    return image if order == "rgb" else image[..., ::-1]


# -- 8-bit colour: exact and zero-copy -------------------------------------------------------
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("extra", [0, 5])
def test_colour_encodings_exact(rgb, encoding, extra):
    src = rgb if encoding.startswith("rgb") else rgb[..., ::-1]
    if encoding.endswith("a8"):
        alpha = np.full((H, W, 1), 77, np.uint8)
        src = np.concatenate([src, alpha], axis=-1)
    data, step = pad_rows(as_rows(src), extra)
    image, order = decode_image(encoding, H, W, step, 0, data)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert order == encoding[:3]
    np.testing.assert_array_equal(rgb_of(image, order), rgb)


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "array", "numpy"])
def test_rgb8_is_a_view_of_the_buffer(rgb, kind):
    data, step = pad_rows(as_rows(rgb), 4)
    buffers = {"bytes": lambda: data, "bytearray": lambda: bytearray(data),
               "memoryview": lambda: memoryview(bytearray(data)),
               "array": lambda: array.array("B", data), "numpy": lambda: np.frombuffer(data, np.uint8).copy()}
    buf = buffers[kind]()
    image, _ = decode_image("rgb8", H, W, step, False, buf)
    np.testing.assert_array_equal(image, rgb)
    assert np.shares_memory(image, np.frombuffer(buf, np.uint8)), "rgb8 must not be copied"


def test_rgba8_is_a_view_of_the_buffer(rgb):
    src = np.concatenate([rgb, np.zeros((H, W, 1), np.uint8)], axis=-1)
    buf = array.array("B", src.tobytes())
    image, _ = decode_image("rgba8", H, W, W * 4, 0, buf)
    assert np.shares_memory(image, np.frombuffer(buf, np.uint8))


def test_encoding_name_is_case_and_space_insensitive(rgb):
    image, order = decode_image(" RGB8 ", H, W, W * 3, 0, rgb.tobytes())
    assert order == "rgb"
    np.testing.assert_array_equal(image, rgb)


# -- mono, 16-bit ----------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [0, 3])
def test_mono8(rgb, extra):
    gray = rgb[..., 1].copy()
    data, step = pad_rows(gray, extra)
    image, order = decode_image("mono8", H, W, step, 0, data)
    assert order == "rgb" and image.flags.c_contiguous
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], gray)


@pytest.mark.parametrize("encoding", ["rgb16", "bgr16", "mono16"])
@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("extra", [0, 6])
def test_16bit_keeps_high_byte(rgb, encoding, bigendian, extra):
    rng = np.random.default_rng(2)
    src8 = rgb if encoding != "bgr16" else rgb[..., ::-1]
    if encoding == "mono16":
        src8 = rgb[..., :1]
    # high byte = the 8-bit value, low byte = noise that must not leak into the result
    src16 = src8.astype(np.uint16) * 256 + rng.integers(0, 256, src8.shape, dtype=np.uint16)
    data, step = pad_rows(as_rows(src16.astype(">u2" if bigendian else "<u2")), extra)
    image, order = decode_image(encoding, H, W, step, int(bigendian), data)
    if encoding == "mono16":
        for c in range(3):
            np.testing.assert_array_equal(image[..., c], rgb[..., 0])
    else:
        np.testing.assert_array_equal(rgb_of(image, order), rgb)


def test_16bit_wrong_endianness_gives_the_low_byte(rgb):
    """is_bigendian is honoured, not assumed: the same bytes read with the flag flipped differ."""
    src16 = rgb.astype(np.uint16) * 256 + 3
    data = src16.astype("<u2").tobytes()
    wrong, _ = decode_image("rgb16", H, W, W * 6, 1, data)
    assert (wrong == 3).all()


# -- YUV 4:2:2 and Bayer: converted, compared with a tolerance ---------------------------------
@pytest.mark.parametrize("encoding,order", [("yuv422", "uyvy"), ("yuv422_yuy2", "yuyv"),
                                            ("uyvy", "uyvy"), ("yuyv", "yuyv")])
@pytest.mark.parametrize("extra", [0, 4])
def test_yuv422(encoding, order, extra):
    img = smooth_image()
    img[:, 1::2] = img[:, 0::2]  # pairs share chroma: the round trip is exact up to rounding
    data, step = pad_rows(pack_yuv422(img, order), extra)
    image, color = decode_image(encoding, H, W, step, 0, data)
    assert color == "rgb" and image.shape == (H, W, 3)
    assert np.abs(image.astype(int) - img).max() <= 3


def test_yuv422_orders_differ():
    """UYVY bytes read as YUYV give different colours: the two names are not interchangeable."""
    img = smooth_image()
    data = pack_yuv422(img, "uyvy").tobytes()
    a, _ = decode_image("yuv422", H, W, W * 2, 0, data)
    b, _ = decode_image("yuv422_yuy2", H, W, W * 2, 0, data)
    assert np.abs(a.astype(int) - b).mean() > 20


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("extra", [0, 2])
def test_bayer_uniform_colour_exact(pattern, extra):
    """A flat colour survives demosaicing exactly; a wrong pattern swaps or mixes channels."""
    img = np.empty((H, W, 3), np.uint8)
    img[:] = (200, 110, 30)
    data, step = pad_rows(mosaic(img, pattern), extra)
    image, order = decode_image(f"bayer_{pattern}8", H, W, step, 0, data)
    assert order == "rgb"
    np.testing.assert_array_equal(image[2:-2, 2:-2], img[2:-2, 2:-2])


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_smooth_image(pattern):
    img = smooth_image()
    image, _ = decode_image(f"bayer_{pattern}8", H, W, W, 0, mosaic(img, pattern).tobytes())
    assert np.abs(image[2:-2, 2:-2].astype(int) - img[2:-2, 2:-2]).max() <= 8


def test_every_supported_encoding_is_tested():
    tested = {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "rgb16", "bgr16", "mono16", "yuv422",
              "yuv422_yuy2", "uyvy", "yuyv", "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"}
    assert set(SUPPORTED_ENCODINGS) == tested


# -- bad input: one InputError per problem, with a message naming it ---------------------------
@pytest.mark.parametrize("args,kind,words", [
    (("8UC3", H, W, W * 3, 0, bytes(H * W * 3)), "unknown_encoding", "8UC3"),
    (("rgb8", H, W, W * 3 - 1, 0, bytes(H * W * 3)), "size_mismatch", "step"),
    (("rgb8", H, W, W * 3, 0, bytes(H * W * 3 - 1)), "truncated", "truncated"),
    (("rgb8", H, W, W * 3, 0, bytes(H * W * 3 + 9)), "size_mismatch", "bytes"),
    (("rgb8", 0, W, W * 3, 0, b""), "empty", "empty"),
    (("rgb8", H, 0, 0, 0, b""), "empty", "empty"),
    (("mono16", H, W, W * 2 + 1, 0, bytes((W * 2 + 1) * H)), "size_mismatch", "odd"),
    (("yuv422", H, W - 1, (W - 1) * 2, 0, bytes((W - 1) * 2 * H)), "size_mismatch", "odd"),
])
def test_bad_raw_images(args, kind, words):
    with pytest.raises(InputError) as info:
        decode_image(*args)
    assert info.value.kind == kind
    assert words in str(info.value)


def test_too_large_is_checked_before_the_data():
    with pytest.raises(InputError) as info:
        decode_image("rgb8", 5000, 5000, 15000, 0, b"", max_pixels=1000 * 1000)
    assert info.value.kind == "too_large" and "max_input_pixels" in str(info.value)


def test_max_pixels_allows_exactly_the_limit(rgb):
    image, _ = decode_image("rgb8", H, W, W * 3, 0, rgb.tobytes(), max_pixels=H * W)
    assert image.shape == (H, W, 3)


def test_bytes_per_pixel_table_matches_ros():
    assert BYTES_PER_PIXEL["rgb16"] == 6 and BYTES_PER_PIXEL["yuv422"] == 2
    assert BYTES_PER_PIXEL["bgra8"] == 4 and BYTES_PER_PIXEL["bayer_grbg8"] == 1


# -- compressed ------------------------------------------------------------------------------
def encoded(img_rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(img_rgb[..., ::-1]))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("fmt", ["png", "bgr8; png compressed bgr8", "rgb8; png compressed rgb8", ""])
def test_png_is_lossless(rgb, fmt):
    image, order = decode_compressed(fmt, encoded(rgb, ".png"))
    np.testing.assert_array_equal(rgb_of(image, order), rgb)


@pytest.mark.parametrize("fmt", ["jpeg", "bgr8; jpeg compressed bgr8"])
@pytest.mark.parametrize("kind", ["bytes", "array", "numpy"])
def test_jpeg(fmt, kind):
    img = smooth_image(48, 64)
    data = encoded(img, ".jpg")
    buf = {"bytes": data, "array": array.array("B", data), "numpy": np.frombuffer(data, np.uint8)}[kind]
    image, order = decode_compressed(fmt, buf)
    assert image.shape == (48, 64, 3)
    assert np.abs(rgb_of(image, order).astype(int) - img).mean() < 3


def test_jpeg_with_zero_padding_after_eoi_is_accepted():
    img = smooth_image(48, 64)
    image, _ = decode_compressed("jpeg", encoded(img, ".jpg") + bytes(16))
    assert image.shape == (48, 64, 3)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_compressed_is_rejected(rgb, ext):
    data = encoded(rgb, ext)
    with pytest.raises(InputError) as info:
        decode_compressed(ext[1:], data[: len(data) // 2])
    assert info.value.kind == "corrupt_compressed"


@pytest.mark.parametrize("data", [b"not an image at all", bytes(range(256)) * 4])
def test_garbage_compressed_is_rejected(data):
    with pytest.raises(InputError) as info:
        decode_compressed("jpeg", data)
    assert info.value.kind == "corrupt_compressed" and "cannot decode" in str(info.value)


def test_empty_and_unknown_compressed():
    with pytest.raises(InputError) as info:
        decode_compressed("png", b"")
    assert info.value.kind == "empty"
    with pytest.raises(InputError) as info:
        decode_compressed("16UC1; compressedDepth png", b"\x00" * 20)
    assert info.value.kind == "unknown_format"


def test_compressed_too_large_from_header(rgb):
    for ext in (".png", ".jpg"):
        with pytest.raises(InputError) as info:
            decode_compressed(ext[1:], encoded(rgb, ext), max_pixels=H * W - 1)
        assert info.value.kind == "too_large" and f"{H}x{W}" in str(info.value)


def test_huge_compressed_image_is_refused_from_its_header_before_decoding():
    """A 20000x20000 PNG (a decompression bomb) is refused by its header, never decoded."""
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
           + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    with pytest.raises(InputError) as info:
        decode_compressed("png", png, max_pixels=4096 * 4096)
    assert info.value.kind == "too_large" and "20000x20000" in str(info.value)


# -- encoders --------------------------------------------------------------------------------
def test_encode_labels_mono8_round_trip():
    labels = np.random.default_rng(3).integers(0, 12, (H, W), dtype=np.uint8)
    enc, step, data = encode_labels(labels)
    assert (enc, step) == ("mono8", W) and data.dtype == np.uint8 and data.ndim == 1
    back, _ = decode_image("mono8", H, W, step, 0, data)
    np.testing.assert_array_equal(back[..., 0], labels)


def test_encode_labels_mono16_little_endian():
    labels = np.random.default_rng(4).integers(0, 600, (H, W)).astype(np.uint16)
    enc, step, data = encode_labels(labels)
    assert (enc, step) == ("mono16", W * 2) and data.size == H * W * 2
    np.testing.assert_array_equal(np.frombuffer(data.tobytes(), "<u2").reshape(H, W), labels)


def test_encode_rgb_round_trip_from_a_non_contiguous_view(rgb):
    view = np.concatenate([rgb, rgb], axis=1)[:, ::2]
    enc, step, data = encode_rgb(view)
    assert (enc, step) == ("rgb8", W * 3)
    back, _ = decode_image(enc, H, W, step, 0, data)
    np.testing.assert_array_equal(back, view)


def test_encode_float_round_trip():
    conf = np.random.default_rng(5).random((H, W), dtype=np.float32)
    enc, step, data = encode_float(conf)
    assert (enc, step) == ("32FC1", W * 4)
    np.testing.assert_array_equal(np.frombuffer(data.tobytes(), "<f4").reshape(H, W), conf)


def test_encoders_reject_wrong_shapes():
    with pytest.raises(ValueError):
        encode_rgb(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        encode_labels(np.zeros((4, 4, 1), np.uint8))
    with pytest.raises(ValueError):
        encode_float(np.zeros((4,), np.float32))
