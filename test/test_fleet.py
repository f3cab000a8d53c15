"""Fleet runs of ``seg-ros replay`` / ``seg-ros eval`` over many real bags.

Layout, manifest, resume, chunks, fleet evaluation, engines (in-process, local processes, Ray),
Ctrl-C, dead workers.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from tqdm import tqdm

from seg_ros import bags
from seg_ros.cli.main import main as cli
from seg_ros.errors import ConfigError
from seg_ros.fleet.engines import EngineError, LocalProcessEngine, RayEngine
from seg_ros.fleet.manifest import Manifest
from seg_ros.fleet.runner import FleetJob, FleetRunner
from seg_ros.fleet.score import EvalOptions
from seg_ros.fleet.segment import ReplayOptions
from seg_ros.fleet.sources import WHOLE, find_bags, plan_bag, spans
from seg_ros.fleet.tasks import EVAL, REPLAY, PipelineSpec, Task, worker_name
from seg_ros.pipeline import PipelineConfig, SegmentationPipeline

from helpers import require_module, write_legacy_bag

H, W = 32, 48
PERIOD = 10**8  # 10 Hz recorded timing
CLI = [sys.executable, "-m", "seg_ros.cli.main"]
RAY_MISSING = "ray not installed (pip install 'seg_ros[ray]')"
String = bags.typestore().types["std_msgs/msg/String"]


def frames_for(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def stamp(seed: int, i: int) -> int:
    return 10**9 * (100 + seed) + i * PERIOD + 7


def records(seed: int, n: int, gt=None, label_delay: int = 1) -> list:
    """Images on /cam, a String on /note.

    And (with ``gt(i, image)``) labels on /gt recorded ``label_delay`` ns after their image.
    """
    out = []
    for i, img in enumerate(frames_for(seed, n)):
        hdr = bags.make_header(stamp(seed, i), f"f{i}")
        out.append(("/cam", bags.IMAGE_TYPE, i * PERIOD, bags.image_msg_from_array(hdr, img)))
        out.append(("/note", "std_msgs/msg/String", i * PERIOD + 2, String(data=f"n{i}")))
        if gt is not None:
            out.append(("/gt", bags.IMAGE_TYPE, i * PERIOD + label_delay,
                        bags.image_msg_from_array(hdr, gt(i, img), "labels")))
    return sorted(out, key=lambda r: r[2])


def write_bag(path: Path, recs: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with bags.BagWriter(path) as w:
        for topic, msgtype, t, msg in recs:
            w.add_topic(topic, msgtype)
            w.write(topic, t, msg)
    return path


# bag name in the tree -> (seed, frames)
TREE = {"a.mcap": (1, 4), "day1/b.db3": (2, 5), "day1/c": (3, 3), "day2/d_legacy.db3": (4, 3)}


@pytest.fixture(scope="module")
def pipe(weights_file):
    return SegmentationPipeline(weights=str(weights_file), device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def tree(tmp_path_factory, pipe):
    """Four good bags in folders (mcap file, db3 file, bag directory, older type spelling).

    A corrupt one, ground-truth labels on /gt equal to the model's own labels (a perfect score).
    """
    root = tmp_path_factory.mktemp("fleet") / "drives"
    gt = lambda i, img: pipe(img, "rgb").labels  # noqa: E731
    for name, (seed, n) in TREE.items():
        recs = records(seed, n, gt)
        if "legacy" in name:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            write_legacy_bag(root / name, recs)
        else:
            write_bag(root / name, recs)
    (root / "day2" / "broken.mcap").write_bytes(os.urandom(3000))
    return root


def common(weights_file) -> list[str]:
    return ["--weights", str(weights_file), "--device", "cpu", "--threads", "1"]


def cam_labels(bag: Path) -> list[bytes]:
    with bags.BagReader(bag) as b:
        return [m.rawdata for m in b.messages(["/cam/labels"])]


def all_labels(out: Path) -> dict[str, list[bytes]]:
    return {name: cam_labels(out / name) for name in TREE}


# -- finding bags, chunks, manifest -----------------------------------------------------------
def test_find_bags_mirrors_the_input_layout(tmp_path):
    root = tmp_path / "data"
    for rel in ("x.mcap", "sub/y.db3", "sub/deep/z.mcap"):
        write_bag(root / rel, records(0, 1))
    write_bag(root / "sub" / "dirbag", records(0, 1))
    (root / "sub" / "notes.txt").write_text("not a bag")
    write_bag(root / "out" / "old.mcap", records(0, 1))  # the output folder is never searched

    found, missing = find_bags([str(root)], exclude=root / "out")
    assert [str(s.rel) for s in found] == ["sub/deep/z.mcap", "sub/dirbag", "sub/y.db3", "x.mcap"]
    assert all(s.path.is_absolute() for s in found) and not missing

    listing = tmp_path / "list.txt"
    listing.write_text("# drives of the day\ndata/x.mcap\n\n"
                       "data/sub/*.db3  # sqlite ones\ndata/nope.mcap\n")
    found, missing = find_bags([str(root / "sub" / "dirbag"), str(root / "x.mcap")], listing)
    assert [str(s.rel) for s in found] == ["sub/dirbag", "x.mcap", "sub/y.db3"]  # each once
    assert [m.error for m in missing] == [f"bag {tmp_path / 'data/nope.mcap'} does not exist"]
    found, missing = find_bags([str(root / "**" / "*.mcap")])
    assert sorted(str(s.rel) for s in found) == ["out/old.mcap", "sub/deep/z.mcap", "x.mcap"]
    assert find_bags([str(root / "*.none")])[1][0].error.startswith("no bag matches")


def test_chunks_partition_every_message(tmp_path):
    path = write_bag(tmp_path / "long.mcap", records(0, 9, lambda i, img: img[:, :, 0] % 11))
    plan = plan_bag(path, ["/cam"], chunk_frames=4)
    assert plan.frames == 9 and len(plan.spans) == 3
    with bags.BagReader(path) as bag:
        whole = [(m.topic, m.timestamp) for m in bag.messages()]
        parts = [[(m.topic, m.timestamp) for m in bag.messages(start=s.start, stop=s.stop)]
                 for s in plan.spans]
    assert sum(parts, []) == whole
    assert [sum(t == "/cam" for t, _ in p) for p in parts] == [3, 3, 3]
    assert spans((0, 100), 5, 5) == spans((0, 100), 5, None) and len(spans((0, 100), 5, None)) == 1


def test_manifest_survives_a_torn_line(tmp_path):
    m = Manifest(tmp_path)
    m.append({"bag": "a", "status": "ok"})
    with open(m.path, "a") as f:
        f.write('{"bag": "b", "sta')  # killed while writing
    m.append({"bag": "c", "status": "failed"})
    assert m.entries() == {"a": {"bag": "a", "status": "ok"},
                           "c": {"bag": "c", "status": "failed"}}


def test_jobs_and_tasks_without_their_options_are_refused(tmp_path):
    spec = PipelineSpec(PipelineConfig(weights="none", device="cpu"))
    with pytest.raises(ConfigError, match="unknown fleet job kind 'train'"):
        FleetJob("train", [], tmp_path, spec, replay=ReplayOptions())
    with pytest.raises(ConfigError, match="a fleet eval job needs its eval options"):
        FleetJob(EVAL, [], tmp_path, spec, replay=ReplayOptions())
    with pytest.raises(ConfigError, match="a replay task needs replay options and output"):
        Task("a#0", "a", "a.mcap", REPLAY, WHOLE, replay=ReplayOptions())
    with pytest.raises(ConfigError, match="an eval task needs eval options"):
        Task("a#0", "a", "a.mcap", EVAL, WHOLE, replay=ReplayOptions(), output="o.mcap")
    with pytest.raises(ConfigError, match="unknown kind 'x'"):
        Task("a#0", "a", "a.mcap", "x", WHOLE, eval=EvalOptions())


# -- replay -------------------------------------------------------------------------------------
def test_fleet_replay_mirrors_records_and_resumes(tmp_path, tree, pipe, weights_file, capsys):
    out = tmp_path / "out"
    args = ["replay", str(tree), "--out", str(out), "--topic", "/cam", *common(weights_file)]
    assert cli(args) == 1  # one bag is corrupt: the others are done, the exit code says so
    entries = Manifest(out).entries()
    assert set(entries) == set(TREE) | {"day2/broken.mcap"}
    broken = entries.pop("day2/broken.mcap")
    assert broken["status"] == "failed" and "broken.mcap cannot be opened" in broken["error"]
    for name, (seed, n) in TREE.items():
        e = entries[name]
        assert e["status"] == "ok" and e["frames"] == e["segmented"] == n and e["seconds"] > 0
        assert e["outputs"] == [name, f"{name}.summary.json"] and e["error"] is None
        summary = json.loads((out / f"{name}.summary.json").read_text())
        assert summary["segmented"] == n and summary["input"] == str(tree / name)
        with bags.BagReader(out / name) as b:
            assert b.topics["/note"].count == n  # every input message is copied
            labels = [b.deserialize(m) for m in b.messages(["/cam/labels"])]
        for i, (msg, img) in enumerate(zip(labels, frames_for(seed, n))):
            assert msg.header.frame_id == f"f{i}"
            np.testing.assert_array_equal(msg.data.reshape(H, W), pipe(img, "rgb").labels)
    assert (out / "day1" / "c" / "metadata.yaml").is_file()  # a bag directory stays one
    summary = json.loads((out / "replay_summary.json").read_text())
    assert summary["ok"] == 4 and summary["failed"] == 1 and summary["segmented"] == 15

    assert cli(args) == 2  # a finished run is never silently redone
    assert "--resume" in capsys.readouterr().err
    (out / "a.mcap").unlink()  # a lost output is redone on resume, a done bag is not
    lines = len(Manifest(out).path.read_text().splitlines())
    assert cli([*args, "--resume"]) == 1
    assert "3 already done (--resume)" in capsys.readouterr().out
    new = [json.loads(x)["bag"] for x in Manifest(out).path.read_text().splitlines()[lines:]]
    assert sorted(new) == ["a.mcap", "day2/broken.mcap"]
    assert cli([*args, "--resume", "--alpha", "0.3"]) == 1  # other options: nothing counts as done
    assert "already done" not in capsys.readouterr().out
    assert cam_labels(out / "a.mcap") == [bytes(bags.typestore().serialize_cdr(m, bags.IMAGE_TYPE))
                                          for m in labels_msgs(pipe, 1, 4)]


def labels_msgs(pipe, seed: int, n: int) -> list:
    return [bags.image_msg_from_array(bags.make_header(stamp(seed, i), f"f{i}"),
                                      pipe(img, "rgb").labels, "labels")
            for i, img in enumerate(frames_for(seed, n))]


def test_chunked_replay_equals_the_whole_bag(tmp_path, weights_file):
    src = write_bag(tmp_path / "in" / "long.mcap", records(5, 7))
    outs = {}
    runs = (("whole", [str(src.parent)]), ("chunks", [str(src), "--chunk-frames", "2"]))
    for name, args in runs:
        out = tmp_path / name
        assert cli(["replay", *args, "--out", str(out), *common(weights_file)]) == 0
        entry = Manifest(out).entries()["long.mcap"]
        assert entry["chunks"] == (4 if name == "chunks" else 1) and entry["frames"] == 7
        with bags.BagReader(out / "long.mcap") as b:
            outs[name] = sorted((m.topic, m.timestamp, m.rawdata) for m in b.messages())
        assert not (out / "long.mcap.parts").exists()
    assert outs["chunks"] == outs["whole"] and len(outs["whole"]) == 7 * 5


# -- evaluation ----------------------------------------------------------------------------------
def test_fleet_eval_sums_confusions_from_topic_or_label_folders(tmp_path, tree, weights_file):
    # labels recorded a frame after their image: chunks split image and label (paired across them)
    zeros_gt = lambda i, img: np.zeros((H, W), np.uint8)  # noqa: E731
    bad = write_bag(tree.parent / "more" / "zeros.mcap", records(9, 3, zeros_gt, PERIOD + 3))
    out = tmp_path / "eval"
    rc = cli(["eval", str(tree), str(bad), "--out", str(out), "--label-topic", "/gt",
              "--classes", "camvid", *common(weights_file)])
    assert rc == 1  # the corrupt bag
    report = json.loads((out / "eval_report.json").read_text())
    per_bag = {b: json.loads((out / f"{b}.eval.json").read_text())
               for b in ["drives/" + n for n in TREE] + ["more/zeros.mcap"]}
    total = sum(np.asarray(r["confusion"]) for r in per_bag.values())
    np.testing.assert_array_equal(np.asarray(report["confusion"]), total)  # summed, not averaged
    assert report["images"] == 15 + 3 and report["bags_scored"] == 5 and report["bags_failed"] == 1
    for name in TREE:
        rep = per_bag["drives/" + name]
        assert rep["miou"] == 1.0 and rep["skipped"] == []
    zeros = per_bag["more/zeros.mcap"]
    assert zeros["miou"] < 1.0
    assert np.asarray(zeros["confusion"])[1:].sum() == 0  # only class 0 in the ground truth
    assert 0 < report["miou"] < 1.0
    md = (out / "eval_report.md").read_text()
    assert md.index("more/zeros.mcap") < md.index("drives/a.mcap")  # worst bag first
    assert "drives/day2/broken.mcap" in md
    figure = cv2.imread(str(out / "eval_report.png"))
    assert figure is not None and figure.shape[0] > 200

    chunked = tmp_path / "eval_chunks"
    assert cli(["eval", str(bad), "--out", str(chunked), "--label-topic", "/gt",
                "--chunk-frames", "1", *common(weights_file)]) == 0
    rep = json.loads((chunked / "zeros.mcap.eval.json").read_text())
    assert rep["images"] == 3 and rep["confusion"] == zeros["confusion"] and rep["skipped"] == []

    # label folders: <label-dir>/<bag without suffix>/<header stamp ns>.png
    labels = tmp_path / "labels"
    for i, img in enumerate(frames_for(9, 3)):
        (labels / "zeros").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(labels / "zeros" / f"{stamp(9, i)}.png"), np.zeros((H, W), np.uint8))
    from_dir = tmp_path / "eval_dir"
    assert cli(["eval", str(bad), "--out", str(from_dir), "--label-dir", str(labels),
                "--image-topic", "/cam", *common(weights_file)]) == 0
    rep = json.loads((from_dir / "zeros.mcap.eval.json").read_text())
    assert rep["confusion"] == zeros["confusion"]


def test_fleet_option_mistakes_are_clear(tmp_path, tree, weights_file, capsys):
    base = [*common(weights_file)]
    assert cli(["eval", str(tree), "--out", str(tmp_path / "o"), *base]) == 2
    assert "--label-topic TOPIC or --label-dir" in capsys.readouterr().err
    assert cli(["eval", "--bag", str(tree / "a.mcap"), "--workers", "2", *base]) == 2
    assert cli(["replay", str(tree), "--out", str(tmp_path / "o"), "--video", "v.mp4", *base]) == 2
    assert cli(["replay", str(tree), "--out", str(tmp_path / "o"), "--gpus-per-worker", "1",
                *base]) == 2
    assert "Ray options" in capsys.readouterr().err
    # several image topics and no --image-topic: that bag fails with the reason, the run goes on
    assert cli(["eval", str(tree / "a.mcap"), "--out", str(tmp_path / "e"), "--label-dir",
                str(tmp_path), *base]) == 1
    assert "choose one with --image-topic" in Manifest(tmp_path / "e").entries()["a.mcap"]["error"]


# -- engines -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_same_labels_in_process_on_workers_and_on_ray(tmp_path, tree, weights_file):
    require_module("ray", RAY_MISSING)
    runs = {"in-process": [], "workers": ["--workers", "2"], "ray": ["--ray", "--workers", "2"]}
    labels, scores = {}, {}
    for name, engine in runs.items():
        out = tmp_path / name
        assert cli(["replay", str(tree), "--out", str(out), "--topic", "/cam",
                    *common(weights_file), *engine]) == 1
        labels[name] = all_labels(out)
        assert {n: len(v) for n, v in labels[name].items()} == {n: f for n, (_, f) in TREE.items()}
        workers = {w for e in Manifest(out).entries().values() for w in e["workers"]}
        if name == "in-process":
            assert workers == {worker_name()}
        else:  # other processes, each holding its pipeline for several bags
            assert 1 <= len(workers) <= 2 and worker_name() not in workers
        ev = tmp_path / f"{name}_eval"
        assert cli(["eval", str(tree), "--out", str(ev), "--label-topic", "/gt",
                    "--chunk-frames", "2", *common(weights_file), *engine]) == 1
        scores[name] = json.loads((ev / "eval_report.json").read_text())["confusion"]
    assert labels["workers"] == labels["in-process"] and labels["ray"] == labels["in-process"]
    assert scores["workers"] == scores["in-process"] and scores["ray"] == scores["in-process"]


def _job(src: Path, out: Path, weights_file: Path, attempts: int) -> FleetJob:
    config = PipelineConfig(weights=str(weights_file), device="cpu", num_threads=1)
    return FleetJob(REPLAY, [str(src)], out, PipelineSpec(config), replay=ReplayOptions(("/cam",)),
                    attempts=attempts)


def _killer(engine_cls, kills: int, victim: str, frames: int, **kwargs):
    """Return an engine factory whose engine kills a worker: a real worker death.

    An engine factory whose engine kills (SIGKILL) the worker running ``victim`` (``frames``
    frames) at its first progress report that shows frames still to do, ``kills`` times: a real
    worker death, as the OOM killer would do it, and never after the task's last frame (a task
    reports its first frame at once, so even a fast machine gets the kill while it runs).
    """
    left = {"kills": kills, "seen": 0}

    def make(spec, progress):
        def on_progress(key: str, n: int) -> None:
            progress(key, n)
            if not key.startswith(victim) or left["kills"] == 0:
                return
            left["seen"] += n
            if left["seen"] < frames:
                left["kills"] -= 1
                left["seen"] = 0
                os.kill(pid_of(engine, key), signal.SIGKILL)
        engine = engine_cls(spec, 2, on_progress, **kwargs)
        return engine
    return make


def pid_of(engine, key: str) -> int:
    if isinstance(engine, LocalProcessEngine):
        return next(s.process.pid for s in engine.slots if s.task and s.task.key == key)
    actor = next(a for a in engine.actors if a.task is not None and a.task.key == key)
    return engine.ray.get(actor.handle.pid.remote())


class RecordingBar(tqdm):
    """The runner's real progress bar, drawn into a buffer, keeping every count it showed."""

    def __init__(self, total: int, kind: str) -> None:
        super().__init__(total=total, desc=kind, unit="frame", file=io.StringIO(), disable=False)
        self.shown: list[int] = []

    def update(self, n=1):
        shown = super().update(n)
        self.shown.append(self.n)
        return shown


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine_cls", [LocalProcessEngine, RayEngine], ids=["processes", "ray"])
def test_a_killed_worker_is_retried_then_recorded(tmp_path, weights_file, pipe, engine_cls):
    """A killed worker's task is retried, then recorded failed; the others are not disturbed.

    Also: each worker process loads the pipeline once for all its bags, and the progress bar
    counts every planned frame once, the retried task's lost frames taken back.
    """
    if engine_cls is RayEngine:
        require_module("ray", RAY_MISSING)
    src = tmp_path / "in"
    long_frames = 300  # long enough to be killed while it runs; its retry runs it whole
    write_bag(src / "long.mcap", records(6, long_frames))
    shorts = [f"short{k}.mcap" for k in range(5)]  # several bags for the other worker
    for k, name in enumerate(shorts):
        write_bag(src / name, records(7 + k, 2))
    expected = [bytes(bags.typestore().serialize_cdr(m, bags.IMAGE_TYPE))
                for m in labels_msgs(pipe, 6, long_frames)]
    for kills, status in ((1, "ok"), (2, "failed")):
        out = tmp_path / f"out{kills}"
        job = _job(src, out, weights_file, attempts=2)
        bars: list[RecordingBar] = []

        def make_bar(total: int, kind: str) -> RecordingBar:
            bars.append(RecordingBar(total, kind))
            return bars[-1]
        runner = FleetRunner(job, _killer(engine_cls, kills, "long", long_frames),
                             make_bar=make_bar)
        outcome = runner.run()
        entries = Manifest(out).entries()
        assert all(entries[name]["status"] == "ok" for name in shorts)  # not disturbed
        long = entries["long.mcap"]
        assert long["retries"] == kills, f"{long} (killed after its last frame? too fast)"
        assert long["status"] == status, long
        if status == "ok":
            assert outcome.exit_code == 0 and cam_labels(out / "long.mcap") == expected
        else:
            assert outcome.exit_code == 1 and "gave up after 2 attempts" in long["error"]
            cause = "SIGKILL" if engine_cls is LocalProcessEngine else "died"
            assert cause in long["error"]
            assert not (out / "long.mcap").exists()  # no partial output of a failed bag

        results = [r for w in runner.works.values() for r in w.results.values()]
        per_worker = Counter(r.worker for r in results)
        assert len(results) == len(shorts) + (status == "ok")
        assert len(per_worker) <= 2 + kills and max(per_worker.values()) >= 2, per_worker
        assert {r.loads for r in results} == {1}  # each worker process loaded the model once

        bar, = bars
        planned = long_frames + 2 * len(shorts)
        assert bar.total == planned and bar.n == planned and bar.postfix == "bags 6/6"
        assert max(bar.shown) <= planned and min(bar.shown) >= 0  # lost frames taken back


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("engine", [[], ["--workers", "2"], ["--ray", "--workers", "2"]],
                         ids=["in-process", "processes", "ray"])
def test_ctrl_c_leaves_a_manifest_to_resume_from(tmp_path, weights_file, engine):
    if "--ray" in engine:
        require_module("ray", RAY_MISSING)
    src = tmp_path / "in"
    for k in range(6):
        write_bag(src / f"bag{k}.mcap", records(20 + k, 40))
    out = tmp_path / "out"
    cmd = [*CLI, "replay", str(src), "--out", str(out), "--topic", "/cam", *common(weights_file),
           *engine]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    manifest = Manifest(out)
    try:
        deadline = time.monotonic() + 240
        while not manifest.entries() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it was interrupted: longer bags needed"
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: to the whole process group
        t0 = time.monotonic()
        text = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, text
    assert time.monotonic() - t0 < 20 and "Traceback" not in text and "--resume" in text
    done = manifest.entries()
    assert 1 <= len(done) < 6 and all(e["status"] == "ok" for e in done.values())
    for name in done:
        assert len(cam_labels(out / name)) == 40  # finished bags are complete
    left = sorted(p.name for p in out.iterdir() if p.suffix == ".mcap")
    assert left == sorted(done)  # nothing half-written is left beside them
    assert not [p for p in out.iterdir() if p.suffix in (".parts", ".partial")]

    rc = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stdout + rc.stderr
    assert f"{len(done)} already done (--resume)" in rc.stdout
    final = manifest.entries()
    assert len(final) == 6 and all(e["status"] == "ok" for e in final.values())
    for k in range(6):
        assert len(cam_labels(out / f"bag{k}.mcap")) == 40


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_stops_the_in_process_engine_within_a_frame(tmp_path, weights_file):
    """The default engine runs a bag in the driver: Ctrl-C stops it there, not at its end."""
    src = tmp_path / "in"
    write_bag(src / "a_short.mcap", records(30, 2))
    write_bag(src / "long.mcap", records(31, 1000))  # about 12 s on the 2-core dev machine
    out = tmp_path / "out"
    cmd = [*CLI, "replay", str(src), "--out", str(out), "--topic", "/cam", *common(weights_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    writing = out / ".long.mcap.partial"  # BagWriter's staging folder: its frames have started
    try:
        deadline = time.monotonic() + 240
        while not writing.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it was interrupted: a longer bag needed"
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        text = proc.communicate(timeout=60)[0]
        stopped_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, text
    assert stopped_s < 5, f"took {stopped_s:.1f} s to stop: the bag ran on after Ctrl-C"
    entries = Manifest(out).entries()
    assert list(entries) == ["a_short.mcap"] and entries["a_short.mcap"]["status"] == "ok"
    assert sorted(p.name for p in out.iterdir()) == [
        "a_short.mcap", "a_short.mcap.summary.json", "manifest.jsonl"]  # nothing of long.mcap

    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 already done (--resume)" in done.stdout
    assert Manifest(out).entries()["long.mcap"]["status"] == "ok"
    assert len(cam_labels(out / "long.mcap")) == 1000


# -- Ray: cluster resources, an existing cluster --------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_refuses_more_gpus_than_the_cluster_has(tmp_path, tree, weights_file, capsys):
    """Ray would keep actors that need absent GPUs pending forever: refused at once instead."""
    require_module("ray", RAY_MISSING)
    t0 = time.monotonic()
    rc = cli(["replay", str(tree / "a.mcap"), "--out", str(tmp_path / "out"), "--ray",
              "--workers", "2", "--gpus-per-worker", "1", *common(weights_file)])
    assert rc == 2
    assert ("the Ray cluster has 2 CPU and 0 GPU in all: no room for 2 workers of 1 CPU and 1 "
            "GPU each") in capsys.readouterr().err
    assert time.monotonic() - t0 < 120  # Ray's start-up, then the refusal: no waiting on actors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """Return the address of a Ray cluster of this module alone (`ray start --head --block`).

    2 CPUs and 1 GPU that exists only as a resource count: Ray places actors by counts and gives
    each its GPU ids (ray.get_gpu_ids()), which is all seg_ros asks of it. Its own temp folder,
    port and process group, so it never meets another Ray on this machine; stopped by SIGTERM to
    its `ray start` (never `ray stop`: that stops every Ray of the user).
    """
    require_module("ray", RAY_MISSING)
    temp = Path(tempfile.mkdtemp(prefix="rayfx", dir="/tmp"))  # short: Ray's socket paths
    log_path = temp / "ray_start.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # The auth mode of the drivers in this process: unset (Ray's default for an explicit
    # address) or "token", which a local ray.init() before sets in os.environ (with the token in
    # ~/.ray). A driver in token mode rejects the calls of workers that have no token.
    env["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE", "disabled")
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
             "--num-cpus=2", "--num-gpus=1", f"--temp-dir={temp}", "--include-dashboard=false",
             "--disable-usage-stats", "--block"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "block forever" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()  # `ray start --block` stops the processes of its cluster
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of this cluster's group only
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_address_runs_on_an_existing_cluster_and_its_gpus(tmp_path, tree, pipe, weights_file,
                                                             ray_cluster, capsys):
    out = tmp_path / "out"
    args = ["replay", str(tree), "--topic", "/cam", "--ray-address", ray_cluster, "--workers", "2",
            *common(weights_file)]
    assert cli([*args, "--gpus-per-worker", "0.5", "--out", str(out)]) == 1  # the corrupt bag
    assert all_labels(out) == {  # byte for byte the labels of the pipeline in this process
        name: [bytes(bags.typestore().serialize_cdr(m, bags.IMAGE_TYPE))
               for m in labels_msgs(pipe, seed, n)] for name, (seed, n) in TREE.items()}
    entries = Manifest(out).entries()
    workers = {w for name in TREE for w in entries[name]["workers"]}
    assert 1 <= len(workers) <= 2 and worker_name() not in workers
    assert all(w.endswith(" GPU 0") for w in workers), workers  # each actor got its GPU share

    capsys.readouterr()
    assert cli([*args, "--gpus-per-worker", "1", "--out", str(tmp_path / "too_many")]) == 2
    assert ("the Ray cluster has 2 CPU and 1 GPU in all: no room for 2 workers of 1 CPU and 1 GPU "
            "each (at most 1;") in capsys.readouterr().err

    # the GPU is there but held by another job's worker: not ready in time is a clear error
    spec = PipelineSpec(PipelineConfig(weights=str(weights_file), device="cpu", num_threads=1))
    holder = RayEngine(spec, 1, lambda key, n: None, address=ray_cluster, gpus_per_worker=1)
    holder.start()
    try:
        late = RayEngine(spec, 1, lambda key, n: None, address=ray_cluster, gpus_per_worker=1,
                         ready_timeout_s=5)
        t0 = time.monotonic()
        with pytest.raises(EngineError, match="Ray workers not ready after 5 s"):
            late.start()
        assert time.monotonic() - t0 < 30
        late.close()
    finally:
        holder.close()
