"""DeepLab and PSPNet through the real node over DDS, with the ``output_stride`` parameter: the same
registry, pipeline and node as DDRNet, labels equal to the offline pipeline's (DeepLab v3+ at stride 8,
not its default 16, so the parameter must reach the model)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("rclpy")

from test_node import NodeProcess, Peer, check_outputs, image_msg, module_domain, node_command, node_env  # noqa: E402

from seg_ros.classes import load_classes  # noqa: E402
from seg_ros.models import build_model, save_weights  # noqa: E402
from seg_ros.pipeline import PipelineConfig, SegmentationPipeline  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("model,stride", [("deeplabv3plus_resnet50", 8), ("pspnet_resnet50", 0)])
def test_node_runs_deeplab_and_pspnet(tmp_path, road_image, model, stride):
    classes = load_classes("camvid")
    torch.manual_seed(0)
    options = {"output_stride": stride} if stride else {}
    weights = tmp_path / f"{model}.pt"
    save_weights(weights, build_model(model, classes.num_classes, **options),
                 {"arch": model, "classes": classes.to_dicts(), "classes_name": classes.name,
                  "num_classes": classes.num_classes, "ignore_id": classes.ignore_id})
    frame = np.ascontiguousarray(road_image[::3, ::3])  # 120 x 160
    h, w = frame.shape[:2]
    offline = SegmentationPipeline(PipelineConfig(model=model, weights=str(weights), device="cpu",
                                                  model_options=options))
    expected = offline(frame, "rgb", overlay=True)

    domain = module_domain()
    node = NodeProcess(node_command(weights, f"model:={model}", f"output_stride:={stride}", "device:=cpu"),
                       node_env(domain))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        mp.delenv("ROS_LOCALHOST_ONLY", raising=False)
        peer = Peer(domain)
    try:
        peer.wait_ready(node)
        sent = image_msg("rgb8", frame, h, w, tag=model)
        out = peer.roundtrip(sent, ("labels", "color_mask", "overlay"), timeout=90)
        check_outputs(out, sent, expected, offline)
        assert peer.class_info is not None
    finally:
        peer.close()
        assert node.stop() == 0, node.log
    assert "Traceback" not in node.log
