"""The layers of docs/architecture.md.

Enforced by reading every module's imports (nothing is imported: the scan works without ROS).

core (seg_ros/*.py, models, backends, crf)  <- training, fleet  <- node  <- cli
The core never imports the node, the tools, ROS or the layers built on it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "seg_ros"
LAYERS = ("node", "cli", "fleet", "training")  # sub-packages with a layer of their own
ROS = {"rclpy", "rcl_interfaces", "sensor_msgs", "std_msgs", "diagnostic_msgs", "lifecycle_msgs",
       "builtin_interfaces", "launch", "launch_ros", "ament_index_python"}
# layer -> the layers it must not import (anything else: core, and itself)
FORBIDDEN = {"core": {"node", "cli", "fleet", "training", "ros"},
             "training": {"node", "cli", "fleet", "ros"},
             "fleet": {"node", "cli", "training", "ros"},
             "node": {"cli", "fleet", "training"},
             "cli": set()}
# the one ROS import the core may make: where an installed package's share directory is, tried
# and skipped when ROS is absent (seg_ros/resources.py)
EXCEPTIONS = {("seg_ros.resources", "ament_index_python.packages")}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> str:
    parts = name.split(".")
    if parts[0] != "seg_ros":
        return "ros" if parts[0] in ROS else "other"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"


def imports(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports, at any depth (function-local ones too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module)
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        forbidden = FORBIDDEN[layer_of(name)]
        for imported in sorted(imports(path)):
            if layer_of(imported) in forbidden and (name, imported) not in EXCEPTIONS:
                bad.append(f"{name} ({layer_of(name)}) imports {imported} ({layer_of(imported)})")
    return bad


def test_every_layer_imports_only_what_it_may():
    assert violations() == []


@pytest.mark.parametrize("name, imported, layer", [
    ("seg_ros.worker", "seg_ros.node.frame_slot", "node"),
    ("seg_ros.crf.worker", "rclpy", "ros"),
    ("seg_ros.backends.registry", "seg_ros.cli.common", "cli"),
    ("seg_ros.fleet.runner", "seg_ros.node.qos", "node"),
])
def test_the_scan_sees_an_upward_import(name, imported, layer):
    """The rule catches what it is for (the worker's old import of the node's FrameSlot)."""
    assert layer_of(imported) == layer and layer in FORBIDDEN[layer_of(name)]


def test_relative_imports_resolve_to_absolute_names():
    inner = PACKAGE / "crf" / "worker.py"
    assert "seg_ros.worker" in imports(inner)  # `from ..worker import BackgroundWorker`
    assert "seg_ros.backends.registry" in imports(PACKAGE / "backends" / "torch_backend.py")
