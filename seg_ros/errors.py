"""Exception types shared by the core, the node and the tools.

Each carries a message meant for a user's log line: it names the file, parameter or frame
property at fault and what is wrong with it.
"""
from __future__ import annotations


class SegRosError(Exception):
    """Base class of every error seg_ros raises on purpose."""


class ConfigError(SegRosError, ValueError):
    """A parameter, option or configuration file (e.g. a classes file) is invalid."""


class WeightsError(SegRosError):
    """A weights file is missing, unreadable, or does not fit the model."""


class InputError(SegRosError, ValueError):
    """A frame cannot be segmented. ``kind`` is a short stable key used by counters."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
