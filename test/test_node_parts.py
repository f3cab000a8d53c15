"""The node's ROS-free parts: the diagnostics summary and the parameter table."""
from __future__ import annotations

import pytest

from helpers import require_module
from seg_ros.node import params as P
from seg_ros.node.diagnostics import ERROR, OK, WARN, NodeStats


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_stats_levels_and_values():
    clock = FakeClock()
    stats = NodeStats(("truncated",), clock=clock)
    clock.t += 3
    report = stats.report(stale_after_s=2.0, error_threshold=2, input_topic="/cam")
    assert report.level == WARN and "/cam" in report.message
    for latency in (0.010, 0.020, 0.030, 0.040):
        stats.frame_received(dropped_older=False)
        stats.frame_done(latency)
    stats.frame_received(dropped_older=True)
    values = dict(stats.report(2.0, 2).values)
    assert stats.report(2.0, 2).level == OK
    assert values["latency_median_ms"] == "25.0" and float(values["latency_p95_ms"]) > 38
    assert values["frames_received"] == "5" and values["frames_dropped"] == "1"
    assert values["errors.truncated"] == "0"
    stats.frame_failed("truncated", "data is truncated")
    stats.frame_failed("truncated", "data is truncated")
    report = stats.report(2.0, 2)
    assert report.level == ERROR and "truncated" in report.message
    stats.frame_done(0.01)
    assert stats.report(2.0, 2).level == OK
    assert dict(stats.report(2.0, 2).values)["errors.truncated"] == "2"


@pytest.mark.parametrize("name,value,words", [
    ("input_size", [1, 2, 3], "[height, width]"),
    ("input_size", [4, 4], "8..16384"),
    ("device", "tpu", "cuda:N"),
    ("device", "cpu:1", "cuda:N"),
    ("output_resolution", "sideways", "input, inference"),
    ("overlay_alpha", 1.5, "0.0..1.0"),
    ("qos_depth", 0, "1..100"),
    ("qos_reliability", "sometimes", "best_effort, reliable"),
    ("backend", "tensorrt-ish", "torch"),
    ("output_stride", 4, "8 or 16"),
])
def test_parameter_validation_names_the_problem(name, value, words):
    reason = P.validate(name, value)
    assert reason and words in reason


@pytest.mark.parametrize(
    "name,value",
    [
        ("input_size", [0, 0]),
        ("input_size", [512, 1024]),
        ("device", "cuda:1"),
        ("device", "auto"),
        ("overlay_alpha", 0.0),
    ],
)
def test_valid_parameters_pass(name, value):
    assert P.validate("output_stride", 16) is None and P.validate("output_stride", 0) is None
    assert P.validate(name, value) is None
    assert P.input_size([0, 0]) is None and P.input_size([512, 1024]) == (512, 1024)


def test_every_parameter_has_a_description_and_a_typed_descriptor():
    require_module("rcl_interfaces", reason="rcl_interfaces (ROS 2) is not installed")
    for spec in P.PARAMETERS:
        desc = P.descriptor(spec)
        assert desc.description and desc.type != 0, spec.name
        assert desc.read_only == spec.read_only


def test_bare_off_reads_as_off_and_output_stride_reaches_the_model_only_when_set():
    assert P.unquoted_off("crf", False) == "off" and P.unquoted_off("crf", "fast") == "fast"
    assert P.unquoted_off("keep_aspect", False) is False  # a real bool parameter is left alone
    with pytest.raises(ValueError, match="boolean true"):
        P.unquoted_off("crf", True)
    assert P.model_options({"output_stride": 0}) == {} and P.model_options(
        {"output_stride": 8}
    ) == {"output_stride": 8}


def test_settings_are_derived_from_the_parameter_table():
    """Every run-time parameter of the table is a Settings field (none can be forgotten).

    And no read-only one is.
    """
    fields = {f.name for f in __import__("dataclasses").fields(P.Settings)}
    runtime = {p.name for p in P.PARAMETERS if p.in_yaml and not p.read_only}
    assert fields == runtime and "batch_timeout_ms" in fields and "model" not in fields
    values = {p.name: p.default for p in P.PARAMETERS}
    assert P.settings_from(values).overlay_alpha == 0.5


@pytest.mark.parametrize("value, problem", [
    ([], None), (["front", "rear/left"], None), (None, "string array"),
    (["front", "front"], "repeat"), (["1st"], "camera names"), (["a b"], "camera names"),
    ([f"c{i}" for i in range(17)], "at most 16")])
def test_camera_names_are_checked(value, problem):
    reason = P.validate("cameras", value)
    assert (reason is None) if problem is None else (problem in reason), reason


def test_unknown_overrides_from_the_command_line_and_params_files(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("/**:\n  ros__parameters:\n    overlay_alfa: 0.3\n    model: unet\n"
                      "other_node:\n  ros__parameters:\n    not_ours: 1\n"
                      "/perception/segment_node:\n  ros__parameters:\n    qos_overrides:\n"
                      "      /x:\n        depth: 2\n    crf_iterations: 3\n    gamma: 1\n")
    args = ["segment_node", "--ros-args", "--params-file", str(params), "-p", "typo:=1",
            "-p", "other:foo:=1", "-p", "segment_node:bar:=2", "-p", "use_sim_time:=true"]
    names = ["segment_node", "/perception/segment_node"]
    assert P.unknown_overrides(args, names) == ["bar", "gamma", "overlay_alfa", "typo"]


@pytest.mark.parametrize("override,problem", [
    ("overlay_alpha:=abc", "must be of type double, got the string 'abc'"),
    ("qos_depth:=2.5", "must be of type integer, got the double 2.5"),
    ("num_threads:=four", "must be of type integer, got the string 'four'"),
    ("publish_overlay:=maybe", "must be of type bool, got the string 'maybe'"),
    ("diagnostics_period:=2", "got the integer 2 (write 2.0)"),
    ("segment_node:qos_depth:=x", "'qos_depth'"),
    ("other_node:qos_depth:=x", None),  # not this node's
    ("overlay_alpha:=0.3", None), ("qos_depth:=3", None), ("crf:=off", None),
])
def test_wrong_typed_overrides_are_named(override, problem):
    """A params file's value wins over a differently typed ``-p`` in rcl: checked first."""
    args = ["--ros-args", "--params-file", "config/segment.yaml", "-p", override]
    reason = P.override_problem(args, "segment_node")
    assert (reason is None) if problem is None else (problem in reason), reason


def test_params_files_written_by_launch_ros_are_read(tmp_path):
    """launch_ros dumps list parameters as !!python/tuple.

    rcl ignores the tag, and so do the node's own checks of its params files.
    """
    params = tmp_path / "launch_params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    cameras: !!python/tuple\n    - front\n"
                      "    - rear\n    typo: 1\n")
    data = P.load_params_file(str(params))
    assert data["/**"]["ros__parameters"]["cameras"] == ["front", "rear"]
    assert P.unknown_overrides(["--ros-args", "--params-file", str(params)], ["segment_node"]) \
        == ["typo"]


SIGNAL_IN_A_CALLBACK = """
import os, signal, sys, time, weakref
from seg_ros.node.shutdown import ShutdownRequested, SignalGuard

guard = SignalGuard().install()


class Thing:
    pass


try:
    thing = Thing()
    keep = weakref.ref(thing, lambda _ref: [os.kill(os.getpid(), signal.SIGINT), time.sleep(0.05)])
    del thing  # the signal lands in the weakref callback, where Python drops exceptions
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # start-up going on
        time.sleep(0.01)
    sys.exit(3)
except ShutdownRequested as stop:
    print(f"stopped by {stop}")
"""


def test_a_stop_signal_dropped_inside_a_callback_is_delivered_again():
    """A stop signal that lands inside a callback is delivered again, not lost.

    During start-up a signal can land inside a callback whose exceptions Python only prints
    (seen under load: importlib's module-lock weakref callback): the stop must not be lost and
    nothing but the stop may be printed.
    """
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SIGNAL_IN_A_CALLBACK], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done
    assert done.stdout.strip() == "stopped by SIGINT", done
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
