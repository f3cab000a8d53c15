"""Replay writes the labels the pipeline computes for each input frame.

With the input's header.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from seg_ros import bags
from seg_ros.cli.main import main as cli
from seg_ros.pipeline import SegmentationPipeline

from helpers import write_legacy_bag

H, W = 64, 96



@pytest.fixture(scope="module")
def input_bag(tmp_path_factory, road_image):
    """3 raw frames on /cam, 1 PNG CompressedImage on /cam_c, a broken frame and a String topic."""
    path = tmp_path_factory.mktemp("bag") / "in.mcap"
    base = cv2.resize(road_image, (W, H), interpolation=cv2.INTER_AREA)
    frames = [np.roll(base, 7 * i, axis=1) for i in range(3)]
    ts = bags.typestore()
    with bags.BagWriter(path) as w:
        w.add_topic("/cam", bags.IMAGE_TYPE)
        w.add_topic("/cam_c", bags.COMPRESSED_TYPE)
        w.add_topic("/note", "std_msgs/msg/String")
        for i, img in enumerate(frames):
            hdr = bags.make_header(10**9 * (50 + i) + 7, f"cam{i}")
            w.write("/cam", 1000 + 10 * i, bags.image_msg_from_array(hdr, img))
        bad = bags.make_image(bags.make_header(99), "rgb8", H, W, W * 3, frames[0][: H // 2])
        w.write("/cam", 1035, bad)  # truncated data: must be counted, not fatal
        ok, png = cv2.imencode(".png", frames[1][:, :, ::-1])
        w.write(
            "/cam_c", 1040, bags.make_compressed(bags.make_header(77, "c"), "png", png.tobytes())
        )
        w.write("/note", 1001, ts.types["std_msgs/msg/String"](data="hello"))
    return path, frames


def test_replay_labels_match_pipeline_and_headers_are_kept(tmp_path, input_bag, weights_file):
    path, frames = input_bag
    out = tmp_path / "out.db3"
    summary_path = tmp_path / "summary.json"
    rc = cli(
        [
            "replay",
            str(path),
            "--out",
            str(out),
            "--weights",
            str(weights_file),
            "--device",
            "cpu",
            "--json",
            str(summary_path),
        ]
    )
    assert rc == 0
    summary = json.loads(summary_path.read_text())
    assert (
        summary["frames"] == 5
        and summary["segmented"] == 4
        and summary["failures"] == {"truncated": 1}
    )
    assert summary["latency_ms"]["p50"] > 0

    pipe = SegmentationPipeline(weights=str(weights_file), device="cpu")
    with bags.BagReader(out) as bag:
        topics = bag.topics
        assert topics["/cam"].count == 4 and topics["/note"].count == 1  # inputs copied unchanged
        assert topics["/cam/labels"].count == 3 and topics["/cam_c/labels"].count == 1
        by_topic: dict[str, list] = {}
        for m in bag.messages():
            by_topic.setdefault(m.topic, []).append((m.timestamp, bag.deserialize(m)))
    for suffix in ("labels", "color_mask", "overlay"):
        stamps = [t for t, _ in by_topic[f"/cam/{suffix}"]]
        assert stamps == [1000, 1010, 1020]
    for i, (t, msg) in enumerate(by_topic["/cam/labels"]):
        inp = by_topic["/cam"][i][1]
        assert msg.header.stamp == inp.header.stamp and msg.header.frame_id == f"cam{i}"
        assert msg.encoding == "mono8" and (msg.height, msg.width) == (H, W)
        expected = pipe(frames[i], "rgb", color=True, overlay=True)
        np.testing.assert_array_equal(msg.data.reshape(H, W), expected.labels)
        color = by_topic["/cam/color_mask"][i][1]
        np.testing.assert_array_equal(color.data.reshape(H, W, 3), expected.color)
        overlay = by_topic["/cam/overlay"][i][1]
        np.testing.assert_array_equal(overlay.data.reshape(H, W, 3), expected.overlay)
    t_c, lab_c = by_topic["/cam_c/labels"][0]
    assert t_c == 1040 and lab_c.header.frame_id == "c"
    np.testing.assert_array_equal(lab_c.data.reshape(H, W), pipe(frames[1], "rgb").labels)


def test_replay_topic_choice_max_frames_and_video(tmp_path, input_bag, weights_file):
    path, _ = input_bag
    out = tmp_path / "outdir"
    video = tmp_path / "ov.mp4"
    rc = cli(["replay", str(path), "--out", str(out), "--topic", "/cam", "--max-frames", "2",
              "--weights", str(weights_file), "--device", "cpu", "--video", str(video)])
    assert rc == 0
    info = bags.summarize(out)["topics"]
    assert info["/cam"]["count"] == 2 and info["/cam/overlay"]["count"] == 2
    assert "/cam_c/labels" not in info
    if video.exists():  # OpenCV builds without an mp4 encoder warn and skip the video
        cap = cv2.VideoCapture(str(video))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    # an existing output is never silently replaced
    assert cli(["replay", str(path), "--out", str(out), "--weights", str(weights_file)]) == 2


@pytest.mark.parametrize("name,storage,foxy", [("old.db3", "sqlite3", False),
                                               ("old_mcap", "mcap", False),
                                               ("foxy_dir", "sqlite3", True)])
def test_replay_accepts_the_older_type_spelling(tmp_path, input_bag, weights_file, name, storage,
                                                foxy):
    """Same frames, spelled 'sensor_msgs/Image' / 'sensor_msgs/CompressedImage': same output.

    ``foxy``: in the oldest bag layout too (metadata version 4, no type hashes).
    """
    _, frames = input_bag
    ok, png = cv2.imencode(".png", frames[1][:, :, ::-1])
    records = [("/cam", bags.IMAGE_TYPE, 1000 + 10 * i,
                bags.image_msg_from_array(bags.make_header(10**9 * (50 + i) + 7, f"cam{i}"), img))
               for i, img in enumerate(frames)]
    records.append(("/cam_c", bags.COMPRESSED_TYPE, 1040,
                    bags.make_compressed(bags.make_header(77, "c"), "png", png.tobytes())))
    legacy = write_legacy_bag(tmp_path / name, records, storage, foxy=foxy)
    out = tmp_path / "out.mcap"
    rc = cli(["replay", str(legacy), "--out", str(out), "--weights", str(weights_file),
              "--device", "cpu"])
    assert rc == 0
    pipe = SegmentationPipeline(weights=str(weights_file), device="cpu")
    with bags.BagReader(out) as bag:
        assert bag.topics["/cam"].msgtype == bags.IMAGE_TYPE
        assert bag.topics["/cam/labels"].count == 3
        labels = [bag.deserialize(m) for m in bag.messages(["/cam/labels", "/cam_c/labels"])]
    assert [m.header.frame_id for m in labels] == ["cam0", "cam1", "cam2", "c"]
    for msg, img in zip(labels, frames + [frames[1]]):
        np.testing.assert_array_equal(msg.data.reshape(H, W), pipe(img, "rgb").labels)
