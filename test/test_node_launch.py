"""launch/segment.launch.py and config/segment.yaml against what the package really ships.

The static checks always run (they parse the files); the launch file is run for real with
`ros2 launch` in test_ros2_cli.py.
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from glob import glob
from pathlib import Path

import yaml

from seg_ros.node.params import CONFIG_NAMES, PARAMETERS, SPECS

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILE = REPO / "launch" / "segment.launch.py"
PARAMS_FILE = REPO / "config" / "segment.yaml"
LAUNCH_ARGS = {
    "model",
    "weights",
    "classes",
    "backend",
    "device",
    "cameras",
    "input_topic",
    "namespace",
    "params_file",
    "use_sim_time",
    "managed",
    "autostart",
}
NODE_ACTIONS = {"Node", "LifecycleNode"}


def _action_names(func: ast.expr) -> set[str]:
    """Return the launch_ros action classes a call may create.

    ``Node(...)`` or ``(LifecycleNode if managed else Node)(...)``.
    """
    if isinstance(func, ast.Name):
        return {func.id}
    if isinstance(func, ast.IfExp):
        return _action_names(func.body) | _action_names(func.orelse)
    return set()


def _launch_node_call() -> ast.Call:
    tree = ast.parse(LAUNCH_FILE.read_text())
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and _action_names(n.func) & NODE_ACTIONS
    ]
    assert len(calls) == 1, "the launch file should start exactly one node"
    assert _action_names(calls[0].func) == NODE_ACTIONS, (
        "plain Node, or LifecycleNode with managed:=true"
    )
    return calls[0]


def _constants() -> dict[str, object]:
    tree = ast.parse(LAUNCH_FILE.read_text())
    out = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                if isinstance(node.value, ast.Call):  # os.path.join("config", "segment.yaml")
                    out[node.targets[0].id] = "/".join(
                        ast.literal_eval(a) for a in node.value.args
                    )
    return out


def _resolve(expr: ast.expr, consts: dict[str, object]) -> list[object]:
    """Return the values ``expr`` can take (both branches of ``A if managed else B``)."""
    if isinstance(expr, ast.IfExp):
        return _resolve(expr.body, consts) + _resolve(expr.orelse, consts)
    if isinstance(expr, ast.Name):
        return [consts[expr.id]]
    return [ast.literal_eval(expr)]


def test_launch_file_names_the_real_package_executable_and_params_file():
    consts = _constants()
    call = _launch_node_call()
    kw = {k.arg: k.value for k in call.keywords}
    [package] = _resolve(kw["package"], consts)
    executables = _resolve(kw["executable"], consts)
    assert executables == ["segment_lifecycle_node", "segment_node"]  # managed:=true, the default
    assert package == ET.parse(REPO / "package.xml").getroot().findtext("name")
    setup_text = (REPO / "setup.py").read_text()
    assert re.search(rf'PACKAGE = "{package}"', setup_text)
    for executable in executables:
        entry = re.search(rf'"{executable} = ([\w.]+):(\w+)"', setup_text)
        assert entry, f"setup.py has no console script {executable!r}"
        module_file = REPO / (
            entry.group(1).replace(".", "/") + ".py"
        )  # parsed: importing needs rclpy
        functions = {
            n.name
            for n in ast.parse(module_file.read_text()).body
            if isinstance(n, ast.FunctionDef)
        }
        assert entry.group(2) in functions, f"{module_file} has no {entry.group(2)}()"
    params_rel = consts["PARAMS_FILE"]
    assert (REPO / params_rel).is_file()
    assert str(params_rel) in sorted(glob("config/*.yaml", root_dir=REPO)), (
        "setup.py installs config/*.yaml"
    )
    assert "launch/segment.launch.py" in sorted(glob("launch/*.launch.py", root_dir=REPO))


def test_launch_arguments_and_parameters_are_declared_by_the_node():
    tree = ast.parse(LAUNCH_FILE.read_text())
    declared = {
        ast.literal_eval(n.args[0])
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "DeclareLaunchArgument"
    }
    assert declared == LAUNCH_ARGS
    kw = {k.arg: k.value for k in _launch_node_call().keywords}
    overrides = set(_constants()["OVERRIDES"])
    assert overrides <= declared and overrides <= set(SPECS), overrides - set(SPECS)
    # the override arguments default to '' (keep the params file's value), never to a value
    defaults = {
        ast.literal_eval(n.args[0]): ast.literal_eval(k.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "DeclareLaunchArgument"
        for k in n.keywords
        if k.arg == "default_value" and isinstance(k.value, ast.Constant)
    }
    assert all(defaults[name] == "" for name in overrides), defaults
    # the plain node unless asked; a managed node configures and activates itself unless asked
    assert (defaults["managed"], defaults["autostart"]) == ("false", "true"), defaults
    remaps = [tuple(e.elts) for e in kw["remappings"].elts]
    assert [ast.literal_eval(r[0]) for r in remaps] == ["image", "camera_info"]


def test_params_file_lists_every_parameter_with_its_default_and_a_comment():
    data = yaml.safe_load(PARAMS_FILE.read_text())
    params = data["/**"]["ros__parameters"]
    assert set(params) <= set(SPECS), f"not declared by the node: {set(params) - set(SPECS)}"
    assert set(params) == set(CONFIG_NAMES), (
        f"missing from the file: {set(CONFIG_NAMES) - set(params)}"
    )
    for spec in PARAMETERS:
        if spec.in_yaml:
            assert params[spec.name] == spec.default, spec.name
    lines = PARAMS_FILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^    \w+:", line):
            assert lines[i - 1].strip().startswith("#"), f"no comment above {line.strip()!r}"


def test_docs_list_every_parameter():
    text = (REPO / "docs" / "node.md").read_text()
    missing = [p.name for p in PARAMETERS if f"| `{p.name}` |" not in text]
    assert not missing, f"docs/node.md does not document {missing}"
