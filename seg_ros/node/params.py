"""The node's parameters: one table used to declare them.

To validate them (at start-up and at run time), to write config/segment.yaml's documentation and to
test the config file against.

ROS-free on purpose (rclpy is imported only by :func:`descriptor`), so the table can be checked
on machines without ROS.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Sequence

import yaml

from ..backends import list_backends
from ..crf import CRF_MODES, parameter_table as crf_parameter_table
from ..device import DEVICE_CHOICES, PRECISION_CHOICES
from ..models import list_models
from ..pipeline import DEFAULT_MAX_INPUT_PIXELS, MAX_BATCH, OUTPUT_RESOLUTIONS

BACKENDS = tuple(list_backends())
TRANSPORTS = ("raw", "compressed")
RELIABILITIES = ("best_effort", "reliable")
# a camera name is a relative ROS name: tokens of letters, digits and '_', joined by '/'
CAMERA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter. ``read_only``: a change needs a restart (model, device, QoS...)."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    choices: Sequence[str] | None = None
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None
    in_yaml: bool = True  # False: published by the node (class metadata), not configured


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "model",
        "ddrnet23_slim",
        "segmentation network architecture",
        True,
        choices=tuple(list_models()),
    ),
    ParamSpec(
        "weights",
        "default",
        "weights file; 'default' = the model's shipped weights (an "
        "error for a model that ships none), 'none' = random initialisation (tests only)",
        True,
    ),
    ParamSpec(
        "classes",
        "",
        "classes YAML file or built-in name (camvid, cityscapes); "
        "empty = from the weights file, else camvid",
        True,
    ),
    ParamSpec(
        "backend",
        "auto",
        "inference backend; auto = torch (measured fastest on CPU, "
        "not measured on CUDA; docs/backends.md)",
        True,
        choices=BACKENDS,
    ),
    ParamSpec("device", "auto", "auto (CUDA if present, else CPU), cpu, cuda or cuda:N", True),
    ParamSpec("precision", "fp32", "fp32, or fp16 (CUDA only)", True, choices=PRECISION_CHOICES),
    ParamSpec(
        "output_stride",
        0,
        "backbone output stride of DeepLab/PSPNet models, 8 or 16; 0 = the "
        "model's own (DDRNet's is fixed)",
        True,
        int_range=(0, 16),
    ),
    ParamSpec(
        "num_threads", 0, "CPU inference threads (0 = library default)", True, int_range=(0, 256)
    ),
    ParamSpec(
        "input_size",
        [0, 0],
        "inference size [height, width]; [0, 0] = the weights' training "
        "size, else each frame's own size",
        True,
    ),
    ParamSpec("keep_aspect", True, "scale frames into input_size keeping their aspect ratio"),
    ParamSpec(
        "output_resolution",
        "input",
        "labels at the 'input' frame size or the 'inference' size",
        choices=OUTPUT_RESOLUTIONS,
    ),
    ParamSpec(
        "max_input_pixels",
        DEFAULT_MAX_INPUT_PIXELS,
        "frames with more pixels are skipped and counted (too_large)",
        int_range=(1, 1 << 30),
    ),
    ParamSpec(
        "input_transport",
        "raw",
        "'raw': sensor_msgs/Image on 'image'; 'compressed': "
        "sensor_msgs/CompressedImage (jpeg, png) on 'image/compressed'",
        True,
        choices=TRANSPORTS,
    ),
    ParamSpec(
        "cameras",
        [],
        "camera names, e.g. [front, left]: one node segments them all, "
        "batched, from <name>/image to ~/<name>/labels...; unset or [] = one camera on "
        f"'image' (at most {MAX_BATCH})",
        True,
    ),
    ParamSpec(
        "batch_timeout_ms",
        5.0,
        "how long a camera's frame waits for the other live "
        "cameras' frames to share its forward pass",
        float_range=(0.0, 1000.0),
    ),
    ParamSpec(
        "qos_reliability",
        "best_effort",
        "input subscription reliability: best_effort (sensor data) or reliable",
        True,
        choices=RELIABILITIES,
    ),
    ParamSpec(
        "qos_depth", 1, "input and output queue depth (keep last)", True, int_range=(1, 100)
    ),
    ParamSpec(
        "publish_labels", True, "publish ~/labels (mono8 class ids, mono16 above 256 classes)"
    ),
    ParamSpec("publish_color_mask", True, "publish ~/color_mask (rgb8 class colours)"),
    ParamSpec("publish_overlay", True, "publish ~/overlay (rgb8 colours blended over the frame)"),
    ParamSpec("publish_confidence", False, "publish ~/confidence (32FC1 max class probability)"),
    ParamSpec(
        "overlay_alpha", 0.5, "weight of the class colours in ~/overlay", float_range=(0.0, 1.0)
    ),
    ParamSpec(
        "diagnostics_period",
        1.0,
        "seconds between /diagnostics messages",
        True,
        float_range=(0.1, 60.0),
    ),
    ParamSpec(
        "stale_input_timeout",
        2.0,
        "diagnostics WARN when no frame arrived for this many seconds",
        float_range=(0.1, 3600.0),
    ),
    ParamSpec(
        "error_threshold",
        5,
        "diagnostics ERROR after this many consecutive failed frames",
        int_range=(1, 100000),
    ),
    # CRF refinement (docs/crf.md); defaults as config/crf.yaml (DeepLab v2's dense-CRF settings)
    ParamSpec(
        "crf",
        "off",
        "CRF refinement: off, fast (local-window mean-field on the model's device) "
        "or dense (pydensecrf on the CPU, seconds per frame); refined labels on ~/labels_refined",
        True,
        choices=CRF_MODES,
    ),
    ParamSpec(
        "crf_replaces_labels",
        False,
        "publish the CRF-refined labels on ~/labels, ~/color_mask "
        "and ~/overlay instead of ~/labels_refined, ... (adds the CRF time to their latency)",
        True,
    ),
    *(
        ParamSpec(
            f"crf_{name}",
            default,
            description,
            True,
            int_range=rng if isinstance(default, int) else None,
            float_range=None if isinstance(default, int) else rng,
        )
        for name, default, description, rng in crf_parameter_table()
    ),
    # Class metadata, filled in by the node from the loaded model (read by downstream nodes).
    ParamSpec("class_names", [""], "class names by id (set by the node)", True, in_yaml=False),
    ParamSpec(
        "class_colors",
        [0],
        "class colours, flat [r0, g0, b0, r1, ...] (set by the node)",
        True,
        in_yaml=False,
    ),
    ParamSpec(
        "ignore_id",
        -1,
        "label id of 'ignore'/void pixels in training data, -1 = none (set by the node)",
        True,
        in_yaml=False,
    ),
)
SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}
RUNTIME_NAMES = tuple(p.name for p in PARAMETERS if p.in_yaml and not p.read_only)
# The run-time changeable parameters, derived from the table so none can be forgotten; replaced
# as a whole, so the worker reads a consistent set.
Settings = dataclasses.make_dataclass(
    "Settings", [(name, type(SPECS[name].default)) for name in RUNTIME_NAMES], frozen=True)
Settings.__doc__ = "The node's run-time changeable parameters (the table's non-read-only rows)."


def settings_from(values: dict[str, Any]) -> Any:
    """Return a :data:`Settings` from parameter values (extra names ignored)."""
    return Settings(**{name: values[name] for name in RUNTIME_NAMES})
CONFIG_NAMES = tuple(p.name for p in PARAMETERS if p.in_yaml)
METADATA_NAMES = tuple(p.name for p in PARAMETERS if not p.in_yaml)


def validate(name: str, value: Any) -> str | None:
    """Why ``value`` is invalid for parameter ``name`` (None when valid).

    Types and ranges are also enforced by the descriptors; this adds choices and structure, with
    the same wording.
    """
    spec = SPECS.get(name)
    if spec is None:
        return None
    if spec.choices is not None and value not in spec.choices:
        return f"must be one of {', '.join(spec.choices)}, got {value!r}"
    if spec.int_range is not None and not spec.int_range[0] <= value <= spec.int_range[1]:
        return f"must be in {spec.int_range[0]}..{spec.int_range[1]}, got {value}"
    if spec.float_range is not None and not spec.float_range[0] <= value <= spec.float_range[1]:
        return f"must be in {spec.float_range[0]}..{spec.float_range[1]}, got {value}"
    if name == "device":
        base, _, index = str(value).partition(":")
        if base not in DEVICE_CHOICES or (index and (base != "cuda" or not index.isdigit())):
            return f"must be auto, cpu, cuda or cuda:N, got {value!r}"
    if name == "output_stride" and value not in (0, 8, 16):
        return f"must be 0 (the model's own), 8 or 16, got {value}"
    if name == "cameras":
        if not isinstance(value, (list, tuple)):
            return f"must be a string array of camera names, e.g. [front, left], got {value!r}"
        return _cameras_problem(list(value))
    if name == "input_size":
        size = list(value)
        if len(size) != 2 or not (size == [0, 0] or all(8 <= int(v) <= 16384 for v in size)):
            return (f"must be [height, width] with each in 8..16384, or [0, 0] for automatic, "
                    f"got {size}")
    return None


def _cameras_problem(names: list[str]) -> str | None:
    bad = [n for n in names if not isinstance(n, str) or not CAMERA_NAME.fullmatch(n)]
    if bad:
        return (f"must be camera names (letters, digits, '_', '/' between them, e.g. front or "
                f"rear/left), got {bad[0]!r}")
    if len(set(names)) != len(names):
        return f"must not repeat a camera, got {names}"
    if len(names) > MAX_BATCH:
        return f"may name at most {MAX_BATCH} cameras, got {len(names)}"
    return None


def unquoted_off(name: str, value: Any) -> Any:
    """Read the boolean false as 'off' for a mode parameter that has an 'off' choice.

    ``-p crf:=off`` and an unquoted ``crf: off`` in YAML reach the node as the boolean false (YAML
    1.1); for a mode parameter that has an 'off' choice, read it as 'off'. A boolean true names no
    mode.
    """
    spec = SPECS.get(name)
    if (
        spec is None
        or not isinstance(value, bool)
        or spec.choices is None
        or "off" not in spec.choices
    ):
        return value
    if value:
        raise ValueError(
            f"parameter {name!r} got the boolean true; it must be one of {', '.join(spec.choices)}"
        )
    return "off"


def model_options(values: dict[str, Any]) -> dict[str, Any]:
    """Return build options for the model from the parameters.

    Only those set, so every model accepts them.
    """
    return {"output_stride": values["output_stride"]} if values.get("output_stride") else {}


def input_size(value: Sequence[int]) -> tuple[int, int] | None:
    """Return the pipeline's input_size from the parameter ([0, 0] = automatic)."""
    size = [int(v) for v in value]
    return None if size == [0, 0] else (size[0], size[1])


def _ros_type(default: Any) -> int:
    """Return the rcl_interfaces ParameterType of ``default``.

    So a wrongly typed override is rejected.
    """
    from rcl_interfaces.msg import ParameterType as T

    if isinstance(default, bool):
        return T.PARAMETER_BOOL
    if isinstance(default, int):
        return T.PARAMETER_INTEGER
    if isinstance(default, float):
        return T.PARAMETER_DOUBLE
    if isinstance(default, str):
        return T.PARAMETER_STRING
    if not default:  # an empty default: only the string arrays (cameras) have one
        return T.PARAMETER_STRING_ARRAY
    first = default[0]
    if isinstance(first, bool):
        return T.PARAMETER_BOOL_ARRAY
    if isinstance(first, int):
        return T.PARAMETER_INTEGER_ARRAY
    if isinstance(first, float):
        return T.PARAMETER_DOUBLE_ARRAY
    return T.PARAMETER_STRING_ARRAY


def descriptor(spec: ParamSpec):
    """rcl_interfaces ParameterDescriptor for ``spec`` (description, range, read-only)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    desc = ParameterDescriptor(
        name=spec.name,
        description=spec.description,
        read_only=spec.read_only,
        type=_ros_type(spec.default),
    )
    if spec.choices is not None:
        desc.additional_constraints = f"one of: {', '.join(spec.choices)}"
    if spec.default == []:
        desc.additional_constraints = "a string array (an empty one reads as a byte array)"
    if spec.int_range is not None:
        desc.integer_range = [
            IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=0)
        ]
    if spec.float_range is not None:
        desc.floating_point_range = [FloatingPointRange(from_value=spec.float_range[0],
                                                        to_value=spec.float_range[1], step=0.0)]
    return desc


def _type_name(value: Any) -> str:
    """Return the ROS parameter type name of a Python value ('double', 'string_array', ...)."""
    if isinstance(value, (list, tuple)):
        return (_type_name(value[0]) if value else "string") + "_array"
    for kind, name in ((bool, "bool"), (int, "integer"), (float, "double"), (str, "string")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def command_line_params(args: Sequence[str], node_names: Sequence[str]) -> list[tuple[str, str]]:
    """Return the ``-p`` overrides on the command line for this node.

    (name, value text) of every ``-p``/``--param`` in the ``--ros-args`` sections of ``args``
    that applies to a node called one of ``node_names`` (unprefixed, or ``node:name:=value``).
    """
    found: list[tuple[str, str]] = []
    in_ros_args = False
    for flag, arg in zip(args, [*args[1:], ""]):
        if flag in ("--ros-args", "--"):
            in_ros_args = flag == "--ros-args"
        elif in_ros_args and flag in ("-p", "--param") and ":=" in arg:
            target, text = arg.split(":=", 1)
            prefix, _, name = target.rpartition(":")
            if not prefix or prefix.rstrip("/").split("/")[-1] in node_names:
                found.append((name, text))
    return found


class _ParamsLoader(yaml.SafeLoader):
    """YAML as rcl reads it.

    Tags are ignored. launch_ros writes list parameters as ``!!python/tuple`` (it dumps tuples),
    which a plain safe loader refuses.
    """


def _untagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


_ParamsLoader.add_multi_constructor("", _untagged)


def load_params_file(path: str) -> Any:
    """Return a ROS params file's content; OSError or yaml.YAMLError when it cannot be read."""
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_ParamsLoader)  # noqa: S506 - a safe loader, tags ignored


def params_file_names(path: str, node_names: Sequence[str]) -> list[str]:
    """Return the parameter names a params file sets for this node.

    The parameter names a params file sets for a node called one of ``node_names`` (by its
    name, its fully qualified name or a ``*``/``**`` wildcard), nested keys joined by '.'.
    """
    try:
        data = load_params_file(path) or {}
    except (OSError, yaml.YAMLError):
        return []  # reported by the node's start-up check of its params files
    names: list[str] = []
    for key, section in (data.items() if isinstance(data, dict) else ()):
        target = str(key).rstrip("/")
        last = target.split("/")[-1]
        if isinstance(section, dict) and (last in ("*", "**") or last in node_names
                                          or target in node_names):
            names += _flat_keys(section.get("ros__parameters") or {})
    return names


def _flat_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            keys += _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def unknown_overrides(args: Sequence[str], node_names: Sequence[str]) -> list[str]:
    """Return overrides (``-p`` or ``--params-file``) of parameters the node does not declare.

    Sorted; ROS's own (``use_sim_time``, ``qos_overrides.*``) are known.
    """
    names = [name for name, _ in command_line_params(args, node_names)]
    for flag, path in zip(args, args[1:]):
        if flag == "--params-file":
            names += params_file_names(path, node_names)
    return sorted({n for n in names if n not in SPECS and n != "use_sim_time"
                   and not n.startswith("qos_overrides.")})


def override_problem(args: Sequence[str], node_name: str) -> str | None:
    """Why a ``-p name:=value`` of ``args`` does not fit its parameter's type (None when all fit).

    rcl parses the value as YAML and, when a params file sets the same parameter, silently keeps
    the file's value for a differently typed override (``-p overlay_alpha:=abc``): the node would
    start with a value the user did not ask for and no warning. So it is checked here first.
    """
    renamed = [a.split(":=", 1)[1] for a in args if a.startswith("__node:=")]
    for name, text in command_line_params(args, [node_name, *renamed]):
        spec = SPECS.get(name)
        if spec is None or not spec.in_yaml:
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        expected, got = _type_name(spec.default), _type_name(value)
        if value is None or got == expected:
            continue
        if isinstance(value, bool) and spec.choices is not None and "off" in spec.choices:
            continue  # crf:=off reads as the boolean false: see unquoted_off
        hint = f" (write {value}.0)" if (expected, got) == ("double", "integer") else ""
        return (f"parameter {name!r} (-p {name}:={text}) must be of type {expected}, "
                f"got the {got} {value!r}{hint}")
    return None
