"""DeepLab v2/v3/v3+ and PSPNet: reference checkpoint layouts, parameter counts, shapes, pipeline.

The reference layouts below are written out from the public implementations' code (torchvision
``segmentation.deeplabv3``, DeepLabV3Plus-Pytorch ``network/_deeplab.py``, semseg
``model/pspnet.py`` + ``model/resnet.py``, deeplab-pytorch ``libs/models/deeplabv2.py`` +
``resnet.py``), independently of our modules: a model matches a layout only if every key and
shape agrees. Parameter counts are asserted as exact numbers; torchvision's two match the
figures its documentation publishes (42,004,074 and 60,996,202 for 21 classes with aux head).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers import Layout, bn_layout, conv_layout
from seg_ros.errors import ConfigError, WeightsError
from seg_ros.models import build_model, list_models, load_weights
from seg_ros.models.optimize import fold_batchnorm
from seg_ros.pipeline import SegmentationPipeline

NEW_MODELS = [
    "deeplabv2_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3plus_resnet50",
    "deeplabv3plus_resnet101",
    "pspnet_resnet50",
    "pspnet_resnet101",
]
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


# -- reference layouts, from the public code ----------------------------------------------------

_conv, _bn = conv_layout, bn_layout


def _torchvision_resnet(prefix: str, depth: int, semseg_stem: bool = False) -> Layout:
    """Torchvision ResNet names; semseg's deep stem is Sequential(conv,bn,relu)x3 + maxpool."""
    keys: Layout = {}
    if semseg_stem:
        for idx, (cin, cout) in zip((0, 3, 6), ((3, 64), (64, 64), (64, 128))):
            keys |= _conv(f"{prefix}layer0.{idx}", cin, cout, 3) | _bn(
                f"{prefix}layer0.{idx + 1}", cout
            )
        inplanes = 128
    else:
        keys |= _conv(f"{prefix}conv1", 3, 64, 7) | _bn(f"{prefix}bn1", 64)
        inplanes = 64
    for i, n in enumerate(BLOCKS[depth]):
        planes = 64 * 2 ** i
        for j in range(n):
            p = f"{prefix}layer{i + 1}.{j}."
            cin = inplanes if j == 0 else planes * 4
            keys |= _conv(p + "conv1", cin, planes, 1) | _bn(p + "bn1", planes)
            keys |= _conv(p + "conv2", planes, planes, 3) | _bn(p + "bn2", planes)
            keys |= _conv(p + "conv3", planes, planes * 4, 1) | _bn(p + "bn3", planes * 4)
            if j == 0:
                keys |= _conv(p + "downsample.0", inplanes, planes * 4, 1) | _bn(
                    p + "downsample.1", planes * 4
                )
        inplanes = planes * 4
    return keys


def _aspp_v3(prefix: str) -> Layout:
    keys = _conv(f"{prefix}convs.0.0", 2048, 256, 1) | _bn(f"{prefix}convs.0.1", 256)
    for b in (1, 2, 3):
        keys |= _conv(f"{prefix}convs.{b}.0", 2048, 256, 3) | _bn(f"{prefix}convs.{b}.1", 256)
    keys |= _conv(f"{prefix}convs.4.1", 2048, 256, 1) | _bn(
        f"{prefix}convs.4.2", 256
    )  # 4.0: pooling
    return keys | _conv(f"{prefix}project.0", 1280, 256, 1) | _bn(f"{prefix}project.1", 256)


def torchvision_deeplabv3(depth: int, nc: int, aux: bool) -> Layout:
    keys = _torchvision_resnet("backbone.", depth) | _aspp_v3("classifier.0.")
    keys |= (
        _conv("classifier.1", 256, 256, 3)
        | _bn("classifier.2", 256)
        | _conv("classifier.4", 256, nc, 1, True)
    )
    if aux:
        keys |= _conv("aux_classifier.0", 1024, 256, 3) | _bn("aux_classifier.1", 256)
        keys |= _conv("aux_classifier.4", 256, nc, 1, True)
    return keys


def vainf_deeplabv3plus(depth: int, nc: int) -> Layout:
    keys = _torchvision_resnet("backbone.", depth)
    keys |= _conv("classifier.project.0", 256, 48, 1) | _bn("classifier.project.1", 48)
    keys |= _aspp_v3("classifier.aspp.")
    keys |= _conv("classifier.classifier.0", 304, 256, 3) | _bn("classifier.classifier.1", 256)
    return keys | _conv("classifier.classifier.3", 256, nc, 1, True)


def semseg_pspnet(depth: int, nc: int, aux: bool) -> Layout:
    keys = _torchvision_resnet("", depth, semseg_stem=True)
    for k in range(4):
        keys |= _conv(f"ppm.features.{k}.1", 2048, 512, 1) | _bn(f"ppm.features.{k}.2", 512)
    keys |= _conv("cls.0", 4096, 512, 3) | _bn("cls.1", 512) | _conv("cls.4", 512, nc, 1, True)
    if aux:
        keys |= _conv("aux.0", 1024, 256, 3) | _bn("aux.1", 256) | _conv("aux.4", 256, nc, 1, True)
    return keys


def kazuto_deeplabv2(nc: int) -> Layout:
    keys = _conv("layer1.conv1.conv", 3, 64, 7) | _bn("layer1.conv1.bn", 64)
    cin = 64
    for layer, n, cout in ((2, 3, 256), (3, 4, 512), (4, 23, 1024), (5, 3, 2048)):
        mid = cout // 4
        for b in range(1, n + 1):
            p = f"layer{layer}.block{b}."
            units = [
                ("reduce", cin if b == 1 else cout, mid, 1),
                ("conv3x3", mid, mid, 3),
                ("increase", mid, cout, 1),
            ]
            if b == 1:
                units.append(("shortcut", cin, cout, 1))
            for unit, i, o, k in units:
                keys |= _conv(p + unit + ".conv", i, o, k) | _bn(p + unit + ".bn", o)
        cin = cout
    for i in range(4):
        keys |= _conv(f"aspp.c{i}", 2048, nc, 3, True)
    return keys


def reference_layout(name: str, nc: int, aux: bool) -> Layout:
    family, depth = name.split("_resnet")
    depth = int(depth)
    if family == "deeplabv3":
        return torchvision_deeplabv3(depth, nc, aux)
    if family == "deeplabv3plus":
        return vainf_deeplabv3plus(depth, nc)
    if family == "pspnet":
        return semseg_pspnet(depth, nc, aux)
    return kazuto_deeplabv2(nc)


def count_params(layout: Layout) -> int:
    return sum(math.prod(s) for k, s in layout.items() if k.endswith((".weight", ".bias")))


def meta_model(name: str, nc: int, **options) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, nc, **options)


# name -> {(num_classes, with aux head): trainable parameters}
EXPECTED_PARAMS = {
    "deeplabv2_resnet101": {(21, False): 44_048_532, (19, False): 43_901_068},
    "deeplabv3_resnet50": {(21, True): 42_004_074, (21, False): 39_638_869,
                           (19, True): 42_003_046, (19, False): 39_638_355},
    "deeplabv3_resnet101": {(21, True): 60_996_202, (21, False): 58_630_997,
                            (19, True): 60_995_174, (19, False): 58_630_483},
    "deeplabv3plus_resnet50": {(21, False): 39_761_845, (19, False): 39_761_331},
    "deeplabv3plus_resnet101": {(21, False): 58_753_973, (19, False): 58_753_459},
    "pspnet_resnet50": {(21, True): 49_081_578, (21, False): 46_716_373,
                        (19, True): 49_080_038, (19, False): 46_715_347},
    "pspnet_resnet101": {(21, True): 68_073_706, (21, False): 65_708_501,
                         (19, True): 68_072_166, (19, False): 65_707_475},
}
HAS_AUX = {"deeplabv3_resnet50", "deeplabv3_resnet101", "pspnet_resnet50", "pspnet_resnet101"}
CASES = [(name, nc, aux) for name, table in EXPECTED_PARAMS.items() for nc, aux in table]


def test_registry_lists_the_new_models():
    assert set(NEW_MODELS) <= set(list_models())


@pytest.mark.parametrize("name,nc,aux", CASES)
def test_param_counts_and_layout_match_reference(name, nc, aux):
    options = {"aux_loss": aux} if name in HAS_AUX else {}
    model = meta_model(name, nc, **options)
    layout = reference_layout(name, nc, aux)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ours) ^ set(layout)) == []
    assert {k: s for k, s in ours.items() if s != layout[k]} == {}
    expected = EXPECTED_PARAMS[name][(nc, aux)]
    assert count_params(layout) == expected
    assert sum(p.numel() for p in model.parameters()) == expected


def _random_state(layout: Layout, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen).half() + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen).half()
    return state


# (name, how the public project saves it, with aux head in the file)
WRAPPINGS = [
    ("deeplabv3_resnet50", "torchvision", True),
    ("deeplabv3_resnet50", "torchvision", False),
    ("deeplabv3plus_resnet50", "vainf", False),
    ("pspnet_resnet50", "semseg", True),
    ("pspnet_resnet50", "semseg", False),
    ("deeplabv2_resnet101", "kazuto", False),
]


def _wrap(state: dict[str, torch.Tensor], style: str) -> dict:
    if style == "vainf":  # torch.save({"cur_itrs", "model_state", "optimizer_state", ...})
        return {"cur_itrs": 30000, "model_state": state, "best_score": 0.77}
    if style == "semseg":  # DataParallel keys under state_dict, beside the optimizer
        return {"epoch": 50, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    if style == "kazuto":  # the multi-scale (MSC) wrapper holds the network as ``base``
        return {f"base.{k}": v for k, v in state.items()}
    return state  # torchvision hub files are flat state dicts


@pytest.mark.parametrize("name,style,file_aux", WRAPPINGS)
def test_reference_checkpoint_loads_strictly(tmp_path, name, style, file_aux):
    nc = 11
    state = _random_state(reference_layout(name, nc, file_aux), seed=1)
    path = tmp_path / f"{name}_{style}.pth"
    torch.save(_wrap(state, style), path)
    model = build_model(name, nc)
    load_weights(model, path, strict=True)
    own = model.state_dict()
    assert set(own) == set(state)  # a file without the aux head leaves the model without one
    for key, value in state.items():
        assert torch.equal(own[key], value.to(own[key].dtype)), key
    if name in HAS_AUX and not file_aux:
        assert model.aux_loss is False
        model.train()
        out = model(torch.randn(2, 3, 33, 33))
        assert isinstance(out, torch.Tensor)


def test_wrong_class_count_and_stray_keys_are_refused(tmp_path):
    state = _random_state(vainf_deeplabv3plus(50, 21), seed=2)
    path = tmp_path / "voc.pth"
    torch.save({"model_state": state}, path)
    with pytest.raises(WeightsError, match="classifier.classifier.3.weight"):
        load_weights(build_model("deeplabv3plus_resnet50", 19), path)
    state["classifier.extra.weight"] = torch.zeros(1)
    torch.save({"model_state": state}, path)
    with pytest.raises(WeightsError, match="unexpected keys"):
        load_weights(build_model("deeplabv3plus_resnet50", 21), path)


# -- architecture details the checkpoints were trained with -------------------------------------

def _dilation(conv: nn.Conv2d) -> int:
    return conv.dilation[0]


def test_dilation_schemes_follow_each_reference():
    v3 = meta_model(
        "deeplabv3_resnet50", 21
    )  # torchvision: first block keeps the previous dilation
    bb = v3.backbone
    assert [_dilation(bb.layer3[i].conv2) for i in (0, 1)] == [1, 2]
    assert [_dilation(bb.layer4[i].conv2) for i in (0, 1)] == [2, 4]
    assert [_dilation(v3.classifier[0].convs[i][0]) for i in (1, 2, 3)] == [12, 24, 36]
    v3_16 = meta_model("deeplabv3_resnet50", 21, output_stride=16)
    assert v3_16.backbone.layer3[0].conv2.stride == (2, 2)
    assert [_dilation(v3_16.backbone.layer4[i].conv2) for i in (0, 1)] == [1, 2]
    assert [_dilation(v3_16.classifier[0].convs[i][0]) for i in (1, 2, 3)] == [6, 12, 18]
    psp = meta_model("pspnet_resnet50", 21)  # semseg: every block of a dilated stage
    assert [_dilation(psp.layer3[i].conv2) for i in (0, 1)] == [2, 2]
    assert [_dilation(psp.layer4[i].conv2) for i in (0, 2)] == [4, 4]
    assert psp.layer3[0].downsample[0].stride == (1, 1)
    v2 = meta_model("deeplabv2_resnet101", 21)  # Caffe ResNet: stride in the 1x1 reduce conv
    assert v2.layer3.block1.reduce.conv.stride == (2, 2)
    assert v2.layer4.block1.conv3x3.conv.dilation == (
        2,
        2,
    ) and v2.layer5.block3.conv3x3.conv.dilation == (4, 4)
    assert [_dilation(getattr(v2.aspp, f"c{i}")) for i in range(4)] == [6, 12, 18, 24]
    assert v2.layer1.pool.ceil_mode


@pytest.mark.parametrize("name,options,stride", [
    ("deeplabv3_resnet50", {}, 8), ("deeplabv3_resnet50", {"output_stride": 16}, 16),
    ("deeplabv3plus_resnet50", {}, 4), ("deeplabv3plus_resnet50", {"output_stride": 8}, 4),
    ("pspnet_resnet50", {}, 8), ("pspnet_resnet50", {"output_stride": 16}, 16),
])
def test_output_shapes_at_odd_sizes_and_aux_in_train_mode(name, options, stride):
    torch.manual_seed(0)
    model = build_model(name, 5, **options).eval()
    expected = (math.ceil(97 / stride), math.ceil(129 / stride))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 97, 129))
    assert tuple(out.shape) == (1, 5, *expected)
    assert model.size_divisor == options.get("output_stride", model.output_stride)
    model.train()
    expected = (math.ceil(41 / stride), math.ceil(57 / stride))
    with torch.no_grad():
        train_out = model(torch.randn(2, 3, 41, 57))
    if name in HAS_AUX:
        main, aux = train_out
        assert tuple(main.shape) == (2, 5, *expected)
        assert aux.shape[:2] == (2, 5) and aux.shape[-2:] == main.shape[-2:]
        assert 0 < model.aux_loss_weight < 1
    else:
        assert tuple(train_out.shape) == (2, 5, *expected)


def test_deeplabv2_output_stride_8_at_odd_size():
    model = build_model("deeplabv2_resnet101", 3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 81))
    assert tuple(out.shape) == (1, 3, 9, 11)


@pytest.mark.parametrize(
    "name,options",
    [
        ("deeplabv3_resnet50", {"output_stride": 4}),
        ("pspnet_resnet101", {"output_stride": 32}),
        ("deeplabv3plus_resnet50", {"output_stride": "16"}),
        ("deeplabv2_resnet101", {"output_stride": 16}),
    ],
)
def test_bad_output_stride_is_a_config_error(name, options):
    with pytest.raises(ConfigError, match="output_stride"):
        meta_model(name, 3, **options)


@pytest.mark.parametrize(
    "name",
    ["deeplabv2_resnet101", "deeplabv3_resnet50", "deeplabv3plus_resnet50", "pspnet_resnet50"],
)
def test_every_batchnorm_folds_and_outputs_stay_equal(name):
    torch.manual_seed(0)
    model = build_model(name, 4).eval()
    for m in model.modules():  # non-trivial statistics, so folding has something to get right
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 33, 41)
    with torch.no_grad():
        before = model(x)
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert fold_batchnorm(model) == n_bn
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-3, atol=1e-3 * before.abs().max().item())


# -- through the pipeline -------------------------------------------------------------------------

@pytest.mark.parametrize("name,options", [(n, {}) for n in NEW_MODELS]
                         + [("deeplabv3_resnet50", {"output_stride": 16}),
                            ("pspnet_resnet50", {"output_stride": 16})])
def test_each_model_runs_through_the_pipeline(road_image, name, options):
    torch.manual_seed(0)
    image = np.ascontiguousarray(road_image[::6, ::6])  # 60x80: small, and not a multiple of 16
    pipe = SegmentationPipeline(model=name, weights="none", device="cpu", model_options=options)
    res = pipe(image, "rgb", color=True, confidence=True)
    assert res.labels.shape == image.shape[:2] and res.labels.dtype == np.uint8
    assert res.labels.max() < pipe.classes.num_classes
    assert res.color.shape == image.shape and res.confidence.shape == image.shape[:2]
    assert pipe.size_divisor == options.get("output_stride", getattr(pipe.model, "output_stride"))
    assert all(s % pipe.size_divisor == 0 for s in pipe.inference_size_for(image.shape[:2]))


def test_pipeline_loads_a_reference_checkpoint(tmp_path, road_image):
    """A semseg-format PSPNet file configures a working pipeline.

    A semseg-format PSPNet file (11 classes, like CamVid; no aux head) configures a working
    pipeline, and its labels equal the argmax of the network loaded directly from the same file.
    """
    state = _random_state(semseg_pspnet(50, 11, aux=False), seed=3)
    path = tmp_path / "train_epoch_50.pth"
    torch.save(_wrap(state, "semseg"), path)
    image = np.ascontiguousarray(road_image[:64, :96])
    pipe = SegmentationPipeline(
        model="pspnet_resnet50",
        weights=str(path),
        classes="camvid",
        device="cpu",
        output_resolution="inference",
    )
    assert pipe.trained and pipe.model.aux is None
    res = pipe(image)
    direct = build_model("pspnet_resnet50", 11).eval()
    load_weights(direct, path)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(pipe.mean).view(1, 3, 1, 1)) / torch.tensor(pipe.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(direct(x), size=image.shape[:2], mode="bilinear",
                                                 align_corners=False)
    agree = (logits[0].argmax(0).numpy() == res.labels).mean()
    assert agree > 0.99  # float rounding of the folded network may flip near-ties only


def test_bench_models_reports_params_flops_and_times(tmp_path, capsys):
    from seg_ros.cli.main import main
    report_path, table_path = tmp_path / "bench.json", tmp_path / "bench.md"
    rc = main(
        [
            "bench-models",
            "--models",
            "deeplabv3_resnet50,ddrnet23_slim",
            "--size",
            "64x128",
            "--output-stride",
            "16",
            "--no-timing",
            "--json",
            str(report_path),
            "--markdown",
            str(table_path),
        ]
    )
    assert rc == 0
    rows = {r["model"]: r for r in json.loads(report_path.read_text())["results"]}
    v3 = rows["deeplabv3_resnet50"]
    assert v3["options"] == {"output_stride": 16} and rows["ddrnet23_slim"]["options"] == {}
    assert (v3["params"], v3["params_with_aux"]) == (
        EXPECTED_PARAMS["deeplabv3_resnet50"][(19, False)],
        EXPECTED_PARAMS["deeplabv3_resnet50"][(19, True)],
    )
    assert v3["logits_size"] == [4, 8] and v3["gflops"] > rows["ddrnet23_slim"]["gflops"] > 0
    assert "| deeplabv3_resnet50 | 16 | 39.64 | 42.00 |" in table_path.read_text()
    assert main(["bench-models", "--models", "ddrnet23_slim", "--size", "64x128", "--runs", "1",
                 "--warmup", "0", "--json", str(report_path)]) == 0
    timed = json.loads(report_path.read_text())["results"][0]
    assert timed["forward_ms"]["median"] > 0 and timed["pipeline_ms"]["median"] > 0
    assert main(["bench-models", "--models", "nonexistent_net", "--no-timing"]) == 2
    assert "unknown model" in capsys.readouterr().err
