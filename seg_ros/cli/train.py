"""Training commands: train, export-weights and train-pack.

``seg-ros train --config FILE.yaml [--resume]``, ``seg-ros export-weights CKPT OUT`` and
``seg-ros train-pack``. Runnable without the other tools (and without ROS) as
``python -m seg_ros.cli.train train ...``, e.g. on a lent GPU machine.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .common import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on image/label folders (resumable)")
    p.add_argument("--config", type=Path, required=True, help="training YAML (see config/train/)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue a run: a checkpoint, or (no value) the newest of OUT_DIR's "
                        "interrupted.pt / last.pt, else the config's export / init_weights file")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    p.add_argument("--stop-at-epoch", type=int, default=None,
                   help="pause after this epoch (continue later with --resume)")
    p.add_argument("--out-dir", type=Path, default=None,
                   help="checkpoints and logs (default: the config's out_dir, else "
                        "$SEG_ROS_TRAIN_DIR or ~/.cache/seg_ros/train, / the run's name)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the config's)")
    p.add_argument("--export", type=Path, default=None,
                   help="when done, export best.pt (runs that select on val) or last.pt here")
    p.add_argument("--profile-steps", type=int, default=None, metavar="N",
                   help="time the phases of N training steps (a throwaway run in a temporary "
                        "out_dir), print them and exit")
    p.set_defaults(func=run_train)
    e = sub.add_parser("export-weights",
                       help="export a training checkpoint as a weights file with metadata")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--fp32", action="store_true",
                   help="keep fp32 tensors (default: fp16, half the size)")
    e.add_argument("--input-size", type=parse_size, default=None,
                   help="inference size HxW stored in the file (default: the size validation "
                        "ran at)")
    e.set_defaults(func=run_export)
    k = sub.add_parser("train-pack", help="pack image/label folders small (JPEG + PNG) to carry "
                                          "to a GPU machine (docs/training.md)")
    k.add_argument("--from", dest="source", type=Path, required=True,
                   help="dataset root holding the splits (e.g. ../shared/datasets/camvid)")
    k.add_argument("--splits", nargs="+", default=["train", "val"],
                   help="split folders to pack; labels in <split>annot (default: train val)")
    k.add_argument("--out", type=Path, required=True, help="output folder (an ignored path)")
    k.add_argument("--quality", type=int, default=95, help="JPEG quality of the images")
    k.add_argument("--max-mb", type=float, default=40.0, help="fail when the pack is larger")
    k.set_defaults(func=run_pack)


def run_train(args: argparse.Namespace) -> int:
    from ..training.trainer import TrainConfig, Trainer, export_checkpoint, final_checkpoint
    cfg = TrainConfig.from_yaml(args.config)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.out_dir is not None:
        cfg.out_dir = str(args.out_dir.absolute())
    if args.threads is not None:
        cfg.threads = args.threads
    if args.profile_steps:
        return run_profile(cfg, args.profile_steps)
    summary = Trainer(cfg, resume=args.resume).fit(stop_at_epoch=args.stop_at_epoch)
    best = f"best val mIoU {summary['best_miou']:.4f}" if cfg.val_images else "no validation"
    print(f"done: epoch {summary['epoch']}, {best}, outputs in {summary['out_dir']}")
    final = final_checkpoint(cfg.resolved_out_dir(), cfg)
    if args.export and final is not None:
        export_checkpoint(final, args.export)
        print(f"exported {final} -> {args.export}")
    return 0


def run_profile(cfg, steps: int) -> int:
    """Print the phases of a training step.

    Median wall and CPU milliseconds per phase of a training step (the first step, which warms
    up, left out).
    """
    import os
    import tempfile
    import torch
    from ..training.trainer import Trainer
    with tempfile.TemporaryDirectory() as tmp:
        cfg.out_dir, cfg.export = tmp, None
        cfg.init_weights = None  # the starting weights do not change the timing
        trainer = Trainer(cfg)
        clock = trainer.profile(steps + 1)
    print(f"{cfg.name}: batch {cfg.batch_size}, crop {cfg.crop[0]}x{cfg.crop[1]}, "
          f"{trainer.device}, {torch.get_num_threads()} threads, channels_last "
          f"{cfg.channels_last}, compile {cfg.compile}; frames decoded once in "
          f"{trainer.decode_s:.1f} s; load average {os.getloadavg()[0]:.2f}")
    wall = {phase: float(np.median(v[1:])) for phase, v in clock.times.items()}
    cpu = {phase: float(np.median(v[1:])) for phase, v in clock.cpu_times.items()}
    print(f"  {'phase':<10} {'wall ms':>9} {'cpu ms':>9}")
    for phase in wall:
        print(f"  {phase:<10} {1e3 * wall[phase]:9.1f} {1e3 * cpu[phase]:9.1f}")
    first = sum(v[0] for v in clock.times.values())
    print(f"  {'step':<10} {1e3 * sum(wall.values()):9.1f} {1e3 * sum(cpu.values()):9.1f}"
          f"  (medians of {steps} steps; the first step took {first:.2f} s)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..training.trainer import export_checkpoint
    meta = export_checkpoint(args.checkpoint, args.out, half=not args.fp32,
                             input_size=args.input_size)
    size = "x".join(map(str, meta["input_size"])) if meta["input_size"] else "each frame's own"
    miou = f"{meta['val_miou']:.4f}" if meta["val_miou"] is not None else "not validated"
    print(f"exported {args.checkpoint} -> {args.out} ({meta['arch']}, val mIoU {miou}, "
          f"input size {size})")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from ..training.pack import pack_splits
    summary = pack_splits(args.source, args.splits, args.out, args.quality, args.max_mb)
    print(f"packed {summary['frames']} frames of {', '.join(args.splits)} into {args.out}: "
          f"{summary['bytes'] / 1e6:.1f} MB")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the training commands alone: imports neither the other tools nor ROS."""
    import logging

    from .main import run_command
    logging.basicConfig(level=logging.INFO, format="[seg-ros] %(levelname)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m seg_ros.cli.train")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(sub)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
