"""Pre/post-processing on hand-built inputs: labels, colours, overlay, confidence."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from seg_ros import ops


def test_upsampled_argmax_equals_dense_upsampling():
    torch.manual_seed(0)
    for c, h, w, oh, ow in (
        (11, 12, 16, 96, 128),
        (19, 47, 63, 375, 500),
        (5, 7, 9, 7, 9),
        (3, 10, 10, 33, 17),
    ):
        coarse = (
            F.interpolate(
                torch.randn(1, c, max(2, h // 3), max(2, w // 3)), (h, w), mode="bilinear"
            )
            * 4
        )
        logits = coarse + 0.05 * torch.randn(1, c, h, w)
        dense = ops.labels_from_logits(ops.upsample_logits(logits, (oh, ow)), torch.uint8)
        fast = ops.upsampled_argmax(logits, (oh, ow), torch.uint8)
        assert fast.shape == (oh, ow)
        assert torch.equal(dense, fast), (c, h, w, oh, ow)


def test_labels_from_hand_built_logits():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2, 0, 0] = 5  # class 2 top-left
    logits[0, 1, 1, 1] = 5  # class 1 bottom-right; the rest tie at 0 -> lowest id 0
    assert ops.labels_from_logits(logits, torch.uint8).tolist() == [[2, 0], [0, 1]]


def test_confidence_is_max_softmax():
    logits = torch.tensor([[[[0.0]], [[1.0]], [[2.0]]]])
    expected = torch.softmax(logits[0, :, 0, 0], 0).max()
    assert torch.allclose(ops.confidence_from_logits(logits)[0, 0], expected)


def test_colorize_uses_palette():
    palette = torch.tensor([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=torch.uint8)
    labels = torch.tensor([[0, 1], [2, 1]], dtype=torch.uint8)
    assert ops.colorize(labels, palette).tolist() == [
        [[0, 0, 0], [255, 0, 0]],
        [[0, 255, 0], [255, 0, 0]],
    ]


def test_blend_rounds_like_float_reference():
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    col = torch.from_numpy(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for alpha in (0.0, 0.25, 0.5, 0.7, 1.0):
        ref = np.round((1 - alpha) * img.numpy().astype(float) + alpha * col.numpy().astype(float))
        got = ops.blend(img, col, alpha).numpy().astype(float)
        assert np.abs(got - ref).max() <= 1, alpha
    assert torch.equal(ops.blend(img, col, 0.0), img) and torch.equal(
        ops.blend(img, col, 1.0), col
    )


def test_image_to_tensor_is_a_channels_last_view():
    img = torch.zeros(4, 6, 3, dtype=torch.uint8)
    t = ops.image_to_tensor(img)
    assert t.shape == (1, 3, 4, 6) and t.data_ptr() == img.data_ptr()
    assert t.is_contiguous(memory_format=torch.channels_last)
