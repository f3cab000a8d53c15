"""The fleet run's record: one JSON line per finished bag in ``OUT/manifest.jsonl``.

A line is written (and flushed to disk) when a bag is finished, so the file is valid after a
crash or Ctrl-C and tells ``--resume`` what is done. Lines are appended: a bag redone by a later
run gets a new line and the last line of a bag is its state. Fields: ``bag`` (path relative to
the mirrored tree), ``input``, ``status`` (``ok`` / ``failed``), ``frames``, ``seconds``,
``outputs`` (relative to OUT), ``error``, ``retries`` (tasks rerun because their worker died),
``chunks``, ``workers`` (which ran it), ``config`` (a fingerprint of the options the bag was
processed with), ``finished`` (UTC time), plus per-kind figures.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

NAME = "manifest.jsonl"


def fingerprint(settings: dict[str, Any]) -> str:
    """Return a short digest of the options that decide a bag's outputs (model, weights, ...)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Manifest:
    """The manifest of a fleet run: one JSON line per finished (or failed) bag.

    Append-only JSON lines; reading takes the last line of each bag and tolerates a torn
    last line (the process was killed while writing it).
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / NAME

    def exists(self) -> bool:
        return self.path.is_file()

    def entries(self) -> dict[str, dict[str, Any]]:
        """Return the latest entry of each bag, by ``bag``."""
        out: dict[str, dict[str, Any]] = {}
        if not self.exists():
            return out
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; its bag is simply not done
            if isinstance(entry, dict) and "bag" in entry:
                out[entry["bag"]] = entry
        return out

    def append(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(entry) + "\n").encode()
        with open(self.path, "a+b") as f:
            end = f.tell()
            if end and os.pread(f.fileno(), 1, end - 1) != b"\n":
                line = b"\n" + line  # after a torn line: start a fresh one
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)


def is_done(entry: dict[str, Any] | None, config: str, out_dir: Path) -> bool:
    """Whether ``--resume`` may skip a bag: finished ok with the same options, outputs present."""
    return (entry is not None and entry.get("status") == "ok" and entry.get("config") == config
            and all((out_dir / p).exists() for p in entry.get("outputs", [])))
