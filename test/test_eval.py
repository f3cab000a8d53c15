"""``seg-ros eval`` on real label files and on a labelled bag; reports and figures are written."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from seg_ros import bags
from seg_ros.classes import load_classes
from seg_ros.cli.main import main as cli
from seg_ros.errors import InputError
from seg_ros.fleet.score import score_pairs
from seg_ros.metrics import ConfusionAccumulator
from seg_ros.pipeline import SegmentationPipeline

from helpers import write_legacy_bag

H, W = 64, 96



def test_eval_cli_on_camvid_writes_json_and_figure(tmp_path, camvid_dir):
    report_path = tmp_path / "report.json"
    rc = cli(
        [
            "eval",
            "--images",
            str(camvid_dir / "val"),
            "--labels",
            str(camvid_dir / "valannot"),
            "--classes",
            "camvid",
            "--weights",
            "none",
            "--device",
            "cpu",
            "--max-images",
            "2",
            "--json",
            str(report_path),
        ]
    )
    assert rc == 0
    rep = json.loads(report_path.read_text())
    names = list(load_classes("camvid").names)
    assert rep["images"] == 2 and rep["trained"] is False
    assert 0.0 <= rep["miou"] <= 1.0 and 0.0 <= rep["pixel_accuracy"] <= 1.0
    assert list(rep["per_class_iou"]) == names
    # The confusion matrix's rows are exactly the ground-truth histograms without the ignore id 11.
    hist = np.zeros(11, np.int64)
    for p in sorted((camvid_dir / "valannot").glob("*.png"))[:2]:
        lab = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        hist += np.bincount(lab[lab != 11].ravel(), minlength=11)[:11]
    np.testing.assert_array_equal(np.array(rep["confusion"]).sum(axis=1), hist)
    figure = cv2.imread(str(report_path.with_suffix(".png")))
    assert figure is not None and figure.shape[0] > 200


def _scene(road_image, i):
    return np.roll(cv2.resize(road_image, (W, H), interpolation=cv2.INTER_AREA), 11 * i, axis=1)


def test_perfect_labels_score_one_from_folder_and_bag(tmp_path, road_image, weights_file):
    pipe = SegmentationPipeline(weights=str(weights_file), device="cpu")
    imgs, gts = tmp_path / "img", tmp_path / "lab"
    imgs.mkdir(), gts.mkdir()
    bag = tmp_path / "gt.mcap"
    with bags.BagWriter(bag) as w:
        w.add_topic("/cam", bags.IMAGE_TYPE)
        w.add_topic("/gt", bags.IMAGE_TYPE)
        for i in range(3):
            img = _scene(road_image, i)
            gt = pipe(img, "rgb").labels.copy()
            gt[:5] = 11  # ignore id: never scored, whatever is predicted there
            cv2.imwrite(str(imgs / f"f{i}.png"), img[:, :, ::-1])
            cv2.imwrite(str(gts / f"f{i}.png"), gt)
            hdr = bags.make_header(10**9 * i + 5)
            lab_msg = bags.image_msg_from_array(hdr, gt, "labels")
            if i == 1:  # the label may be recorded before its image: pairing is by header stamp
                w.write("/gt", i, lab_msg)
            w.write("/cam", i, bags.image_msg_from_array(hdr, img))
            if i != 1:
                w.write("/gt", i, lab_msg)
    common = ["--weights", str(weights_file), "--device", "cpu", "--classes", "camvid"]
    for source in (["--images", str(imgs), "--labels", str(gts)],
                   ["--bag", str(bag), "--image-topic", "/cam", "--label-topic", "/gt"]):
        out = tmp_path / "r.json"
        assert cli(["eval", *source, *common, "--json", str(out)]) == 0
        rep = json.loads(out.read_text())
        assert rep["images"] == 3 and rep["miou"] == 1.0 and rep["pixel_accuracy"] == 1.0
        assert rep["counted_pixels"] == 3 * (H - 5) * W
        absent = [n for n, v in rep["per_class_iou"].items() if v is None]
        present = [n for n, v in rep["per_class_iou"].items() if v is not None]
        assert present and all(rep["per_class_iou"][n] == 1.0 for n in present)
        assert len(absent) + len(present) == 11


def test_bad_inputs_are_reported(tmp_path, road_image, weights_file, capsys):
    imgs, gts = tmp_path / "img", tmp_path / "lab"
    imgs.mkdir(), gts.mkdir()
    img = _scene(road_image, 0)
    cv2.imwrite(str(imgs / "a.png"), img)
    cv2.imwrite(str(imgs / "b.png"), img)
    cv2.imwrite(str(imgs / "c.png"), img)
    cv2.imwrite(str(gts / "a.png"), np.zeros((H, W), np.uint8))
    cv2.imwrite(str(gts / "b.png"), img)  # colour-coded label: refused with a reason
    (imgs / "d.png").write_bytes(b"not a PNG")  # unreadable image: skipped, counted
    cv2.imwrite(str(gts / "d.png"), np.zeros((H, W), np.uint8))
    common = [
        "--weights",
        str(weights_file),
        "--device",
        "cpu",
        "--figure",
        str(tmp_path / "f.png"),
    ]
    report = tmp_path / "bad.json"
    assert cli(["eval", "--images", str(imgs), "--labels", str(gts), *common,
                "--json", str(report)]) == 0
    out, err = capsys.readouterr()
    assert "3 channels" in err and "no label file c" in err and "d.png cannot be read" in err
    rep = json.loads(report.read_text())
    assert rep["images"] == 1 and rep["skipped_frames"] == 3 == len(rep["skipped"])
    assert "skipped       3 frames" in out
    assert (
        cli(["eval", "--images", str(imgs), "--labels", str(tmp_path / "missing"), *common]) == 2
    )
    assert "label folder" in capsys.readouterr().err


def test_eval_accepts_the_older_type_spelling(tmp_path, road_image, weights_file):
    """A labelled bag spelling 'sensor_msgs/Image' (image and label topics) scores as any other."""
    pipe = SegmentationPipeline(weights=str(weights_file), device="cpu")
    records = []
    for i in range(2):
        img = _scene(road_image, i)
        hdr = bags.make_header(10**9 * i + 5)
        records.append(("/cam", bags.IMAGE_TYPE, 2 * i, bags.image_msg_from_array(hdr, img)))
        gt = pipe(img, "rgb").labels
        label = bags.image_msg_from_array(hdr, gt, "labels")
        records.append(("/gt", bags.IMAGE_TYPE, 2 * i + 1, label))
    bag = write_legacy_bag(tmp_path / "old.db3", records)
    out = tmp_path / "r.json"
    assert cli(["eval", "--bag", str(bag), "--image-topic", "/cam", "--label-topic", "/gt",
                "--weights", str(weights_file), "--device", "cpu", "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["images"] == 2 and rep["miou"] == 1.0 and rep["counted_pixels"] == 2 * H * W


def test_a_bug_is_not_a_skipped_frame(weights_file):
    """Only input errors skip a pair.

    Any other error propagates instead of silently shrinking the scored set while the command exits
    0.
    """
    pipe = SegmentationPipeline(weights=str(weights_file), device="cpu")
    acc = ConfusionAccumulator(pipe.classes.num_classes, pipe.classes.ignore_id)
    image = np.zeros((H, W, 3), np.uint8)

    def bad_input():
        raise InputError("bad_label", "label file x.png has 3 channels")

    def bug():
        raise ValueError("a bug")

    skipped: list[str] = []
    score_pairs([("a", bad_input), ("b", lambda: (image, "rgb", np.zeros((H, W), np.uint8)))],
                pipe, None, acc, None, skipped)
    assert skipped == ["a: label file x.png has 3 channels"] and acc.images == 1
    with pytest.raises(ValueError, match="a bug"):
        score_pairs([("c", bug)], pipe, None, acc, None, skipped)
