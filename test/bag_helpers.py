"""Bags for the tests, written with the ``rosbags`` library directly (not through seg_ros.bags).

``write_legacy_bag`` spells message types the way earlier ROS 2 releases and other tools do
(``sensor_msgs/Image``, no ``/msg/``), which is what the seg_ros tools must accept alike.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable

from rosbags.rosbag2 import StoragePlugin, Writer

from seg_ros import bags

# (topic, ROS 2 type name, bag timestamp ns, message object)
Record = tuple[str, str, int, Any]


def legacy_name(msgtype: str) -> str:
    """'sensor_msgs/msg/Image' -> 'sensor_msgs/Image' (the older spelling)."""
    pkg, _, name = msgtype.split("/")
    return f"{pkg}/{name}"


def write_legacy_bag(path: Path, records: Iterable[Record], storage: str = "sqlite3") -> Path:
    """A rosbag2 whose connections use the older type spelling. ``path`` ending in ``.mcap`` /
    ``.db3`` becomes a single storage file, any other path a bag directory with metadata.yaml."""
    ts = bags.typestore()
    single = path.suffix in (".mcap", ".db3")
    folder = path.with_name(path.name + ".dir") if single else path
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(folder, version=8, storage_plugin=plugin)
    writer.open()
    conns: dict[str, Any] = {}
    for topic, msgtype, stamp, msg in records:
        if topic not in conns:
            msgdef, _ = ts.generate_msgdef(msgtype, ros_version=2)
            conns[topic] = writer.add_connection(topic, legacy_name(msgtype), msgdef=msgdef,
                                                 rihs01=ts.hash_rihs01(msgtype))
        writer.write(conns[topic], stamp, ts.serialize_cdr(msg, msgtype))
    writer.close()
    if single:
        (folder / f"{folder.name}{bags.STORAGE_SUFFIX[storage]}").replace(path)
        shutil.rmtree(folder)
    return path
