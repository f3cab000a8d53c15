"""Segment the images of one bag (or one chunk of it) into an output bag.

What ``seg-ros replay`` does for one bag and what every fleet task runs.

The output bag holds every input message unchanged plus ``<topic>/labels`` (mono8),
``<topic>/color_mask`` and ``<topic>/overlay`` (rgb8) per image message, at the input's bag
timestamp and with its header. Frames that cannot be decoded or segmented are counted by reason
and do not stop the bag. A bag that fails or is interrupted leaves no partial output behind.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from .. import bags
from ..errors import InputError
from .control import NO_CONTROL, Control
from .sources import WHOLE, Span

OUTPUT_SUFFIXES = ("labels", "color_mask", "overlay")


class OverlaySink(Protocol):
    """Receives each overlay frame (the replay tool's video writer)."""

    def add(self, rgb: np.ndarray) -> None: ...


@dataclass(frozen=True)
class ReplayOptions:
    """What to segment and how to write it (the same for every bag of a fleet run)."""

    topics: tuple[str, ...] | None = None
    max_frames: int | None = None
    alpha: float = 0.5
    storage: str | None = None
    overwrite: bool = False
    crf_replaces_labels: bool = False


@dataclass
class ReplayPart:
    """Counts of one replayed bag or chunk; parts of one bag add up (see :func:`summarize`)."""

    input: str
    output: str
    topics: list[str] = field(default_factory=list)
    frames: int = 0
    segmented: int = 0
    failures: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0


def latency_summary(values_ms: Sequence[float]) -> dict[str, float | None]:
    """Mean / p50 / p90 / p99 / max of a list of latencies (ms); None when empty."""
    if not len(values_ms):
        return {k: None for k in ("mean", "p50", "p90", "p99", "max")}
    a = np.asarray(values_ms, dtype=np.float64)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max())}


def output_suffixes(refiner: Any, crf_replaces_labels: bool) -> tuple[str, ...]:
    """Topic suffixes written per image topic.

    With a CRF the refined ones get ``_refined`` unless they replace the raw ones.
    """
    if refiner is None or crf_replaces_labels:
        return OUTPUT_SUFFIXES
    return OUTPUT_SUFFIXES + tuple(s + "_refined" for s in OUTPUT_SUFFIXES)


def output_messages(header: Any, result: Any, suffix: str = "") -> dict[str, Any]:
    """Labels / color_mask / overlay messages of one segmentation result."""
    return {f"labels{suffix}": bags.image_msg_from_array(header, result.labels, "labels"),
            f"color_mask{suffix}": bags.image_msg_from_array(header, result.color),
            f"overlay{suffix}": bags.image_msg_from_array(header, result.overlay)}


def segment_message(bag: bags.BagReader, m: bags.BagMessage, pipe: Any, refiner: Any, alpha: float,
                    refined_suffix: str) -> tuple[dict[str, Any], np.ndarray]:
    """Return the output messages of one image message and the overlay (InputError when bad)."""
    msg = bag.deserialize(m)
    image, order = bags.decode_image_msg(msg, m.msgtype, pipe.config.max_input_pixels)
    res = pipe(image, order, color=True, overlay=True, overlay_alpha=alpha,
               keep_scores=refiner is not None)
    outs = output_messages(msg.header, res)
    if refiner is not None:
        res = pipe.refine(res, refiner, color=True, overlay=True, overlay_alpha=alpha)
        outs.update(output_messages(msg.header, res, refined_suffix))
    return outs, res.overlay


def replay_bag(bag_path: Path, out_path: Path, pipe: Any,
               options: ReplayOptions = ReplayOptions(), *, refiner: Any = None,
               video: OverlaySink | None = None, span: Span = WHOLE,
               control: Control = NO_CONTROL) -> ReplayPart:
    """Copy a bag (or a span of it) to ``out_path``, adding the segmentation topics.

    Copy the messages of ``bag_path`` within ``span`` to ``out_path`` adding the segmentation
    topics. With a CRF ``refiner`` the refined outputs go to ``<topic>/<suffix>_refined`` (or
    replace the raw ones). Raises BagError for an unreadable bag, Interrupted when stopped; then
    the output is removed.
    """
    part = ReplayPart(str(bag_path), str(out_path))
    with bags.BagReader(bag_path) as bag:
        chosen = bag.select_topics(options.topics, image_only=True)
        part.topics = list(chosen)
        out = bags.BagWriter(out_path, storage=options.storage, overwrite=options.overwrite)
        try:
            with out:
                _copy_and_segment(bag, out, pipe, options, refiner, video, span, control, part)
        except BaseException:
            bags.remove_bag(out_path)
            raise
    return part


def _copy_and_segment(bag: bags.BagReader, out: bags.BagWriter, pipe: Any, options: ReplayOptions,
                      refiner: Any, video: OverlaySink | None, span: Span, control: Control,
                      part: ReplayPart) -> None:
    refined_suffix = "" if options.crf_replaces_labels else "_refined"
    for t in part.topics:
        for suffix in output_suffixes(refiner, options.crf_replaces_labels):
            out.add_topic(f"{t}/{suffix}", bags.IMAGE_TYPE)
    t_start = time.perf_counter()
    for m in bag.messages(start=span.start, stop=span.stop):
        is_frame = m.topic in part.topics
        if is_frame and options.max_frames is not None and part.frames >= options.max_frames:
            break  # the output is the input's prefix up to the last frame asked for
        bags.copy_message(bag, out, m)
        if not is_frame:
            continue
        control.frame()
        part.frames += 1
        t0 = time.perf_counter()
        try:
            outs, overlay = segment_message(bag, m, pipe, refiner, options.alpha, refined_suffix)
        except InputError as exc:
            part.failures[exc.kind] += 1
            part.examples.setdefault(exc.kind, f"{m.topic} t={m.timestamp}: {exc}")
            continue
        part.latencies_ms.append((time.perf_counter() - t0) * 1e3)
        for suffix, out_msg in outs.items():
            out.write(f"{m.topic}/{suffix}", m.timestamp, out_msg)
        if video is not None:
            video.add(overlay)
        part.segmented += 1
    control.flush()
    part.elapsed_s = time.perf_counter() - t_start


def summarize(parts: Sequence[ReplayPart], output: str, describe: dict[str, Any], trained: bool,
              crf: str) -> dict[str, Any]:
    """Return the replay summary of a bag from its parts (one per chunk, in order)."""
    failures: Counter = sum((p.failures for p in parts), Counter())
    examples: dict[str, str] = {}
    for p in parts:
        for kind, text in p.examples.items():
            examples.setdefault(kind, text)
    ok = sum(p.segmented for p in parts)
    elapsed = sum(p.elapsed_s for p in parts)
    return {"input": parts[0].input, "output": output, "topics": parts[0].topics,
            "frames": sum(p.frames for p in parts), "segmented": ok,
            "failed": sum(failures.values()),
            "failures": dict(failures), "failure_examples": examples,
            "elapsed_s": elapsed, "throughput_fps": ok / elapsed if elapsed > 0 else None,
            "latency_ms": latency_summary([v for p in parts for v in p.latencies_ms]),
            "pipeline": describe, "trained": bool(trained), "crf": crf}


def merge_parts(part_paths: Sequence[Path], out_path: Path, storage: str | None,
                overwrite: bool) -> None:
    """Concatenate the output bags of a bag's chunks (consecutive time spans) into one bag."""
    out = bags.BagWriter(out_path, storage=storage, overwrite=overwrite)
    try:
        with out:
            for p in part_paths:
                with bags.BagReader(p) as bag:
                    bags.copy_messages(bag, out, bag.messages())
    except BaseException:
        bags.remove_bag(out_path)
        raise
