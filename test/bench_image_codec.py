"""Decode time of good JPEG and PNG frames through image_codec.decode_compressed (docs/node.md).

Not a test (pytest does not collect it): ``python test/bench_image_codec.py [N] [BASELINE]``.
Frames are a CamVid validation image resized to 360x480 and 1024x2048 (a synthetic image if the
data set is absent), JPEG quality 95 (OpenCV's default, 4:2:0) and PNG level 1 (OpenCV's
default). Prints the median / p90 of N decodes (after 5 warm-up decodes) by this checkout's
decode_compressed, by cv2.imdecode and, with BASELINE (the root of another seg_ros checkout,
e.g. a worktree of main), by that checkout's decode_compressed: the three alternate frame by
frame, so a busy machine slows them alike. Then how long refusing decompression bombs takes (a
12000x12000 TIFF and a 4000x4000 WebP sent as 'jpeg', a 12000x12000 PNG over max_input_pixels),
against one full cv2.imdecode of each.
"""
from __future__ import annotations

import glob
import importlib.util
import io
import sys
import time
from pathlib import Path
from typing import Callable

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


def baseline_decoder(root: str) -> Callable:
    """decode_compressed of the seg_ros package under ``root``, imported as another package."""
    package = Path(root) / "seg_ros"
    spec = importlib.util.spec_from_file_location("baseline_seg_ros", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_seg_ros"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("baseline_seg_ros.image_codec").decode_compressed


def alternating_ms(decoders: dict[str, Callable], n: int) -> dict[str, tuple[float, float]]:
    """(median, p90) in ms of each decoder.

    Called in turn N times after 5 warm-up rounds; the turn rotates, so none always follows the
    same one.
    """
    samples: dict[str, list[float]] = {name: [] for name in decoders}
    names = list(decoders)
    for i in range(n + 5):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            decoders[name]()
            if i >= 5:
                samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: (float(np.median(ms)), float(np.percentile(ms, 90)))
            for name, ms in samples.items()}


def main(n: int, baseline: str | None) -> None:
    src = source_image()
    old = baseline_decoder(baseline) if baseline else None
    for codec in ("jpeg", "png"):
        for h, w in SIZES:
            frame = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA)
            data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", frame)[1]
            raw, fmt = data.tobytes(), f"bgr8; {codec} compressed bgr8"
            decoders = {"decode_compressed": lambda: decode_compressed(fmt, raw),
                        "cv2.imdecode": lambda: cv2.imdecode(data, cv2.IMREAD_COLOR)}
            if old is not None:
                decoders["baseline"] = lambda: old(fmt, raw)
            times = alternating_ms(decoders, n)
            print(f"{h}x{w} {codec.upper()} ({len(raw) / 1024:.0f} KiB): " + "; ".join(
                f"{name} {med:.2f} / {p90:.2f} ms" for name, (med, p90) in times.items()))


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
        (ours, _), = alternating_ms({"refuse": lambda: refused(fmt, data)}, n).values()
        t0 = time.perf_counter()
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        full = (time.perf_counter() - t0) * 1e3
        print(f"{name} ({len(data) / 1024:.0f} KiB): {kind} in median {ours * 1e3:.0f} us; "
              f"one cv2.imdecode {full:.0f} ms")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    main(count, sys.argv[2] if len(sys.argv) > 2 else None)
    bombs(count)
