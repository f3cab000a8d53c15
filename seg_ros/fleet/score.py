"""Score a model on labelled data.

What ``seg-ros eval`` does for one bag or image folder and what every fleet evaluation task runs.
Scores come from summed confusion matrices (seg_ros.metrics).

Ground truth of a bag is a label topic in it (messages paired with image messages by header
stamp, in either order) or a label folder holding one PNG of class ids per image message, named
by its header stamp in nanoseconds (``<stamp_ns>.png``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np

from .. import bags
from ..errors import ConfigError, InputError
from ..metrics import BoundaryAccumulator, ConfusionAccumulator
from .control import NO_CONTROL, Control
from .sources import WHOLE, Span

# (name, load) where load() -> (image, color order, ground truth); it may raise InputError
Loader = Callable[[], tuple[np.ndarray, str, np.ndarray]]
Pair = tuple[str, Loader]


@dataclass(frozen=True)
class EvalOptions:
    """Where the ground truth is (the same for every bag of a fleet run)."""

    image_topic: str | None = None
    label_topic: str | None = None
    label_dir: str | None = None
    ignore_id: int | None = None
    max_frames: int | None = None


@dataclass
class EvalPart:
    """Scores of one bag or chunk.

    ``unpaired_pred`` / ``unpaired_gt`` (by header stamp) are kept for chunks, whose image and
    label may fall on either side of a chunk boundary.
    """

    acc: ConfusionAccumulator
    frames: int = 0
    skipped: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    unpaired_pred: dict[int, np.ndarray] = field(default_factory=dict)
    unpaired_gt: dict[int, np.ndarray] = field(default_factory=dict)


def read_label_png(path: Path) -> np.ndarray:
    """Return a single-channel PNG of class ids (InputError when unreadable or colour-coded)."""
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise InputError("unreadable_label", f"label file {path} cannot be read")
    if lab.ndim != 2:
        raise InputError("bad_label", f"label file {path} has {lab.shape[2]} channels; expected "
                                      f"one channel of class ids (colour-coded labels must be "
                                      f"converted first)")
    return lab


def predict(pipe: Any, refiner: Any, image: np.ndarray, order: str) -> np.ndarray:
    """Return the labels that are scored: the pipeline's, refined when a CRF is on."""
    res = pipe(image, order, keep_scores=refiner is not None)
    return (pipe.refine(res, refiner) if refiner is not None else res).labels


def check_sizes(gt: np.ndarray, image_hw: tuple[int, ...]) -> None:
    if gt.shape != image_hw:
        raise InputError("size_mismatch", f"label is {gt.shape[0]}x{gt.shape[1]}, image is "
                                          f"{image_hw[0]}x{image_hw[1]}")


def score_pairs(pairs: Iterable[Pair], pipe: Any, refiner: Any, acc: ConfusionAccumulator,
                boundary: BoundaryAccumulator | None, skipped: list[str],
                limit: int | None = None) -> None:
    """Segment and score each (image, ground truth) pair.

    A pair with bad input (InputError) is skipped with its reason. Anything else is a bug and
    propagates: it must not shrink the scored set while the command succeeds.
    """
    for name, load in pairs:
        if limit and acc.images >= limit:
            break
        try:
            image, order, gt = load()
            check_sizes(gt, image.shape[:2])
            pred = predict(pipe, refiner, image, order)
            acc.add(gt, pred)
            if boundary is not None:
                boundary.add(gt, pred)
        except InputError as exc:
            skipped.append(f"{name}: {exc}")


def header_stamp(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)


class BagGroundTruth:
    """The image messages of one bag (span) with their ground truth, as scoring pairs.

    Counts the image messages read (``frames``) and reports them to ``control``.
    """

    def __init__(self, bag: bags.BagReader, image_topic: str, skipped: list[str],
                 span: Span = WHOLE, control: Control = NO_CONTROL) -> None:
        bag.select_topics([image_topic], image_only=True)
        self.bag, self.image_topic, self.skipped = bag, image_topic, skipped
        self.span, self.control = span, control
        self.frames = 0
        self.unpaired_images: dict[int, tuple[np.ndarray, str]] = {}
        self.unpaired_gt: dict[int, np.ndarray] = {}

    def _decode(self, m: bags.BagMessage) -> tuple[int, Any] | None:
        """(header stamp, deserialised message); None (skipped with its reason) when bad."""
        if m.topic == self.image_topic:
            self.control.frame()
            self.frames += 1
        try:
            msg = self.bag.deserialize(m)
            return header_stamp(msg), msg
        except InputError as exc:
            self.skipped.append(f"{m.topic} t={m.timestamp}: {exc}")
            return None

    def _image(self, m: bags.BagMessage, msg: Any) -> tuple[np.ndarray, str] | None:
        try:
            return bags.decode_image_msg(msg, m.msgtype)
        except InputError as exc:
            self.skipped.append(f"{m.topic} t={m.timestamp}: {exc}")
            return None

    def from_topic(self, label_topic: str, keep_unpaired: bool = False) -> Iterator[Pair]:
        """Score the image and label messages of a bag, paired by header stamp.

        Image and label messages paired by header stamp (labels may come before or after their
        image). Images left without label are skipped, or with ``keep_unpaired`` kept in
        ``unpaired_images`` / ``unpaired_gt`` for pairing across chunks.
        """
        self.bag.select_topics([label_topic])
        pending_img, pending_lab = self.unpaired_images, self.unpaired_gt
        topics = [self.image_topic, label_topic]
        for m in self.bag.messages(topics, self.span.start, self.span.stop):
            got = self._decode(m)
            if got is None:
                continue
            stamp, msg = got
            if m.topic == self.image_topic:
                image = self._image(m, msg)
                if image is None:
                    continue
                pending_img[stamp] = image
            else:
                try:
                    pending_lab[stamp] = bags.labels_from_msg(msg)
                except InputError as exc:
                    self.skipped.append(f"{m.topic} t={m.timestamp}: {exc}")
                    continue
            if stamp in pending_img and stamp in pending_lab:
                image, order = pending_img.pop(stamp)
                yield f"stamp {stamp}", _loaded(image, order, pending_lab.pop(stamp))
        if not keep_unpaired:
            for stamp in sorted(pending_img):
                self.skipped.append(f"{self.image_topic} stamp {stamp}: no label message with "
                                    f"that stamp on {label_topic}")
            pending_img.clear()

    def from_folder(self, label_folder: Path) -> Iterator[Pair]:
        """Image messages with the label PNG named by their header stamp in ``label_folder``."""
        if not label_folder.is_dir():
            raise ConfigError(f"label folder {label_folder} does not exist or is not a directory")
        for m in self.bag.messages([self.image_topic], self.span.start, self.span.stop):
            got = self._decode(m)
            image = self._image(m, got[1]) if got is not None else None
            if got is None or image is None:
                continue
            label = label_folder / f"{got[0]}.png"
            if not label.is_file():
                self.skipped.append(f"{self.image_topic} stamp {got[0]}: no label file {label}")
                continue
            yield f"stamp {got[0]}", _from_file(*image, label)


def _loaded(image: np.ndarray, order: str, gt: np.ndarray) -> Loader:
    return lambda: (image, order, gt)


def _from_file(image: np.ndarray, order: str, label: Path) -> Loader:
    return lambda: (image, order, read_label_png(label))


def eval_bag(bag_path: Path, pipe: Any, options: EvalOptions, *, refiner: Any = None,
             boundary: BoundaryAccumulator | None = None, label_folder: Path | None = None,
             span: Span = WHOLE, keep_unpaired: bool = False,
             control: Control = NO_CONTROL) -> EvalPart:
    """Score the model on one bag (or the ``span`` of it).

    Ground truth: ``options.label_topic``, else the PNGs in ``label_folder``. With
    ``keep_unpaired`` (chunks), images whose label message is not in the span are predicted and
    returned with the labels left without image.
    """
    if not options.image_topic:
        raise ConfigError("evaluating a bag needs its image topic")
    ignore = options.ignore_id if options.ignore_id is not None else pipe.classes.ignore_id
    part = EvalPart(ConfusionAccumulator(pipe.classes.num_classes, ignore))
    t0 = time.perf_counter()
    with bags.BagReader(bag_path) as bag:
        truth = BagGroundTruth(bag, options.image_topic, part.skipped, span, control)
        if options.label_topic:
            pairs = truth.from_topic(options.label_topic, keep_unpaired)
        elif label_folder is not None:
            pairs = truth.from_folder(label_folder)
        else:
            raise ConfigError("evaluating a bag needs a label topic or a label folder")
        score_pairs(pairs, pipe, refiner, part.acc, boundary, part.skipped, options.max_frames)
        for stamp, (image, order) in truth.unpaired_images.items():
            part.unpaired_pred[stamp] = predict(pipe, refiner, image, order)
    control.flush()
    part.unpaired_gt = truth.unpaired_gt
    part.frames = truth.frames
    part.elapsed_s = time.perf_counter() - t0
    return part


def pair_leftovers(parts: Iterable[EvalPart], acc: ConfusionAccumulator, skipped: list[str],
                   image_topic: str, label_topic: str | None) -> None:
    """Score the images and labels of a bag's chunks that met across a chunk boundary."""
    preds: dict[int, np.ndarray] = {}
    gts: dict[int, np.ndarray] = {}
    for p in parts:
        preds.update(p.unpaired_pred)
        gts.update(p.unpaired_gt)
    for stamp in sorted(preds):
        if stamp not in gts:
            skipped.append(f"{image_topic} stamp {stamp}: no label message with that stamp on "
                           f"{label_topic}")
            continue
        try:
            check_sizes(gts[stamp], preds[stamp].shape)
        except InputError as exc:
            skipped.append(f"stamp {stamp}: {exc}")
            continue
        acc.add(gts[stamp], preds[stamp])
