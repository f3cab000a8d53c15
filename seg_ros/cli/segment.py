"""``seg-ros segment IMAGE... --out DIR``: labels, colour mask and overlay PNGs per image."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from .common import add_pipeline_args, pipeline_from_args, refiner_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment", help="segment image files and write labels / colour / overlay PNGs"
    )
    p.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--alpha", type=float, default=0.5, help="overlay opacity of the colour mask (0..1)"
    )
    add_pipeline_args(p)
    p.set_defaults(func=run)


def read_image_rgb(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8; raises ValueError naming the file when unreadable."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: not a readable image file")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_outputs(
    out_dir: Path, stem: str, labels: np.ndarray, color: np.ndarray, overlay: np.ndarray
) -> None:
    cv2.imwrite(str(out_dir / f"{stem}_labels.png"), labels)  # uint8 or uint16 PNG of class ids
    cv2.imwrite(str(out_dir / f"{stem}_color.png"), cv2.cvtColor(color, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out_dir / f"{stem}_overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))


def run(args: argparse.Namespace) -> int:
    pipe = pipeline_from_args(args)
    refiner = refiner_from_args(args, pipe)  # --crf: the files hold the refined labels
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.images:
        try:
            image = read_image_rgb(path)
            raw = refiner is None
            result = pipe(
                image, "rgb", color=raw, overlay=raw, overlay_alpha=args.alpha, keep_scores=not raw
            )
            if not raw:
                result = pipe.refine(
                    result, refiner, color=True, overlay=True, overlay_alpha=args.alpha
                )
        except ValueError as exc:
            print(f"skipped {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        write_outputs(args.out, path.stem, result.labels, result.color, result.overlay)
        print(f"{path} -> {args.out / path.stem}_{{labels,color,overlay}}.png")
    if not pipe.trained:
        print("WARNING: random-initialised model (no trained weights): the labels are meaningless",
              file=sys.stderr)
    return 1 if failed else 0
