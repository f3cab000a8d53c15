"""The segmentation pipeline end to end on real computations."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch

from seg_ros.errors import ConfigError, InputError, WeightsError
from seg_ros.models import build_model, save_weights
from seg_ros.models.shipped import SHIPPED_WEIGHTS
from seg_ros.pipeline import SegmentationPipeline, inference_size
from seg_ros.sizes import KeptSizes


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Write a weights file with metadata (8 custom classes, own normalisation, input size)."""
    torch.manual_seed(0)
    model = build_model("ddrnet23_slim", 8)
    path = tmp_path_factory.mktemp("w") / "custom.pt"
    classes = [
        {"id": i, "name": f"c{i}", "color": [i * 30, 255 - i * 30, 7 * i]} for i in range(8)
    ]
    save_weights(
        path,
        model,
        {
            "arch": "ddrnet23_slim",
            "num_classes": 8,
            "classes": classes,
            "ignore_id": 255,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "input_size": [96, 128],
        },
    )
    return path


@pytest.fixture(scope="module")
def pipe(weights_file):
    return SegmentationPipeline(weights=str(weights_file), device="cpu")


def test_weights_metadata_configures_pipeline(pipe):
    assert pipe.trained and pipe.classes.num_classes == 8 and pipe.classes.names[3] == "c3"
    assert pipe.mean == [0.5, 0.5, 0.5] and pipe.input_size == (96, 128)
    assert pipe.describe()["weights"].endswith("custom.pt")


def test_outputs_at_input_resolution_for_odd_size(pipe, road_image):
    img = np.ascontiguousarray(np.resize(road_image, (375, 500, 3)))
    res = pipe(img, "rgb", color=True, overlay=True, confidence=True)
    assert res.labels.shape == (375, 500) and res.labels.dtype == np.uint8
    assert res.labels.max() < 8
    assert res.color.shape == res.overlay.shape == (375, 500, 3)
    assert np.array_equal(res.color, pipe.classes.colors[res.labels])
    assert res.confidence.shape == (375, 500) and res.confidence.dtype == np.float32
    assert (res.confidence > 1 / 8 - 1e-6).all() and (res.confidence <= 1 + 1e-6).all()
    expected = np.round(0.5 * img.astype(float) + 0.5 * res.color.astype(float))
    assert np.abs(res.overlay.astype(float) - expected).max() <= 1


def test_only_requested_outputs_are_computed(pipe, road_image):
    res = pipe(road_image, "rgb")
    assert res.color is None and res.overlay is None and res.confidence is None


def test_inference_resolution_output(weights_file, road_image):
    p = SegmentationPipeline(
        weights=str(weights_file), device="cpu", output_resolution="inference"
    )
    res = p(road_image, "rgb", overlay=True)
    assert res.labels.shape == p.inference_size_for(road_image.shape[:2])
    assert res.overlay.shape[:2] == res.labels.shape


def test_same_input_same_labels_and_bgr_equals_rgb(pipe, road_image):
    a = pipe(road_image, "rgb").labels
    b = pipe(road_image.copy(), "rgb").labels
    c = pipe(np.ascontiguousarray(road_image[..., ::-1]), "bgr", overlay=True)
    assert np.array_equal(a, b) and np.array_equal(a, c.labels)
    assert (
        np.abs(
            c.overlay.astype(int) - pipe(road_image, "rgb", overlay=True).overlay.astype(int)
        ).max()
        == 0
    )


def test_labels_follow_the_network(pipe, road_image):
    """Labels equal argmax of the network's logits upsampled to the frame (dense reference)."""
    with torch.inference_mode():
        logits = pipe.forward_logits(road_image, "rgb")
        ref = (
            torch.nn.functional.interpolate(
                logits.float(), size=road_image.shape[:2], mode="bilinear", align_corners=False
            )[0]
            .argmax(0)
            .numpy()
        )
    assert (pipe(road_image, "rgb").labels != ref).mean() < 1e-4


def test_padded_view_input(pipe, road_image):
    """A strided view (e.g. a ROS buffer with row padding) is accepted without a copy."""
    padded = np.zeros((road_image.shape[0], road_image.shape[1] + 16, 3), np.uint8)
    padded[:, : road_image.shape[1]] = road_image
    view = padded[:, : road_image.shape[1]]
    assert np.array_equal(pipe(view, "rgb").labels, pipe(road_image, "rgb").labels)


READ_ONLY_CHECK = """
import sys, warnings
import numpy as np
from seg_ros.pipeline import SegmentationPipeline
pipe = SegmentationPipeline(weights=sys.argv[1], device="cpu")
frame = np.zeros((64, 96, 3), np.uint8)
frame.flags.writeable = False
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")  # torch warns once per process: this is the first time
    pipe(frame, "rgb")
print([str(w.message) for w in caught if "not writable" in str(w.message)],
      [f[1].pattern for f in warnings.filters if f[1] is not None and "writable" in f[1].pattern])
"""


@pytest.mark.slow
def test_read_only_input_without_a_warning_and_no_global_filter(weights_file):
    """A ROS buffer is a read-only view.

    Torch's 'not writable' warning is silenced at the one call that views it, not for the whole
    process (a fresh one: torch warns once per process).
    """
    out = subprocess.run([sys.executable, "-c", READ_ONLY_CHECK, str(weights_file)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[] []"  # no warning from the pipeline, no process-wide filter


def test_flipped_view_input(pipe, road_image):
    """Negative-stride views work like copies.

    E.g. a mirrored camera, a BGR view by ``[..., ::-1]``.
    """
    mirrored = road_image[:, ::-1]
    assert np.array_equal(pipe(mirrored, "rgb").labels, pipe(mirrored.copy(), "rgb").labels)
    assert np.array_equal(
        pipe(road_image[..., ::-1], "bgr").labels, pipe(road_image, "rgb").labels
    )


@pytest.mark.parametrize("image, kind", [
    (np.zeros((32, 32, 3), np.float32), "bad_dtype"),
    (np.zeros((32, 32), np.uint8), "bad_channels"),
    (np.zeros((32, 32, 4), np.uint8), "bad_channels"),
    (np.zeros((0, 32, 3), np.uint8), "empty"),
    (np.zeros((200, 200, 3), np.uint8), "too_large"),
    ([[1, 2, 3]], "bad_type"),
])
def test_bad_input_raises_clear_value_error(weights_file, image, kind):
    p = SegmentationPipeline(weights=str(weights_file), device="cpu", max_input_pixels=100 * 100)
    with pytest.raises(ValueError) as err:
        p(image, "rgb")
    assert isinstance(err.value, InputError) and err.value.kind == kind


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown model"):
        SegmentationPipeline(model="nope", weights="none")
    with pytest.raises(ConfigError, match="output_resolution"):
        SegmentationPipeline(weights="none", output_resolution="half")
    with pytest.raises(ConfigError, match="fp16"):
        SegmentationPipeline(weights="none", device="cpu", precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            SegmentationPipeline(weights="none", device="cuda")


def test_class_count_mismatch_with_weights(weights_file):
    with pytest.raises(ConfigError, match="8"):
        SegmentationPipeline(weights=str(weights_file), classes="camvid", device="cpu")
    with pytest.raises(WeightsError, match="missing.pt does not exist"):
        SegmentationPipeline(weights="/tmp/definitely/missing.pt", device="cpu")


def test_random_weights_only_when_asked_for_explicitly(monkeypatch):
    """Random weights only when asked for explicitly.

    Weights 'default' for a model without shipped weights (or with its file not installed) is
    a start-up error naming the fix, not a silent fall-back to random weights.
    """
    with pytest.raises(WeightsError, match=r"'unet' has no shipped weights .*--weights.*'none'"):
        SegmentationPipeline(model="unet", device="cpu")
    with pytest.raises(WeightsError, match="weights is empty"):
        SegmentationPipeline(weights="", device="cpu")
    not_installed = dataclasses.replace(SHIPPED_WEIGHTS["ddrnet23_slim"], model="unet",
                                        file="weights/unet_not_installed.pt")
    monkeypatch.setitem(SHIPPED_WEIGHTS, "unet", not_installed)
    with pytest.raises(WeightsError, match=r"unet_not_installed.pt\) are not installed"):
        SegmentationPipeline(model="unet", device="cpu")
    small = {"base_width": 8, "depth": 2}
    explicit = SegmentationPipeline(model="unet", weights="none", device="cpu",
                                    model_options=small)
    assert not explicit.trained


def test_random_init_is_announced():
    p = SegmentationPipeline(weights="none", device="cpu")
    assert not p.trained and any("random initialisation" in n for n in p.notes)
    assert p.classes.name == "camvid"


def test_inference_size_rounding():
    assert inference_size((375, 500), None, True, 8) == (376, 504)
    assert inference_size((720, 1280), (512, 1024), True, 8) == (512, 912)
    assert inference_size((720, 1280), (512, 1024), False, 8) == (512, 1024)


def test_folded_model_matches_eager(weights_file):
    p = SegmentationPipeline(weights=str(weights_file), device="cpu")
    eager = build_model("ddrnet23_slim", 8).eval()
    from seg_ros.models import load_weights
    load_weights(eager, weights_file)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        assert torch.allclose(
            p.model(x.contiguous(memory_format=torch.channels_last)), eager(x), atol=2e-3
        )


def test_warm_up_builds_the_per_shape_graph_before_the_first_frame(weights_file, road_image):
    """Warm-up builds the per-shape graph before the first frame.

    With an input size (here from the weights file), start-up work happens in warm_up(); a frame of
    the same aspect reuses it. Without one, there is nothing to warm.
    """
    pipe = SegmentationPipeline(weights=str(weights_file), device="cpu")
    assert pipe.warm_up() == (96, 128)
    assert pipe.backend.describe()["graphs"] == 1
    pipe(road_image[:240, :320], "rgb")  # 4:3 like the warm-up: scaled to 96x128, same graph
    assert pipe.backend.describe()["graphs"] == 1
    assert SegmentationPipeline(weights="none", device="cpu").warm_up() is None


def test_kept_sizes_resize_into_the_nearest_and_replace_only_stale_ones():
    """Up to ``capacity`` sizes run as they are.

    Beyond, a frame runs at the kept size nearest in shape; a new size replaces the least
    recently used kept one only once that has gone unused for ``min_frames_per_new_size`` frames.
    Sizes that cycle are never rebuilt; a camera that changes size for good is adopted.
    """
    sizes = KeptSizes(min_frames_per_new_size=5)
    first = [sizes.choose(s, 2) for s in [(8, 16), (16, 16), (8, 16)]]
    assert first == [(8, 16), (16, 16), (8, 16)]
    cycling = [sizes.choose(s, 2) for s in [(24, 24), (8, 16), (16, 16)] * 3]
    assert cycling == [(16, 16), (8, 16), (16, 16)] * 3  # (24, 24) runs at the nearest
    assert sizes.replaced == 0 and sizes.resized == 3 and sizes.kept() == [(8, 16), (16, 16)]
    assert sizes.choose((8, 24), 2) == (8, 16)
    new = [sizes.choose((40, 48), 2) for _ in range(8)]  # a new size for good
    # (16, 16), its nearest, stays in use; (8, 16) is stale after 5 frames without a frame
    assert new == [(16, 16)] * 4 + [(40, 48)] * 4 and sizes.replaced == 1
    assert sizes.kept() == [(16, 16), (40, 48)]
    sizes.mark_unused()  # after a warm-up: a size no frame has asked for yet gives way at once
    assert sizes.choose((64, 64), 2) == (64, 64) and sizes.kept() == [(40, 48), (64, 64)]
    assert sizes.choose((123, 77), None) == (123, 77)  # a backend without per-shape builds
    always = KeptSizes(min_frames_per_new_size=1)  # the plain LRU
    assert [always.choose(s, 1) for s in [(8, 8), (16, 16), (8, 8)]] == [(8, 8), (16, 16), (8, 8)]
    with pytest.raises(ConfigError, match="min_frames_per_new_size"):
        SegmentationPipeline(weights="none", device="cpu", min_frames_per_new_size=0)


def test_frames_in_more_sizes_than_graphs_run_at_kept_sizes(weights_file, road_image):
    """Frames in more sizes than graphs run at kept sizes.

    Through the pipeline: a fifth frame size runs at the nearest kept size (labels still at the
    frame's resolution), and the backend holds no more graphs than it may.
    """
    pipe = SegmentationPipeline(weights=str(weights_file), device="cpu", input_size=(64, 64))
    assert pipe.backend.max_shapes == 4
    for width in (64, 73, 85, 102, 128, 64):  # network sizes 64, 56, 48, 40, 32 (x64), 64
        frame = np.ascontiguousarray(road_image[:64, :width])
        assert pipe(frame, "rgb").labels.shape == (64, width)
    assert len(pipe.sizes.kept()) == 4 == pipe.backend.describe()["graphs"]
    assert pipe.sizes.replaced == 0 and pipe.sizes.resized == 1  # all four kept sizes in use
    assert pipe.sizes.kept() == [(56, 64), (48, 64), (40, 64), (64, 64)]
