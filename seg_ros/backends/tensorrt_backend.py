"""The TensorRT backend: engines built from the ONNX export, cached on disk, run on torch's stream.

Engines are built with the TensorRT Python API (fp32, fp16, or int8 with an entropy calibrator
fed from an image folder through the pipeline's own preprocessing) and cached under
``~/.cache/seg_ros/engines``. An engine is only valid for the exact ONNX graph, TensorRT
version, GPU model and compute capability, precision (and calibration data) and input shape:
all of these form its :class:`EngineKey`, stored in a JSON sidecar beside the engine and compared
field by field before the engine is loaded, so a mismatched engine is never used; a changed key
builds a new one. Inference is ``execute_async_v3`` on tensors owned by PyTorch (no pycuda), on the
current torch CUDA stream, so pre- and post-processing stay on the GPU as in the torch path.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .onnx_export import INPUT_NAME, OnnxCache, default_cache_root, file_digest
from .optional import require_tensorrt
from .registry import BackendContext, register_backend
from .shape_cache import ShapeCache

log = logging.getLogger("seg_ros")
PRECISIONS = ("fp32", "fp16", "int8")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
Progress = Callable[[str], None]


# -- cache keys ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Engines are reused only when every field matches."""

    onnx_sha: str
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    input_shape: tuple[int, int]
    calibration: str = ""  # digest of the int8 calibration images, "" otherwise

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EngineKey":
        return cls(**{**d, "input_shape": tuple(int(v) for v in d["input_shape"])})

    def mismatches(self, other: "EngineKey") -> list[str]:
        a, b = self.to_json(), other.to_json()
        return [f"{k}: {b[k]!r} != {a[k]!r}" for k in a if a[k] != b.get(k)]


def gpu_identity(device: torch.device) -> tuple[str, str]:
    props = torch.cuda.get_device_properties(device)
    return props.name, f"{props.major}.{props.minor}"


def engine_key(
    onnx_path: str | os.PathLike,
    tensorrt_version: str,
    gpu: str,
    compute_capability: str,
    precision: str,
    input_shape: Sequence[int],
    calibration: str = "",
) -> EngineKey:
    if precision not in PRECISIONS:
        raise ConfigError(
            f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    return EngineKey(
        file_digest(onnx_path),
        tensorrt_version,
        gpu,
        compute_capability,
        precision,
        (int(input_shape[0]), int(input_shape[1])),
        calibration if precision == "int8" else "",
    )


class EngineCache:
    """TensorRT engines cached on disk, each with the key it was built for.

    Engine files ``<name>-<HxW>-<precision>-<key digest>.engine`` with a ``.json`` sidecar
    holding the full key.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.dir = Path(cache_dir).expanduser() if cache_dir else default_cache_root() / "engines"

    def path_for(self, key: EngineKey, name: str = "model") -> Path:
        h, w = key.input_shape
        return self.dir / f"{name}-{h}x{w}-{key.precision}-{key.digest()}.engine"

    @staticmethod
    def sidecar(engine_path: Path) -> Path:
        return engine_path.with_suffix(".json")

    def load(self, key: EngineKey, name: str = "model") -> bytes | None:
        """Return the cached engine for ``key``.

        None (with the reason logged) when absent or mismatched.
        """
        return load_engine_file(self.path_for(key, name), key)

    def store(self, key: EngineKey, engine: bytes, name: str = "model") -> Path:
        path = self.path_for(key, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, engine)
        _atomic_write(self.sidecar(path), json.dumps(
            {"key": key.to_json(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
             "bytes": len(engine)}, indent=2).encode())
        return path


def load_engine_file(
    path: Path, key: EngineKey | None, check: Sequence[str] | None = None
) -> bytes | None:
    """Read ``path`` if its sidecar's key matches ``key`` (all fields, or those in ``check``)."""
    side = EngineCache.sidecar(path)
    if not path.is_file():
        return None
    if not side.is_file():
        log.warning("TensorRT engine %s has no key sidecar %s: not using it", path, side.name)
        return None
    try:
        stored = EngineKey.from_json(json.loads(side.read_text())["key"])
    except (ValueError, KeyError, TypeError) as exc:
        log.warning(
            "TensorRT engine sidecar %s is unreadable (%s): not using the engine", side, exc
        )
        return None
    if key is not None:
        bad = [m for m in key.mismatches(stored) if check is None or m.split(":")[0] in check]
        if bad:
            log.warning(
                "TensorRT engine %s was built for another configuration (%s): not using it",
                path,
                "; ".join(bad),
            )
            return None
    return path.read_bytes()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- INT8 calibration data -------------------------------------------------------------------
def list_images(folder: str | os.PathLike, max_images: int | None = None) -> list[Path]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"calibration image folder {folder} does not exist")
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise ConfigError(
            f"calibration image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})"
        )
    if max_images and len(files) > max_images:  # spread over the folder, deterministically
        step = len(files) / max_images
        files = [files[int(i * step)] for i in range(max_images)]
    return files


def images_digest(files: Sequence[Path]) -> str:
    """Digest of the calibration set: names, sizes and modification times."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)};".encode())
    return h.hexdigest()[:16]


class CalibrationData:
    """Calibration batches (N, 3, h, w) float32 contiguous on the pipeline's device.

    Made from an image folder by the pipeline's own preprocessing, so int8 ranges match what the
    engine sees.
    """

    def __init__(self, network_input: Callable[[np.ndarray, str], torch.Tensor],
                 folder: str | os.PathLike, shape: tuple[int, int],
                 batch_size: int = 1, max_images: int | None = 64) -> None:
        self.network_input = network_input  # the pipeline's preprocessing
        self.shape, self.batch_size = (int(shape[0]), int(shape[1])), int(batch_size)
        self.files = list_images(folder, max_images)
        self.digest = images_digest(self.files)

    def __len__(self) -> int:
        return (len(self.files) + self.batch_size - 1) // self.batch_size

    def tensor(self, path: Path) -> torch.Tensor:
        import cv2
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ConfigError(f"calibration image {path} cannot be decoded")
        h, w = self.shape
        frame = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
        with torch.inference_mode():
            x = self.network_input(frame, "bgr")
            if tuple(x.shape[-2:]) != self.shape:  # input_size/keep_aspect mapped it elsewhere
                x = F.interpolate(x.float(), size=self.shape, mode="bilinear", align_corners=False)
            return x.float().contiguous()

    def batches(self) -> Iterator[torch.Tensor]:
        for i in range(0, len(self.files), self.batch_size):
            yield torch.cat([self.tensor(p) for p in self.files[i:i + self.batch_size]])


def make_calibrator(trt: Any, data: CalibrationData, cache_file: Path) -> Any:
    """Return an ``IInt8EntropyCalibrator2`` over ``data`` with a calibration cache.

    An ``IInt8EntropyCalibrator2`` over ``data`` whose table is read from / written to
    ``cache_file`` (so a rebuild with the same images skips calibration).
    """

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._it = data.batches()
            self._current: torch.Tensor | None = None  # kept alive while TensorRT reads it
            self.done = 0

        def get_batch_size(self) -> int:
            return data.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                self._current = next(self._it)
            except StopIteration:
                return None
            torch.cuda.synchronize()
            self.done += 1
            log.info("int8 calibration batch %d/%d", self.done, len(data))
            return [int(self._current.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(cache_file, bytes(cache))

    return _Calibrator()


# -- build ---------------------------------------------------------------------------------
def build_engine(trt: Any, onnx_path: Path, key: EngineKey, calibrator: Any = None,
                 workspace_mb: int = 4096, progress: Progress | None = None) -> bytes:
    """Parse the ONNX file and build a serialized engine for ``key``'s precision and shape."""
    say = progress or (lambda msg: log.info("%s", msg))
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    flags = 0
    if (
        hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
        and int(trt.__version__.split(".")[0]) < 10
    ):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    say(f"parsing {onnx_path}")
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ConfigError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    shape = (1, 3, *key.input_shape)
    profile = None
    if any(
        int(d) < 0 for d in network.get_input(0).shape
    ):  # a --dynamic export: pin it to the shape
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, shape, shape, shape)
        config.add_optimization_profile(profile)
    if key.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if key.precision == "int8":
        if calibrator is None:
            raise ConfigError(
                "TensorRT int8 needs calibration images (backend option calib_images, "
                "or --calib-images for seg-ros build-engine)"
            )
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        if profile is not None and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)
    say(f"building a {key.precision} engine for {shape[2]}x{shape[3]} on {key.gpu} "
        f"(TensorRT {key.tensorrt}); this can take minutes")
    stop = threading.Event()
    start = time.perf_counter()

    def heartbeat() -> None:
        while not stop.wait(15.0):
            say(f"  still building ... {time.perf_counter() - start:.0f} s")

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        stop.set()
        beat.join()
    if serialized is None:
        raise ConfigError(
            f"TensorRT failed to build an engine from {onnx_path} (see its log above)"
        )
    say(f"engine built in {time.perf_counter() - start:.0f} s")
    return bytes(serialized)


# -- run -----------------------------------------------------------------------------------
_TRT_TO_TORCH = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "INT8": torch.int8,
    "INT32": torch.int32,
    "BOOL": torch.bool,
}


class Engine:
    """A deserialized engine with one execution context, run on torch CUDA tensors."""

    def __init__(self, trt: Any, data: bytes, device: torch.device) -> None:
        self.device = device
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise ConfigError(
                "TensorRT could not deserialize the engine (built by another version?)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(
                f"TensorRT engine has inputs {inputs} and outputs {outputs}; expected one of each"
            )
        self.input, self.output = inputs[0], outputs[0]
        self.in_dtype = _TRT_TO_TORCH[self.engine.get_tensor_dtype(self.input).name]
        self.out_dtype = _TRT_TO_TORCH[self.engine.get_tensor_dtype(self.output).name]
        self._shape: tuple[int, ...] | None = None
        self._out_shape: tuple[int, ...] = ()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.in_dtype).contiguous()
        if tuple(x.shape) != self._shape:
            self.context.set_input_shape(self.input, tuple(x.shape))
            self._shape = tuple(x.shape)
            self._out_shape = tuple(self.context.get_tensor_shape(self.output))
        out = torch.empty(self._out_shape, dtype=self.out_dtype, device=self.device)
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return out


@register_backend("tensorrt")
class TensorRTBackend:
    """The TensorRT backend.

    Options: ``precision`` (fp32/fp16/int8; default the pipeline's), ``calib_images`` (folder,
    int8), ``calib_max_images``, ``onnx_path``, ``engine_path`` (a prebuilt engine; its sidecar
    must match this TensorRT, GPU and the frame's shape), ``cache_dir``, ``workspace_mb``.
    """

    name = "tensorrt"
    max_batch = 1  # engines are built for a batch of 1 (one optimisation profile per size)

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        half: bool,
        context: BackendContext | None = None,
        precision: str | None = None,
        calib_images: str | None = None,
        calib_max_images: int = 64,
        onnx_path: str | None = None,
        engine_path: str | None = None,
        cache_dir: str | None = None,
        workspace_mb: int = 4096,
        max_shapes: int = 4,
        **_: Any,
    ) -> None:
        self.trt = require_tensorrt(device)
        self.precision = precision or ("fp16" if half else "fp32")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got "
                f"{self.precision!r}"
            )
        if self.precision == "int8" and not calib_images and not engine_path:
            raise ConfigError(
                "TensorRT precision int8 needs calib_images (a folder of frames like the "
                "camera's) to calibrate with"
            )
        self.model, self.device, self.context = model, device, context
        self.out_dtype = torch.float16 if half else torch.float32
        self.calib_images, self.calib_max_images = calib_images, calib_max_images
        self.onnx_path = Path(onnx_path).expanduser() if onnx_path else None
        self.engine_path = Path(engine_path).expanduser() if engine_path else None
        root = Path(cache_dir).expanduser() if cache_dir else None
        self.exports = OnnxCache(model, context, root / "onnx" if root else None)
        self.engines_cache = EngineCache(root / "engines" if root else None)
        self.gpu, self.cc = gpu_identity(device)
        self.workspace_mb = int(workspace_mb)
        self._engines: ShapeCache[Engine] = ShapeCache(self._engine_for, max_entries=max_shapes,
                                                       what="TensorRT engine")
        self.max_shapes = int(max_shapes)

    def key_for(self, onnx_path: Path, shape: tuple[int, int], calibration: str = "") -> EngineKey:
        return engine_key(
            onnx_path, self.trt.__version__, self.gpu, self.cc, self.precision, shape, calibration
        )

    def _engine_for(self, shape: Any) -> Engine:
        return Engine(self.trt, self.engine_bytes(tuple(shape)), self.device)

    def engine_bytes(self, shape: tuple[int, int], progress: Progress | None = None) -> bytes:
        """Load the engine for ``shape`` from the cache, or build and cache it."""
        if self.engine_path is not None:
            data = load_engine_file(self.engine_path, self.key_for_prebuilt(shape),
                                    check=("tensorrt", "gpu", "compute_capability", "input_shape"))
            if data is None:
                raise ConfigError(
                    f"engine_path {self.engine_path} does not fit this TensorRT, GPU or the "
                    f"frame's {shape[0]}x{shape[1]} input (see the warning above); rebuild it "
                    f"with seg-ros build-engine"
                )
            return data
        say = progress or (lambda msg: log.warning("%s", msg))
        onnx_path = self.onnx_path or self.exports.get(tuple(shape))
        data_set = None
        if self.precision == "int8":
            if self.context is None or self.context.network_input is None:
                raise ConfigError("TensorRT int8 calibration needs the pipeline's preprocessing "
                                  "(create the backend through SegmentationPipeline)")
            data_set = CalibrationData(self.context.network_input, self.calib_images, shape,
                                       max_images=self.calib_max_images)
        key = self.key_for(onnx_path, shape, data_set.digest if data_set else "")
        name = self.exports.model_name
        cached = self.engines_cache.load(key, name)
        if cached is not None:
            log.info("loaded cached TensorRT engine %s", self.engines_cache.path_for(key, name))
            return cached
        say(
            f"no cached TensorRT engine for {name} {shape[0]}x{shape[1]} {self.precision} on "
            f"{self.gpu}: building one now (this can take minutes; `seg-ros build-engine` "
            "builds ahead of time)"
        )
        calibrator = None
        if data_set is not None:
            table = (
                self.engines_cache.dir
                / f"{key.onnx_sha}-{shape[0]}x{shape[1]}-{data_set.digest}.calib"
            )
            calibrator = make_calibrator(self.trt, data_set, table)
        data = build_engine(self.trt, onnx_path, key, calibrator, self.workspace_mb, say)
        path = self.engines_cache.store(key, data, name)
        say(f"cached TensorRT engine at {path}")
        return data

    def key_for_prebuilt(self, shape: tuple[int, int]) -> EngineKey:
        """Return the fields of a prebuilt engine's key that are checkable without its ONNX."""
        return EngineKey("", self.trt.__version__, self.gpu, self.cc, self.precision, tuple(shape))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        engine = self._engines.require(tuple(int(v) for v in x.shape[-2:]))
        return engine(x).to(self.out_dtype)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "precision": self.precision,
            "tensorrt": self.trt.__version__,
            "gpu": self.gpu,
            "compute_capability": self.cc,
            "engines": [list(k) for k in self._engines.keys()],
        }
