"""Test-time augmentation (seg_ros.tta): the offline quality mode of seg-ros eval/replay --tta."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seg_ros.cli.main import main as cli
from seg_ros.errors import ConfigError
from seg_ros.pipeline import SegmentationPipeline
from seg_ros.tta import TTAPipeline, offline_pipeline, scaled_sizes, tta_probabilities


@pytest.fixture(scope="module")
def shipped() -> SegmentationPipeline:
    return SegmentationPipeline(weights="default", device="cpu")


def test_tta_labels_differ_from_single_scale_with_the_same_shape(shipped, road_image):
    plain = shipped(road_image, "rgb").labels
    tta = TTAPipeline(shipped)(road_image, "rgb", color=True, overlay=True, confidence=True)
    assert tta.labels.shape == plain.shape == road_image.shape[:2]
    assert tta.labels.dtype == plain.dtype
    changed = float((tta.labels != plain).mean())
    assert 0.0 < changed < 0.2, changed  # a refinement of the same segmentation, not another one
    assert tta.color.shape == tta.overlay.shape == road_image.shape
    assert tta.confidence.shape == plain.shape and 0.0 < tta.confidence.min() <= 1.0


def test_scales_run_at_rounded_sizes(shipped):
    sizes = scaled_sizes(shipped, (360, 480), (0.75, 1.0, 1.25))
    assert sizes == [(272, 360), (360, 480), (448, 600)]


def test_flip_only_tta_of_a_mirror_symmetric_frame_is_symmetric(shipped, road_image):
    half = road_image[:, : road_image.shape[1] // 2]
    frame = np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))
    plain = shipped(frame, "rgb").labels
    assert not np.array_equal(plain, plain[:, ::-1])  # the network alone is not mirror-symmetric
    prob = tta_probabilities(shipped, frame, "rgb", scales=(1.0,), flip=True)
    assert torch.equal(prob, prob.flip(-1))
    labels = TTAPipeline(shipped, scales=(1.0,), flip=True)(frame, "rgb").labels
    np.testing.assert_array_equal(labels, labels[:, ::-1])


def test_bgr_input_gives_the_rgb_result(shipped, road_image):
    tta = TTAPipeline(shipped, scales=(1.0,))
    rgb = tta(road_image, "rgb").labels
    bgr = np.ascontiguousarray(road_image[..., ::-1])
    np.testing.assert_array_equal(tta(bgr, "bgr").labels, rgb)


def test_tta_is_not_combined_with_a_crf(shipped):
    assert offline_pipeline(shipped, tta=False, crf="dense") is shipped
    with pytest.raises(ConfigError, match="cannot be combined"):
        offline_pipeline(shipped, tta=True, crf="dense")


def test_eval_reports_tta_separately(tmp_path, camvid_dir):
    reports = {}
    for tta in (False, True):
        path = tmp_path / f"report_{tta}.json"
        rc = cli(["eval", "--images", str(camvid_dir / "val"),
                  "--labels", str(camvid_dir / "valannot"), "--weights", "default",
                  "--device", "cpu", "--max-images", "2", "--json", str(path)]
                 + (["--tta"] if tta else []))
        assert rc == 0
        reports[tta] = json.loads(path.read_text())
    assert reports[False]["tta"] is False and reports[True]["tta"] is True
    assert reports[True]["model"]["tta"] == {"scales": [0.75, 1.0, 1.25], "flip": True}
    assert reports[True]["images"] == reports[False]["images"] == 2
    assert reports[True]["confusion"] != reports[False]["confusion"]
