"""The training loop: resumable, validated, logged, exported as a self-describing weights file."""
from __future__ import annotations

import json
import copy
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
from .augment import AugmentConfig, BatchAugment, draw
from .dataset import SegmentationDataset, TrainFrames, read_pairs
from .loss import SegLoss, median_frequency_weights

log = logging.getLogger("seg_ros")
PATH_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "out_dir", "init_weights",
             "export")
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def default_train_dir() -> Path:
    """Return the folder that holds the training runs.

    Where runs keep their checkpoints: ``$SEG_ROS_TRAIN_DIR``, else ~/.cache/seg_ros/train;
    outside the work tree, so a long run's state survives a fresh checkout between sessions.
    """
    default = Path.home() / ".cache" / "seg_ros" / "train"
    return Path(os.environ.get("SEG_ROS_TRAIN_DIR") or default)


@dataclass
class TrainConfig:
    """What a training run is: read from YAML (keys below), stored in checkpoints and exports."""

    name: str = ""  # run name (default: the YAML file's stem); names the default out_dir
    model: str = "ddrnet23_slim"
    classes: str = "camvid"
    # one folder or a list of folders (paired by position), e.g. CamVid train and val
    train_images: str | list[str] = ""
    train_labels: str | list[str] = ""
    val_images: str = ""  # empty: no validation, no selection (the final epoch is the result)
    val_labels: str = ""
    ignore_id: int | None = None  # default: the classes file's ignore id
    out_dir: str = ""  # checkpoints and logs; default: default_train_dir() / name
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
    amp_dtype: str = "float16"  # float16 (with a grad scaler) | bfloat16
    channels_last: bool = False  # pays on GPUs (tensor cores); measured not to on the 2-core CPU
    compile: bool = False  # torch.compile the training forward (minutes of compiling first)
    threads: int = 0  # CPU threads (0 = torch's default)
    val_every: int = 5  # 0: never
    select_best: bool = True  # keep best.pt by val mIoU; false: no selection on val
    checkpoint_every: int = 5
    val_size: tuple[int, int] | None = None  # inference size for validation; None = native
    limit_train: int | None = None
    limit_val: int | None = None
    # weights file to start from (fine-tuning), e.g. the shipped weights or a converted checkpoint;
    # a classifier of another class count is left at its random initialisation
    init_weights: str | None = None
    # weights file rewritten at every checkpoint (the current state); default out_dir/weights.pt
    export: str | None = None
    # GPU runs: fit the epoch count to this many seconds, measured on a few steps first
    time_budget_s: float | None = None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        """Read a training config from YAML.

        Keys of this class; ``base: other.yaml`` starts from another config (its relative
        paths relative to it). Relative paths are relative to the file that sets them.
        """
        data = _read_yaml(Path(path))
        data.setdefault("name", Path(path).stem)
        for key in ("crop", "scale", "val_size"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    def resolved_out_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else default_train_dir() / (self.name or "run")

    def export_path(self) -> Path:
        return Path(self.export) if self.export else self.resolved_out_dir() / "weights.pt"


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f"training config {path} does not exist")
    if path in seen:
        raise ConfigError(f"training config {path}: 'base' loops back to itself")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - set(TrainConfig.__dataclass_fields__) - {"base"}
    if unknown:
        raise ConfigError(f"training config {path}: unknown keys {sorted(unknown)}")
    for key in PATH_KEYS:
        if data.get(key):
            data[key] = _resolve_paths(data[key], path.parent)
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_yaml(path.parent / str(base), seen + (path,))
    merged.pop("name", None)  # a run's name is its own file's
    return {**merged, **data}


def _resolve_paths(value: Any, base: Path) -> Any:
    if isinstance(value, (list, tuple)):
        return [_resolve_paths(v, base) for v in value]
    text = os.path.expanduser(str(value))
    return text if os.path.isabs(text) else str((base / text).resolve())


def poly_lr(cfg: TrainConfig, it: int, total: int) -> float:
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / cfg.warmup_iters
    return cfg.lr * (1 - min(it, total - 1) / total) ** cfg.poly_power


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: SegmentationDataset, num_classes: int,
             ignore_id: int | None, device: torch.device, mean, std,
             size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Validate at a single scale with the inference pipeline's resize, normalise and argmax."""
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
    """Initialise a model from a weights file.

    Start training from a weights file: every tensor whose name and shape match is copied;
    the others (e.g. a classifier for another class set) keep their initialisation and are named.
    """
    weights = read_weights(path)
    own = model.state_dict()
    usable = {k: v for k, v in weights.state_dict.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(usable))
    if not usable:
        raise ConfigError(f"init_weights {path}: no tensor matches model {type(model).__name__}")
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in usable.items()}})
    log.info("initialised %d/%d tensors from %s%s", len(usable), len(own), path,
             f"; kept initialisation for {skipped}" if skipped else "")


class StepClock:
    """Clock of the phases of a training step.

    Wall and process CPU time of the phases of a training step (``seg-ros train
    --profile-steps``); waits for the GPU at each mark so the time lands on the phase that spent
    it. On a shared CPU the wall time includes the waits for other processes; with one thread
    the CPU time does not, which makes it the figure to compare code changes by.
    """

    def __init__(self, device: torch.device) -> None:
        self.sync = device.type == "cuda"
        self.times: dict[str, list[float]] = {}
        self.cpu_times: dict[str, list[float]] = {}
        self._last = self._last_cpu = 0.0
        self.start()

    def start(self) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self._last, self._last_cpu = time.perf_counter(), time.process_time()

    def mark(self, phase: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now, cpu = time.perf_counter(), time.process_time()
        self.times.setdefault(phase, []).append(now - self._last)
        self.cpu_times.setdefault(phase, []).append(cpu - self._last_cpu)
        self._last, self._last_cpu = now, cpu


def _mark(clock: StepClock | None, phase: str) -> None:
    if clock is not None:
        clock.mark(phase)


class Trainer:
    """One training run.

    One training run. ``resume``: a checkpoint path, or ``"auto"`` for the newest of
    ``out_dir``'s interrupted.pt / last.pt, falling back to the ``export`` weights file, then to
    ``init_weights`` (see :meth:`_resume`).
    """

    def __init__(self, cfg: TrainConfig, resume: str | None = None) -> None:
        self.cfg = cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.classes = load_classes(cfg.classes)
        self.ignore_id = cfg.ignore_id if cfg.ignore_id is not None else self.classes.ignore_id
        if self.ignore_id is None:
            raise ConfigError("training needs an ignore id (set ignore_id or use a classes file "
                              "that has one)")
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop size: autotune once
        self.out = cfg.resolved_out_dir()
        self.out.mkdir(parents=True, exist_ok=True)
        self.mean, self.std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        t0 = time.perf_counter()
        self.frames, weights = self._load_train_frames()
        self.val_set = (SegmentationDataset(cfg.val_images, cfg.val_labels, limit=cfg.limit_val)
                        if cfg.val_images else None)
        self.decode_s = time.perf_counter() - t0
        self.augment = BatchAugment(AugmentConfig(crop=tuple(cfg.crop), scale=tuple(cfg.scale)),
                                    self.mean, self.std, self.ignore_id, cfg.channels_last)
        self.batches_per_epoch = len(self.frames) // cfg.batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training set "
                              f"({len(self.frames)})")
        self.model = build_model(cfg.model, self.classes.num_classes).to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.criterion = SegLoss(self.ignore_id, ohem=cfg.ohem, aux_weight=cfg.aux_weight,
                                 class_weights=weights).to(self.device)
        self.optimizer = self._optimizer()
        if cfg.amp_dtype not in AMP_DTYPES:
            raise ConfigError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, "
                              f"got {cfg.amp_dtype!r}")
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.amp_dtype = AMP_DTYPES[cfg.amp_dtype]
        fp16 = self.use_amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.epoch, self.iteration, self.step_in_epoch, self.best_miou = 0, 0, 0, -1.0
        self.history: list[dict[str, Any]] = []
        self._resume(resume)
        self._stop = False

    def _load_train_frames(self) -> tuple[TrainFrames, torch.Tensor | None]:
        """Load the training frames onto the device; return them and their class weights."""
        cfg = self.cfg
        _, samples = read_pairs(cfg.train_images, cfg.train_labels, cfg.limit_train)
        weights = None
        if cfg.class_weighting == "median_frequency":
            weights = median_frequency_weights([label for _, label in samples],
                                               self.classes.num_classes)
        elif cfg.class_weighting != "none":
            raise ConfigError(f"class_weighting must be 'none' or 'median_frequency', "
                              f"got {cfg.class_weighting!r}")
        return TrainFrames(samples, self.device), weights

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")

    # -- checkpoints ----------------------------------------------------------------------
    def _resume(self, resume: str | None) -> None:
        """Restore a run's state for ``--resume``.

        Restore a checkpoint; with ``"auto"`` fall back to the last exported weights (this
        run's ``export`` file, else ``init_weights``): the model and, when the file is an export
        of this run, its epoch and iteration; the optimiser's state restarts then.
        """
        if resume is None:
            if self.cfg.init_weights:
                init_from_weights(self.model, self.cfg.init_weights)
            return
        if resume != "auto":
            if not Path(resume).is_file():
                raise ConfigError(f"checkpoint {resume} does not exist")
            self._load_checkpoint(resume)
            return
        found = [p for p in (self.out / "interrupted.pt", self.out / "last.pt") if p.is_file()]
        if found:
            newest = max(found, key=lambda p: p.stat().st_mtime)
            log.info("resuming from %s", newest)
            self._load_checkpoint(str(newest))
            return
        export = self.cfg.export_path()
        fallback = str(export) if export.is_file() else self.cfg.init_weights
        log.warning("no checkpoint in %s: starting from %s", self.out,
                    fallback or "random initialisation")
        if fallback:
            self._start_from_weights(fallback)

    def _start_from_weights(self, path: str) -> None:
        init_from_weights(self.model, path)
        meta = read_weights(path).meta
        own_run = (meta.get("train_config") or {}).get("name") == self.cfg.name and self.cfg.name
        if own_run and meta.get("epoch"):
            self.epoch, self.iteration = int(meta["epoch"]), int(meta["iteration"])
            log.warning("continuing %s at epoch %d from its exported weights %s (optimiser state "
                        "restarts)", self.cfg.name, self.epoch, path)

    def _checkpoint(self, name: str) -> Path:
        path = self.out / name
        tmp = path.with_suffix(".tmp")
        torch.save({"epoch": self.epoch, "iteration": self.iteration,
                    "step_in_epoch": self.step_in_epoch, "best_miou": self.best_miou,
                    "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(), "config": asdict(self.cfg),
                    "rng": torch.get_rng_state(), "frame_size": list(self._frame_size())}, tmp)
        os.replace(tmp, path)
        return path

    def _frame_size(self) -> tuple[int, int]:
        """Return the size the model is meant to run at: the val frames', else the training's."""
        if self.val_set is not None:
            return tuple(self.val_set.samples[0][0].shape[:2])
        return self.frames.frame_hw

    def _load_checkpoint(self, path: str) -> None:
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.iteration = ckpt["epoch"], ckpt["iteration"]
        self.best_miou = ckpt["best_miou"]
        self.step_in_epoch = ckpt.get("step_in_epoch", 0)
        torch.set_rng_state(ckpt["rng"].cpu())

    def _export(self) -> None:
        """Rewrite the ``export`` weights file with the current weights (fp16 + metadata)."""
        miou = self.best_miou if self.best_miou >= 0 else None
        save_weights(self.cfg.export_path(), self.model, weights_meta(
            asdict(self.cfg), self.classes, self.epoch, self.iteration, miou,
            list(self._frame_size()), self.cfg.val_size), half=True)

    def _log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # -- one step -------------------------------------------------------------------------
    def epoch_plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return this epoch's frame order and augmentation draws.

        This epoch's frame order (batches, batch_size) and augmentation draws, a function of
        seed and epoch alone: a resumed run trains on exactly the batches an unbroken one would.
        """
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.epoch)
        b, n = self.cfg.batch_size, self.batches_per_epoch
        order = torch.randperm(len(self.frames), generator=g)[: n * b].view(n, b)
        return order, draw(n, b, g)

    def make_batch(self, indices: torch.Tensor, draws: torch.Tensor,
                   clock: StepClock | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented network inputs and labels of the frames ``indices`` (on the device)."""
        parts = []
        for images, labels, pos in self.frames.groups(indices):
            _mark(clock, "batch")
            d = draws if pos is None else draws[pos:pos + 1]
            parts.append(self.augment(images, labels, d))
        x, y = (parts[0] if len(parts) == 1 else
                (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])))
        _mark(clock, "augment")
        return x, y

    def train_step(self, images: torch.Tensor, labels: torch.Tensor,
                   clock: StepClock | None = None) -> torch.Tensor:
        """One optimiser step at the schedule's learning rate; the loss, detached (no sync)."""
        total = self.cfg.epochs * self.batches_per_epoch
        lr = poly_lr(self.cfg, self.iteration, total)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            outputs = self.forward(images)
            _mark(clock, "forward")
            loss = self.criterion(outputs, labels)
        _mark(clock, "loss")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        _mark(clock, "backward")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        _mark(clock, "optimizer")
        self.iteration += 1
        return loss.detach()

    # -- loop -----------------------------------------------------------------------------
    def train_one_epoch(self, bar: tqdm) -> float:
        self.model.train()
        order, draws = self.epoch_plan()
        losses = []
        for b in range(self.step_in_epoch, self.batches_per_epoch):
            if self._stop:
                break
            losses.append(self.train_step(*self.make_batch(order[b], draws[b])))
            self.step_in_epoch = b + 1
            bar.update(1)
            if len(losses) % 10 == 1:  # reading the loss waits for the GPU: not every step
                best = {"best": f"{self.best_miou:.3f}"} if self.val_set is not None else {}
                bar.set_postfix(loss=f"{losses[-1].item():.3f}", **best)
        return float(torch.stack(losses).float().mean()) if losses else math.nan

    def validate(self) -> float:
        if self.val_set is None:
            return math.nan
        res = evaluate(self.model, self.val_set, self.classes.num_classes, self.ignore_id,
                       self.device, self.mean, self.std, self.cfg.val_size)
        return float(res["scores"].miou)

    def profile(self, steps: int) -> StepClock:
        """Time the phases of some training steps.

        The phases' times of ``steps`` training steps (the run's own batches and step); the
        model and optimiser move on as in training, so profile a throwaway run.
        """
        clock = StepClock(self.device)
        self._steps(steps, clock)
        return clock

    def _steps(self, steps: int, clock: StepClock | None = None) -> None:
        """Run ``steps`` training steps on epoch 0's batches (profiling, timing)."""
        self.model.train()
        order, draws = self.epoch_plan()
        for b in range(steps):
            if clock is not None:
                clock.start()
            i = b % self.batches_per_epoch
            self.train_step(*self.make_batch(order[i], draws[i], clock), clock=clock)

    def fit(self, stop_at_epoch: int | None = None) -> dict[str, Any]:
        """Train to ``cfg.epochs`` (or pause after ``stop_at_epoch``, e.g. to fit a time slot)."""
        if self.cfg.time_budget_s and self.iteration == 0:
            self._fit_epochs_to_budget(self.cfg.time_budget_s)
        total = self.cfg.epochs * self.batches_per_epoch
        last_epoch = min(self.cfg.epochs, stop_at_epoch or self.cfg.epochs)
        handlers = {sig: signal.signal(sig, self._on_interrupt)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with tqdm(total=total, initial=self.iteration, desc="train", unit="it",
                      dynamic_ncols=True, mininterval=5.0) as bar:
                while self.epoch < last_epoch and not self._stop:
                    self._run_epoch(bar, last_epoch)
        finally:
            for sig, previous in handlers.items():
                signal.signal(sig, previous)
        if self._stop:
            path = self._checkpoint("interrupted.pt")
            self._export()
            tqdm.write(f"interrupted: saved {path} (continue with --resume)")
        plot_history(self.out / "log.jsonl", self.out / "curves.png")
        return {"epoch": self.epoch, "best_miou": self.best_miou, "out_dir": str(self.out)}

    def _run_epoch(self, bar: tqdm, last_epoch: int) -> None:
        start = time.time()
        loss = self.train_one_epoch(bar)
        if self._stop:
            return
        self.epoch += 1
        self.step_in_epoch = 0
        record = {"epoch": self.epoch, "iteration": self.iteration, "loss": loss,
                  "lr": self.optimizer.param_groups[0]["lr"],
                  "seconds": round(time.time() - start, 2)}
        cfg = self.cfg
        if self.val_set is not None and cfg.val_every and (
                self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs):
            miou = self.validate()
            record["val_miou"] = miou
            if miou > self.best_miou:
                self.best_miou = miou
                if cfg.select_best:
                    self._checkpoint("best.pt")
        self._log(record)
        if self.epoch % cfg.checkpoint_every == 0 or self.epoch == last_epoch:
            self._checkpoint("last.pt")
            self._export()
        interrupted = self.out / "interrupted.pt"
        if interrupted.is_file():
            interrupted.unlink()  # superseded by the checkpoints of this epoch

    def _fit_epochs_to_budget(self, budget_s: float) -> None:
        """Fit the epoch count to a time budget.

        Time a few steps (the model and optimiser are restored after), then train for as many
        epochs as fit ``budget_s`` seconds (at most ``cfg.epochs``); the schedule follows.
        """
        saved = copy.deepcopy((self.model.state_dict(), self.optimizer.state_dict(),
                               self.scaler.state_dict(), torch.get_rng_state()))
        warm, timed = 3, 10
        self._steps(warm)
        clock = StepClock(self.device)
        self._steps(timed)
        clock.mark("steps")
        per_step = clock.times["steps"][0] / timed
        self.model.load_state_dict(saved[0])
        self.optimizer.load_state_dict(saved[1])
        self.scaler.load_state_dict(saved[2])
        torch.set_rng_state(saved[3])
        self.iteration = 0
        fits = int(budget_s / (per_step * self.batches_per_epoch))
        epochs = max(1, min(self.cfg.epochs, fits))
        log.info("%.1f ms/step: %d epochs fit %.0f s (config: %d)", 1e3 * per_step, epochs,
                 budget_s, self.cfg.epochs)
        self.cfg.epochs = epochs

    def _on_interrupt(self, signum, frame) -> None:
        self._stop = True


def _validated_size(cfg: TrainConfig, ckpt: dict[str, Any]) -> list[int] | None:
    """Return the frame size the model was validated at.

    The frame size the model was validated (or, without validation, trained) at: the
    configured ``val_size``, else the frames' size recorded in the checkpoint, else the size of
    the first validation image (checkpoints of older versions).
    """
    if cfg.val_size:
        return [int(v) for v in cfg.val_size]
    recorded = ckpt.get("frame_size") or ckpt.get("val_frame_size")
    if recorded:
        return [int(v) for v in recorded]
    pngs = sorted(Path(cfg.val_images).glob("*.png")) if cfg.val_images else []
    first = pngs[0] if pngs else None
    if first is None:
        return None
    from PIL import Image
    with Image.open(first) as im:
        return [im.height, im.width]


def weights_meta(config: dict[str, Any], classes, epoch: int, iteration: int,
                 val_miou: float | None, frame_size: list[int] | None,
                 input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Return the metadata of an exported weights file.

    The metadata of an exported weights file: everything the pipeline needs besides tensors.
    ``input_size`` (default ``frame_size``) becomes the pipeline's inference size, so frames from
    a camera of another resolution are scaled to the object sizes the model learned.
    """
    ignore = config.get("ignore_id")
    return {"arch": config["model"], "num_classes": classes.num_classes,
            "classes": classes.to_dicts(), "classes_name": classes.name,
            "ignore_id": ignore if ignore is not None else classes.ignore_id,
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "input_size": list(input_size) if input_size else frame_size,
            "train_config": config, "epoch": epoch, "iteration": iteration,
            "val_miou": val_miou, "exported": time.strftime("%Y-%m-%d")}


def export_checkpoint(checkpoint: str | Path, out_path: str | Path, half: bool = True,
                      input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Turn a training checkpoint into the project's weights file (metadata + fp16 tensors)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    known = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
    classes = load_classes(cfg.classes)
    model = build_model(cfg.model, classes.num_classes)
    model.load_state_dict(ckpt["model"])
    miou = ckpt["best_miou"] if ckpt["best_miou"] >= 0 else None
    meta = weights_meta(ckpt["config"], classes, ckpt["epoch"], ckpt["iteration"], miou,
                        _validated_size(cfg, ckpt), input_size)
    save_weights(out_path, model, meta, half=half)
    return meta


def final_checkpoint(out_dir: Path, cfg: TrainConfig) -> Path | None:
    """Return what a finished run exports: best.pt when it selected on val, else last.pt."""
    best, last = out_dir / "best.pt", out_dir / "last.pt"
    if cfg.select_best and best.is_file():
        return best
    return last if last.is_file() else None


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
