"""Models and backends through the real node over DDS: DeepLab and PSPNet with the ``output_stride``
parameter (the same registry, pipeline and node as DDRNet), and the default backend, ``auto``, which
runs onnxruntime on the CPU. Labels equal the offline pipeline's with the same model and backend."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy")

from test_node import NodeProcess, Peer, check_outputs, image_msg, module_domain, node_command, node_env  # noqa: E402

from seg_ros.classes import load_classes  # noqa: E402
from seg_ros.models import build_model, save_weights  # noqa: E402
from seg_ros.pipeline import PipelineConfig, SegmentationPipeline  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def save_random_weights(path: Path, model: str, **options) -> Path:
    classes = load_classes("camvid")
    torch.manual_seed(0)
    save_weights(path, build_model(model, classes.num_classes, **options),
                 {"arch": model, "classes": classes.to_dicts(), "classes_name": classes.name,
                  "num_classes": classes.num_classes, "ignore_id": classes.ignore_id})
    return path


@contextmanager
def running_node(cmd: list[str]):
    domain = module_domain()
    node = NodeProcess(cmd, node_env(domain))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        mp.delenv("ROS_LOCALHOST_ONLY", raising=False)
        peer = Peer(domain)
    try:
        peer.wait_ready(node)
        yield peer
    finally:
        peer.close()
        assert node.stop() == 0, node.log
    assert "Traceback" not in node.log


def small_frame(road_image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(road_image[::3, ::3])  # 120 x 160


# DeepLab v3+ at stride 8, not its default 16, so the parameter must reach the model
@pytest.mark.parametrize("model,stride", [("deeplabv3plus_resnet50", 8), ("pspnet_resnet50", 0)])
def test_node_runs_deeplab_and_pspnet(tmp_path, road_image, model, stride):
    options = {"output_stride": stride} if stride else {}
    weights = save_random_weights(tmp_path / f"{model}.pt", model, **options)
    frame = small_frame(road_image)
    h, w = frame.shape[:2]
    offline = SegmentationPipeline(PipelineConfig(model=model, weights=str(weights), device="cpu",
                                                  model_options=options))
    expected = offline(frame, "rgb", overlay=True)
    cmd = node_command(weights, f"model:={model}", f"output_stride:={stride}", "device:=cpu")
    with running_node(cmd) as peer:
        sent = image_msg("rgb8", frame, h, w, tag=model)
        out = peer.roundtrip(sent, ("labels", "color_mask", "overlay"), timeout=90)
        check_outputs(out, sent, expected, offline)


def test_default_backend_on_cpu_is_onnxruntime(tmp_path, road_image):
    pytest.importorskip("onnxruntime")
    weights = save_random_weights(tmp_path / "ddrnet.pt", "ddrnet23_slim")
    frame = small_frame(road_image)
    h, w = frame.shape[:2]
    offline = SegmentationPipeline(PipelineConfig(weights=str(weights), device="cpu", backend="onnxruntime"))
    expected = offline(frame, "rgb")
    with running_node(node_command(weights, "device:=cpu", "diagnostics_period:=0.25", backend=None)) as peer:
        sent = image_msg("rgb8", frame, h, w, tag="auto")
        out = peer.roundtrip(sent, ("labels",), timeout=90)
        got = np.frombuffer(out["labels"].data, np.uint8).reshape(h, w)
        assert (got == expected.labels).mean() > 0.999
        values = peer.diag_values(after=time.monotonic())
        assert values["backend"] == "onnxruntime" and values["device"] == "cpu"
