"""``seg-ros eval``: mIoU, per-class IoU, pixel accuracy and confusion matrix of a model.

Ground truth comes from a folder of label PNGs (class ids, matched to images by file name) or from
a bag's label topic (matched to image messages by header stamp). Pixels labelled with the classes'
ignore id are not scored; classes absent from both prediction and ground truth are left out of
the mean (see seg_ros.metrics). Writes a table, an optional JSON report and a PNG figure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from .. import bags
from ..errors import ConfigError, InputError
from ..metrics import BoundaryAccumulator, ConfusionAccumulator, Scores
from .bag_from_images import IMAGE_SUFFIXES, list_images, read_rgb
from .common import add_pipeline_args, pipeline_from_args, refiner_from_args
from .replay import untrained_banner


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a model on labelled images or a labelled bag (mIoU, ...)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("data (a folder pair or a bag)")
    src.add_argument("--images", type=Path, help="folder of images")
    src.add_argument("--labels", type=Path, help="folder of label PNGs (class ids), same file names")
    src.add_argument("--label-suffix", default="", help="label file = image stem + this suffix (e.g. _L)")
    src.add_argument("--bag", type=Path, help="bag with an image topic and a ground-truth label topic")
    src.add_argument("--image-topic", default=None)
    src.add_argument("--label-topic", default=None)
    p.add_argument("--max-images", type=int, default=None, help="score only the first N images")
    p.add_argument("--ignore-id", type=int, default=None, help="override the classes file's ignore id")
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    p.add_argument("--figure", type=Path, default=None,
                   help="PNG figure (default: beside --json, else eval_report.png)")
    p.add_argument("--boundary-f", action="store_true",
                   help="also report the boundary F-score (boundary pixels within --boundary-tolerance)")
    p.add_argument("--boundary-tolerance", type=int, default=3, help="boundary match distance in pixels")
    add_pipeline_args(p)
    p.set_defaults(func=run)


# -- data sources: (name, image, color_order, ground truth) --------------------------------
def folder_pairs(images: Path, labels: Path, suffix: str, skipped: list[str]) -> Iterator[tuple[str, Path, Path]]:
    if not labels.is_dir():
        raise ConfigError(f"label folder {labels} does not exist or is not a directory")
    by_stem = {p.stem: p for p in labels.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    for img in list_images(images):
        lab = by_stem.get(img.stem + suffix)
        if lab is None:
            skipped.append(f"{img.name}: no label file {img.stem + suffix}.* in {labels}")
            continue
        yield img.name, img, lab


def read_label_png(path: Path) -> np.ndarray:
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise InputError("unreadable_label", f"label file {path} cannot be read")
    if lab.ndim != 2:
        raise InputError("bad_label", f"label file {path} has {lab.shape[2]} channels; expected one channel "
                                      f"of class ids (colour-coded labels must be converted first)")
    return lab


def bag_pairs(path: Path, image_topic: str, label_topic: str, skipped: list[str]) -> Iterator[tuple[str, Any, str, np.ndarray]]:
    """Image and label messages paired by header stamp (labels may come before or after images)."""
    pending_img: dict[int, tuple[np.ndarray, str]] = {}
    pending_lab: dict[int, np.ndarray] = {}
    with bags.BagReader(path) as bag:
        bag.select_topics([image_topic], image_only=True)
        bag.select_topics([label_topic])
        for m in bag.messages([image_topic, label_topic]):
            try:
                msg = bag.deserialize(m)
                stamp = int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)
                if m.topic == image_topic:
                    pending_img[stamp] = bags.decode_image_msg(msg, m.msgtype)
                else:
                    pending_lab[stamp] = bags.labels_from_msg(msg)
            except InputError as exc:
                skipped.append(f"{m.topic} t={m.timestamp}: {exc}")
                continue
            if stamp in pending_img and stamp in pending_lab:
                image, order = pending_img.pop(stamp)
                yield f"stamp {stamp}", image, order, pending_lab.pop(stamp)
    for stamp in sorted(pending_img):
        skipped.append(f"{image_topic} stamp {stamp}: no label message with that stamp on {label_topic}")


# -- report ------------------------------------------------------------------------------------
def print_table(scores: Scores, names: list[str], images: int) -> None:
    gt_pixels = scores.confusion.sum(axis=1)
    width = max(12, *(len(n) for n in names))
    print(f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}  {'gt pixels':>11}")
    for i, n in enumerate(names):
        iou, acc = scores.per_class_iou[i], scores.per_class_accuracy[i]
        fmt = lambda v: "    n/a" if np.isnan(v) else f"{100 * v:6.2f}%"  # noqa: E731
        print(f"{n:<{width}}  {fmt(iou)}  {fmt(acc)}  {int(gt_pixels[i]):>11}")
    present = int((~np.isnan(scores.per_class_iou)).sum())
    print(f"{'mIoU':<{width}}  {100 * scores.miou:6.2f}%  (mean over {present} of {len(names)} classes "
          f"present in prediction or ground truth)")
    print(f"{'pixel acc':<{width}}  {100 * scores.pixel_accuracy:6.2f}%  over {scores.counted_pixels} "
          f"scored pixels in {images} images")


def write_figure(path: Path, scores: Scores, names: list[str], title: str) -> None:
    """Row-normalised confusion matrix (recall) beside per-class IoU bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cm = scores.confusion.astype(np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(names)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6 + 0.5 * k, 2.5 + 0.35 * k),
                                   gridspec_kw={"width_ratios": [1.2, 1]})
    im = ax1.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax1.set_xticks(range(k), names, rotation=90, fontsize=8)
    ax1.set_yticks(range(k), names, fontsize=8)
    ax1.set_xlabel("predicted")
    ax1.set_ylabel("ground truth")
    ax1.set_title("confusion (row-normalised)")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.005:
                    ax1.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                             color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax1, fraction=0.046)
    iou = np.nan_to_num(scores.per_class_iou, nan=0.0)
    y = np.arange(k)
    ax2.barh(y, iou, color=["#bbbbbb" if np.isnan(v) else "#3070b0" for v in scores.per_class_iou])
    ax2.set_yticks(y, names, fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlim(0, 1)
    ax2.axvline(scores.miou, color="#c03030", linestyle="--", label=f"mIoU {scores.miou:.3f}")
    ax2.set_xlabel("IoU")
    ax2.set_title("per-class IoU (grey: absent)")
    ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    use_bag = args.bag is not None
    if use_bag == (args.images is not None or args.labels is not None):
        raise ConfigError("give either --images and --labels, or --bag with --image-topic and --label-topic")
    if use_bag and not (args.image_topic and args.label_topic):
        raise ConfigError("--bag needs --image-topic and --label-topic")
    if not use_bag and not (args.images and args.labels):
        raise ConfigError("--images and --labels are both needed")
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images must be >= 1, got {args.max_images}")
    for folder in (args.images, args.labels):
        if folder is not None and not folder.is_dir():
            raise ConfigError(f"{'image' if folder is args.images else 'label'} folder {folder} does not "
                              f"exist or is not a directory")
    if use_bag and not args.bag.exists():
        raise ConfigError(f"bag {args.bag} does not exist")
    pipe = pipeline_from_args(args)
    banner = untrained_banner(pipe)
    if banner:
        print(banner, file=sys.stderr)
    names = list(pipe.classes.names)
    ignore = args.ignore_id if args.ignore_id is not None else pipe.classes.ignore_id
    acc = ConfusionAccumulator(len(names), ignore)
    if args.boundary_tolerance < 0:
        raise ConfigError(f"--boundary-tolerance must be >= 0, got {args.boundary_tolerance}")
    boundary = BoundaryAccumulator(args.boundary_tolerance, ignore, len(names)) if args.boundary_f else None
    refiner = refiner_from_args(args, pipe)  # --crf: the refined labels are scored
    skipped: list[str] = []

    if use_bag:
        source: Iterator[Any] = bag_pairs(args.bag, args.image_topic, args.label_topic, skipped)
        total = None
    else:
        pairs = list(folder_pairs(args.images, args.labels, args.label_suffix, skipped))
        if args.max_images:
            pairs = pairs[: args.max_images]
        total = len(pairs)
        source = ((n, img, "rgb", lab) for n, img, lab in pairs)
    for name, image, order, gt in tqdm(source, total=total, desc="eval", unit="img", disable=None):
        if args.max_images and acc.images >= args.max_images:
            break
        try:
            if isinstance(image, Path):
                image = read_rgb(image)
            if isinstance(gt, Path):
                gt = read_label_png(gt)
            if gt.shape != image.shape[:2]:
                raise InputError("size_mismatch", f"label is {gt.shape[0]}x{gt.shape[1]}, image is "
                                                  f"{image.shape[0]}x{image.shape[1]}")
            res = pipe(image, order, keep_scores=refiner is not None)
            pred = (pipe.refine(res, refiner) if refiner is not None else res).labels
            acc.add(gt, pred)
            if boundary is not None:
                boundary.add(gt, pred)
        except (InputError, ConfigError, ValueError) as exc:
            skipped.append(f"{name}: {exc}")
    if acc.images == 0:
        raise ConfigError("no image could be scored: " + ("; ".join(skipped[:3]) or "no data"))
    scores = acc.scores()
    print_table(scores, names, acc.images)
    if boundary is not None:
        b = boundary.scores()
        print(f"boundary F  {100 * b['boundary_f']:6.2f}%  (precision {100 * b['boundary_precision']:.2f}%, "
              f"recall {100 * b['boundary_recall']:.2f}%, within {b['tolerance_px']} px)")
    for s in skipped[:10]:
        print(f"skipped {s}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"... and {len(skipped) - 10} more skipped", file=sys.stderr)

    d = pipe.describe()
    report = scores.to_dict(names)
    report.update({"images": acc.images, "skipped": skipped, "ignore_id": ignore, "model": d,
                   "trained": bool(pipe.trained), "crf": args.crf,
                   **(boundary.scores() if boundary is not None else {}),
                   "source": str(args.bag) if use_bag else {"images": str(args.images), "labels": str(args.labels)}})
    figure = args.figure or (args.json.with_suffix(".png") if args.json else Path("eval_report.png"))
    title = (f"{d['model']} ({d['weights']}{', crf ' + args.crf if args.crf != 'off' else ''}) on {acc.images} images: mIoU {scores.miou:.3f}, "
             f"pixel acc {scores.pixel_accuracy:.3f}" + ("  [UNTRAINED MODEL]" if not pipe.trained else ""))
    write_figure(figure, scores, names, title)
    report["figure"] = str(figure)
    print(f"figure: {figure}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"report: {args.json}")
    if banner:
        print(banner)
    return 0
