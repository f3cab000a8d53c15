"""A small LRU of per-input-shape artefacts (CUDA graphs, onnxruntime sessions, TensorRT engines).

The pipeline picks the inference size per frame, so an artefact built for one shape must never
serve another. Keys whose build failed can be remembered, so a backend falls back (e.g. to eager
execution) once and does not retry the failing build on every frame.

An evicted artefact must give its memory back: after dropping it the cache asks the C library to
return freed heap pages to the system. Without that, glibc keeps the freed tens of MB of each
graph as fragmented heap and RSS keeps climbing when sizes cycle past the cache (issue 18).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, TypeVar

from ..memory import release_freed_memory

log = logging.getLogger("seg_ros")
V = TypeVar("V")


class ShapeCache(Generic[V]):
    """``get(key, *args)`` returns the artefact for ``key``.

    Building it with ``build(key, *args)`` on a miss (``args``: e.g. the example input a graph is
    captured on) and evicting the least recently used one beyond ``max_entries``. With
    ``fallback_on_error`` a failed build is logged once, remembered, and ``get`` returns None for
    that key.
    """

    def __init__(self, build: Callable[..., V], max_entries: int = 4,
                 fallback_on_error: bool = False, what: str = "artefact") -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._build = build
        self.max_entries = max_entries
        self.fallback_on_error = fallback_on_error
        self.what = what
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self.failed: dict[Hashable, str] = {}
        self.builds = self.hits = self.evictions = 0

    def get(self, key: Hashable, *build_args: Any) -> V | None:
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        if key in self.failed:
            return None
        try:
            value = self._build(key, *build_args)
        except Exception as exc:
            if not self.fallback_on_error:
                raise
            self.failed[key] = f"{type(exc).__name__}: {exc}"
            log.warning("could not build %s for %s (%s); falling back for this shape",
                        self.what, key, self.failed[key])
            return None
        self.builds += 1
        self._entries[key] = value
        if len(self._entries) > self.max_entries:
            self._evict_oldest()
        return value

    def require(self, key: Hashable, *build_args: Any) -> V:
        """Like :meth:`get`, for callers that have no fallback.

        RuntimeError when there is no artefact for ``key`` (its build failed earlier under
        ``fallback_on_error``).
        """
        value = self.get(key, *build_args)
        if value is None:
            raise RuntimeError(f"no {self.what} for {key}: "
                               f"{self.failed.get(key, 'its build returned nothing')}")
        return value

    def _evict_oldest(self) -> None:
        while len(self._entries) > self.max_entries:
            old, _ = self._entries.popitem(last=False)  # the artefact's last reference goes here
            self.evictions += 1
            log.info(
                "dropped %s for %s (more than %d shapes seen)", self.what, old, self.max_entries
            )
        release_freed_memory()

    def keys(self) -> list[Hashable]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.failed.clear()
        release_freed_memory()
