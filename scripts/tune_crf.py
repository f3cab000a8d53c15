#!/usr/bin/env python3
r"""Tune a dense-CRF profile for a network and data set on frames other than the ones reported.

The network runs once per frame; each candidate CRF setting then refines the kept class
probabilities (pydensecrf, the same ``dense_labels`` the pipeline uses) and is scored by mIoU on
the tuning frames. The best setting is written as a profile YAML (config/crf/<name>.yaml) and, with
``--report-images/--report-labels``, the raw network, the DeepLab v2 defaults and the new profile
are scored on the report split (e.g. CamVid val) - a split the tuning never saw.

    C=../shared/datasets/camvid
    .venv/bin/python scripts/tune_crf.py --images $C/train --labels $C/trainannot --every 4 \
        --report-images $C/val --report-labels $C/valannot --out config/crf/camvid.yaml
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from seg_ros.crf import CRFConfig, load_crf_config
from seg_ros.crf.dense import dense_labels
from seg_ros.metrics import ConfusionAccumulator
from seg_ros.pipeline import SegmentationPipeline
from seg_ros.training.dataset import paired_files, read_pair

# Around DeepLab v2's values (w1 4, theta_alpha 67, theta_beta 3, w2 3, theta_gamma 1): CamVid's
# frames are smaller (360x480 vs VOC's ~500x375 objects) and its thin classes (pole, sign, fence)
# suffer from a wide bilateral kernel, so narrower and weaker kernels are in the grid.
GRID = {
    "bilateral_weight": [3.0, 4.0],
    "theta_alpha": [30.0, 67.0],
    "theta_beta": [3.0, 6.0],
    "gaussian_weight": [3.0],
    "theta_gamma": [1.0],
    "iterations": [10],
}


def network_outputs(pipe: SegmentationPipeline, pairs, every: int):
    """(rgb, probabilities (C, H, W) float32, ground truth, raw labels) per ``every``-th pair."""
    import torch

    from seg_ros.crf.unary import class_probabilities

    out = []
    for image_path, label_path in pairs[::every]:
        rgb, gt = read_pair(image_path, label_path)
        result = pipe(rgb, "rgb", keep_scores=True)
        logits = result.refine_input[0]
        with torch.inference_mode():
            probs = class_probabilities(logits, gt.shape)[0].cpu().numpy()
        out.append((rgb, probs, gt, result.labels))
    return out


def _score_one(args) -> np.ndarray:
    frames, config, num_classes, ignore_id = args
    acc = ConfusionAccumulator(num_classes, ignore_id)
    for rgb, probs, gt, _ in frames:
        acc.add(gt, dense_labels(rgb, probs, config))
    return acc.matrix


def score(frames, config: dict | None, num_classes: int, ignore_id, workers: int) -> float:
    """Mean IoU % of ``config`` (None: the raw network) over ``frames``, split across workers."""
    if config is None:
        acc = ConfusionAccumulator(num_classes, ignore_id)
        for _, _, gt, labels in frames:
            acc.add(gt, labels)
        return 100 * acc.scores().miou
    chunks = [frames[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        matrices = list(
            pool.map(_score_one, [(c, config, num_classes, ignore_id) for c in chunks])
        )
    acc = ConfusionAccumulator(num_classes, ignore_id)
    acc.matrix = sum(matrices)
    return 100 * acc.scores().miou


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="tuning images (not the reported split)")
    parser.add_argument("--labels", required=True)
    parser.add_argument("--every", type=int, default=4, help="use every N-th tuning frame")
    parser.add_argument("--report-images")
    parser.add_argument("--report-labels")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="profile YAML to write")
    parser.add_argument("--json", type=Path, help="every candidate's score")
    args = parser.parse_args()

    pipe = SegmentationPipeline(weights=args.weights, device="cpu")
    classes = pipe.classes
    started = time.monotonic()
    tuning = network_outputs(pipe, paired_files(args.images, args.labels), args.every)
    print(f"{len(tuning)} tuning frames, network run in {time.monotonic() - started:.0f} s",
          flush=True)
    base = load_crf_config().to_dict()
    results = [{"config": None, "miou": score(tuning, None, classes.num_classes,
                                              classes.ignore_id, args.workers)}]
    print(f"raw network: {results[0]['miou']:.2f}", flush=True)
    names = list(GRID)
    for values in itertools.product(*GRID.values()):
        config = {**base, **dict(zip(names, values))}
        miou = score(tuning, config, classes.num_classes, classes.ignore_id, args.workers)
        results.append({"config": dict(zip(names, values)), "miou": miou})
        print(f"{dict(zip(names, values))}: {miou:.2f}", flush=True)
    best = max(results[1:], key=lambda r: r["miou"])
    profile = CRFConfig.from_dict({**base, **best["config"]}).to_dict()
    report = {"tuning_frames": len(tuning), "tuning_seconds": round(time.monotonic() - started),
              "best": best, "candidates": results}
    if args.report_images:
        frames = network_outputs(pipe, paired_files(args.report_images, args.report_labels), 1)
        report["report"] = {name: score(frames, config, classes.num_classes, classes.ignore_id,
                                         args.workers)
                            for name, config in (("none", None), ("deeplab_v2", base),
                                                 ("profile", profile))}
        print(f"report split ({len(frames)} frames): {report['report']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(profile_yaml(profile, best, len(tuning), args))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def profile_yaml(profile: dict, best: dict, frames: int, args) -> str:
    lines = [
        f"# Dense-CRF profile tuned by scripts/tune_crf.py on {frames} frames of {args.images}",
        f"# (every {args.every}th; weights {args.weights}): tuning mIoU {best['miou']:.2f} %.",
        "# Only the dense CRF's parameters were tuned; the fast CRF keeps its defaults.",
    ]
    lines += [f"{name}: {value}" for name, value in profile.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
