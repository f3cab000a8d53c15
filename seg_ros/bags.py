"""rosbag2 files without ROS: reading image frames and writing messages with ``rosbags``.

Shared by replay, eval, bench, play, record and bag-from-images so every tool opens, decodes and
writes bags the same way (with the ``rosbags`` library). Both storage formats are supported
(sqlite3 ``.db3`` and ``.mcap``), as a standard bag directory (``metadata.yaml`` + storage file) or
as a single storage file. Every failure to open or read a bag becomes one :class:`BagError` naming
the file and what is wrong with it.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from . import image_codec
from .errors import InputError, SegRosError

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
STORAGE_SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}
DISTROS = ("jazzy", "humble")


def normalize_type(msgtype: str) -> str:
    """Return the ROS 2 spelling of a message type: 'sensor_msgs/Image' -> 'sensor_msgs/msg/Image'.

    Bags recorded by earlier ROS 2 releases and by other tools write 'pkg/Name'; ROS 2 accepts it
    as the same type. BagReader applies this to every connection once, so every tool (replay, eval,
    play, bench, the demo) sees one spelling. Other names are returned unchanged.
    """
    parts = msgtype.split("/")
    return f"{parts[0]}/msg/{parts[1]}" if len(parts) == 2 and all(parts) else msgtype


class BagError(SegRosError):
    """A bag is missing, not a rosbag2, corrupt or truncated; or cannot be written."""


@lru_cache(maxsize=None)
def typestore(distro: str = "jazzy") -> Any:
    """Return the message definitions of a ROS 2 distro.

    Message definitions of a ROS 2 distro (sensor_msgs, std_msgs, ... are identical for
    Humble and Jazzy image messages; Jazzy adds the type hashes newer bags record).
    """
    from rosbags.typesys import Stores, get_typestore
    if distro not in DISTROS:
        raise BagError(f"unknown ROS distro {distro!r}; known: {', '.join(DISTROS)}")
    return get_typestore(Stores.ROS2_JAZZY if distro == "jazzy" else Stores.ROS2_HUMBLE)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- reading -------------------------------------------------------------------------------
@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int


@dataclass
class BagMessage:
    """One recorded message.

    ``timestamp`` is the bag's receive time (ns), ``rawdata`` CDR bytes.
    """

    topic: str
    msgtype: str
    timestamp: int
    rawdata: bytes
    connection: Any


class BagReader:
    """A rosbag2 opened for reading (context manager).

    Accepts a bag directory, ``.mcap`` or ``.db3``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._reader: Any = None
        self._conns: list[Any] = []  # the reader's connections with normalised type names
        self.store = typestore()

    def __enter__(self) -> "BagReader":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self) -> None:
        from rosbags.rosbag2 import Reader
        p = self.path
        if not p.exists():
            raise BagError(f"bag {p} does not exist")
        if p.is_dir() and not (p / "metadata.yaml").is_file():
            raise BagError(
                f"bag {p} is a directory without metadata.yaml (not a rosbag2 directory)"
            )
        if p.is_file() and p.suffix not in (".mcap", ".db3"):
            raise BagError(f"bag {p} is neither a rosbag2 directory nor a .mcap / .db3 file")
        try:
            reader = Reader(p)
            reader.open()
        except Exception as exc:  # rosbags raises ReaderError, sqlite3, struct, yaml, KeyError ...
            raise BagError(
                f"bag {p} cannot be opened (corrupt or truncated?): {_reason(exc)}"
            ) from None
        self._reader = reader
        self._conns = [c._replace(msgtype=normalize_type(c.msgtype)) for c in reader.connections]
        self._register_unknown_types()

    def close(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader, self._conns = None, []

    def _register_unknown_types(self) -> None:
        """Types the distro does not know (custom messages) come from the bag's own definitions."""
        from rosbags.typesys import get_types_from_msg
        unknown = {c.msgtype: c for c in self._conns if c.msgtype not in self.store.fielddefs}
        if not unknown:
            return
        from rosbags.typesys import Stores, get_typestore
        self.store = get_typestore(Stores.ROS2_JAZZY)  # private copy: never pollute the shared one
        for msgtype, conn in unknown.items():
            try:
                self.store.register(get_types_from_msg(conn.msgdef.data, msgtype))
            except Exception:  # unreadable definition: the topic stays pass-through only
                pass

    @property
    def reader(self) -> Any:
        """The open ``rosbags`` reader (BagError when closed).

        Its connections keep the recorded type spelling: use :attr:`connections`.
        """
        if self._reader is None:
            raise BagError(f"bag {self.path} is not open")
        return self._reader

    @property
    def topics(self) -> dict[str, TopicInfo]:
        out: dict[str, TopicInfo] = {}
        for c in self.connections:
            info = out.setdefault(c.topic, TopicInfo(c.topic, c.msgtype, 0))
            info.count += c.msgcount
        return out

    @property
    def message_count(self) -> int:
        return int(self.reader.message_count)

    @property
    def connections(self) -> list[Any]:
        """The bag's connections, type names in the ROS 2 spelling (see :func:`normalize_type`)."""
        return list(self._conns) if self.reader is not None else []

    def image_topics(self) -> list[str]:
        return sorted(t for t, info in self.topics.items() if info.msgtype in IMAGE_TYPES)

    def select_topics(self, topics: Sequence[str] | None, image_only: bool = False) -> list[str]:
        """Check requested topics exist (and are images when asked).

        Default: all (image) topics.
        """
        known = self.topics
        if not topics:
            chosen = self.image_topics() if image_only else sorted(known)
            if image_only and not chosen:
                listing = (
                    ", ".join(f"{t} ({i.msgtype})" for t, i in sorted(known.items())) or "none"
                )
                raise BagError(
                    f"bag {self.path} has no sensor_msgs/Image or CompressedImage topic; "
                    f"topics: {listing}"
                )
            return chosen
        for t in topics:
            if t not in known:
                raise BagError(
                    f"bag {self.path} has no topic {t!r}; topics: {', '.join(sorted(known))}"
                )
            if image_only and known[t].msgtype not in IMAGE_TYPES:
                raise BagError(
                    f"bag {self.path}: topic {t} holds {known[t].msgtype}, not an image type"
                )
        return list(topics)

    @property
    def time_range(self) -> tuple[int, int]:
        """(first message's timestamp, just after the last one) in ns, from the bag's metadata."""
        return int(self.reader.start_time), int(self.reader.end_time)

    def messages(self, topics: Sequence[str] | None = None, start: int | None = None,
                 stop: int | None = None) -> Iterator[BagMessage]:
        """Messages of ``topics`` (all when None) in timestamp order.

        Only those with ``start <= timestamp < stop`` when given (a chunk of a long bag). Damage
        found while reading (a truncated file) raises BagError naming the file.
        """
        conns = {c.id: c for c in self.connections if not topics or c.topic in topics}
        if topics and not conns:
            return
        wanted = [c for c in self.reader.connections if c.id in conns]
        try:
            for raw_conn, timestamp, rawdata in self.reader.messages(wanted, start, stop):
                conn = conns[raw_conn.id]
                yield BagMessage(conn.topic, conn.msgtype, int(timestamp), bytes(rawdata), conn)
        except BagError:
            raise
        except Exception as exc:
            raise BagError(
                f"bag {self.path} is corrupt or truncated (failed while reading messages): "
                f"{_reason(exc)}"
            ) from None

    def deserialize(self, message: BagMessage) -> Any:
        try:
            return self.store.deserialize_cdr(message.rawdata, message.msgtype)
        except Exception as exc:
            raise InputError(
                "bad_message",
                f"{message.topic} message at t={message.timestamp} ns cannot "
                f"be deserialised as {message.msgtype}: {_reason(exc)}",
            ) from None


# -- decoding images ------------------------------------------------------------------------
def decode_image_msg(
    msg: Any, msgtype: str, max_pixels: int | None = None
) -> tuple[np.ndarray, str]:
    """Decode a deserialised Image/CompressedImage.

    Returns (H, W, 3) uint8 and 'rgb'|'bgr'; InputError if bad.
    """
    if msgtype == COMPRESSED_TYPE:
        return image_codec.decode_compressed(msg.format, msg.data, max_pixels=max_pixels)
    if msgtype == IMAGE_TYPE:
        return image_codec.decode_image(
            msg.encoding,
            msg.height,
            msg.width,
            msg.step,
            msg.is_bigendian,
            msg.data,
            max_pixels=max_pixels,
        )
    raise InputError("not_an_image", f"message type {msgtype} is not an image")


def labels_from_msg(msg: Any) -> np.ndarray:
    """Return a ground-truth label Image (mono8 / mono16 / 8UC1 / 16UC1 class ids) -> (H, W) array.

    Class ids are not colours, so this is a plain reshape, never a colour conversion.
    """
    enc = str(msg.encoding).lower()
    dtypes = {"mono8": np.uint8, "8uc1": np.uint8, "mono16": np.uint16, "16uc1": np.uint16}
    if enc not in dtypes:
        raise InputError(
            "bad_label_encoding",
            f"label image encoding {msg.encoding!r} is not a class-id "
            f"encoding (mono8, mono16, 8UC1, 16UC1)",
        )
    dt = np.dtype(dtypes[enc]).newbyteorder(">" if msg.is_bigendian else "<")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    buf = image_codec.as_uint8_buffer(msg.data)
    if h <= 0 or w <= 0 or step < w * dt.itemsize or buf.size != step * h:
        raise InputError(
            "size_mismatch", f"label image {h}x{w} step {step} does not fit {buf.size} bytes"
        )
    rows = buf.reshape(h, step)[:, : w * dt.itemsize]
    return np.ascontiguousarray(rows).view(dt).reshape(h, w).astype(dtypes[enc])


@dataclass
class BagFrame:
    """One image message of a bag, decoded.

    ``image`` is None and ``error`` says why when the frame cannot be decoded; ``decode_ms`` is
    deserialise + decode time.
    """

    topic: str
    msgtype: str
    timestamp: int
    message: BagMessage
    msg: Any
    image: np.ndarray | None
    color_order: str
    decode_ms: float
    error: InputError | None = None

    @property
    def stamp_ns(self) -> int | None:
        """The header stamp (ns), which is what matches outputs to inputs."""
        header = getattr(self.msg, "header", None)
        return (
            None if header is None else int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)
        )


def frames_from_reader(
    bag: BagReader,
    topics: Sequence[str] | None = None,
    max_frames: int | None = None,
    max_pixels: int | None = None,
) -> Iterator[BagFrame]:
    """Return decoded frames of an open bag's image topics (all image topics when None).

    In time order.
    """
    chosen = bag.select_topics(topics, image_only=True)
    n = 0
    for m in bag.messages(chosen):
        if max_frames is not None and n >= max_frames:
            return
        n += 1
        t0 = time.perf_counter()
        msg, image, order, error = None, None, "rgb", None
        try:
            msg = bag.deserialize(m)
            image, order = decode_image_msg(msg, m.msgtype, max_pixels)
        except InputError as exc:
            error = exc
        yield BagFrame(m.topic, m.msgtype, m.timestamp, m, msg, image, order,
                       (time.perf_counter() - t0) * 1e3, error)


def iter_bag_frames(
    path: str | Path,
    topics: Sequence[str] | None = None,
    max_frames: int | None = None,
    max_pixels: int | None = None,
) -> Iterator[BagFrame]:
    """Open ``path`` and yield its decoded image frames (the entry point for bench and scripts).

    Undecodable frames are yielded with ``error`` set rather than stopping the iteration.
    """
    with BagReader(path) as bag:
        yield from frames_from_reader(bag, topics, max_frames, max_pixels)


# -- building messages ------------------------------------------------------------------------
def make_header(stamp_ns: int, frame_id: str = "") -> Any:
    ts = typestore()
    Time = ts.types["builtin_interfaces/msg/Time"]
    Header = ts.types["std_msgs/msg/Header"]
    return Header(
        stamp=Time(sec=int(stamp_ns // 10**9), nanosec=int(stamp_ns % 10**9)), frame_id=frame_id
    )


def make_image(
    header: Any, encoding: str, height: int, width: int, step: int, data: np.ndarray
) -> Any:
    Image = typestore().types[IMAGE_TYPE]
    return Image(
        header=header,
        height=int(height),
        width=int(width),
        encoding=encoding,
        is_bigendian=0,
        step=int(step),
        data=np.ascontiguousarray(data, dtype=np.uint8).reshape(-1),
    )


def make_compressed(header: Any, fmt: str, data: bytes | np.ndarray) -> Any:
    Compressed = typestore().types[COMPRESSED_TYPE]
    return Compressed(header=header, format=fmt, data=np.frombuffer(bytes(data), np.uint8))


def image_msg_from_array(header: Any, image: np.ndarray, kind: str = "rgb") -> Any:
    """Labels (H, W) -> mono8/mono16; RGB (H, W, 3) -> rgb8 (``kind`` 'labels' or 'rgb')."""
    enc, step, data = (
        image_codec.encode_labels(image) if kind == "labels" else image_codec.encode_rgb(image)
    )
    return make_image(header, enc, image.shape[0], image.shape[1], step, data)


# -- writing -----------------------------------------------------------------------------------
def storage_of(path: str | Path, storage: str | None = None) -> str:
    """Return 'mcap' or 'sqlite3' for a bag path.

    From the file suffix, else ``storage``, else mcap (the ROS 2 default).
    """
    suffix = Path(path).suffix
    for name, suf in STORAGE_SUFFIX.items():
        if suffix == suf:
            if storage and storage != name:
                raise BagError(f"bag {path}: suffix {suffix} contradicts storage {storage!r}")
            return name
    storage = storage or "mcap"
    if storage not in STORAGE_SUFFIX:
        raise BagError(f"unknown bag storage {storage!r}; use mcap or sqlite3")
    return storage


class BagWriter:
    """Writes a new rosbag2 (context manager).

    A path ending in ``.mcap`` / ``.db3`` becomes that single storage file; any other path a
    standard bag directory. The bag appears at its path when it is closed (see
    :func:`staging_dir`). Never overwrites unless asked.
    """

    def __init__(self, path: str | Path, storage: str | None = None, overwrite: bool = False,
                 compress: bool = False) -> None:
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
        self.path = Path(path)
        self.storage = storage_of(self.path, storage)
        self.single_file = self.path.suffix in (".mcap", ".db3")
        if self.path.exists():
            if not overwrite:
                raise BagError(
                    f"output bag {self.path} exists already (pass --overwrite to replace it)"
                )
            remove_bag(self.path)
        self._staging = staging_dir(self.path)
        if self._staging.exists():  # left by a writer that was killed
            shutil.rmtree(self._staging)
        self._staging.mkdir(parents=True)
        self._dir = self._staging / (self.path.stem if self.single_file else self.path.name)
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self._dir, version=9, storage_plugin=plugin)
        if compress and self.storage == "mcap":
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._conns: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self._open = False

    def __enter__(self) -> "BagWriter":
        self.open()
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close()

    def open(self) -> None:
        try:
            self._writer.open()
        except Exception as exc:
            raise BagError(f"cannot create bag {self.path}: {_reason(exc)}") from None
        self._open = True

    def add_topic(
        self,
        topic: str,
        msgtype: str,
        *,
        msgdef: str | None = None,
        rihs01: str | None = None,
        store: Any = None,
    ) -> None:
        """Declare a topic once; types unknown to the distro need their ``msgdef`` + ``rihs01``."""
        if topic in self._conns:
            return
        store = store or typestore()
        if msgtype in store.fielddefs:
            conn = self._writer.add_connection(topic, msgtype, typestore=store)
        elif msgdef and rihs01:
            conn = self._writer.add_connection(topic, msgtype, msgdef=msgdef, rihs01=rihs01)
        else:
            raise BagError(
                f"cannot write {topic}: message type {msgtype} is unknown and has no definition"
            )
        self._conns[topic] = conn
        self.counts[topic] = 0

    def add_like(self, connection: Any, store: Any = None) -> None:
        """Declare a topic copied from a read bag's connection (keeps its recorded definition)."""
        digest = getattr(connection, "digest", "") or ""
        msgdef = connection.msgdef.data if getattr(connection, "msgdef", None) else None
        self.add_topic(connection.topic, connection.msgtype, store=store,
                       msgdef=msgdef, rihs01=digest if digest.startswith("RIHS01_") else None)

    def write_raw(self, topic: str, timestamp: int, rawdata: bytes | memoryview) -> None:
        self._writer.write(self._conns[topic], int(timestamp), rawdata)
        self.counts[topic] += 1

    def write(self, topic: str, timestamp: int, msg: Any) -> None:
        conn = self._conns[topic]
        self.write_raw(topic, timestamp, typestore().serialize_cdr(msg, conn.msgtype))

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._writer.close()
        produced = self._dir
        if self.single_file:
            produced = self._dir / f"{self._dir.name}{STORAGE_SUFFIX[self.storage]}"
        produced.replace(self.path)
        shutil.rmtree(self._staging)


def staging_dir(path: Path) -> Path:
    """Where BagWriter writes ``path`` until the bag is complete.

    A hidden folder beside it, so a write that is interrupted or killed never leaves a half-written
    bag at ``path``.
    """
    return path.with_name(f".{path.name}.partial")


def remove_bag(path: str | Path) -> None:
    """Delete a bag file or bag directory (only things that look like bags).

    And what a killed writer left of it.
    """
    p = Path(path)
    shutil.rmtree(staging_dir(p), ignore_errors=True)
    if p.is_dir():
        if not (p / "metadata.yaml").exists() and any(p.iterdir()):
            raise BagError(
                f"refusing to delete {p}: it is a non-empty directory but not a rosbag2"
            )
        shutil.rmtree(p)
    elif p.exists():
        if p.suffix not in (".mcap", ".db3"):
            raise BagError(f"refusing to delete {p}: not a .mcap or .db3 file")
        p.unlink()


def summarize(path: str | Path) -> dict[str, Any]:
    """Topics, types and counts of a bag (for tools' summaries and the tests)."""
    with BagReader(path) as bag:
        r = bag.reader
        return {
            "path": str(path),
            "messages": bag.message_count,
            "duration_s": r.duration / 1e9 if bag.message_count else 0.0,
            "topics": {t: {"type": i.msgtype, "count": i.count} for t, i in bag.topics.items()},
        }


def copy_message(bag: BagReader, writer: BagWriter, m: BagMessage) -> None:
    """Pass one message through unchanged (declaring its topic with the recorded definition)."""
    writer.add_like(m.connection, bag.store)
    writer.write_raw(m.topic, m.timestamp, m.rawdata)


def copy_messages(bag: BagReader, writer: BagWriter, messages: Iterable[BagMessage]) -> None:
    """Pass messages through unchanged (declaring their topics with the recorded definitions)."""
    for m in messages:
        copy_message(bag, writer, m)
