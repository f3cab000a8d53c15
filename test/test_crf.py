"""CRF refinement (seg_ros.crf), from the refiners to the labels the tools write.

CRF refinement (seg_ros.crf): both CRFs clean a noisy unary on an image of clean colour regions,
agree with each other there, reject bad parameters with a reason, and reach the labels the tools
write (segment, eval, replay, bench with --crf).
"""
from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest
import torch

from seg_ros import bags
from seg_ros.cli.main import main as cli
from seg_ros.crf import (
    CRF_MODES,
    CRFConfig,
    create_refiner,
    dense_unavailable_reason,
    load_crf_config,
    parameter_table,
)
from seg_ros.crf.worker import BackgroundRefiner
from seg_ros.errors import ConfigError
from seg_ros.metrics import BoundaryAccumulator
from seg_ros.pipeline import SegmentationPipeline
from seg_ros.resources import share_path

pytestmark = pytest.mark.timeout(120)
H, W = 64, 80
DENSE_MISSING = dense_unavailable_reason()
needs_dense = pytest.mark.skipif(DENSE_MISSING is not None, reason=DENSE_MISSING or "")
COLORS = np.array([[200, 40, 40], [40, 180, 60], [50, 60, 200], [230, 220, 60]], np.uint8)


def regions_scene(seed: int = 0, noise: float = 1.0):
    """Four clean colour regions (two blocks, a band, a disc).

    Pixel noise of 2 grey levels, and a unary that prefers the right class by 1.0 under N(0, noise)
    logit noise.
    """
    rng = np.random.default_rng(seed)
    gt = np.zeros((H, W), np.int64)
    gt[:, W // 2:] = 1
    gt[H // 2:, : W // 3] = 2
    yy, xx = np.mgrid[:H, :W]
    gt[(yy - 20) ** 2 + (xx - 55) ** 2 < 100] = 3
    image = np.clip(COLORS[gt] + rng.normal(0, 2, (H, W, 3)), 0, 255).astype(np.uint8)
    logits = np.eye(4)[gt].transpose(2, 0, 1) + rng.normal(0, noise, (4, H, W))
    return image, torch.tensor(logits[None], dtype=torch.float32), gt


def refine(mode: str, image, logits, config: CRFConfig | None = None) -> np.ndarray:
    refiner = create_refiner(mode, config or CRFConfig())
    try:
        return refiner(torch.from_numpy(image), logits, (H, W)).numpy()
    finally:
        refiner.close()


@pytest.fixture(scope="module")
def scene():
    image, logits, gt = regions_scene()
    noisy = logits[0].argmax(0).numpy()
    assert (noisy == gt).mean() < 0.85  # the unary alone is clearly wrong in many places
    return image, logits, gt


@pytest.fixture(scope="module")
def fast_labels(scene):
    image, logits, _ = scene
    return refine("fast", image, logits)


# -- recovery and agreement ----------------------------------------------------------------------
def test_fast_recovers_the_regions(scene, fast_labels):
    assert (fast_labels == scene[2]).mean() > 0.95


def test_fast_at_full_resolution_and_other_window_also_recovers(scene):
    image, logits, gt = scene
    labels = refine(
        "fast", image, logits, CRFConfig(fast_scale=1.0, fast_window=5, fast_iterations=8)
    )
    assert (labels == gt).mean() > 0.95


@needs_dense
def test_dense_recovers_the_regions_and_agrees_with_fast(scene, fast_labels):
    image, logits, gt = scene
    dense = refine("dense", image, logits)
    assert (dense == gt).mean() > 0.95
    assert (dense == fast_labels).mean() > 0.95


def test_without_pairwise_terms_the_crf_keeps_the_unary(scene):
    """w1 = w2 = 0 leaves only the unary: the labels are its argmax (the kernels do the work)."""
    image, logits, _ = scene
    labels = refine(
        "fast", image, logits, CRFConfig(bilateral_weight=0.0, gaussian_weight=0.0, fast_scale=1.0)
    )
    np.testing.assert_array_equal(labels, logits[0].argmax(0).numpy())


def test_colour_edges_steer_the_fast_crf():
    """A flat unary over one colour edge: the labels follow the edge, not a straight split."""
    image = np.full((H, W, 3), 30, np.uint8)
    image[:, 37:] = 220
    gt = np.zeros((H, W), np.int64)
    gt[:, 37:] = 1
    logits = torch.zeros(1, 2, H, W)
    logits[0, 1, :, 50:] = 2.0  # strong evidence only far right; near the edge, 50/50
    logits[0, 0, :, :20] = 2.0
    labels = refine("fast", image, logits, CRFConfig(fast_scale=1.0, fast_iterations=10))
    assert (labels == gt).mean() > 0.97


# -- parameters
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize("values, words", [
    ({"fast_window": 4}, "odd"),
    ({"theta_alpha": 0}, "theta_alpha"),
    ({"theta_beta": -3.0}, "0.1..255"),
    ({"iterations": 2.5}, "integer"),
    ({"iterations": True}, "integer"),
    ({"fast_scale": 1.5}, "fast_scale"),
    ({"bilateral_weight": float("nan")}, "bilateral_weight"),
    ({"theta_gama": 3}, "unknown CRF parameter"),
])
def test_invalid_parameters_are_rejected_with_a_reason(values, words):
    with pytest.raises(ConfigError, match=words):
        CRFConfig.from_dict(values)


def test_invalid_config_object_and_mode():
    with pytest.raises(ConfigError, match="fast_iterations.*1..50"):
        create_refiner("fast", CRFConfig(fast_iterations=0))
    with pytest.raises(ConfigError, match="crf must be one of off, dense, fast"):
        create_refiner("bilateral")
    assert create_refiner("off") is None


def test_bad_config_files(tmp_path):
    bad = tmp_path / "crf.yaml"
    bad.write_text("theta_alpha: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_crf_config(bad)
    bad.write_text("fast_window: 8\n")
    with pytest.raises(ConfigError, match=f"{bad}.*fast_window.*odd"):
        load_crf_config(bad)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_crf_config(tmp_path / "missing.yaml")


def test_shipped_config_is_deeplab_v2_and_the_defaults():
    config = load_crf_config()
    assert config == CRFConfig()
    assert (config.iterations, config.bilateral_weight, config.theta_alpha, config.theta_beta,
            config.gaussian_weight, config.theta_gamma) == (10, 4.0, 67.0, 3.0, 3.0, 1.0)
    text = share_path("config/crf.yaml").read_text()
    assert "DeepLab" in text and "BI_XY_STD 67" in text
    assert {name for name, *_ in parameter_table()} == set(CRFConfig().to_dict())


def test_dense_mode_refused_with_the_reason_when_pydensecrf_is_missing(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_pydensecrf(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError("No module named 'pydensecrf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydensecrf)
    with pytest.raises(ConfigError, match="pip install pydensecrf2"):
        create_refiner("dense")


# -- pipeline and tools
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(weights_file):
    return SegmentationPipeline(weights=str(weights_file), device="cpu")


@pytest.fixture(scope="module")
def frame(road_image):
    return np.ascontiguousarray(cv2.resize(road_image, (W, H), interpolation=cv2.INTER_AREA))


def test_pipeline_refine_reuses_the_raw_logits(pipe, frame):
    plain = pipe(frame, "rgb")
    assert plain.refine_input is None  # nothing kept unless asked for
    with pytest.raises(ConfigError, match="keep_scores=True"):
        pipe.refine(plain, create_refiner("fast"))
    kept = pipe(frame, "rgb", keep_scores=True)
    np.testing.assert_array_equal(kept.labels, plain.labels)
    logits = pipe.forward_logits(frame, "rgb")
    refiner = create_refiner("fast", device=pipe.device)
    refined = pipe.refine(kept, refiner, color=True, overlay=True)
    expected = refiner(torch.from_numpy(frame), logits, (H, W)).numpy()
    np.testing.assert_array_equal(refined.labels, expected)
    assert refined.labels.dtype == np.uint8 and refined.timings_ms["crf"] > 0
    np.testing.assert_array_equal(refined.color, pipe.classes.colors[refined.labels])
    # BGR input: the CRF sees the same RGB colours
    bgr = pipe(np.ascontiguousarray(frame[..., ::-1]), "bgr", keep_scores=True)
    np.testing.assert_array_equal(pipe.refine(bgr, refiner).labels, refined.labels)


def test_refine_at_inference_resolution(weights_file, frame):
    pipe = SegmentationPipeline(
        weights=str(weights_file), device="cpu", output_resolution="inference", input_size=(32, 40)
    )
    res = pipe(frame, "rgb", keep_scores=True)
    refined = pipe.refine(res, create_refiner("fast"), overlay=True)
    assert refined.labels.shape == res.labels.shape == (32, 40) and refined.overlay.shape == (
        32,
        40,
        3,
    )


def test_segment_writes_refined_labels(tmp_path, weights_file, pipe, frame):
    path = tmp_path / "f.png"
    cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert (
        cli(
            [
                "segment",
                str(path),
                "--out",
                str(tmp_path / "out"),
                "--weights",
                str(weights_file),
                "--device",
                "cpu",
                "--crf",
                "fast",
            ]
        )
        == 0
    )
    labels = cv2.imread(str(tmp_path / "out" / "f_labels.png"), cv2.IMREAD_UNCHANGED)
    expected = pipe.refine(pipe(frame, "rgb", keep_scores=True), create_refiner("fast"))
    np.testing.assert_array_equal(labels, expected.labels)


def test_eval_scores_the_refined_labels_with_boundary_f(tmp_path, weights_file, pipe, frame):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    refined = pipe.refine(pipe(frame, "rgb", keep_scores=True), create_refiner("fast")).labels
    cv2.imwrite(str(tmp_path / "lab" / "a.png"), refined)  # ground truth = the refined labels
    report = {}
    for mode in ("off", "fast"):
        out = tmp_path / f"{mode}.json"
        assert (
            cli(
                [
                    "eval",
                    "--images",
                    str(tmp_path / "img"),
                    "--labels",
                    str(tmp_path / "lab"),
                    "--weights",
                    str(weights_file),
                    "--device",
                    "cpu",
                    "--crf",
                    mode,
                    "--boundary-f",
                    "--json",
                    str(out),
                ]
            )
            == 0
        )
        report[mode] = json.loads(out.read_text())
    assert report["fast"]["crf"] == "fast" and report["fast"]["pixel_accuracy"] == 1.0
    assert report["fast"]["boundary_f"] == 1.0 and report["fast"]["tolerance_px"] == 3
    assert report["off"]["pixel_accuracy"] < 1.0  # so the --crf run really scored other labels


def test_replay_writes_refined_topics(tmp_path, weights_file, pipe, frame):
    bag = tmp_path / "in.mcap"
    with bags.BagWriter(bag) as w:
        w.add_topic("/cam", bags.IMAGE_TYPE)
        w.write("/cam", 1000, bags.image_msg_from_array(bags.make_header(5, "f0"), frame))
    out = tmp_path / "out.mcap"
    assert (
        cli(
            [
                "replay",
                str(bag),
                "--out",
                str(out),
                "--weights",
                str(weights_file),
                "--device",
                "cpu",
                "--crf",
                "fast",
            ]
        )
        == 0
    )
    with bags.BagReader(out) as reader:
        msgs = {m.topic: reader.deserialize(m) for m in reader.messages()}
    raw = pipe(frame, "rgb", keep_scores=True)
    refined = pipe.refine(raw, create_refiner("fast"))
    np.testing.assert_array_equal(bags.labels_from_msg(msgs["/cam/labels"]), raw.labels)
    np.testing.assert_array_equal(
        bags.labels_from_msg(msgs["/cam/labels_refined"]), refined.labels
    )
    assert {"/cam/color_mask_refined", "/cam/overlay_refined"} <= set(msgs)
    assert msgs["/cam/labels_refined"].header.frame_id == "f0"


def test_bench_times_the_crf_stage(tmp_path):
    out = tmp_path / "b.json"
    assert (
        cli(
            [
                "bench",
                "--size",
                "64x80",
                "--runs",
                "2",
                "--warmup",
                "1",
                "--weights",
                "none",
                "--device",
                "cpu",
                "--no-baseline",
                "--crf",
                "fast",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["crf"] == "fast" and report["timings_ms"]["crf_fast"]["median"] > 0


def test_crf_flag_choices(capsys):
    with pytest.raises(SystemExit):
        cli(["segment", "x.png", "--out", "/tmp/x", "--crf", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    assert CRF_MODES == ("off", "dense", "fast")


# -- boundary F and the background worker
# ----------------------------------------------------------
def test_boundary_f_score():
    gt = np.zeros((20, 30), np.int64)
    gt[:, 15:] = 1
    shifted = np.zeros_like(gt)
    shifted[:, 17:] = 1  # the edge 2 px off
    for tol, f in ((3, 1.0), (1, 0.5), (0, 0.0)):
        acc = BoundaryAccumulator(tol)
        acc.add(gt, shifted)
        assert acc.scores()["boundary_f"] == pytest.approx(f), tol
    ignored = gt.copy()
    ignored[:, 15:] = 11  # boundaries against ignored ground truth are not scored
    acc = BoundaryAccumulator(3, ignore_id=11)
    acc.add(ignored, shifted)
    assert acc.pred == acc.gt == 0


def test_background_refiner_latest_wins_and_reports_errors():
    gate = threading.Event()
    seen, errors = [], []

    def handle(item):
        gate.wait(5)
        if item == "bad":
            raise RuntimeError("boom")
        seen.append(item)

    worker = BackgroundRefiner(handle, lambda item, exc: errors.append((item, str(exc))))
    try:
        worker.submit(1)
        time.sleep(0.2)  # 1 is being handled
        assert not worker.submit(2)
        assert worker.submit(3)  # replaces 2, which is dropped
        gate.set()
        deadline = time.monotonic() + 5
        while worker.done < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [1, 3] and worker.dropped == 1
        worker.submit("bad")
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        assert errors == [("bad", "boom")] and worker.failed == 1
    finally:
        worker.stop()


ISOLATE = True  # False shows the stall this test exists to catch


@pytest.mark.slow  # a helper process
@needs_dense
def test_isolated_dense_gives_the_same_labels_and_leaves_other_threads_running(scene):
    """The node's dense CRF runs in a helper process.

    Same labels, and this process's threads keep running meanwhile (pydensecrf in-process holds the
    GIL for the whole inference).
    """
    image, logits, _ = scene
    image = np.ascontiguousarray(np.repeat(np.repeat(image, 2, axis=0), 2, axis=1))  # 128 x 160
    logits = logits.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    size = (2 * H, 2 * W)
    config = CRFConfig(iterations=100)  # long enough (~0.4 s) for a stall to show
    refiner = create_refiner("dense", config, isolate=ISOLATE)
    try:
        refiner(torch.from_numpy(image), logits, size)  # starts the helper process
        ticks: list[float] = []
        done = threading.Event()

        def ticker() -> None:
            while not done.is_set():
                ticks.append(time.monotonic())
                time.sleep(0.002)

        thread = threading.Thread(target=ticker)
        thread.start()
        t0 = time.monotonic()
        labels = refiner(torch.from_numpy(image), logits, size).numpy()
        elapsed = time.monotonic() - t0
        done.set()
        thread.join()
    finally:
        refiner.close()
    in_process = create_refiner("dense", config)(torch.from_numpy(image), logits, size).numpy()
    np.testing.assert_array_equal(labels, in_process)
    gaps = np.diff([t for t in ticks if t >= t0])
    print(
        f"dense {elapsed * 1e3:.0f} ms, longest stall of another thread {gaps.max() * 1e3:.0f} ms"
    )
    assert elapsed > 0.05 and gaps.max() < 0.5 * elapsed, (gaps.max(), elapsed)


def test_shipped_profiles_load_by_name():
    from seg_ros.crf import PROFILES, CRFConfig, load_crf_config

    assert load_crf_config() == load_crf_config("deeplab_v2") == CRFConfig()  # DeepLab v2's values
    camvid = load_crf_config("camvid")
    assert set(PROFILES) == {"deeplab_v2", "camvid"}
    assert (camvid.bilateral_weight, camvid.theta_alpha) == (3.0, 30.0)  # scripts/tune_crf.py
