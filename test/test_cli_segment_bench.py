"""``seg-ros segment`` and ``seg-ros bench`` through the real entry point."""
from __future__ import annotations

import json

import cv2
import numpy as np
import torch

from seg_ros.cli.main import main
from seg_ros.models import build_model, save_weights


def test_segment_writes_labels_color_overlay(tmp_path, road_image):
    img_path = tmp_path / "frame.png"
    small = cv2.resize(road_image, (160, 120))
    cv2.imwrite(str(img_path), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    save_weights(
        weights, build_model("ddrnet23_slim", 11), {"arch": "ddrnet23_slim", "num_classes": 11}
    )
    rc = main(
        [
            "segment",
            str(img_path),
            str(tmp_path / "broken.png"),
            "--out",
            str(tmp_path / "out"),
            "--weights",
            str(weights),
            "--device",
            "cpu",
        ]
    )
    assert rc == 1  # one unreadable file is reported, the good one is still written
    labels = cv2.imread(str(tmp_path / "out" / "frame_labels.png"), cv2.IMREAD_UNCHANGED)
    color = cv2.imread(str(tmp_path / "out" / "frame_color.png"))
    overlay = cv2.imread(str(tmp_path / "out" / "frame_overlay.png"))
    assert labels.shape == (120, 160) and labels.dtype == np.uint8 and labels.max() < 11
    assert color.shape == overlay.shape == (120, 160, 3)
    from seg_ros.pipeline import SegmentationPipeline
    ref = SegmentationPipeline(weights=str(weights), device="cpu")(small, "rgb").labels
    assert np.array_equal(labels, ref)


def test_bench_json_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--size", "64x128", "--runs", "2", "--warmup", "1", "--weights", "none",
               "--device", "cpu", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert (
        report["model"] == "ddrnet23_slim"
        and report["backend"] == "torch"
        and report["device"] == "cpu"
    )
    assert report["size"] == [64, 128]
    for stage in (
        "forward",
        "pipeline",
        "forward_eager_fp32_nchw",
        "preprocess",
        "postprocess",
        "color",
        "overlay",
        "download",
        "decode",
        "serialise",
        "message_to_messages",
    ):
        t = report["timings_ms"][stage]
        assert t["median"] > 0 and t["p95"] >= t["median"]
    assert "pipeline_vs_forward" in report["ratios"]
    assert "pipeline" in capsys.readouterr().out


def test_bench_on_bag_frames(tmp_path, road_image):
    """--bag times the bag's own frames through decode ... serialise.

    Their size, their encodings.
    """
    from seg_ros import bags
    bag = tmp_path / "cam.mcap"
    small = cv2.resize(road_image, (96, 72))
    with bags.BagWriter(bag) as w:
        w.add_topic("/cam/image_raw", bags.IMAGE_TYPE)
        w.add_topic("/cam/image_raw/compressed", bags.COMPRESSED_TYPE)
        for i in range(3):
            w.write("/cam/image_raw", i, bags.image_msg_from_array(bags.make_header(i), small))
            ok, jpeg = cv2.imencode(".jpg", small)
            w.write(
                "/cam/image_raw/compressed",
                i,
                bags.make_compressed(bags.make_header(i), "jpeg", jpeg),
            )
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--bag",
            str(bag),
            "--topic",
            "/cam/image_raw/compressed",
            "--size",
            "64x96",
            "--runs",
            "3",
            "--warmup",
            "1",
            "--weights",
            "none",
            "--device",
            "cpu",
            "--no-baseline",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["frames"] == 3 and report["size"] == [72, 96] and report["source"] == str(bag)
    t = report["timings_ms"]
    assert t["message_to_messages"]["median"] >= t["pipeline"]["median"] > 0
    assert t["decode"]["median"] > 0 and t["serialise"]["median"] > 0


def test_unknown_model_is_a_clear_cli_error(capsys):
    try:
        main(["segment", "x.png", "--out", "/tmp/x", "--model", "nope"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
