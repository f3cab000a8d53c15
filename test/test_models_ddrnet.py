"""DDRNet family.

Exact sizes, the authors' checkpoint layout, and outputs of a loaded checkpoint.
"""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from seg_ros.errors import ConfigError, WeightsError
from seg_ros.models import build_model, list_models, load_weights

PARAMS = {  # (without auxiliary head, with it), 19 classes, as published for the DDRNet family
    "ddrnet23_slim": (5_695_987, 5_734_342),
    "ddrnet23": (20_148_947, 20_299_366),
    "ddrnet39": (32_360_275, 32_660_838),
}

# Key names and shapes of the authors' Cityscapes checkpoints (flat dicts, ``model.`` prefix).
OFFICIAL_KEYS = {
    "ddrnet23_slim": {
        "model.conv1.0.weight": (32, 3, 3, 3),
        "model.conv1.0.bias": (32,),
        "model.layer1.1.bn2.running_var": (32,),
        "model.layer2.0.downsample.0.weight": (64, 32, 1, 1),
        "model.layer3_.1.conv2.weight": (64, 64, 3, 3),
        "model.compression3.0.weight": (64, 128, 1, 1),
        "model.down3.0.weight": (128, 64, 3, 3),
        "model.down4.3.weight": (256, 128, 3, 3),
        "model.layer5_.0.conv3.weight": (128, 64, 1, 1),
        "model.layer5.0.downsample.1.weight": (512,),
        "model.spp.scale1.3.weight": (128, 512, 1, 1),
        "model.spp.scale4.1.num_batches_tracked": (),
        "model.spp.process4.2.weight": (128, 128, 3, 3),
        "model.spp.compression.2.weight": (128, 640, 1, 1),
        "model.spp.shortcut.2.weight": (128, 512, 1, 1),
        "model.final_layer.conv2.weight": (19, 64, 1, 1),
        "model.final_layer.conv2.bias": (19,),
        "model.seghead_extra.conv1.weight": (64, 64, 3, 3),
    },
    "ddrnet39": {
        "model.layer3_1.2.conv1.weight": (256, 256, 3, 3),
        "model.layer3_2_.2.conv2.weight": (128, 128, 3, 3),
        "model.down3_2.0.weight": (256, 128, 3, 3),
        "model.compression3_2.0.weight": (128, 256, 1, 1),
        "model.layer4_.2.conv1.weight": (128, 128, 3, 3),
        "model.final_layer.conv1.weight": (256, 256, 3, 3),
        "model.seghead_extra.conv2.weight": (19, 256, 1, 1),
    },
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts_exact(name):
    without, with_aux = PARAMS[name]
    model = build_model(name, 19)
    assert n_params(model) == with_aux
    aux = sum(p.numel() for n, p in model.named_parameters() if n.startswith("seghead_extra."))
    assert n_params(model) - aux == without


def test_registry_lists_and_rejects_unknown():
    assert {"ddrnet23_slim", "ddrnet23", "ddrnet39"} <= set(list_models())
    with pytest.raises(ConfigError, match="known models: .*ddrnet23_slim"):
        build_model("ddrnet_99", 19)


@pytest.mark.parametrize("name", sorted(OFFICIAL_KEYS))
def test_official_key_layout(name):
    state = {f"model.{k}": tuple(v.shape) for k, v in build_model(name, 19).state_dict().items()}
    for key, shape in OFFICIAL_KEYS[name].items():
        assert key in state, key
        assert state[key] == shape, key


def test_output_shapes_odd_size_and_aux_in_training():
    torch.manual_seed(0)
    model = build_model("ddrnet23_slim", 11).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 3, 375, 500))
    assert out.shape == (1, 11, 47, 63)  # 1/8, rounded up like the stride-2 convolutions
    model.train()
    main, aux = model(torch.randn(2, 3, 64, 96))
    assert main.shape == aux.shape == (2, 11, 8, 12)


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize(
    "wrap", ["official", "flat", "state_dict", "model_state", "model", "module"]
)
def test_checkpoint_formats_round_trip(tmp_path, wrap):
    torch.manual_seed(0)
    src = build_model("ddrnet23_slim", 19).eval()
    _randomise_bn(src)
    state = src.state_dict()
    obj = {
        "official": {
            **{f"model.{k}": v for k, v in state.items()},
            "loss.criterion.weight": torch.ones(19),
        },
        "flat": dict(state),
        "state_dict": {"state_dict": dict(state), "epoch": 3},
        "model_state": {"model_state": dict(state), "optimizer_state": {}},
        "model": {"model": dict(state)},
        "module": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
    }[wrap]
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    torch.manual_seed(123)
    dst = build_model("ddrnet23_slim", 19).eval()
    load_weights(dst, path)
    x = torch.randn(1, 3, 64, 128)
    with torch.inference_mode():
        assert torch.equal(src(x), dst(x))


def test_checkpoint_without_aux_head_loads_and_drops_it(tmp_path):
    src = build_model("ddrnet23_slim", 19)
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("seghead_extra.")}
    torch.save(state, tmp_path / "noaux.pt")
    dst = build_model("ddrnet23_slim", 19)
    load_weights(dst, tmp_path / "noaux.pt")
    assert dst.seghead_extra is None
    dst.train()
    assert dst(torch.randn(2, 3, 64, 64)).shape == (2, 19, 8, 8)


def test_mismatch_errors_name_the_keys(tmp_path):
    state = build_model("ddrnet23_slim", 19).state_dict()
    state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(WeightsError) as err:
        load_weights(build_model("ddrnet23_slim", 11), tmp_path / "bad.pt")
    msg = str(err.value)
    assert "bad.pt" in msg and "layer1.0.conv1.weight" in msg and "extra.weight" in msg
    assert "final_layer.conv2.weight (file (19, 64, 1, 1), model (11, 64, 1, 1))" in msg


class _Payload:
    """A pickled object whose unpickling would run a command: never loaded."""

    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_unreadable_files_are_clear(tmp_path):
    """Each refusal names the file and says plainly why it is not a weights file.

    Without PyTorch's advice to load it with weights_only=False (which would run the code a file
    carries).
    """
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(build_model("ddrnet23_slim", 19), tmp_path / "missing.pt")
    trunc = tmp_path / "trunc.pt"
    torch.save(build_model("ddrnet23_slim", 19).state_dict(), trunc)
    trunc.write_bytes(trunc.read_bytes()[:5000])
    (tmp_path / "text.pt").write_text("model: ddrnet23_slim\nthis is a text file\n")
    checkpoint = {"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.01)}
    torch.save(checkpoint, tmp_path / "ns.pt")
    with open(tmp_path / "payload.pt", "wb") as f:
        pickle.dump({"w": _Payload()}, f, protocol=2)
    (tmp_path / "empty.pt").write_bytes(b"")
    reasons = {"trunc.pt": "damaged (truncated or corrupt)",
               "text.pt": "not a PyTorch checkpoint at all",
               "ns.pt": "Python objects, not only tensors (argparse.Namespace)",
               "payload.pt": f"Python objects, not only tensors ({os.system.__module__}.system)",
               "empty.pt": "it is empty"}
    for name, reason in reasons.items():
        with pytest.raises(WeightsError) as err:
            load_weights(build_model("ddrnet23_slim", 19), tmp_path / name)
        msg = str(err.value)
        assert msg.startswith(f"weights file {tmp_path / name} is not a valid weights file: "), msg
        assert reason in msg and "weights_only" not in msg and "\n" not in msg, msg


# --- an independent functional reference of DDRNet-23-slim, driven by the official key names ---

def _bn(s, p, x):
    return F.batch_norm(
        x,
        s[p + ".running_mean"],
        s[p + ".running_var"],
        s[p + ".weight"],
        s[p + ".bias"],
        False,
        0.0,
        1e-5,
    )


def _conv(s, p, x, stride=1, pad=None):
    w = s[p + ".weight"]
    return F.conv2d(x, w, s.get(p + ".bias"), stride, w.shape[-1] // 2 if pad is None else pad)


def _basic(s, p, x, stride, last):
    out = F.relu(_bn(s, p + ".bn1", _conv(s, p + ".conv1", x, stride)))
    out = _bn(s, p + ".bn2", _conv(s, p + ".conv2", out))
    res = (
        _bn(s, p + ".downsample.1", _conv(s, p + ".downsample.0", x, stride, 0))
        if p + ".downsample.0.weight" in s
        else x
    )
    return out + res if last else F.relu(out + res)


def _stage(s, p, x, n, stride=1):
    for i in range(n):
        x = _basic(s, f"{p}.{i}", x, stride if i == 0 else 1, i == n - 1)
    return x


def _bottleneck(s, p, x, stride):
    out = F.relu(_bn(s, p + ".bn1", _conv(s, p + ".conv1", x)))
    out = F.relu(_bn(s, p + ".bn2", _conv(s, p + ".conv2", out, stride)))
    out = _bn(s, p + ".bn3", _conv(s, p + ".conv3", out))
    return out + _bn(s, p + ".downsample.1", _conv(s, p + ".downsample.0", x, stride, 0))


def _pre(s, p, x, i0=0):  # BN, ReLU, conv at indices i0, i0+1, i0+2
    return _conv(s, f"{p}.{i0 + 2}", F.relu(_bn(s, f"{p}.{i0}", x)))


def _up(x, hw):
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False)


def reference_ddrnet23_slim(s, x):
    hw = (x.shape[-2] // 8, x.shape[-1] // 8)
    x = F.relu(_bn(s, "conv1.1", _conv(s, "conv1.0", x, 2)))
    x = F.relu(_bn(s, "conv1.4", _conv(s, "conv1.3", x, 2)))
    l1 = _stage(s, "layer1", x, 2)
    l2 = _stage(s, "layer2", F.relu(l1), 2, 2)
    l3 = _stage(s, "layer3", F.relu(l2), 2, 2)
    h = _stage(s, "layer3_", F.relu(l2), 2)
    lo = l3 + _bn(s, "down3.1", _conv(s, "down3.0", F.relu(h), 2))
    h = h + _up(_bn(s, "compression3.1", _conv(s, "compression3.0", F.relu(l3))), hw)
    l4 = _stage(s, "layer4", F.relu(lo), 2, 2)
    h = _stage(s, "layer4_", F.relu(h), 2)
    d = F.relu(_bn(s, "down4.1", _conv(s, "down4.0", F.relu(h), 2)))
    lo = l4 + _bn(s, "down4.4", _conv(s, "down4.3", d, 2))
    h = h + _up(_bn(s, "compression4.1", _conv(s, "compression4.0", F.relu(l4))), hw)
    h = _bottleneck(s, "layer5_.0", F.relu(h), 1)
    z = _bottleneck(s, "layer5.0", F.relu(lo), 2)
    size = z.shape[-2:]
    x0 = _pre(s, "spp.scale0", z)
    outs = [x0]
    for k, (kern, st) in enumerate(((5, 2), (9, 4), (17, 8), (None, None)), start=1):
        pooled = (
            F.adaptive_avg_pool2d(z, 1) if kern is None else F.avg_pool2d(z, kern, st, kern // 2)
        )
        outs.append(
            _pre(s, f"spp.process{k}", _up(_pre(s, f"spp.scale{k}", pooled, 1), size) + outs[-1])
        )
    spp = _pre(s, "spp.compression", torch.cat(outs, 1)) + _pre(s, "spp.shortcut", z)
    y = _up(spp, hw) + h
    y = _conv(s, "final_layer.conv1", F.relu(_bn(s, "final_layer.bn1", y)))
    return _conv(s, "final_layer.conv2", F.relu(_bn(s, "final_layer.bn2", y)))


def test_outputs_match_independent_reference_on_official_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = build_model("ddrnet23_slim", 19)
    _randomise_bn(src)
    official = {f"model.{k}": v for k, v in src.state_dict().items()}
    torch.save(official, tmp_path / "official.pth")
    model = build_model("ddrnet23_slim", 19).eval()
    load_weights(model, tmp_path / "official.pth")
    plain = {k[len("model."):]: v for k, v in official.items()}
    x = torch.randn(1, 3, 128, 256)
    with torch.inference_mode():
        assert torch.allclose(model(x), reference_ddrnet23_slim(plain, x), atol=1e-4)


def test_unknown_model_option_is_a_config_error():
    with pytest.raises(
        ConfigError,
        match="'ddrnet23_slim' does not take option\\(s\\) output_stride; it takes: aux_loss",
    ):
        build_model("ddrnet23_slim", 19, output_stride=16)
