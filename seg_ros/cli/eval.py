"""``seg-ros eval``: mIoU, per-class IoU, pixel accuracy and confusion matrix of a model.

Ground truth comes from a folder of label PNGs (class ids, matched to images by file name) or from
a bag's label topic (matched to image messages by header stamp). Pixels labelled with the classes'
ignore id are not scored; classes absent from both prediction and ground truth are left out of
the mean (see seg_ros.metrics). Writes a table, an optional JSON report and a PNG figure.

Many bags (``seg-ros eval BAG_OR_FOLDER_OR_GLOB ... --out FOLDER --label-topic T`` or
``--label-dir DIR``): per-bag reports mirrored under --out, a JSON-lines manifest, and the overall
report from the summed confusion matrices (eval_report.json / .md / .png).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError
from ..fleet.control import Control
from ..fleet.runner import FleetJob
from ..fleet.score import EvalOptions, Pair, eval_bag, read_label_png, score_pairs
from ..fleet.tasks import EVAL
from ..metrics import BoundaryAccumulator, ConfusionAccumulator, Scores, scores_from_confusion
from ..tta import offline_pipeline
from .bag_from_images import IMAGE_SUFFIXES, list_images, read_rgb
from .common import add_pipeline_args, pipeline_from_args, refiner_from_args
from .fleet_args import (add_fleet_args, check_fleet_args, fleet_requested, print_outcome,
                         run_fleet, spec_from_args)
from .replay import untrained_banner


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval",
                       help="score a model on labelled images or a labelled bag (mIoU, ...)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("data (a folder pair or a bag)")
    src.add_argument("--images", type=Path, help="folder of images")
    src.add_argument("--labels", type=Path,
                     help="folder of label PNGs (class ids), same file names")
    src.add_argument("--label-suffix", default="",
                     help="label file = image stem + this suffix (e.g. _L)")
    src.add_argument("--bag", type=Path,
                     help="bag with an image topic and a ground-truth label topic")
    src.add_argument("--image-topic", default=None,
                     help="image topic (many bags: default the bag's only image topic besides the "
                          "labels)")
    src.add_argument("--label-topic", default=None, help="ground-truth label topic in the bag(s)")
    many = p.add_argument_group("many bags: BAG ... --out FOLDER, --label-topic or --label-dir")
    many.add_argument("inputs", nargs="*", metavar="BAG",
                      help="bags, folders (searched recursively) or globs to score")
    many.add_argument("--out", type=Path, default=None,
                      help="output folder of a run over many bags")
    many.add_argument("--label-dir", type=Path, default=None,
                      help="label folders mirroring the bags: <label-dir>/<bag without suffix>/"
                           "<header stamp ns>.png")
    many.add_argument("--overwrite", action="store_true",
                      help="start again in an --out that has a manifest")
    p.add_argument("--max-images", type=int, default=None, help="score only the first N images")
    p.add_argument("--ignore-id", type=int, default=None,
                   help="override the classes file's ignore id")
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON")
    p.add_argument("--figure", type=Path, default=None,
                   help="PNG figure (default: beside --json, else eval_report.png)")
    p.add_argument("--boundary-f", action="store_true",
                   help="also report the boundary F-score (boundary pixels within "
                        "--boundary-tolerance)")
    p.add_argument("--boundary-tolerance", type=int, default=3,
                   help="boundary match distance in pixels")
    p.add_argument("--tta", action="store_true",
                   help="offline quality mode: average scales 0.75/1/1.25 and flips (6x the time)")
    add_pipeline_args(p)
    add_fleet_args(p)
    p.set_defaults(func=run)


# -- data sources ------------------------------------------------------------------------------
def folder_pairs(images: Path, labels: Path, suffix: str, skipped: list[str]) -> list[Pair]:
    """Images and the label file of the same stem (+ suffix); read when scored."""
    if not labels.is_dir():
        raise ConfigError(f"label folder {labels} does not exist or is not a directory")
    by_stem = {p.stem: p for p in labels.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs: list[Pair] = []
    for img in list_images(images):
        lab = by_stem.get(img.stem + suffix)
        if lab is None:
            skipped.append(f"{img.name}: no label file {img.stem + suffix}.* in {labels}")
            continue
        pairs.append((img.name, lambda img=img, lab=lab: (read_rgb(img), "rgb",
                                                          read_label_png(lab))))
    return pairs


# -- report ------------------------------------------------------------------------------------
def print_table(scores: Scores, names: list[str], images: int, skipped: int) -> None:
    gt_pixels = scores.confusion.sum(axis=1)
    width = max(12, *(len(n) for n in names))
    print(f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}  {'gt pixels':>11}")
    for i, n in enumerate(names):
        iou, acc = scores.per_class_iou[i], scores.per_class_accuracy[i]
        fmt = lambda v: "    n/a" if np.isnan(v) else f"{100 * v:6.2f}%"  # noqa: E731
        print(f"{n:<{width}}  {fmt(iou)}  {fmt(acc)}  {int(gt_pixels[i]):>11}")
    present = int((~np.isnan(scores.per_class_iou)).sum())
    print(f"{'mIoU':<{width}}  {100 * scores.miou:6.2f}%  (mean over {present} of "
          f"{len(names)} classes present in prediction or ground truth)")
    print(f"{'pixel acc':<{width}}  {100 * scores.pixel_accuracy:6.2f}%  over "
          f"{scores.counted_pixels} scored pixels in {images} images")
    print(f"{'skipped':<{width}}  {skipped} frames (bad input, not scored)")


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
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images must be >= 1, got {args.max_images}")
    if args.inputs or args.bag_list:
        return run_many(args)
    if fleet_requested(args) or args.out or args.label_dir:
        raise ConfigError("the many-bags options need bags: seg-ros eval BAG ... --out FOLDER ...")
    return run_single(args)


def run_many(args: argparse.Namespace) -> int:
    """Score every bag the inputs name; per-bag reports and the overall report under --out."""
    check_fleet_args(args)
    if args.bag is not None or args.images is not None or args.labels is not None:
        raise ConfigError("bags given as BAG ... (many bags) exclude --bag, --images and --labels")
    if args.out is None:
        raise ConfigError("a run over many bags needs --out FOLDER")
    if bool(args.label_topic) == bool(args.label_dir):
        raise ConfigError("give the ground truth of the bags: --label-topic TOPIC or "
                          "--label-dir DIR")
    if args.boundary_f or args.json or args.figure or args.tta:
        raise ConfigError("--boundary-f, --json, --figure and --tta are for one bag or folder; a "
                          "run over many bags writes OUT/eval_report.json, .md and .png")
    if args.chunk_frames and args.max_images:
        raise ConfigError("--max-images and --chunk-frames cannot be combined")
    label_dir = str(args.label_dir.absolute()) if args.label_dir else None
    options = EvalOptions(args.image_topic, args.label_topic, label_dir, args.ignore_id,
                          args.max_images)
    job = FleetJob(EVAL, args.inputs, args.out.absolute(), spec_from_args(args), eval=options,
                   list_file=args.bag_list, chunk_frames=args.chunk_frames, resume=args.resume,
                   overwrite=args.overwrite, attempts=1 + args.retries)
    outcome = run_fleet(job, args)
    if "json" in outcome.reports:
        rep = json.loads(outcome.reports["json"].read_text())
        scores = scores_from_confusion(np.asarray(rep["confusion"]))
        print_table(scores, rep["class_names"], rep["images"], rep["skipped_frames"])
    print_outcome(outcome, "eval")
    return outcome.exit_code


def run_single(args: argparse.Namespace) -> int:
    """One labelled bag (--bag) or an image folder with its label folder."""
    check_single_args(args)
    pipe = offline_pipeline(pipeline_from_args(args), args.tta, args.crf)
    banner = untrained_banner(pipe)
    if banner:
        print(banner, file=sys.stderr)
    result = score_single(args, pipe)
    report_single(args, pipe, result)
    if banner:
        print(banner)
    return 0


def check_single_args(args: argparse.Namespace) -> None:
    """ConfigError for a data source or option that cannot work, before the model loads."""
    use_bag = args.bag is not None
    if use_bag == (args.images is not None or args.labels is not None):
        raise ConfigError("give either --images and --labels, or --bag with --image-topic and "
                          "--label-topic")
    if use_bag and not (args.image_topic and args.label_topic):
        raise ConfigError("--bag needs --image-topic and --label-topic")
    if not use_bag and not (args.images and args.labels):
        raise ConfigError("--images and --labels are both needed")
    for folder in (args.images, args.labels):
        if folder is not None and not folder.is_dir():
            kind = "image" if folder is args.images else "label"
            raise ConfigError(f"{kind} folder {folder} does not exist or is not a directory")
    if use_bag and not args.bag.exists():
        raise ConfigError(f"bag {args.bag} does not exist")
    if args.boundary_tolerance < 0:
        raise ConfigError(f"--boundary-tolerance must be >= 0, got {args.boundary_tolerance}")


@dataclass
class SingleResult:
    """What scoring one source gives.

    The summed confusion, the boundary scores if asked for, the frames skipped with their
    reasons, and the ignore id used.
    """

    acc: ConfusionAccumulator
    boundary: BoundaryAccumulator | None
    skipped: list[str]
    ignore_id: int | None


def score_single(args: argparse.Namespace, pipe: Any) -> SingleResult:
    """Segment and score every pair of the bag or the folders (the refined labels with --crf)."""
    names = list(pipe.classes.names)
    ignore = args.ignore_id if args.ignore_id is not None else pipe.classes.ignore_id
    boundary = (BoundaryAccumulator(args.boundary_tolerance, ignore, len(names))
                if args.boundary_f else None)
    refiner = refiner_from_args(args, pipe)  # --crf: the refined labels are scored
    if args.bag is not None:
        options = EvalOptions(args.image_topic, args.label_topic, ignore_id=ignore,
                              max_frames=args.max_images)
        with tqdm(desc="eval", unit="img", disable=None) as bar:
            part = eval_bag(args.bag, pipe, options, refiner=refiner, boundary=boundary,
                            control=Control(bar.update))
        acc, skipped = part.acc, part.skipped
    else:
        skipped = []
        pairs = folder_pairs(args.images, args.labels, args.label_suffix, skipped)
        pairs = pairs[: args.max_images]
        acc = ConfusionAccumulator(len(names), ignore)
        score_pairs(tqdm(pairs, desc="eval", unit="img", disable=None), pipe, refiner, acc,
                    boundary, skipped, args.max_images)
    if acc.images == 0:
        raise ConfigError("no image could be scored: " + ("; ".join(skipped[:3]) or "no data"))
    return SingleResult(acc, boundary, skipped, ignore)


def report_single(args: argparse.Namespace, pipe: Any, result: SingleResult) -> None:
    """Print the table and the skipped frames (stderr), write the figure and --json report."""
    names = list(pipe.classes.names)
    acc, boundary, skipped = result.acc, result.boundary, result.skipped
    scores = acc.scores()
    print_table(scores, names, acc.images, len(skipped))
    if boundary is not None:
        b = boundary.scores()
        print(f"boundary F  {100 * b['boundary_f']:6.2f}%  (precision "
              f"{100 * b['boundary_precision']:.2f}%, recall {100 * b['boundary_recall']:.2f}%, "
              f"within {b['tolerance_px']} px)")
    for s in skipped[:10]:
        print(f"skipped {s}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"... and {len(skipped) - 10} more skipped", file=sys.stderr)

    d = pipe.describe()
    report = scores.to_dict(names)
    report.update({"images": acc.images, "skipped_frames": len(skipped), "skipped": skipped,
                   "ignore_id": result.ignore_id, "model": d,
                   "trained": bool(pipe.trained), "crf": args.crf, "tta": args.tta,
                   **(boundary.scores() if boundary is not None else {}),
                   "source": str(args.bag) if args.bag is not None
                   else {"images": str(args.images), "labels": str(args.labels)}})
    figure = args.figure or (args.json.with_suffix(".png") if args.json
                             else Path("eval_report.png"))
    crf = f", crf {args.crf}" if args.crf != "off" else ""
    title = (f"{d['model']} ({d['weights']}{crf}) on {acc.images} images: mIoU "
             f"{scores.miou:.3f}, pixel acc {scores.pixel_accuracy:.3f}"
             + ("  [UNTRAINED MODEL]" if not pipe.trained else ""))
    write_figure(figure, scores, names, title)
    report["figure"] = str(figure)
    print(f"figure: {figure}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"report: {args.json}")
