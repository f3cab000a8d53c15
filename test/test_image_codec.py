"""seg_ros.image_codec: every encoding against a known RGB image, padding, endianness, bad input.

The test encoders (helpers.py) are written from the ROS encoding definitions (byte layouts), not
with the module's own code, so a wrong channel order or Bayer pattern mapping fails here.
"""
from __future__ import annotations

import array
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import corrupt_entropy, damaged_files, mosaic, pack_yuv422
from seg_ros.errors import InputError
from seg_ros.image_codec import (BYTES_PER_PIXEL, ERROR_KINDS, SUPPORTED_ENCODINGS,
                                 decode_compressed, decode_image, encode_float, encode_labels,
                                 encode_rgb)

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
    buffers = {
        "bytes": lambda: data,
        "bytearray": lambda: bytearray(data),
        "memoryview": lambda: memoryview(bytearray(data)),
        "array": lambda: array.array("B", data),
        "numpy": lambda: np.frombuffer(data, np.uint8).copy(),
    }
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
    tested = {
        "rgb8",
        "bgr8",
        "rgba8",
        "bgra8",
        "mono8",
        "rgb16",
        "bgr16",
        "mono16",
        "yuv422",
        "yuv422_yuy2",
        "uyvy",
        "yuyv",
        "bayer_rggb8",
        "bayer_bggr8",
        "bayer_gbrg8",
        "bayer_grbg8",
    }
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


# -- compressed: image_transport's format conventions -----------------------------------------
def encoded(img: np.ndarray, ext: str, legacy: bool = False, params: tuple = ()) -> bytes:
    """Return an image encoded as an image_transport publisher sends it.

    An RGB (or grey, or 16-bit) image as the JPEG/PNG file an image_transport publisher
    sends: today's convert colour to BGR for OpenCV's encoder, so the file is an ordinary image
    file; ``legacy`` ones (before 2012) handed it the RGB pixels: red and blue swapped.
    """
    src = img if img.ndim == 2 or legacy else img[..., ::-1]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(src), list(params))
    assert ok
    return buf.tobytes()


def is_swapped_wrong(image: np.ndarray, order: str, reference: np.ndarray) -> bool:
    """Return whether the other channel order would be far off (the test can tell them apart)."""
    other = rgb_of(image, "bgr" if order == "rgb" else "rgb")
    return np.abs(other.astype(int) - reference).mean() > 20


@pytest.mark.parametrize("fmt,legacy", [
    ("png", False), ("", False), ("bgr8; png compressed bgr8", False),
    ("rgb8; png compressed bgr8", False),  # today's publisher on an rgb8 camera
    ("rgb8; png compressed rgb8", True),  # publishers before 2012
    ("bgr8; png compressed rgb8", True),
])
def test_png_channel_order_follows_image_transport(rgb, fmt, legacy):
    image, order = decode_compressed(fmt, encoded(rgb, ".png", legacy))
    np.testing.assert_array_equal(rgb_of(image, order), rgb)
    assert is_swapped_wrong(image, order, rgb)


@pytest.mark.parametrize("fmt,legacy", [("jpeg", False), ("bgr8; jpeg compressed bgr8", False),
                                        ("rgb8; jpeg compressed bgr8", False),
                                        ("rgb8; jpeg compressed rgb8", True)])
@pytest.mark.parametrize("kind", ["bytes", "array", "numpy"])
def test_jpeg(fmt, legacy, kind):
    img = smooth_image(48, 64)
    data = encoded(img, ".jpg", legacy)
    buf = {"bytes": data, "array": array.array("B", data), "numpy": np.frombuffer(data, np.uint8)}[
        kind
    ]
    image, order = decode_compressed(fmt, buf)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert np.abs(rgb_of(image, order).astype(int) - img).mean() < 3
    assert is_swapped_wrong(image, order, img)


def test_jpeg_pixels_are_libjpegs():
    """The same pixels OpenCV's libjpeg-turbo gives (so the decoder swap changes no label)."""
    img = smooth_image(96, 128)
    data = encoded(img, ".jpg")
    image, order = decode_compressed("jpeg", data)
    np.testing.assert_array_equal(rgb_of(image, order)[..., ::-1],
                                  cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


def test_codec_is_taken_from_the_data(rgb):
    image, order = decode_compressed("jpeg", encoded(rgb, ".png"))
    np.testing.assert_array_equal(rgb_of(image, order), rgb)


@pytest.mark.parametrize("fmt,ext", [("mono8; png compressed ", ".png"),
                                     ("mono8; jpeg compressed mono8", ".jpg"), ("png", ".png")])
def test_grey(fmt, ext):
    grey = smooth_image(48, 64)[..., 1]
    image, _ = decode_compressed(fmt, encoded(grey, ext))
    assert image.shape == (48, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], image[..., 0])
    tolerance = 0 if ext == ".png" else 2
    assert np.abs(image[..., 0].astype(int) - grey).max() <= tolerance


@pytest.mark.parametrize("encoding,fmt", [
    ("bgr16", "bgr16; png compressed bgr16"),
    ("rgb16", "rgb16; png compressed bgr16"),  # today's publisher converts colour to bgr16
    ("rgb16", "rgb16; png compressed rgb16"),  # before 2012
    ("mono16", "mono16; png compressed "),
])
def test_16bit_png_is_scaled_as_raw_16bit(rgb, encoding, fmt):
    """16-bit PNG keeps the high byte of each sample.

    Exactly as decode_image does for the raw encoding of the same samples (a rounding scaler, value
    * 255 / 65535, would fail here).
    """
    rng = np.random.default_rng(6)
    src8 = rgb[..., 0] if encoding == "mono16" else rgb
    src16 = src8.astype(np.uint16) * 256 + rng.integers(0, 256, src8.shape, dtype=np.uint16)
    rounded = np.round(src16 * (255 / 65535)).astype(np.uint8)
    assert (rounded != src16 >> 8).any(), "test data must tell the two scalings apart"
    raw_layout = src16 if encoding != "bgr16" else src16[..., ::-1]
    expected, raw_order = decode_image(encoding, H, W, W * BYTES_PER_PIXEL[encoding], 0,
                                       np.ascontiguousarray(raw_layout).astype("<u2").tobytes())
    legacy = fmt == "rgb16; png compressed rgb16"
    image, order = decode_compressed(fmt, encoded(src16, ".png", legacy))
    np.testing.assert_array_equal(rgb_of(image, order), rgb_of(expected, raw_order))


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_png_is_demosaiced_as_raw(pattern):
    """image_transport sends a Bayer mosaic as grey PNG ('bayer_rggb8; png compressed ')."""
    mosaic_rows = mosaic(smooth_image(), pattern)
    fmt = f"bayer_{pattern}8; png compressed "
    image, order = decode_compressed(fmt, encoded(mosaic_rows, ".png"))
    expected, _ = decode_image(f"bayer_{pattern}8", H, W, W, 0, mosaic_rows.tobytes())
    assert order == "rgb"
    np.testing.assert_array_equal(image, expected)


def compressed_depth(depth16: np.ndarray) -> bytes:
    """compressed_depth_image_transport's payload: a 12-byte config header, then a 16-bit PNG."""
    return struct.pack("<iff", 0, 0.0, 0.0) + encoded(depth16, ".png")


@pytest.mark.parametrize("fmt", ["16UC1; compressedDepth png", "32FC1; compressedDepth",
                                 "16UC1; compressedDepth rvl"])
def test_compressed_depth_is_refused(fmt):
    depth = (np.arange(H * W, dtype=np.uint16) * 37).reshape(H, W)
    with pytest.raises(InputError) as info:
        decode_compressed(fmt, compressed_depth(depth))
    assert info.value.kind == "unsupported_format" and "depth" in str(info.value)


@pytest.mark.parametrize("fmt", ["bgr8", "tiff", "bgr8; tiff compressed bgr8", "webp"])
def test_format_naming_no_jpeg_or_png_is_refused(rgb, fmt):
    with pytest.raises(InputError) as info:
        decode_compressed(fmt, encoded(rgb, ".png"))
    assert info.value.kind == "unsupported_format" and fmt in str(info.value)


def test_exif_orientation_is_ignored_as_image_transport_does():
    img = smooth_image(48, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = io.BytesIO()
    Image.fromarray(img).save(out, "JPEG", exif=exif, quality=95)
    image, order = decode_compressed("jpeg", out.getvalue())
    assert image.shape == (48, 64, 3)
    assert np.abs(rgb_of(image, order).astype(int) - img).mean() < 3


# -- compressed: other image types, sizes, damage ------------------------------------------------
def pil_encoded(img: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(img).save(out, fmt, **options)
    return out.getvalue()


@pytest.fixture(scope="module")
def other_images() -> dict[str, bytes]:
    """Real files of the image types OpenCV would decode but seg_ros does not."""
    img = smooth_image(96, 128)
    files = {name: encoded(img, ext) for name, ext in (("WebP", ".webp"), ("BMP", ".bmp"),
                                                       ("TIFF", ".tiff"), ("JPEG 2000", ".jp2"),
                                                       ("PNM", ".ppm"))}
    files["GIF"] = pil_encoded(img, "GIF")
    files["ISO media (AVIF/HEIF)"] = encoded(img, ".avif")
    return files


@pytest.mark.parametrize("name", ["WebP", "BMP", "TIFF", "JPEG 2000", "PNM", "GIF",
                                  "ISO media (AVIF/HEIF)"])
@pytest.mark.parametrize("fmt", ["jpeg", "", "png", "bgr8; jpeg compressed bgr8"])
def test_other_image_types_are_refused_whatever_the_format_says(other_images, name, fmt):
    with pytest.raises(InputError) as info:
        decode_compressed(fmt, other_images[name])
    assert info.value.kind == "unsupported_format"
    assert f"is a {name} image" in str(info.value) and "only JPEG and PNG" in str(info.value)


REFUSE_UNDECODED = """
import json, resource, sys
from seg_ros.errors import InputError
from seg_ros.image_codec import decode_compressed
out = {}
for path, fmt, max_pixels in json.loads(sys.argv[1]):
    data = open(path, "rb").read()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        decode_compressed(fmt, data, max_pixels=max_pixels)
        kind = "decoded"
    except InputError as exc:
        kind = exc.kind
    out[path] = [kind, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_big_files_are_refused_before_decoding(tmp_path, rgb):
    """Decompression bombs: a 12000x12000 TIFF and a 4000x4000 WebP sent as 'jpeg'.

    BMP as 'jpeg' and '', a 12000x12000 PNG and a 6000x6000 JPEG over max_input_pixels. In a fresh
    process, none of them raises the peak RSS by more than 8 MiB (decoding would take 48-432 MiB).
    """
    files = {
        "tiff": (pil_encoded(np.zeros((12000, 12000), bool), "TIFF", compression="packbits"),
                 "jpeg"),
        "webp": (pil_encoded(np.zeros((4000, 4000, 3), np.uint8), "WEBP", quality=50), "jpeg"),
        "bmp": (encoded(cv2.resize(rgb, (2000, 1500)), ".bmp"), "jpeg"),
        "bmp_no_format": (encoded(cv2.resize(rgb, (2000, 1500)), ".bmp"), ""),
        "png": (pil_encoded(np.zeros((12000, 12000), bool), "PNG"), "png"),
        "jpeg": (encoded(np.zeros((6000, 6000), np.uint8), ".jpg"), "jpeg"),
    }
    jobs = []
    for name, (data, fmt) in files.items():
        (tmp_path / name).write_bytes(data)
        jobs.append([str(tmp_path / name), fmt, 4096 * 4096])
    run = subprocess.run([sys.executable, "-c", REFUSE_UNDECODED, json.dumps(jobs)],
                         capture_output=True, text=True, timeout=120, check=True)
    assert run.stderr == ""
    result = {Path(path).name: tuple(v) for path, v in json.loads(run.stdout).items()}
    kinds = {name: kind for name, (kind, _) in result.items()}
    assert kinds == {"tiff": "unsupported_format", "webp": "unsupported_format",
                     "bmp": "unsupported_format", "bmp_no_format": "unsupported_format",
                     "png": "too_large", "jpeg": "too_large"}
    assert all(grown_kib < 8 * 1024 for _, grown_kib in result.values()), result


def test_compressed_too_large_from_header(rgb):
    for ext in (".png", ".jpg"):
        with pytest.raises(InputError) as info:
            decode_compressed(ext[1:], encoded(rgb, ext), max_pixels=H * W - 1)
        assert info.value.kind == "too_large" and f"{H}x{W}" in str(info.value)
    image, _ = decode_compressed("png", encoded(rgb, ".png"), max_pixels=H * W)
    assert image.shape == (H, W, 3)


def test_huge_compressed_image_is_refused_from_its_header_before_decoding():
    """A 20000x20000 PNG (a decompression bomb) is refused by its header, never decoded."""
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
           + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    with pytest.raises(InputError) as info:
        decode_compressed("png", png, max_pixels=4096 * 4096)
    assert info.value.kind == "too_large" and "20000x20000" in str(info.value)


def sof_offset(jpeg: bytes) -> int:
    return jpeg.index(b"\xff\xc0")


def test_unreadable_or_zero_header_size_is_never_decoded(rgb):
    jpeg = bytearray(encoded(rgb, ".jpg"))
    zero_height = bytearray(jpeg)
    zero_height[sof_offset(jpeg) + 5: sof_offset(jpeg) + 7] = b"\x00\x00"
    stray = bytearray(jpeg)
    dqt = jpeg.index(b"\xff\xdb")
    stray[dqt:dqt] = b"\x00\x00"  # libjpeg would skip these with a warning; the size walk stops
    png = bytearray(encoded(rgb, ".png"))
    png[16:20] = bytes(4)  # IHDR width 0
    for data in (zero_height, stray, png):
        with pytest.raises(InputError) as info:
            decode_compressed("", bytes(data))
        assert info.value.kind == "corrupt_compressed" and "header" in str(info.value)


@pytest.fixture(scope="module")
def photo_jpeg(road_image) -> bytes:
    return encoded(road_image, ".jpg")


def markers(jpeg: bytes) -> list[int]:
    b = np.frombuffer(jpeg, np.uint8)
    at = np.flatnonzero((b[:-1] == 0xFF) & (b[1:] != 0) & ((b[1:] < 0xD0) | (b[1:] > 0xD7)))
    return b[at + 1].tolist()


@pytest.mark.parametrize("seed", range(5))
def test_jpeg_with_corrupt_entropy_data_is_refused(photo_jpeg, seed):
    bad = corrupt_entropy(photo_jpeg, seed)
    assert markers(bad) == markers(photo_jpeg) and bad != photo_jpeg
    with pytest.raises(InputError) as info:
        decode_compressed("jpeg", bad)
    assert info.value.kind == "corrupt_compressed" and "Corrupt JPEG data" in str(info.value)


def test_damaged_files_are_refused_and_nothing_is_printed(capfd, photo_jpeg, road_image):
    """The decoders report damage as an error.

    Nothing reaches stdout/stderr (file descriptors, so C libraries printing directly would show
    here).
    """
    files = damaged_files(photo_jpeg, encoded(road_image, ".png"))
    for name, data in files.items():
        with pytest.raises(InputError) as info:
            decode_compressed("", data)
        assert info.value.kind == "corrupt_compressed", (name, info.value)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


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
    assert info.value.kind == "corrupt_compressed" and "not a JPEG or PNG" in str(info.value)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_fuzzed_compressed_data_gives_an_image_or_one_input_error(ext, capfd):
    """300 random overwrites, bit flips and cuts.

    Each frame decodes to its header's size or raises InputError with a known kind; no other
    exception, nothing printed.
    """
    good = encoded(smooth_image(48, 64), ext)
    rng = np.random.default_rng(8)
    outcomes = set()
    for _ in range(300):
        data = bytearray(good)
        at = int(rng.integers(0, len(data)))
        mutation = rng.integers(0, 3)
        if mutation == 0:
            data[at: at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
        elif mutation == 1:
            data[at] ^= 1 << int(rng.integers(0, 8))
        else:
            del data[at:]
        try:
            image, _ = decode_compressed(ext[1:], bytes(data))
            assert image.shape == (48, 64, 3) and image.dtype == np.uint8
            outcomes.add("image")
        except InputError as exc:
            assert exc.kind in ERROR_KINDS
            outcomes.add(exc.kind)
    assert "corrupt_compressed" in outcomes
    assert capfd.readouterr() == ("", "")


def test_empty_compressed():
    with pytest.raises(InputError) as info:
        decode_compressed("png", b"")
    assert info.value.kind == "empty"


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
