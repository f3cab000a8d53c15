"""Which bags a fleet run processes, where each one's outputs go, and how a long bag is chunked.

Inputs may be bag files (``.mcap`` / ``.db3``), rosbag2 directories (``metadata.yaml`` + storage
files), directories searched recursively for both, glob patterns and list files (one input a
line). Every bag gets a relative path, ``rel``, under the common root of the inputs: outputs are
written at ``OUT/rel``, so the output tree mirrors the input tree.
"""
from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .. import bags
from ..errors import ConfigError

BAG_SUFFIXES = tuple(bags.STORAGE_SUFFIX.values())
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class BagSource:
    """One input bag: ``path`` as found, ``rel`` its place in the mirrored output tree."""

    path: Path
    rel: Path


@dataclass(frozen=True)
class Missing:
    """An input that names nothing (a typo, a glob without match): recorded as a failed bag."""

    text: str
    error: str


def is_bag_dir(path: Path) -> bool:
    return path.is_dir() and (path / "metadata.yaml").is_file()


def is_bag_file(path: Path) -> bool:
    return path.is_file() and path.suffix in BAG_SUFFIXES


def is_single_bag(text: str) -> bool:
    """Whether an input names one bag (or nothing: a typo is then that bag's error).

    Not a search.
    """
    path = Path(text)
    return not any(c in text for c in GLOB_CHARS) and not (path.is_dir() and not is_bag_dir(path))


def walk_bags(folder: Path, exclude: Path | None = None) -> Iterator[Path]:
    """Bags under ``folder`` in name order; rosbag2 directories are not searched inside."""
    for entry in sorted(folder.iterdir()):
        if exclude is not None and entry.resolve() == exclude:
            continue
        if is_bag_dir(entry) or is_bag_file(entry):
            yield entry
        elif entry.is_dir():
            yield from walk_bags(entry, exclude)


def read_list_file(path: Path) -> list[str]:
    """Return inputs of a list file.

    One a line, '#' starts a comment; relative entries are relative to the list file's folder (a
    list travels with the data it names).
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"bag list {path} cannot be read: {exc.strerror or exc}") from None
    out = []
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if text:
            out.append(text if os.path.isabs(text) else str(path.parent / text))
    return out


def _glob_root(pattern: str) -> Path:
    """Return the folder part of a pattern before its first wildcard."""
    parts = Path(pattern).parts
    first_wild = next(i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS))
    return Path(*parts[:first_wild]) if first_wild else Path(".")


def _expand(text: str, exclude: Path | None) -> tuple[Path, list[Path]] | Missing:
    """(root the outputs mirror from, bags) of one input, or why it names nothing."""
    if any(c in text for c in GLOB_CHARS):
        found: list[Path] = []
        for match in sorted(glob.glob(text, recursive=True)):
            p = Path(match)
            if is_bag_dir(p.parent):
                continue  # a storage file of a bag directory: the directory is the bag
            if is_bag_dir(p) or is_bag_file(p):
                found.append(p)
            elif p.is_dir():
                found.extend(walk_bags(p, exclude))
        return (_glob_root(text), found) if found else Missing(text, f"no bag matches {text!r}")
    path = Path(text)
    if is_bag_dir(path) or path.is_file():
        return path.parent, [path]
    if path.is_dir():
        found = list(walk_bags(path, exclude))
        if not found:
            return Missing(text, f"folder {text} holds no bag (.mcap, .db3 or rosbag2 directory)")
        return path, found
    return Missing(text, f"bag {text} does not exist")


def find_bags(inputs: Sequence[str], list_file: Path | None = None,
              exclude: Path | None = None) -> tuple[list[BagSource], list[Missing]]:
    """All bags the inputs name, each once, with their mirrored relative paths.

    ``exclude`` (the output folder) is never searched, so a run's own outputs are not taken for
    inputs.
    """
    texts = list(inputs) + (read_list_file(list_file) if list_file is not None else [])
    exclude = exclude.resolve() if exclude is not None else None
    roots: list[Path] = []
    found: list[Path] = []
    missing: list[Missing] = []
    for text in texts:
        got = _expand(text, exclude)
        if isinstance(got, Missing):
            missing.append(got)
            continue
        roots.append(got[0].resolve())
        found.extend(got[1])
    if not found:
        return [], missing
    common = Path(os.path.commonpath([str(r) for r in roots]))
    sources: dict[Path, BagSource] = {}
    for p in found:
        resolved = p.resolve()
        if resolved not in sources:
            sources[resolved] = BagSource(p.absolute(), resolved.relative_to(common))
    return list(sources.values()), missing


# -- chunks --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    """Messages with ``start <= timestamp < stop`` (None: from the beginning / to the end)."""

    index: int
    count: int
    start: int | None = None
    stop: int | None = None


WHOLE = Span(0, 1)


def spans(time_range: tuple[int, int], frames: int, chunk_frames: int | None) -> list[Span]:
    """Cut a bag's time range into spans of about ``chunk_frames`` frames.

    Equal time spans holding about ``chunk_frames`` frames each (exactly, for a camera at a
    steady rate): spans come from the bag's metadata, so planning reads no message. Every message
    falls in exactly one span.
    """
    if not chunk_frames or frames <= chunk_frames:
        return [WHOLE]
    n = math.ceil(frames / chunk_frames)
    t0, t1 = time_range
    cuts = [t0 + (t1 - t0) * i // n for i in range(1, n)]
    starts: list[int | None] = [None, *cuts]
    stops: list[int | None] = [*cuts, None]
    return [Span(i, n, a, b) for i, (a, b) in enumerate(zip(starts, stops))]


@dataclass(frozen=True)
class BagPlan:
    """What a bag holds for the run: the chosen image topics, their frames and the chunks."""

    topics: tuple[str, ...]
    frames: int
    spans: list[Span]


def plan_bag(path: Path, topics: Iterable[str] | None, chunk_frames: int | None,
             max_frames: int | None = None, not_images: Iterable[str] = ()) -> BagPlan:
    """Plan one bag: its image topics, their frame count and its spans.

    Open ``path`` (metadata only) to choose its image topics (given, else every image topic
    but ``not_images``, e.g. a ground-truth label topic), count their frames and cut the bag
    into spans. BagError when it is unreadable or lacks the topics.
    """
    with bags.BagReader(path) as bag:
        if topics:
            chosen = bag.select_topics(list(topics), image_only=True)
        else:
            skip = set(not_images)
            chosen = [t for t in bag.select_topics(None, image_only=True) if t not in skip]
            if not chosen:
                raise bags.BagError(f"bag {path} has no image topic besides {', '.join(skip)}")
        frames = sum(bag.topics[t].count for t in chosen)
        if max_frames is not None:
            frames = min(frames, max_frames)
        return BagPlan(tuple(chosen), frames, spans(bag.time_range, frames, chunk_frames))
