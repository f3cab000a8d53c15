"""The training loop: resumable, validated, logged, exported as a self-describing weights file."""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from .. import ops
from ..classes import load_classes
from ..errors import ConfigError
from ..metrics import ConfusionAccumulator
from ..models import build_model, read_weights, save_weights
from ..pipeline import IMAGENET_MEAN, IMAGENET_STD, inference_size
from .augment import AugmentConfig, TrainTransform
from .dataset import SegmentationDataset
from .loss import SegLoss, median_frequency_weights

log = logging.getLogger("seg_ros")


@dataclass
class TrainConfig:
    """What a training run is; read from YAML (keys as below), stored in checkpoints and exports."""

    model: str = "ddrnet23_slim"
    classes: str = "camvid"
    train_images: str = ""
    train_labels: str = ""
    val_images: str = ""
    val_labels: str = ""
    ignore_id: int | None = None  # default: the classes file's ignore id
    out_dir: str = "runs/train"
    epochs: int = 100
    batch_size: int = 8
    crop: tuple[int, int] = (360, 480)
    scale: tuple[float, float] = (0.5, 2.0)
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_iters: int = 200
    poly_power: float = 0.9
    ohem: bool = False
    class_weighting: str = "none"  # none | median_frequency
    aux_weight: float = 0.4
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision on CUDA only
    workers: int = 0
    val_every: int = 5
    checkpoint_every: int = 5
    val_size: tuple[int, int] | None = None  # inference size for validation; None = native
    limit_train: int | None = None
    limit_val: int | None = None
    # weights file to start from (fine-tuning), e.g. the shipped weights or a converted checkpoint;
    # a classifier of another class count is left at its random initialisation
    init_weights: str | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"training config {path}: unknown keys {sorted(unknown)}")
        base = path.parent
        for key in ("train_images", "train_labels", "val_images", "val_labels", "out_dir", "init_weights"):
            if data.get(key) and not os.path.isabs(str(data[key])):
                data[key] = str((base / str(data[key])).resolve())
        for key in ("crop", "scale", "val_size"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def poly_lr(cfg: TrainConfig, it: int, total: int) -> float:
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / cfg.warmup_iters
    return cfg.lr * (1 - min(it, total - 1) / total) ** cfg.poly_power


def _collate(batch):
    images, labels = zip(*batch)
    return torch.stack(images), torch.stack(labels)


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: SegmentationDataset, num_classes: int, ignore_id: int | None,
             device: torch.device, mean, std, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Single-scale validation with the inference pipeline's own resize / normalise / argmax ops."""
    model.eval()
    acc = ConfusionAccumulator(num_classes, ignore_id)
    scale = (1.0 / (255.0 * torch.tensor(std))).view(1, 3, 1, 1).to(device)
    shift = (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1).to(device)
    for image, label in dataset.samples:
        frame = ops.image_to_tensor(torch.from_numpy(image).to(device))
        net_hw = inference_size(image.shape[:2], size, True, model.size_divisor)
        x = ops.resize_and_normalize(frame, net_hw, scale, shift, None, torch.float32)
        logits = model(x)
        pred = ops.labels_from_logits(ops.upsample_logits(logits, image.shape[:2]), torch.int64)
        acc.add(label, pred.cpu().numpy())
    return {"scores": acc.scores(), "images": acc.images}


def init_from_weights(model: torch.nn.Module, path: str) -> None:
    """Start training from a weights file: every tensor whose name and shape match is copied;
    the others (e.g. a classifier for another class set) keep their initialisation and are named."""
    weights = read_weights(path)
    own = model.state_dict()
    usable = {k: v for k, v in weights.state_dict.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(usable))
    if not usable:
        raise ConfigError(f"init_weights {path}: no tensor matches model {type(model).__name__}")
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in usable.items()}})
    log.info("initialised %d/%d tensors from %s%s", len(usable), len(own), path,
             f"; kept initialisation for {skipped}" if skipped else "")


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: str | None = None) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.classes = load_classes(cfg.classes)
        self.ignore_id = cfg.ignore_id if cfg.ignore_id is not None else self.classes.ignore_id
        if self.ignore_id is None:
            raise ConfigError("training needs an ignore id (set ignore_id or use a classes file that has one)")
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.mean, self.std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        aug = AugmentConfig(crop=tuple(cfg.crop), scale=tuple(cfg.scale))
        self.train_set = SegmentationDataset(cfg.train_images, cfg.train_labels,
                                             TrainTransform(aug, self.mean, self.std, self.ignore_id, cfg.seed),
                                             limit=cfg.limit_train)
        self.val_set = (SegmentationDataset(cfg.val_images, cfg.val_labels, limit=cfg.limit_val)
                        if cfg.val_images else None)
        self.model = build_model(cfg.model, self.classes.num_classes)
        if cfg.init_weights and not resume:
            init_from_weights(self.model, cfg.init_weights)
        self.model.to(self.device)
        weights = None
        if cfg.class_weighting == "median_frequency":
            weights = median_frequency_weights([label for _, label in self.train_set.samples], self.classes.num_classes)
        elif cfg.class_weighting != "none":
            raise ConfigError(f"class_weighting must be 'none' or 'median_frequency', got {cfg.class_weighting!r}")
        self.criterion = SegLoss(self.ignore_id, ohem=cfg.ohem, aux_weight=cfg.aux_weight,
                                 class_weights=weights).to(self.device)
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                             weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        # reseeded per epoch (seed + epoch) so a resumed run sees the same order as an unbroken one
        self.shuffle = torch.Generator()
        self.loader = torch.utils.data.DataLoader(self.train_set, batch_size=cfg.batch_size, shuffle=True,
                                                  drop_last=True, num_workers=cfg.workers, collate_fn=_collate,
                                                  generator=self.shuffle)
        if len(self.loader) == 0:
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set ({len(self.train_set)})")
        self.epoch, self.iteration, self.best_miou = 0, 0, -1.0
        self.history: list[dict[str, Any]] = []
        if resume:
            self._load_checkpoint(resume)
        self._stop = False

    # -- checkpoints ----------------------------------------------------------------------
    def _checkpoint(self, name: str) -> Path:
        path = self.out / name
        tmp = path.with_suffix(".tmp")
        torch.save({"epoch": self.epoch, "iteration": self.iteration, "best_miou": self.best_miou,
                    "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(), "config": asdict(self.cfg),
                    "rng": torch.get_rng_state(), "aug_rng": self.train_set.transform.rng.bit_generator.state,
                    "val_frame_size": list(self.val_set.samples[0][0].shape[:2]) if self.val_set else None},
                   tmp)
        os.replace(tmp, path)
        return path

    def _load_checkpoint(self, path: str) -> None:
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.iteration, self.best_miou = ckpt["epoch"], ckpt["iteration"], ckpt["best_miou"]
        torch.set_rng_state(ckpt["rng"])
        self.train_set.transform.rng.bit_generator.state = ckpt["aug_rng"]

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- loop -----------------------------------------------------------------------------
    def train_one_epoch(self, total_iters: int, bar: tqdm) -> float:
        self.model.train()
        self.shuffle.manual_seed(self.cfg.seed + self.epoch)
        losses = []
        for images, labels in self.loader:
            if self._stop:
                break
            lr = poly_lr(self.cfg, self.iteration, total_iters)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                loss = self.criterion(self.model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.iteration += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}", best=f"{self.best_miou:.3f}")
        return float(np.mean(losses)) if losses else math.nan

    def validate(self) -> float:
        if self.val_set is None:
            return math.nan
        res = evaluate(self.model, self.val_set, self.classes.num_classes, self.ignore_id, self.device,
                       self.mean, self.std, self.cfg.val_size)
        return float(res["scores"].miou)

    def fit(self, stop_at_epoch: int | None = None) -> dict[str, Any]:
        """Train to ``cfg.epochs`` (or pause after ``stop_at_epoch``, e.g. to fit a time slot)."""
        total = self.cfg.epochs * len(self.loader)
        last_epoch = min(self.cfg.epochs, stop_at_epoch or self.cfg.epochs)
        previous = signal.signal(signal.SIGINT, self._on_interrupt)
        try:
            with tqdm(total=total, initial=self.iteration, desc="train", unit="it", dynamic_ncols=True) as bar:
                while self.epoch < last_epoch and not self._stop:
                    start = time.time()
                    loss = self.train_one_epoch(total, bar)
                    if self._stop:
                        break
                    self.epoch += 1
                    record = {"epoch": self.epoch, "iteration": self.iteration, "loss": loss,
                              "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(time.time() - start, 2)}
                    if self.epoch % self.cfg.val_every == 0 or self.epoch == self.cfg.epochs:
                        miou = self.validate()
                        record["val_miou"] = miou
                        if miou > self.best_miou:
                            self.best_miou = miou
                            self._checkpoint("best.pt")
                    self._log(record)
                    if self.epoch % self.cfg.checkpoint_every == 0 or self.epoch == last_epoch:
                        self._checkpoint("last.pt")
        finally:
            signal.signal(signal.SIGINT, previous)
        if self._stop:
            path = self._checkpoint("interrupted.pt")
            tqdm.write(f"interrupted: saved {path} (resume with --resume {path})")
        plot_history(self.out / "log.jsonl", self.out / "curves.png")
        return {"epoch": self.epoch, "best_miou": self.best_miou, "out_dir": str(self.out)}

    def _on_interrupt(self, signum, frame) -> None:
        self._stop = True


def _validated_size(cfg: TrainConfig, ckpt: dict[str, Any]) -> list[int] | None:
    """The frame size val mIoU was measured at: the configured ``val_size``, else the size of the
    validation frames (recorded in the checkpoint, or read from the first val image)."""
    if cfg.val_size:
        return [int(v) for v in cfg.val_size]
    if ckpt.get("val_frame_size"):
        return [int(v) for v in ckpt["val_frame_size"]]
    first = next(iter(sorted(Path(cfg.val_images).glob("*.png"))), None) if cfg.val_images else None
    if first is None:
        return None
    from PIL import Image
    with Image.open(first) as im:
        return [im.height, im.width]


def export_checkpoint(checkpoint: str | Path, out_path: str | Path, half: bool = True,
                      input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Turn a training checkpoint into the project's weights file (metadata + fp16 tensors).

    ``input_size`` (default: the size validation ran at) becomes the pipeline's inference size, so
    frames from a camera of another resolution are scaled to the object sizes the model learned."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in TrainConfig.__dataclass_fields__})
    classes = load_classes(cfg.classes)
    model = build_model(cfg.model, classes.num_classes)
    model.load_state_dict(ckpt["model"])
    meta = {"arch": cfg.model, "num_classes": classes.num_classes, "classes": classes.to_dicts(),
            "classes_name": classes.name,
            "ignore_id": cfg.ignore_id if cfg.ignore_id is not None else classes.ignore_id,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "input_size": list(input_size) if input_size else _validated_size(cfg, ckpt),
            "train_config": ckpt["config"], "epoch": ckpt["epoch"], "iteration": ckpt["iteration"],
            "val_miou": ckpt["best_miou"], "exported": time.strftime("%Y-%m-%d")}
    save_weights(out_path, model, meta, half=half)
    return meta


def plot_history(log_path: Path, out_png: Path) -> None:
    """Loss, learning rate and validation mIoU against epoch."""
    if not log_path.is_file():
        return
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not records:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    ep = [r["epoch"] for r in records]
    axes[0].plot(ep, [r["loss"] for r in records])
    axes[0].set_title("train loss")
    axes[1].plot(ep, [r["lr"] for r in records])
    axes[1].set_title("learning rate")
    val = [(r["epoch"], r["val_miou"]) for r in records if "val_miou" in r]
    if val:
        axes[2].plot(*zip(*val), marker="o")
    axes[2].set_title("val mIoU")
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
