"""Models and backends through the real node over DDS.

DeepLab and PSPNet with the ``output_stride`` parameter (the same registry, pipeline and node as
DDRNet), SegNet for the classic models (pooling indices, full-resolution logits), the default
backend, ``auto`` (torch on the CPU), and onnxruntime. Labels equal the offline pipeline's with the
same model and backend.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from helpers import require_module

require_module("rclpy")

from helpers import (check_outputs, image_msg, node_command, running_node,  # noqa: E402
                     save_test_weights)

from seg_ros.pipeline import PipelineConfig, SegmentationPipeline  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # node processes over DDS


def small_frame(road_image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(road_image[::3, ::3])  # 120 x 160


# DeepLab v3+ at stride 8, not its default 16, so the parameter must reach the model
@pytest.mark.parametrize(
    "model,stride", [("deeplabv3plus_resnet50", 8), ("pspnet_resnet50", 0), ("segnet_vgg16", 0)]
)
def test_node_runs_deeplab_and_pspnet(tmp_path, road_image, model, stride):
    options = {"output_stride": stride} if stride else {}
    weights = save_test_weights(tmp_path / f"{model}.pt", model, **options)
    frame = small_frame(road_image)
    h, w = frame.shape[:2]
    offline = SegmentationPipeline(PipelineConfig(model=model, weights=str(weights), device="cpu",
                                                  model_options=options))
    expected = offline(frame, "rgb", overlay=True)
    cmd = node_command(weights, f"model:={model}", f"output_stride:={stride}", "device:=cpu")
    with running_node(cmd) as (node, peer):
        sent = image_msg("rgb8", frame, h, w, tag=model)
        out = peer.roundtrip(sent, ("labels", "color_mask", "overlay"), timeout=90)
        check_outputs(out, sent, expected, offline)
    assert node.proc.returncode == 0 and "Traceback" not in node.log, node.log


@pytest.mark.parametrize("backend,runs", [(None, "torch"), ("onnxruntime", "onnxruntime")])
def test_node_backends_on_cpu(tmp_path, road_image, backend, runs):
    """No ``backend`` parameter means ``auto``, which is torch on the CPU.

    Onnxruntime on request.
    """
    if runs == "onnxruntime":
        require_module("onnxruntime")
    weights = save_test_weights(tmp_path / "ddrnet.pt", "ddrnet23_slim")
    frame = small_frame(road_image)
    h, w = frame.shape[:2]
    offline = SegmentationPipeline(
        PipelineConfig(weights=str(weights), device="cpu", backend=runs)
    )
    expected = offline(frame, "rgb")
    cmd = node_command(weights, "device:=cpu", "diagnostics_period:=0.25", backend=backend)
    with running_node(cmd) as (node, peer):
        sent = image_msg("rgb8", frame, h, w, tag=runs)
        out = peer.roundtrip(sent, ("labels",), timeout=90)
        got = np.frombuffer(out["labels"].data, np.uint8).reshape(h, w)
        assert (got == expected.labels).mean() > 0.999
        values = peer.diag_values(after=time.monotonic())
        assert values["backend"] == runs and values["device"] == "cpu"
    assert node.proc.returncode == 0 and "Traceback" not in node.log, node.log
