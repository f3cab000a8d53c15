"""Decode time of good JPEG and PNG frames through image_codec.decode_compressed (docs/node.md).

Not a test (pytest does not collect it): run ``python test/bench_image_codec.py [N]``. Frames are
a CamVid validation image resized to 360x480 and 1024x2048 (a synthetic smooth image if the data
set is absent), JPEG quality 95 (OpenCV's default, 4:2:0) and PNG level 1 (OpenCV's default).
Prints the median and p90 of N decodes (after 5 warm-up decodes) and, for reference,
cv2.imdecode of the same bytes; then how long refusing decompression bombs takes (a 12000x12000
TIFF and a 4000x4000 WebP sent as 'jpeg', a 12000x12000 PNG over max_input_pixels) against one
full cv2.imdecode of each.
"""
from __future__ import annotations

import glob
import io
import sys
import time

import cv2
import numpy as np

from PIL import Image

from seg_ros.errors import InputError
from seg_ros.image_codec import decode_compressed

SIZES = ((360, 480), (1024, 2048))


def source_image() -> np.ndarray:
    files = sorted(glob.glob("/work/shared/datasets/camvid/val/*.png"))
    if files:
        return cv2.imread(files[0], cv2.IMREAD_COLOR)
    yy, xx = np.mgrid[0:720, 0:960]
    return np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)


def times_ms(decode, n: int) -> tuple[float, float]:
    for _ in range(5):
        decode()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        decode()
        samples.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(samples)), float(np.percentile(samples, 90))


def main(n: int) -> None:
    src = source_image()
    for codec in ("jpeg", "png"):
        for h, w in SIZES:
            frame = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA)
            data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", frame)[1]
            raw = data.tobytes()
            ours = times_ms(lambda: decode_compressed(f"bgr8; {codec} compressed bgr8", raw), n)
            ref = times_ms(lambda: cv2.imdecode(data, cv2.IMREAD_COLOR), n)
            print(f"{h}x{w} {codec.upper()} ({len(raw) / 1024:.0f} KiB): decode_compressed median "
                  f"{ours[0]:.2f} ms p90 {ours[1]:.2f} ms; cv2.imdecode median {ref[0]:.2f} ms "
                  f"p90 {ref[1]:.2f} ms")



def pil_file(img: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(img).save(out, fmt, **options)
    return out.getvalue()


def refused(fmt: str, data: bytes) -> str:
    try:
        decode_compressed(fmt, data, max_pixels=4096 * 4096)
    except InputError as exc:
        return exc.kind
    return "decoded"


def bombs(n: int) -> None:
    files = {"12000x12000 TIFF as 'jpeg'": (pil_file(np.zeros((12000, 12000), bool), "TIFF",
                                                     compression="packbits"), "jpeg"),
             "4000x4000 WebP as 'jpeg'": (pil_file(np.zeros((4000, 4000, 3), np.uint8), "WEBP"),
                                         "jpeg"),
             "12000x12000 PNG": (pil_file(np.zeros((12000, 12000), bool), "PNG"), "png")}
    for name, (data, fmt) in files.items():
        kind = refused(fmt, data)
        ours = times_ms(lambda: refused(fmt, data), n)
        t0 = time.perf_counter()
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        full = (time.perf_counter() - t0) * 1e3
        print(f"{name} ({len(data) / 1024:.0f} KiB): {kind} in median {ours[0]:.3f} ms; "
              f"cv2.imdecode {full:.0f} ms")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    main(count)
    bombs(10)
