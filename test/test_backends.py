"""Backends: ONNX export, onnxruntime, TensorRT cache keys and calibration data, CUDA-graph cache.

Real models, real ONNX files and real onnxruntime sessions at small sizes; TensorRT and CUDA runs
skip with the reason where the machine has neither (the cache, key and calibration layers that do
not need them are tested everywhere).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from helpers import require_module
from seg_ros.backends import AUTO_BACKENDS, auto_backend_name, create_backend, list_backends
from seg_ros.backends.cuda_fast import GraphedForward, capture_static_eager, graph_key
from seg_ros.backends.onnx_export import (AdaptiveAvgPoolMatmul, OnnxCache, export_onnx,
                                          pipeline_metadata, read_metadata)
from seg_ros.backends.optional import TENSORRT_REFUSAL as REFUSAL
from seg_ros.backends.parity import onnxruntime_logits, verify_against_torch
from seg_ros.backends.shape_cache import ShapeCache
from seg_ros.backends.tensorrt_backend import (CalibrationData, EngineCache, EngineKey, engine_key,
                                               list_images, load_engine_file)
from seg_ros.cli.main import main as cli_main
from seg_ros.errors import ConfigError
from seg_ros.models import build_model, save_weights
from seg_ros.pipeline import SegmentationPipeline, inference_size

onnx = require_module("onnx", reason="onnx not installed (optional extra 'onnx')")
ort = require_module(
    "onnxruntime", reason="onnxruntime not installed (optional extra 'onnx')"
)
HAS_CUDA = torch.cuda.is_available()
try:
    import tensorrt  # noqa: F401
    HAS_TRT = True
except ImportError:
    HAS_TRT = False



@pytest.fixture(scope="module")
def small_image(road_image) -> np.ndarray:
    return cv2.resize(road_image, (160, 120), interpolation=cv2.INTER_AREA)


def _pipe(weights: Path, **kw) -> SegmentationPipeline:
    return SegmentationPipeline(model="ddrnet23_slim", weights=str(weights), device="cpu", **kw)


# -- shape cache and CUDA-graph fallback logic (CPU stand-in capture) -------------------------
def test_shape_cache_lru_and_failures():
    built = []

    def build(key):
        if key == "bad":
            raise RuntimeError("cannot capture")
        built.append(key)
        return f"artefact-{key}"

    cache = ShapeCache(build, max_entries=2, fallback_on_error=True)
    assert (
        cache.get("a") == "artefact-a"
        and cache.get("b") == "artefact-b"
        and cache.get("a") == "artefact-a"
    )
    assert cache.get("c") == "artefact-c"  # evicts b, the least recently used
    assert cache.keys() == ["a", "c"] and cache.evictions == 1
    assert cache.get("bad") is None and cache.get("bad") is None
    assert "cannot capture" in cache.failed["bad"] and built == ["a", "b", "c"]
    strict = ShapeCache(build, fallback_on_error=False)
    with pytest.raises(RuntimeError, match="cannot capture"):
        strict.get("bad")
    with pytest.raises(RuntimeError, match="no artefact for bad: RuntimeError: cannot capture"):
        cache.require("bad")  # for backends without a fallback: an error, not None
    assert cache.require("a") == "artefact-a"


def test_graphed_forward_recaptures_per_shape_and_falls_back():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    captured = []

    def capture_small_only(fn, example):  # a capture that, like a real one, can fail for a shape
        if example.shape[-1] > 40:
            raise RuntimeError("out of graph memory")
        captured.append(tuple(example.shape))
        return capture_static_eager(fn, example)

    graphed = GraphedForward(net, capture=capture_small_only, max_graphs=2)
    with torch.inference_mode():
        a, b = torch.randn(1, 3, 16, 24), torch.randn(1, 3, 16, 24)
        out_a, out_b = graphed(a), graphed(b)
        assert torch.allclose(out_a, net(a), atol=1e-6) and torch.allclose(
            out_b, net(b), atol=1e-6
        )
        assert not torch.equal(out_a, out_b)  # the first result was not overwritten by the replay
        c = torch.randn(1, 3, 8, 32)
        assert torch.allclose(graphed(c), net(c), atol=1e-6)
        big = torch.randn(1, 3, 8, 48)
        assert torch.allclose(graphed(big), net(big), atol=1e-6) and graphed.eager_calls == 1
        assert torch.allclose(graphed(big), net(big), atol=1e-6) and graphed.eager_calls == 2
        cl = a.contiguous(memory_format=torch.channels_last)  # other strides: its own graph
        assert graph_key(cl) != graph_key(a)
        assert torch.allclose(graphed(cl), net(a), atol=1e-5)
    assert captured == [(1, 3, 16, 24), (1, 3, 8, 32), (1, 3, 16, 24)]
    assert len(graphed.graphs) == 2 and graphed.graphs.evictions == 1


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a CUDA GPU (none here)")
def test_torch_backend_cuda_graphs_match_eager(small_image, weights_file):
    pipe = SegmentationPipeline(model="ddrnet23_slim", weights=str(weights_file), device="cuda")
    eager = SegmentationPipeline(model="ddrnet23_slim", weights=str(weights_file), device="cuda",
                                 backend_options={"cuda_graphs": False, "dedicated_stream": False})
    for img in (small_image, small_image[:96, :128]):
        torch.testing.assert_close(
            pipe.forward_logits(img), eager.forward_logits(img), atol=1e-3, rtol=1e-3
        )
        np.testing.assert_array_equal(pipe(img).labels, eager(img).labels)
    assert pipe.backend.describe()["graphs"] == 2


def test_torch_backend_fused_cpu_graph_matches_eager(small_image, weights_file):
    """The default CPU path gives the eager module's labels.

    The default CPU path is a oneDNN-fused traced graph per shape.
    """
    fused = _pipe(weights_file)
    eager = _pipe(weights_file, backend_options={"cpu_fusion": False})
    assert fused.backend.describe()["cpu_fusion"] and not eager.backend.describe()["cpu_fusion"]
    for img in (small_image, small_image[:96, :128], small_image):
        torch.testing.assert_close(
            fused.forward_logits(img), eager.forward_logits(img), atol=2e-3, rtol=1e-3
        )
        agree = (fused(img).labels == eager(img).labels).mean()
        assert agree > 0.999, agree
    from seg_ros.backends.cpu_fusion import fuse_for_shape, trace_model
    x = fused.network_input(small_image)
    graph = fuse_for_shape(trace_model(fused.model, x), fused.model, x)  # warm-up runs it fused
    last_run = str(torch.jit.last_executed_optimized_graph())  # needs ``graph`` alive
    assert graph is not None and "prim::oneDNNFusionGroup" in last_run
    info = fused.backend.describe()
    assert (
        info["graphs"] == 2 and info["cpu_fusion_disabled"] is None
    )  # one graph per shape, reused
    assert fused.backend.fused.graphs.hits >= 4


def test_fused_cpu_graph_falls_back_to_eager_once_with_one_warning(caplog):
    """A model oneDNN cannot fuse runs eagerly after one warning.

    A model oneDNN cannot fuse (DeepLab v3+'s ASPP concatenation in torch 2.13) runs eagerly
    after one warning naming the reason, with the eager module's outputs.
    """
    from seg_ros.backends.cpu_fusion import FusedCpuForward
    from seg_ros.models.optimize import prepare_for_inference
    torch.manual_seed(0)
    model = prepare_for_inference(
        build_model("deeplabv3plus_resnet50", 11, output_stride=16), torch.device("cpu")
    )
    fused = FusedCpuForward(model)
    x = torch.randn(1, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        outputs = [fused(x), fused(x[..., :64])]
        expected = [model(x), model(x[..., :64])]
    for got, ref in zip(outputs, expected):
        torch.testing.assert_close(got, ref)
    if fused.disabled is None:
        pytest.skip("this torch build fuses DeepLab v3+: nothing falls back")
    warnings = [r for r in caplog.records if "no oneDNN-fused CPU graph" in r.getMessage()]
    assert len(warnings) == 1 and "Traceback" not in warnings[0].getMessage()


# -- memory of evicted graphs and sizes that cycle (issue 18) ----------------------------------
@pytest.mark.slow
def test_evicted_fused_graphs_free_their_memory():
    """A one-graph cache fed three shapes in turn builds a real fused graph on every call.

    The evicted ones must give their memory back. Before the fix each build left ~24 MB (its frozen
    weights) in TorchScript's process-wide compilation unit: +290 MB over these 12 builds.
    """
    from seg_ros.backends.cpu_fusion import FusedCpuForward
    from seg_ros.memory import resident_mib
    from seg_ros.models.optimize import prepare_for_inference
    torch.manual_seed(0)
    model = prepare_for_inference(build_model("ddrnet23_slim", 11), torch.device("cpu"))
    fused = FusedCpuForward(model, max_graphs=1)
    shapes = [(64, 96), (64, 104), (64, 112)]
    python_cu = torch.jit._state._python_cu  # where every trace or freeze would register its types
    functions, rss = [], []
    with torch.inference_mode():
        for i in range(15):
            x = torch.randn(1, 3, *shapes[i % 3]).contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(fused(x), model(x), atol=2e-3, rtol=1e-3)
            functions.append(len(python_cu.get_functions()))
            rss.append(resident_mib())
    assert fused.disabled is None and fused.graphs.builds == 15 and fused.graphs.evictions == 14
    assert functions[1:] == functions[1:2] * 14, functions  # only the trace and 1st graph register
    assert rss[-1] - rss[2] < 60, rss  # 12 builds after the first cycle: no 24 MB each


# what a managed node does at each configure/cleanup, in a fresh process (the function drops
# the whole global TorchScript unit, so it must not run beside this session's live graphs)
FORGET_RELEASED_GRAPHS = """
import gc, sys, torch
from torch import nn
from seg_ros.backends.cpu_fusion import FusedCpuForward, forget_released_graphs
python_cu = torch.jit._state._python_cu
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
x = torch.randn(1, 3, 16, 16)

def check(fused):
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), model(x))
    assert fused.disabled is None and fused.graphs.builds == 1

for cycle in range(2):  # the second: tracing still works once the unit was emptied
    fused = FusedCpuForward(model)
    check(fused)
    kept = len(python_cu.get_functions())
    assert kept > 0  # torch keeps the trace and its frozen graph in the global unit
    assert forget_released_graphs() is False  # a trace is alive: nothing dropped
    assert len(python_cu.get_functions()) == kept
    check(fused)  # and it still runs
    del fused
    gc.collect()
    assert len(python_cu.get_functions()) == kept  # released, but torch still holds them
    assert forget_released_graphs() is True
    assert len(python_cu.get_functions()) == 0
"""


@pytest.mark.slow
def test_forget_released_graphs_only_once_no_trace_is_alive():
    """forget_released_graphs() empties TorchScript's global unit only when no trace is alive.

    While a FusedCpuForward's trace lives: False, nothing dropped, the graph still runs. Once it is
    dropped (and collected): True, and the unit, which torch would otherwise keep for the life of
    the process, holds no function; a new model traces and runs afterwards.
    """
    import subprocess

    done = subprocess.run([sys.executable, "-c", FORGET_RELEASED_GRAPHS], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_cycling_frame_sizes_do_not_rebuild_every_frame(tmp_path, weights_file, road_image):
    """Frames in 5 sizes.

    One at a time, through a 4-graph backend (the issue's camera): graphs are built for the first
    sizes, the rest run at the nearest kept size instead of a build per frame, frames at their own
    size get the same labels as alone, and memory stays flat.
    """
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), cv2.cvtColor(road_image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "sizes.json"
    assert cli_main(["bench-sizes", "--height", "96", "--widths", "140,154,171,192,220",
                     "--frames", "30", "--image", str(image), "--weights", str(weights_file),
                     "--device", "cpu", "--input-size", "96x128", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["warm_up_size"] == [96, 128] and len(report["kept_sizes"]) == 4
    # warm-up + 4 frame sizes: the warm-up's (no frame comes in it) gave way, the rest stay
    assert report["graph_builds"] == 5, report
    assert report["frames_resized_into_kept_size"] == 6  # the 6 frames 220 wide: run at 64x128
    ran_at = {tuple(r["ran_at"]) for r in report["records"]}
    assert len(ran_at) <= 5 and all(h % 8 == 0 and w % 8 == 0 for h, w in ran_at)
    assert report["rss_mb"]["second_half_growth"] < 20, report["rss_mb"]
    last_run_at = {r["width"]: tuple(r["ran_at"]) for r in report["records"]}
    for width, agreement in report["label_agreement"].items():  # last frame of each width
        if last_run_at[int(width)] == inference_size((96, int(width)), (96, 128), True, 8):
            assert agreement == 1.0, report["label_agreement"]  # at its own size: same labels


# -- ONNX export ------------------------------------------------------------------------------
def test_adaptive_pool_rewrite_matches_torch_and_exports_dynamic(tmp_path):
    for bins in (2, 3, 6, (2, 3)):
        for hw in ((12, 18), (7, 11), (25, 9)):
            x = torch.randn(1, 4, *hw)
            torch.testing.assert_close(
                AdaptiveAvgPoolMatmul(bins)(x), nn.AdaptiveAvgPool2d(bins)(x)
            )

    class Pyramid(nn.Module):  # PSPNet's pooling pattern
        def __init__(self):
            super().__init__()
            self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(b) for b in (1, 2, 3, 6))

        def forward(self, x):
            return torch.cat([nn.functional.interpolate(p(x), size=x.shape[-2:], mode="bilinear")
                              for p in self.pools], 1)

    path = export_onnx(Pyramid().eval(), tmp_path / "pyr.onnx", (24, 36), dynamic=True)
    for hw in ((24, 36), (13, 29)):  # a size not divisible by the bins
        x = torch.randn(1, 3, *hw)
        np.testing.assert_allclose(onnxruntime_logits(path, x), Pyramid()(x).numpy(), atol=1e-5)


def test_export_ddrnet_metadata_checker_and_parity(tmp_path, weights_file, road_image):
    pipe = _pipe(weights_file)
    path = export_onnx(pipe.model, tmp_path / "m.onnx", (64, 96), metadata=pipeline_metadata(pipe))
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 96]
    meta = read_metadata(path)
    assert (
        meta["model"] == "ddrnet23_slim"
        and meta["input_size"] == "64x96"
        and meta["dynamic"] == "false"
    )
    assert json.loads(meta["classes"]) == pipe.classes.to_dicts()
    assert json.loads(meta["mean"]) == pytest.approx(pipe.mean) and json.loads(
        meta["std"]
    ) == pytest.approx(pipe.std)
    diff = verify_against_torch(pipe, path, road_image, size=(64, 96))
    assert diff < 1e-3


def test_export_cli_dynamic(tmp_path, weights_file, capsys):
    out = tmp_path / "dyn.onnx"
    rc = cli_main(
        [
            "export",
            "--model",
            "ddrnet23_slim",
            "--weights",
            str(weights_file),
            "--size",
            "64x96",
            "--dynamic",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr()
    assert '"ok": true' in capsys.readouterr().out
    pipe = _pipe(weights_file)
    x = pipe.preprocess(torch.from_numpy(np.ascontiguousarray(np.zeros((48, 80, 3), np.uint8))))
    assert onnxruntime_logits(out, x).shape == (1, 11, 6, 10)  # another size than exported
    assert read_metadata(out)["dynamic"] == "true"


def test_pspnet_onnxruntime_parity_small(road_image):
    torch.manual_seed(0)
    pipe = SegmentationPipeline(model="pspnet_resnet50", weights="none", device="cpu",
                                backend="onnxruntime", input_size=(48, 64), keep_aspect=False)
    img = cv2.resize(road_image, (64, 48), interpolation=cv2.INTER_AREA)
    got = pipe.forward_logits(img)
    with torch.inference_mode():
        ref = pipe.model(pipe.preprocess(torch.from_numpy(img)))
    # random-init ResNet logits reach ~1e3, where float32 rounding alone is ~1e-4: compare
    # relatively
    assert (got - ref).abs().max().item() <= 1e-5 * ref.abs().max().item() + 1e-3
    assert pipe.backend.cache_dir.name.startswith(
        "seg_ros_onnx_"
    )  # random init: not the persistent cache


# -- onnxruntime backend ------------------------------------------------------------------------
def test_onnxruntime_pipeline_matches_torch_and_caches(tmp_path, weights_file, small_image):
    cache = tmp_path / "cache"
    ref = _pipe(weights_file)
    pipe = _pipe(
        weights_file,
        backend="onnxruntime",
        backend_options={"cache_dir": str(cache)},
        num_threads=1,
    )
    assert pipe.backend.threads == 1 and pipe.describe()["backend"] == "onnxruntime"
    got, want = pipe.forward_logits(small_image), ref.forward_logits(small_image)
    assert (got - want).abs().max().item() < 1e-3
    res, res_ref = pipe(small_image, overlay=True), ref(small_image, overlay=True)
    assert (res.labels == res_ref.labels).mean() > 0.999 and res.overlay.shape == small_image.shape
    files = sorted(cache.glob("*.onnx"))
    assert len(files) == 1 and "120x160" in files[0].name
    stamp = files[0].stat().st_mtime_ns

    again = _pipe(weights_file, backend="onnxruntime", backend_options={"cache_dir": str(cache)})
    again(small_image)
    assert sorted(cache.glob("*.onnx")) == files and files[0].stat().st_mtime_ns == stamp  # reused
    again(small_image[:64, :96])  # another frame size: its own export and session
    assert len(list(cache.glob("*.onnx"))) == 2 and len(again.backend._sessions) == 2

    torch.manual_seed(1)  # other weights: other key
    other = tmp_path / "other.pt"
    save_weights(other, build_model("ddrnet23_slim", 11), {"arch": "ddrnet23_slim"})
    third = _pipe(other, backend="onnxruntime", backend_options={"cache_dir": str(cache)})
    assert third.backend.exports.path_for((120, 160)) != files[0]


def test_onnxruntime_cache_rejects_a_file_without_its_key(tmp_path, weights_file, small_image):
    pipe = _pipe(weights_file)
    cache = OnnxCache(pipe.model, pipe.backend_context(), tmp_path)
    path = cache.path_for((64, 96))
    export_onnx(
        cache.model, path, (64, 96)
    )  # right name, no cache_key inside (e.g. copied by hand)
    assert cache.get((64, 96)) == path and read_metadata(path)["cache_key"] == path.stem


def test_onnxruntime_dynamic_and_onnx_path(tmp_path, weights_file, small_image):
    pipe = _pipe(weights_file, backend="onnxruntime",
                 backend_options={"cache_dir": str(tmp_path), "dynamic": True})
    pipe(small_image)
    pipe(small_image[:64, :96])
    assert [p.name.split("-")[2] for p in tmp_path.glob("*.onnx")] == ["dynamic"]

    fixed = export_onnx(pipe.model, tmp_path / "fixed.onnx", (120, 160))
    given = _pipe(weights_file, backend="onnxruntime", backend_options={"onnx_path": str(fixed)})
    assert given(small_image).labels.shape == small_image.shape[:2]
    with pytest.raises(ConfigError, match="fixed 120x160 input but this frame needs 64x96"):
        given(small_image[:64, :96])
    with pytest.raises(ConfigError, match="does not exist"):
        _pipe(
            weights_file,
            backend="onnxruntime",
            backend_options={"onnx_path": str(tmp_path / "no.onnx")},
        )
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a valid model"):
        _pipe(
            weights_file,
            backend="onnxruntime",
            backend_options={"onnx_path": str(tmp_path / "junk.onnx")},
        )


def test_auto_table_names_registered_backends_with_a_reason():
    assert set(AUTO_BACKENDS) == {"cpu", "cuda"}
    for kind, (name, why) in AUTO_BACKENDS.items():
        assert name in list_backends() and name != "auto" and why
        assert auto_backend_name(torch.device(kind)) == name
    assert auto_backend_name(torch.device("meta")) == "torch"  # any other kind: torch


def test_auto_backend_and_missing_onnxruntime(weights_file, monkeypatch):
    assert {"auto", "torch", "onnxruntime", "tensorrt"} <= set(list_backends())
    auto = _pipe(weights_file, backend="auto")
    assert auto.describe()["backend"] == "torch"  # measured fastest for the whole CPU pipeline
    assert auto.backend.describe()["cpu_fusion"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert _pipe(weights_file, backend="auto").describe()["backend"] == "torch"
    with pytest.raises(ConfigError, match="backend onnxruntime needs the 'onnxruntime' package"):
        _pipe(weights_file, backend="onnxruntime")


def test_bench_cli_onnxruntime(tmp_path, weights_file):
    out = tmp_path / "bench.json"
    rc = cli_main(
        [
            "bench",
            "--backend",
            "onnxruntime",
            "--device",
            "cpu",
            "--weights",
            str(weights_file),
            "--size",
            "64x96",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--no-baseline",
            "--json",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert (
        rc == 0
        and report["backend"] == "onnxruntime"
        and report["timings_ms"]["pipeline"]["runs"] == 2
    )


# -- TensorRT: refusal, cache keys, calibration data ------------------------------------------
@pytest.mark.skipif(HAS_TRT and HAS_CUDA, reason="TensorRT and CUDA present: nothing to refuse")
def test_tensorrt_refuses_clearly(weights_file, capsys):
    with pytest.raises(ConfigError) as err:
        _pipe(weights_file, backend="tensorrt")
    assert str(err.value).startswith(REFUSAL)
    assert (
        cli_main(["build-engine", "--size", "64x96", "--weights", "none", "--device", "cpu"]) == 2
    )
    assert REFUSAL in capsys.readouterr().err


def _key(onnx_file: Path, **kw) -> EngineKey:
    base = dict(tensorrt_version="10.3.0", gpu="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                precision="fp16", input_shape=(512, 1024))
    base.update(kw)
    return engine_key(onnx_file, **base)


def test_engine_cache_keys_and_invalidation(tmp_path, caplog):
    onnx_a, onnx_b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx_a.write_bytes(b"graph A")
    onnx_b.write_bytes(b"graph B")
    key = _key(onnx_a)
    assert key == _key(onnx_a) and key.digest() == _key(onnx_a).digest()
    variants = [
        _key(onnx_b),
        _key(onnx_a, tensorrt_version="10.4.0"),
        _key(onnx_a, gpu="Orin"),
        _key(onnx_a, compute_capability="8.7"),
        _key(onnx_a, precision="fp32"),
        _key(onnx_a, input_shape=(384, 768)),
        _key(onnx_a, precision="int8", calibration="c1"),
    ]
    assert len({v.digest() for v in variants} | {key.digest()}) == len(variants) + 1
    with pytest.raises(ConfigError, match="precision must be one of"):
        _key(onnx_a, precision="int4")

    cache = EngineCache(tmp_path / "engines")
    assert cache.load(key, "m") is None
    path = cache.store(key, b"engine bytes", "m")
    assert cache.load(key, "m") == b"engine bytes"
    assert EngineKey.from_json(json.loads(cache.sidecar(path).read_text())["key"]) == key
    for other in variants:  # never served for another key, even when copied over its name
        assert cache.load(other, "m") is None
        os.makedirs(cache.dir, exist_ok=True)
        cache.path_for(other, "m").write_bytes(b"engine bytes")
        cache.sidecar(cache.path_for(other, "m")).write_text(cache.sidecar(path).read_text())
        assert cache.load(other, "m") is None
    assert "built for another configuration" in caplog.text
    cache.sidecar(path).write_text("{broken")
    assert cache.load(key, "m") is None
    cache.sidecar(path).unlink()
    assert cache.load(key, "m") is None and "has no key sidecar" in caplog.text
    # prebuilt engines are checked on the fields knowable without their ONNX file
    path = cache.store(key, b"engine bytes", "m")
    partial = EngineKey("", "10.3.0", "NVIDIA H100 80GB HBM3", "9.0", "fp16", (512, 1024))
    fields = ("tensorrt", "gpu", "compute_capability", "input_shape")
    assert load_engine_file(path, partial, check=fields) == b"engine bytes"
    assert (
        load_engine_file(
            path, EngineKey("", "10.3.0", "Orin", "8.7", "fp16", (512, 1024)), check=fields
        )
        is None
    )


def test_engine_key_follows_onnx_content(tmp_path, weights_file):
    pipe = _pipe(weights_file)
    a = export_onnx(pipe.model, tmp_path / "a.onnx", (64, 96))
    b = export_onnx(pipe.model, tmp_path / "b.onnx", (64, 128))
    assert _key(a).onnx_sha != _key(b).onnx_sha
    assert (
        _key(a).onnx_sha == _key(export_onnx(pipe.model, tmp_path / "a2.onnx", (64, 96))).onnx_sha
    )


def test_calibration_data_from_image_folder(tmp_path, weights_file, road_image):
    folder = tmp_path / "calib"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        img = np.roll(road_image, 17 * i, axis=1)
        cv2.imwrite(
            str(folder / ("sub" if i % 2 else "") / f"f{i}.png"),
            cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
        )
    (folder / "notes.txt").write_text("not an image")
    pipe = _pipe(weights_file)
    data = CalibrationData(pipe.network_input, folder, (64, 96), batch_size=2)
    assert len(data.files) == 5 and len(data) == 3
    batches = list(data.batches())
    assert [tuple(b.shape) for b in batches] == [(2, 3, 64, 96), (2, 3, 64, 96), (1, 3, 64, 96)]
    assert all(b.dtype == torch.float32 and b.is_contiguous() for b in batches)
    frame = cv2.resize(
        road_image, (96, 64), interpolation=cv2.INTER_AREA
    )  # f0: same preprocessing
    with torch.inference_mode():
        want = pipe.preprocess(torch.from_numpy(frame))
    assert data.files[0].name == "f0.png"
    torch.testing.assert_close(batches[0][:1], want.float().contiguous(), atol=2e-2, rtol=0)
    assert len(list_images(folder, max_images=2)) == 2
    sized = CalibrationData(_pipe(weights_file, input_size=(96, 128)).network_input, folder,
                            (64, 96))  # maps to 88x128
    assert tuple(next(sized.batches()).shape) == (1, 3, 64, 96)  # still the engine's shape
    digest = data.digest
    cv2.imwrite(str(folder / "f0.png"), np.zeros((8, 8, 3), np.uint8))
    assert CalibrationData(pipe.network_input, folder, (64, 96)).digest != digest
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        CalibrationData(pipe.network_input, tmp_path / "empty", (64, 96))
    with pytest.raises(ConfigError, match="does not exist"):
        list_images(tmp_path / "nope")


@pytest.mark.skipif(
    not (HAS_TRT and HAS_CUDA),
    reason="needs the TensorRT Python package and a CUDA GPU "
    "(neither on the development machines)",
)
def test_tensorrt_engine_matches_torch(tmp_path, weights_file, small_image):
    ref = SegmentationPipeline(model="ddrnet23_slim", weights=str(weights_file), device="cuda")
    pipe = SegmentationPipeline(model="ddrnet23_slim", weights=str(weights_file), device="cuda",
                                backend="tensorrt", backend_options={"cache_dir": str(tmp_path),
                                                                     "precision": "fp32"})
    torch.testing.assert_close(
        pipe.forward_logits(small_image).float(),
        ref.forward_logits(small_image).float(),
        atol=1e-2,
        rtol=1e-3,
    )
    engines = list((tmp_path / "engines").glob("*.engine"))
    assert len(engines) == 1 and engines[0].with_suffix(".json").is_file()
    again = SegmentationPipeline(model="ddrnet23_slim", weights=str(weights_file), device="cuda",
                                 backend="tensorrt", backend_options={"cache_dir": str(tmp_path),
                                                                      "precision": "fp32"})
    again(small_image)
    assert list((tmp_path / "engines").glob("*.engine")) == engines


def test_backend_factory_rejects_unknown_name():
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt-ish'"):
        create_backend("tensorrt-ish", nn.Identity(), torch.device("cpu"), False)
