"""``seg-ros train --config FILE.yaml [--resume CKPT]`` and ``seg-ros export-weights CKPT OUT``."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import parse_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on image/label folders (resumable)")
    p.add_argument("--config", type=Path, required=True, help="training YAML (see config/train/)")
    p.add_argument("--resume", default=None, help="checkpoint to continue from (last.pt, interrupted.pt)")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    p.add_argument("--stop-at-epoch", type=int, default=None,
                   help="pause after this epoch (resume later with --resume last.pt)")
    p.add_argument("--export", type=Path, default=None, help="export the best checkpoint here when done")
    p.set_defaults(func=run_train)
    e = sub.add_parser("export-weights", help="export a training checkpoint as a weights file with metadata")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--fp32", action="store_true", help="keep fp32 tensors (default: fp16, half the size)")
    e.add_argument("--input-size", type=parse_size, default=None,
                   help="inference size HxW stored in the file (default: the size validation ran at)")
    e.set_defaults(func=run_export)


def run_train(args: argparse.Namespace) -> int:
    from ..training.trainer import Trainer, TrainConfig, export_checkpoint
    cfg = TrainConfig.from_yaml(args.config)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    summary = Trainer(cfg, resume=args.resume).fit(stop_at_epoch=args.stop_at_epoch)
    print(f"done: epoch {summary['epoch']}, best val mIoU {summary['best_miou']:.4f}, outputs in {summary['out_dir']}")
    best = Path(cfg.out_dir) / "best.pt"
    if args.export and best.is_file():
        export_checkpoint(best, args.export)
        print(f"exported {best} -> {args.export}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..training.trainer import export_checkpoint
    meta = export_checkpoint(args.checkpoint, args.out, half=not args.fp32, input_size=args.input_size)
    size = "x".join(map(str, meta["input_size"])) if meta["input_size"] else "each frame's own"
    print(f"exported {args.checkpoint} -> {args.out} ({meta['arch']}, val mIoU {meta['val_miou']:.4f}, "
          f"input size {size})")
    return 0
