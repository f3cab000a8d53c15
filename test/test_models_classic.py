"""FCN-8s, SegNet, DeconvNet, U-Net and DilatedNet.

Layouts, parameter counts, shapes at odd sizes, max-unpooling, training mode, batch-norm folding,
and the pipeline.

The key/shape layouts below are written out from the architectures' descriptions (and, for the
VGG-16 trunks, torchvision's ``vgg.make_layers`` numbering), independently of our modules; a model
matches only if every key and shape agrees. Parameter counts are asserted as exact numbers and
were cross-checked against the published figures:
* FCN-8s, 21 classes: 134,489,759, of which 127,008 are the three learned upsampling kernels; the
  other 134,362,751 are the "134M" of FCN-VGG16 in Long et al.'s Table 1 (the 8x upsampling of
  the Caffe model is fixed bilinear, so not counted as learned there).
* SegNet, 11 classes (CamVid) 29,449,355 / 12 classes 29,449,932: the ~29.5M of Badrinarayanan et
  al.'s comparison table.
* DeconvNet, 21 classes: 251,805,653: the 252M in the same table.
* DilatedNet's basic context module: 64 C^2 + 8 C (7 dilated 3x3 layers and a 1x1 layer of C
  channels, with biases), the paper's "64 C^2 parameters".
* U-Net: no published exact figure to compare with; the count is the layer-by-layer sum below.
"""
from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import Layout, bn_layout, conv_layout
from seg_ros.errors import ConfigError
from seg_ros.models import build_model, list_models
from seg_ros.models.fcn import bilinear_upsampling
from seg_ros.models.optimize import fold_batchnorm
from seg_ros.models.segnet import max_unpool
from seg_ros.pipeline import SegmentationPipeline

CLASSIC = ["fcn8s_vgg16", "segnet_vgg16", "deconvnet_vgg16", "unet", "dilatednet_vgg16"]
FULL_RESOLUTION = {"fcn8s_vgg16", "segnet_vgg16", "deconvnet_vgg16", "unet"}

# -- reference layouts ----------------------------------------------------------------------------

# torchvision's cfg "D": conv widths, "M" a max pooling; make_layers numbers conv, [bn], relu, pool
VGG16_CFG = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
]


def _conv(
    name: str, cin: int, cout: int, k: int, bias: bool = True, transposed: bool = False
) -> Layout:
    return conv_layout(
        name, cin, cout, k, bias, transposed
    )  # these models mostly keep conv biases


_bn = bn_layout


def torchvision_vgg16_features(bn: bool) -> Layout:
    keys, idx, cin = {}, 0, 3
    for v in VGG16_CFG:
        if v == "M":
            idx += 1
            continue
        keys |= _conv(f"features.{idx}", cin, v, 3)
        if bn:
            keys |= _bn(f"features.{idx + 1}", v)
        idx += 3 if bn else 2
        cin = v
    return keys


def fcn8s(nc: int) -> Layout:
    keys = (
        torchvision_vgg16_features(bn=False)
        | _conv("fc6", 512, 4096, 7)
        | _conv("fc7", 4096, 4096, 1)
    )
    keys |= (
        _conv("score_fr", 4096, nc, 1)
        | _conv("score_pool4", 512, nc, 1)
        | _conv("score_pool3", 256, nc, 1)
    )
    for name, k in (("upscore2", 4), ("upscore_pool4", 4), ("upscore8", 16)):
        keys |= _conv(name, nc, nc, k, bias=False, transposed=True)
    return keys


# decoder layers (in, out) from pool5 back to pool1: VGG-16 mirrored
DECODER = [
    [(512, 512)] * 3,
    [(512, 512), (512, 512), (512, 256)],
    [(256, 256), (256, 256), (256, 128)],
    [(128, 128), (128, 64)],
    [(64, 64)],
]


def _decoder(transposed: bool, stage1: list[tuple[int, int]]) -> Layout:
    keys = {}
    for s, layers in enumerate(DECODER[:-1] + [stage1]):
        for j, (cin, cout) in enumerate(layers):
            keys |= _conv(f"decoder.{s}.{3 * j}", cin, cout, 3, transposed=transposed)
            keys |= _bn(f"decoder.{s}.{3 * j + 1}", cout)
    return keys


def segnet(nc: int) -> Layout:
    return (
        torchvision_vgg16_features(bn=True)
        | _decoder(False, [(64, 64)])
        | _conv("classifier", 64, nc, 3)
    )


def deconvnet(nc: int) -> Layout:
    keys = torchvision_vgg16_features(bn=True)
    keys |= (
        _conv("fc.0", 512, 4096, 7)
        | _bn("fc.1", 4096)
        | _conv("fc.3", 4096, 4096, 1)
        | _bn("fc.4", 4096)
    )
    keys |= _conv("fc.6", 4096, 512, 7, transposed=True) | _bn("fc.7", 512)
    return keys | _decoder(True, [(64, 64), (64, 64)]) | _conv("classifier", 64, nc, 1)


def unet(nc: int, base_width: int = 64, depth: int = 4) -> Layout:
    widths = [base_width * 2 ** i for i in range(depth + 1)]
    keys = {}

    def double(name: str, cin: int, cout: int) -> Layout:
        return (_conv(f"{name}.0", cin, cout, 3, bias=False) | _bn(f"{name}.1", cout)
                | _conv(f"{name}.3", cout, cout, 3, bias=False) | _bn(f"{name}.4", cout))

    for i, w in enumerate(widths):
        keys |= double(f"down.{i}", widths[i - 1] if i else 3, w)
    for j, i in enumerate(reversed(range(1, depth + 1))):
        keys |= _conv(f"up.{j}", widths[i], widths[i - 1], 2, transposed=True)
        keys |= double(f"decode.{j}", 2 * widths[i - 1], widths[i - 1])
    return keys | _conv("classifier", widths[0], nc, 1)


def dilatednet(nc: int, context: bool = False) -> Layout:
    keys = (
        torchvision_vgg16_features(bn=False)
        | _conv("fc6", 512, 4096, 7)
        | _conv("fc7", 4096, 4096, 1)
    )
    keys |= _conv("final", 4096, nc, 1)
    if context:
        for i in range(7):
            keys |= _conv(f"context.{2 * i}", nc, nc, 3)
        keys |= _conv("context.14", nc, nc, 1)
    return keys


def count_params(layout: Layout) -> int:
    return sum(math.prod(s) for k, s in layout.items() if k.endswith((".weight", ".bias")))


# (name, num_classes, options) -> (reference layout, trainable parameters)
CASES = {
    ("fcn8s_vgg16", 21, ()): (fcn8s(21), 134_489_759),
    ("fcn8s_vgg16", 19, ()): (fcn8s(19), 134_456_985),
    ("segnet_vgg16", 11, ()): (segnet(11), 29_449_355),
    ("segnet_vgg16", 12, ()): (segnet(12), 29_449_932),
    ("segnet_vgg16", 19, ()): (segnet(19), 29_453_971),
    ("deconvnet_vgg16", 21, ()): (deconvnet(21), 251_805_653),
    ("deconvnet_vgg16", 19, ()): (deconvnet(19), 251_805_523),
    ("unet", 19, ()): (unet(19), 31_038_803),
    ("unet", 2, ()): (unet(2), 31_037_698),
    ("unet", 11, (("base_width", 16), ("depth", 3))): (unet(11, 16, 3), 482_907),
    ("dilatednet_vgg16", 21, ()): (dilatednet(21), 134_346_581),
    ("dilatednet_vgg16", 19, ()): (dilatednet(19), 134_338_387),
    ("dilatednet_vgg16", 19, (("context_module", True),)): (
        dilatednet(19, True),
        134_338_387 + 64 * 19**2 + 8 * 19,
    ),
}


def meta_model(name: str, nc: int, **options) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, nc, **options)


def test_registry_lists_the_classic_models():
    assert set(CLASSIC) <= set(list_models())


@pytest.mark.parametrize("name,nc,options", list(CASES), ids=lambda v: str(v))
def test_param_counts_and_layout_match_reference(name, nc, options):
    layout, expected = CASES[(name, nc, options)]
    model = meta_model(name, nc, **dict(options))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ours) ^ set(layout)) == []
    assert {k: s for k, s in ours.items() if s != layout[k]} == {}
    assert count_params(layout) == expected
    assert sum(p.numel() for p in model.parameters()) == expected


def test_published_figures():
    """The cross-checks of the module docstring, as arithmetic."""
    fcn = meta_model("fcn8s_vgg16", 21)
    upsampling = sum(p.numel() for n, p in fcn.named_parameters() if n.startswith("upscore"))
    assert upsampling == 127_008 and round((134_489_759 - upsampling) / 1e6) == 134
    assert round(CASES[("segnet_vgg16", 11, ())][1] / 1e5) / 10 == 29.4
    assert round(CASES[("deconvnet_vgg16", 21, ())][1] / 1e6) == 252


def test_architecture_details():
    dil = meta_model("dilatednet_vgg16", 19, context_module=True)
    assert isinstance(dil.features[23], nn.Identity) and isinstance(
        dil.features[30], nn.Identity
    )  # pool4, pool5
    assert [dil.features[i].dilation for i in (21, 24, 26, 28)] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert dil.fc6.dilation == (4, 4) and dil.fc6.kernel_size == (7, 7)
    assert [m.dilation[0] for m in dil.context if isinstance(m, nn.Conv2d)] == [
        1,
        1,
        2,
        4,
        8,
        16,
        1,
        1,
    ]
    assert all(m.ceil_mode for m in dil.features if isinstance(m, nn.MaxPool2d))
    seg = meta_model("segnet_vgg16", 11)
    assert all(m.return_indices for m in seg.features if isinstance(m, nn.MaxPool2d))
    deconv = meta_model("deconvnet_vgg16", 21)
    assert (
        sum(isinstance(m, nn.ConvTranspose2d) for m in deconv.modules()) == 14
    )  # fc6's + 13 in the decoder
    assert all(
        isinstance(b, nn.BatchNorm2d)
        for m, b in zip(deconv.decoder[0], deconv.decoder[0][1:])
        if isinstance(m, nn.ConvTranspose2d)
    )
    with pytest.raises(ConfigError, match="context_module"):
        meta_model("dilatednet_vgg16", 19, context_module="yes")
    with pytest.raises(ConfigError, match="depth"):
        meta_model("unet", 19, depth=0)


def test_dilatednet_context_module_starts_as_identity():
    torch.manual_seed(0)
    front = build_model("dilatednet_vgg16", 4).eval()
    full = build_model("dilatednet_vgg16", 4, context_module=True).eval()
    full.load_state_dict(front.state_dict(), strict=False)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(full(x), front(x).clamp(min=0))


def test_fcn_upsampling_is_bilinear():
    """Kernel 2f, stride f.

    Padding f/2 with bilinear taps: F.interpolate's bilinear upsampling (align_corners=False) away
    from the border.
    """
    x = torch.randn(1, 3, 6, 7)
    for factor in (2, 8):
        up = bilinear_upsampling(3, factor)
        with torch.no_grad():
            got = up(x)
        ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert got.shape == ref.shape
        torch.testing.assert_close(
            got[..., factor:-factor, factor:-factor], ref[..., factor:-factor, factor:-factor]
        )


# -- max-unpooling --------------------------------------------------------------------------------

def test_max_unpool_puts_values_at_the_recorded_indices():
    x = torch.tensor([[1., 2., 0., 0.],
                      [0., 3., 5., 4.],
                      [7., 0., 1., 1.],
                      [0., 6., 2., 9.]]).view(1, 1, 4, 4)
    pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    assert indices.flatten().tolist() == [5, 6, 8, 15]  # flat h * 4 + w of 3, 5, 7, 9
    out = max_unpool(pooled * 10, indices)
    expected = torch.tensor([[0., 0., 0., 0.],
                             [0., 30., 50., 0.],
                             [70., 0., 0., 0.],
                             [0., 0., 0., 90.]]).view(1, 1, 4, 4)
    assert torch.equal(out, expected)
    torch.manual_seed(0)  # batches, channels and channels_last agree with PyTorch's own unpooling
    x = torch.randn(2, 5, 8, 12).contiguous(memory_format=torch.channels_last)
    pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    assert torch.equal(max_unpool(pooled, indices), F.max_unpool2d(pooled, indices, 2, 2))


# -- forward: shapes, training mode, folding ------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _seeded(name: str, nc: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, nc).eval()


def built(name: str) -> nn.Module:
    """Return a fresh copy of a seeded model (DeconvNet's 252M parameters are built once)."""
    return copy.deepcopy(_seeded(name))


def expected_hw(name: str, h: int, w: int) -> tuple[int, int]:
    return (h, w) if name in FULL_RESOLUTION else (math.ceil(h / 8), math.ceil(w / 8))


@pytest.mark.parametrize("name", CLASSIC)
def test_output_shapes_at_odd_sizes(name):
    model = _seeded(name)
    assert model.size_divisor == {"unet": 16, "dilatednet_vgg16": 8}.get(name, 32)
    for h, w in ((75, 101), (97, 131)):
        with torch.no_grad():
            out = model(torch.randn(1, 3, h, w))
        assert tuple(out.shape) == (1, 5, *expected_hw(name, h, w)) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["segnet_vgg16", "unet"])
def test_padding_is_cropped_back(name):
    """An odd-sized input gives the top-left of the padded input's output.

    The padded input: zero-padded to the size divisor.
    """
    model = _seeded(name)
    x = torch.randn(1, 3, 75, 101)
    div = model.size_divisor
    with torch.no_grad():
        out, padded = model(x), model(F.pad(x, (0, -101 % div, 0, -75 % div)))
    torch.testing.assert_close(out, padded[..., :75, :101])


@pytest.mark.parametrize("name", CLASSIC)
def test_train_mode_forward_and_backward(name):
    model = built(name).train()
    x = torch.randn(2, 3, 32, 48)
    out = model(x)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 5, *expected_hw(name, 32, 48))
    target = torch.randint(0, 5, out.shape[:1] + out.shape[2:])
    F.cross_entropy(out, target).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", CLASSIC)
def test_every_batchnorm_folds_and_outputs_stay_equal(name):
    """In float64: in float32 the folded network's rounding differs in the last bits.

    Which can move a near-tie maximum of a pooling window and with it where unpooling puts the
    value (DeconvNet's logits then differ by ~1e-3 of their range), a property of pooling indices,
    not of folding.
    """
    model = built(name).double()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial statistics, so folding has something to get right
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert (
            n_bn
            == {
                "fcn8s_vgg16": 0,
                "dilatednet_vgg16": 0,
                "segnet_vgg16": 25,
                "deconvnet_vgg16": 29,
                "unet": 18,
            }[name]
        )
        assert fold_batchnorm(model) == n_bn
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9 * before.abs().max().item())


# -- through the pipeline -------------------------------------------------------------------------

@pytest.mark.parametrize("name", CLASSIC)
def test_each_model_runs_through_the_pipeline(road_image, name):
    torch.manual_seed(0)
    image = np.ascontiguousarray(road_image[::5, ::5][:69, :91])  # odd sizes, padded by rounding
    pipe = SegmentationPipeline(model=name, weights="none", device="cpu")
    res = pipe(image, "rgb", color=True, confidence=True)
    assert res.labels.shape == image.shape[:2] and res.labels.dtype == np.uint8
    assert res.labels.max() < pipe.classes.num_classes
    assert res.color.shape == image.shape and res.confidence.shape == image.shape[:2]
    assert pipe.size_divisor == pipe.model.size_divisor
    h, w = pipe.inference_size_for(image.shape[:2])
    assert h % pipe.size_divisor == 0 and w % pipe.size_divisor == 0
    logits = pipe.forward_logits(image)
    assert tuple(logits.shape[-2:]) == expected_hw(name, h, w)
