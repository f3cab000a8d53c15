"""segment_node start-up errors: one clear log line naming the file or parameter and the problem.

Exit code 2, no traceback. All cases start in parallel to keep the suite short; the parameter
checks themselves are unit-tested in test_node_parts.py.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import cv2
import pytest
import torch

from helpers import (PARAMS_FILE, NodeProcess, Peer, image_msg, node_command, node_env,
                     require_module, save_test_weights)
from seg_ros.cli.live_node import random_domain, ros_env_here
from seg_ros.models import build_model, save_weights

require_module("rclpy", reason="rclpy (ROS 2) is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # node processes


def with_params_file(cmd: list[str], path: Path) -> list[str]:
    i = cmd.index("--params-file")
    return [*cmd[:i + 1], str(path), *cmd[i + 2:]]


def _cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Name -> (command, words the error line must contain)."""
    good = save_test_weights(tmp / "good.pt")
    missing = tmp / "no_such_weights.pt"
    corrupt = tmp / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint" * 10)
    truncated = tmp / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:4096])
    wrong = tmp / "nineteen_classes.pt"
    torch.manual_seed(0)
    save_weights(
        wrong, build_model("ddrnet23_slim", 19), {"arch": "ddrnet23_slim", "num_classes": 19}
    )
    bad_classes = tmp / "bad_classes.yaml"
    bad_classes.write_text("classes:\n  - {id: 0, name: road, color: [1, 2, 3]}\n"
                           "  - {id: 0, name: sky, color: [4, 5, 6]}\n")
    wrong_type = tmp / "wrong_type.yaml"  # a user's edited copy of config/segment.yaml
    wrong_type.write_text(PARAMS_FILE.read_text().replace("qos_depth: 1", 'qos_depth: "deep"'))
    cases = {
        "missing_weights": (node_command(missing), [str(missing), "does not exist"]),
        "corrupt_weights": (node_command(corrupt), [str(corrupt), "not a valid weights file"]),
        "truncated_weights": (node_command(truncated), [str(truncated), "truncated or corrupt"]),
        "untrained_default": (
            node_command("default", "model:=unet"),
            ["'unet' has no shipped weights", "'none'"],
        ),
        "incompatible_weights": (node_command(wrong), [str(wrong), "19"]),
        "bad_classes_file": (
            node_command(good, f"classes:={bad_classes}"),
            [str(bad_classes), "duplicate"],
        ),
        "out_of_range": (node_command(good, "overlay_alpha:=2.0"), ["overlay_alpha"]),
        "bad_choice": (node_command(good, "device:=tpu"), ["device", "tpu"]),
        "wrong_type": (with_params_file(node_command(good), wrong_type), ["qos_depth", "STRING"]),
        "missing_params_file": (
            with_params_file(node_command(good), tmp / "none.yaml"),
            ["none.yaml"],
        ),
        "stride_for_ddrnet": (
            node_command(good, "output_stride:=8"),
            ["ddrnet23_slim", "output_stride"],
        ),
        "crf_true": (node_command(good, "crf:=true"), ["crf", "boolean true"]),
        # beside a params file, rcl would silently keep the file's value for these
        "wrong_typed_override": (
            node_command(good, "overlay_alpha:=abc"),
            ["overlay_alpha", "abc"],
        ),
        "wrong_typed_bool": (
            node_command(good, "publish_overlay:=maybe"),
            ["publish_overlay", "bool"],
        ),
        "wrong_typed_qos_depth": (node_command(good, "qos_depth:=2.5"), ["qos_depth", "2.5"]),
        "wrong_typed_num_threads": (node_command(good, "num_threads:=four"),
                                    ["num_threads", "four"]),
        "wrong_typed_diagnostics_period": (node_command(good, "diagnostics_period:=soon"),
                                           ["diagnostics_period", "soon"]),
    }
    if not torch.cuda.is_available():
        cases["cuda_without_cuda"] = (
            node_command(good, "device:=cuda"),
            ["cuda", "not available"],
        )
    return cases


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[int, str, list[str]]]:
    tmp = tmp_path_factory.mktemp("startup")
    env = node_env(random_domain())
    cases = _cases(tmp)
    procs = {
        name: subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for name, (cmd, _) in cases.items()
    }
    results = {}
    deadline = time.monotonic() + 120
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            out += "\n<still running after 120 s: killed>"
        results[name] = (proc.returncode, out, cases[name][1])
    return results


CASES = ["missing_weights", "corrupt_weights", "truncated_weights", "untrained_default",
         "incompatible_weights", "bad_classes_file", "out_of_range", "bad_choice", "wrong_type",
         "missing_params_file", "stride_for_ddrnet", "crf_true", "cuda_without_cuda",
         "wrong_typed_override", "wrong_typed_bool", "wrong_typed_qos_depth",
         "wrong_typed_num_threads", "wrong_typed_diagnostics_period"]
WRONG_TYPED = [case for case in CASES if case.startswith("wrong_typed")]


@pytest.mark.parametrize("case", CASES)
def test_startup_error(outcomes, case):
    if case not in outcomes:
        pytest.skip("CUDA is available here, so device cuda is not an error")
    rc, out, words = outcomes[case]
    assert rc == 2, f"exit code {rc}:\n{out}"
    assert "Traceback" not in out, out
    errors = [
        line
        for line in out.splitlines()
        if "[FATAL]" in line or "[ERROR]" in line or " error:" in line
    ]
    assert len(errors) == 1, f"expected one error line, got:\n{out}"
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"
    if case in WRONG_TYPED:  # refused like any other bad value: one FATAL line, before ROS starts
        assert "[FATAL]" in errors[0], errors[0]


def test_frames_during_warm_up_are_counted_and_the_newest_is_segmented(weights_file, road_image):
    """The node subscribes before its warm-up trace.

    Frames sent meanwhile are not invisible, the replaced ones count as dropped and the newest is
    segmented once the model is warm.
    """
    domain = random_domain()
    env = node_env(domain)
    # A long warm-up (720x960: several seconds), so that discovery has matched the node's
    # reader to this peer well before it ends (frames before that are lost inside DDS, unseen),
    # and small frames: this peer runs on Fast DDS's defaults, whose 512 KiB segment would drop
    # large frames sent every 10 ms (docs/node.md). The node runs them in the warm graph.
    node = NodeProcess(node_command(weights_file, "input_size:=[720, 960]",
                                    "diagnostics_period:=0.25"), env)
    with ros_env_here(env):
        peer = Peer(domain)
    try:
        frame = cv2.resize(road_image, (160, 120))
        sent: list[str] = []
        deadline = time.monotonic() + 120
        while peer.class_info is None:  # not ready yet: warming up
            assert node.proc.poll() is None and time.monotonic() < deadline, node.log
            if peer.pub.get_subscription_count() > 0:
                msg = image_msg("rgb8", frame, 120, 160, tag="warmup")
                peer.pub.publish(msg)
                sent.append(msg.header.frame_id)
            time.sleep(0.01)  # fast enough that even a quick warm-up sees several frames
        assert len(sent) >= 3, f"the node subscribed only {len(sent)} frames before it was ready"
        got = peer.wait(
            lambda: [f for f in sent if f in peer.received["labels"]],
            30,
            "a warm-up frame's labels",
        )
        values = peer.diag_values(after=time.monotonic())
        assert int(values["frames_received"]) >= 2, values
        assert int(values["frames_dropped"]) >= 1, values
        assert got[-1] in sent[-3:], (got, sent[-3:])  # the newest waiting frame, not the oldest
    finally:
        peer.close()
        assert node.stop() == 0, node.log
