"""Class metadata (ids, names, colours, ignore id).

Loading, validation and colour lookup tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import yaml

from .errors import ConfigError
from .resources import share_path


@dataclass(frozen=True)
class ClassSet:
    """Ordered class list.

    Class ``i`` is the model's output channel ``i`` and label value ``i``.
    """

    name: str
    names: tuple[str, ...]
    colors: np.ndarray  # (K, 3) uint8, RGB
    ignore_id: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def label_dtype(self) -> np.dtype:
        """uint8 while every id fits in a byte, uint16 above 256 classes."""
        return np.dtype(np.uint8) if self.num_classes <= 256 else np.dtype(np.uint16)

    def palette(self) -> np.ndarray:
        """(K, 3) uint8 colour table indexed by class id."""
        return self.colors

    def to_dicts(self) -> list[dict[str, Any]]:
        return [{"id": i, "name": n, "color": [int(c) for c in self.colors[i]]}
                for i, n in enumerate(self.names)]

    def check_num_classes(self, num_classes: int, source: str) -> None:
        if num_classes != self.num_classes:
            raise ConfigError(
                f"classes {self.name!r} define {self.num_classes} classes but {source} "
                f"predicts {num_classes}"
            )

    @classmethod
    def from_entries(cls, entries: Iterable[Any], name: str = "custom",
                     ignore_id: int | None = None, source: str = "classes") -> "ClassSet":
        """Validate ``[{id, name, color}, ...]``: ids unique and 0..K-1, colours RGB in 0..255."""
        entries = list(entries)
        if not entries:
            raise ConfigError(f"{source}: no classes defined")
        by_id: dict[int, tuple[str, Sequence[int]]] = {}
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict) or not {"id", "name", "color"} <= set(entry):
                raise ConfigError(
                    f"{source}: class entry {n} must have 'id', 'name' and 'color', got {entry!r}"
                )
            cid, cname, color = entry["id"], entry["name"], entry["color"]
            if isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
                raise ConfigError(
                    f"{source}: class {cname!r} has invalid id {cid!r} (need an integer >= 0)"
                )
            if cid in by_id:
                raise ConfigError(
                    f"{source}: duplicate class id {cid} ({by_id[cid][0]!r} and {cname!r})"
                )
            if (
                not isinstance(color, (list, tuple))
                or len(color) != 3
                or not all(
                    isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color
                )
            ):
                raise ConfigError(f"{source}: class {cname!r} (id {cid}) has colour {color!r}; "
                                  f"need three integers in 0..255")
            by_id[cid] = (str(cname), color)
        ids = sorted(by_id)
        if ids != list(range(len(ids))):
            gaps = sorted(set(range(max(ids) + 1)) - set(ids))
            raise ConfigError(
                f"{source}: class ids must be contiguous from 0 (model output channels); "
                f"missing ids {gaps}"
            )
        if ignore_id is not None and (
            not isinstance(ignore_id, int) or ignore_id in by_id or ignore_id < 0
        ):
            raise ConfigError(
                f"{source}: ignore_id {ignore_id!r} must be an integer >= 0 that is not a class id"
            )
        names = tuple(by_id[i][0] for i in ids)
        colors = np.array([by_id[i][1] for i in ids], dtype=np.uint8).reshape(-1, 3)
        return cls(name=name, names=names, colors=colors, ignore_id=ignore_id)

    @classmethod
    def generic(cls, num_classes: int) -> "ClassSet":
        """Return placeholder names and distinct colours for a model without a classes file.

        The colours are deterministic.
        """
        rng = np.random.default_rng(0)
        colors = rng.integers(0, 256, size=(num_classes, 3), dtype=np.uint8)
        return cls(
            name=f"generic{num_classes}",
            names=tuple(f"class_{i}" for i in range(num_classes)),
            colors=colors,
        )


def builtin_classes_path(name: str) -> Path:
    return share_path("config", "classes", f"{name}.yaml")


def load_classes(path_or_name: str | os.PathLike) -> ClassSet:
    """Load a classes YAML file, or a built-in set by name (``camvid``, ``cityscapes``)."""
    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        path = builtin_classes_path(str(path_or_name))
    if not path.is_file():
        raise ConfigError(f"classes file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"classes file {path} cannot be read: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
        raise ConfigError(f"classes file {path} must be a mapping with a 'classes' list")
    return ClassSet.from_entries(data["classes"], name=str(data.get("name", path.stem)),
                                 ignore_id=data.get("ignore_id"), source=f"classes file {path}")
