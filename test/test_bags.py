"""Real rosbag2 files (both storage formats) written and read back.

Damaged bags give clear errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from seg_ros import bags
from seg_ros.cli.main import main as cli

from helpers import write_legacy_bag


def _frames(n: int = 4, h: int = 24, w: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _write(path: Path, frames: list[np.ndarray], topic: str = "/cam") -> None:
    with bags.BagWriter(path) as w:
        w.add_topic(topic, bags.IMAGE_TYPE)
        w.add_topic("/other", "std_msgs/msg/String")
        for i, img in enumerate(frames):
            stamp = 10**9 * (7 + i) + 123
            w.write(
                topic, 5000 + i, bags.image_msg_from_array(bags.make_header(stamp, f"f{i}"), img)
            )
            w.write(
                "/other", 5000 + i, bags.typestore().types["std_msgs/msg/String"](data=f"s{i}")
            )


@pytest.mark.parametrize("name", ["bag.mcap", "bag.db3", "bagdir"])
def test_round_trip(tmp_path, name):
    frames = _frames()
    path = tmp_path / name
    _write(path, frames)
    info = bags.summarize(path)
    assert info["messages"] == 8
    assert info["topics"]["/cam"] == {"type": bags.IMAGE_TYPE, "count": 4}
    got = list(bags.iter_bag_frames(path))
    assert [f.topic for f in got] == ["/cam"] * 4  # only image topics by default
    for i, f in enumerate(got):
        assert f.error is None and f.color_order == "rgb"
        np.testing.assert_array_equal(f.image, frames[i])
        assert f.timestamp == 5000 + i
        assert f.stamp_ns == 10**9 * (7 + i) + 123 and f.msg.header.frame_id == f"f{i}"
    with bags.BagReader(path) as bag:
        texts = [bag.deserialize(m).data for m in bag.messages(["/other"])]
    assert texts == ["s0", "s1", "s2", "s3"]


def test_undecodable_frame_is_reported_not_fatal(tmp_path):
    path = tmp_path / "bad.mcap"
    img = _frames(1)[0]
    with bags.BagWriter(path) as w:
        w.add_topic("/cam", bags.IMAGE_TYPE)
        w.write("/cam", 1, bags.make_image(bags.make_header(1), "rgb8", 24, 32, 96, img))
        w.write("/cam", 2, bags.make_image(bags.make_header(2), "weird9", 24, 32, 96, img))
        w.write("/cam", 3, bags.make_image(bags.make_header(3), "rgb8", 24, 32, 96, img[:10]))
    got = list(bags.iter_bag_frames(path))
    assert got[0].error is None
    assert got[1].error.kind == "unknown_encoding" and "weird9" in str(got[1].error)
    assert got[2].error.kind == "truncated"


@pytest.mark.parametrize("suffix", [".mcap", ".db3"])
def test_truncated_or_corrupt_bag_names_the_file(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    _write(good, _frames(6, 48, 64))
    data = good.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(os.urandom(4096))
    for bad in (truncated, garbage):
        with pytest.raises(bags.BagError, match=str(bad)):
            list(bags.iter_bag_frames(bad))
    with pytest.raises(bags.BagError, match="does not exist"):
        bags.summarize(tmp_path / f"missing{suffix}")


def test_unknown_topic_and_non_image_topic_are_clear(tmp_path):
    path = tmp_path / "b.mcap"
    _write(path, _frames(1))
    with pytest.raises(bags.BagError, match="no topic '/nope'"):
        list(bags.iter_bag_frames(path, ["/nope"]))
    with pytest.raises(bags.BagError, match="not an image type"):
        list(bags.iter_bag_frames(path, ["/other"]))


def test_writer_refuses_to_overwrite(tmp_path):
    path = tmp_path / "b.mcap"
    _write(path, _frames(1))
    with pytest.raises(bags.BagError, match="exists already"):
        bags.BagWriter(path)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "png"])
def test_bag_from_images_cli(tmp_path, encoding):
    folder = tmp_path / "imgs"
    folder.mkdir()
    frames = _frames(3)
    for i, img in enumerate(frames):  # written out of order: the tool sorts by name
        cv2.imwrite(str(folder / f"frame_{2 - i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out.db3"
    assert (
        cli(
            [
                "bag-from-images",
                str(folder),
                "--out",
                str(out),
                "--rate",
                "5",
                "--encoding",
                encoding,
                "--start-time",
                "100",
            ]
        )
        == 0
    )
    got = list(bags.iter_bag_frames(out))
    assert len(got) == 3
    assert [f.stamp_ns for f in got] == [
        100 * 10**9,
        100 * 10**9 + 2 * 10**8,
        100 * 10**9 + 4 * 10**8,
    ]
    for f, img in zip(got, frames[::-1]):
        rgb = f.image if f.color_order == "rgb" else f.image[:, :, ::-1]
        np.testing.assert_array_equal(rgb, img)  # lossless encodings round-trip exactly
    assert (
        cli(
            ["bag-from-images", str(tmp_path / "empty_missing"), "--out", str(tmp_path / "x.mcap")]
        )
        == 2
    )


def test_normalize_type_accepts_the_older_spelling():
    assert bags.normalize_type("sensor_msgs/Image") == bags.IMAGE_TYPE
    assert bags.normalize_type("sensor_msgs/CompressedImage") == bags.COMPRESSED_TYPE
    assert bags.normalize_type(bags.IMAGE_TYPE) == bags.IMAGE_TYPE
    assert bags.normalize_type("my_pkg/srv/Thing") == "my_pkg/srv/Thing"
    assert bags.normalize_type("Image") == "Image"


@pytest.mark.parametrize("name,storage,foxy", [
    ("old.db3", "sqlite3", False), ("old.mcap", "mcap", False),
    ("old_dir_db3", "sqlite3", False), ("old_dir_mcap", "mcap", False),
    ("foxy_dir_db3", "sqlite3", True)])
def test_older_type_spelling_reads_like_the_current_one(tmp_path, name, storage, foxy):
    """Bags written by earlier ROS 2 releases / other tools say 'sensor_msgs/Image'.

    ``foxy``: also the oldest bag layout (metadata version 4, no type hashes).
    """
    frames = _frames(3)
    ok, png = cv2.imencode(".png", frames[0][:, :, ::-1])
    String = bags.typestore().types["std_msgs/msg/String"]
    records = [("/cam", bags.IMAGE_TYPE, 100 + i,
                bags.image_msg_from_array(bags.make_header(i, f"f{i}"), img))
               for i, img in enumerate(frames)]
    compressed = bags.make_compressed(bags.make_header(9), "png", png)
    records += [("/cam_c", bags.COMPRESSED_TYPE, 200, compressed),
                ("/note", "std_msgs/msg/String", 300, String(data="hi"))]
    path = write_legacy_bag(tmp_path / name, records, storage, foxy=foxy)
    with bags.BagReader(path) as bag:  # the recorded spelling really is the old one
        assert {c.msgtype for c in bag.reader.connections} == {
            "sensor_msgs/Image", "sensor_msgs/CompressedImage", "std_msgs/String"}
    info = bags.summarize(path)["topics"]
    assert info["/cam"]["type"] == bags.IMAGE_TYPE
    assert info["/cam_c"]["type"] == bags.COMPRESSED_TYPE
    got = list(bags.iter_bag_frames(path))
    expected = [("/cam", bags.IMAGE_TYPE)] * 3 + [("/cam_c", bags.COMPRESSED_TYPE)]
    assert [(f.topic, f.msgtype) for f in got] == expected
    for f, img in zip(got, frames + frames[:1]):
        assert f.error is None
        rgb = f.image if f.color_order == "rgb" else f.image[:, :, ::-1]
        np.testing.assert_array_equal(rgb, img)
    with bags.BagReader(path) as bag:
        assert [bag.deserialize(m).data for m in bag.messages(["/note"])] == ["hi"]
        copy = tmp_path / "copy.mcap"  # passing messages through writes the current spelling
        with bags.BagWriter(copy) as w:
            bags.copy_messages(bag, w, bag.messages())
    assert bags.summarize(copy)["topics"]["/cam"] == {"type": bags.IMAGE_TYPE, "count": 3}


@pytest.mark.slow  # a writer process killed half-way
@pytest.mark.parametrize("name", ["bag.mcap", "bag.db3", "bagdir"])
def test_a_bag_appears_only_when_complete(tmp_path, name):
    """A writer killed half-way (never closed) leaves no half bag at the path.

    The next writer of that path, or remove_bag, clears what it left.
    """
    path = tmp_path / name

    def killed_writer() -> None:
        """Return a process that dies while writing (os._exit: nothing closed, as on SIGKILL)."""
        code = ("import os, sys, numpy as np; from seg_ros import bags; "
                "w = bags.BagWriter(sys.argv[1]); w.open(); w.add_topic('/cam', bags.IMAGE_TYPE); "
                "w.write('/cam', 1, bags.image_msg_from_array(bags.make_header(1), "
                "np.zeros((4, 4, 3), np.uint8))); os._exit(0)")
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)

    killed_writer()
    assert not path.exists() and bags.staging_dir(path).is_dir()
    bags.remove_bag(path)
    assert not bags.staging_dir(path).exists()
    killed_writer()
    _write(path, _frames(2))
    assert bags.summarize(path)["messages"] == 4 and not bags.staging_dir(path).exists()
