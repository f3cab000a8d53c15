"""``seg-ros bag-from-images``: an image folder (sorted by name) -> a rosbag2 camera stream.

How test and demo bags are made from datasets, so replay, play and eval can run on real frames
without a camera. Frames are stamped ``start + i / rate`` in both the header and the bag.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .. import bags
from ..errors import ConfigError, InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
ENCODINGS = ("rgb8", "bgr8", "mono8", "jpeg", "png")
# A fixed default start time keeps bags made from the same folder byte-identical.
DEFAULT_START_S = 1_700_000_000.0


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(f"image folder {folder} does not exist or is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError("unreadable_image", f"image {path} cannot be read")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_message(rgb: np.ndarray, header, encoding: str, jpeg_quality: int = 90):
    """Return the message for one frame in the requested encoding.

    An Image, or a CompressedImage for jpeg/png.
    """
    if encoding in ("jpeg", "png"):
        params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if encoding == "jpeg" else []
        ok, buf = cv2.imencode(".jpg" if encoding == "jpeg" else ".png",
                               cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ConfigError(f"cannot encode a frame as {encoding}")
        return bags.make_compressed(header, f"bgr8; {encoding} compressed bgr8", buf.tobytes())
    if encoding == "bgr8":
        data = np.ascontiguousarray(rgb[:, :, ::-1])
    elif encoding == "mono8":
        data = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:
        data = rgb
    h, w = rgb.shape[:2]
    step = w * (1 if encoding == "mono8" else 3)
    return bags.make_image(header, encoding, h, w, step, data)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bag-from-images", help="make a rosbag2 camera stream from an image folder",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="folder of images, used in name order")
    p.add_argument("--out", type=Path, required=True,
                   help="output bag: NAME.mcap / NAME.db3 (one file) or a directory name")
    p.add_argument("--topic", default="/camera/image_raw")
    p.add_argument("--rate", type=float, default=10.0, help="frames per second (stamps)")
    p.add_argument("--encoding", choices=ENCODINGS, default="rgb8",
                   help="raw Image encoding, or jpeg/png for a CompressedImage")
    p.add_argument("--frame-id", default="camera")
    p.add_argument("--start", type=int, default=0, help="index of the first image (after sorting)")
    p.add_argument("--count", type=int, default=None, help="number of images (default: all)")
    p.add_argument(
        "--start-time", type=float, default=DEFAULT_START_S, help="stamp of frame 0 (s)"
    )
    p.add_argument(
        "--storage",
        choices=["mcap", "sqlite3"],
        default=None,
        help="storage for a directory output (default mcap; a suffix decides for files)",
    )
    p.add_argument("--compress", action="store_true", help="zstd-compress mcap chunks")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.rate <= 0:
        raise ConfigError(f"--rate must be > 0, got {args.rate}")
    files = list_images(args.folder)[args.start:]
    if args.count is not None:
        files = files[: args.count]
    if not files:
        raise ConfigError(f"no images left after --start {args.start}")
    msgtype = bags.COMPRESSED_TYPE if args.encoding in ("jpeg", "png") else bags.IMAGE_TYPE
    start_ns = int(round(args.start_time * 1e9))
    period_ns = int(round(1e9 / args.rate))
    with bags.BagWriter(args.out, storage=args.storage, overwrite=args.overwrite,
                        compress=args.compress) as writer:
        writer.add_topic(args.topic, msgtype)
        for i, path in enumerate(tqdm(files, desc="bag-from-images", unit="img", disable=None)):
            stamp = start_ns + i * period_ns
            msg = image_message(
                read_rgb(path), bags.make_header(stamp, args.frame_id), args.encoding
            )
            writer.write(args.topic, stamp, msg)
    size = sum(
        f.stat().st_size for f in ([args.out] if args.out.is_file() else args.out.rglob("*"))
    )
    print(
        f"wrote {len(files)} frames ({args.encoding}, {msgtype}) on {args.topic} at "
        f"{args.rate:g} Hz "
        f"to {args.out} ({size / 1e6:.1f} MB)"
    )
    return 0
