"""Where the package's data (config/, launch/, weights/) lives in each kind of install.

colcon (ament_python) and a pip wheel both install it under ``<prefix>/share/seg_ros``; an
editable or source checkout keeps it at the repository root, beside the ``seg_ros`` package.
"""
from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = "seg_ros"


@lru_cache(maxsize=None)
def share_dir() -> Path:
    candidates = [Path(__file__).resolve().parent.parent]  # source checkout / editable install
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.insert(0, Path(get_package_share_directory(PACKAGE)))
    except Exception:  # not a ROS install, or the package is not in the ament index
        pass
    candidates.append(Path(sys.prefix) / "share" / PACKAGE)
    for cand in candidates:
        if (cand / "config" / "classes").is_dir():
            return cand
    return candidates[-1]


def share_path(*parts: str) -> Path:
    return share_dir().joinpath(*parts)
