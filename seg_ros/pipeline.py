"""The one segmentation pipeline: uint8 image in, labels out.

Besides the labels it can give a colour mask, an overlay and the confidence.

Used unchanged by the ROS node, the command-line tools and the tests. Everything between the
input upload and the uint8 results runs on the model's device.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from . import ops
from .backends import BackendContext, create_backend, list_backends
from .backends.onnx_export import pipeline_metadata
from .backends.cuda_fast import PinnedUploader
from .classes import ClassSet, load_classes
from .device import resolve_device
from .errors import ConfigError, InputError, WeightsError
from .models import build_model, list_models, read_weights, shipped_weights
from .models.optimize import prepare_for_inference
from .models.weights import WeightsFile, apply_state_dict
from .resources import share_path
from .sizes import DEFAULT_MIN_FRAMES_PER_NEW_SIZE, KeptSizes

log = logging.getLogger("seg_ros")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CLASSES = "camvid"
COLOR_ORDERS = ("rgb", "bgr")
OUTPUT_RESOLUTIONS = ("input", "inference")
DEFAULT_MAX_INPUT_PIXELS = 4096 * 4096
MAX_BATCH = 16
# per-shape graphs a backend keeps per batch size (sizes in use; see seg_ros/sizes.py)
SHAPES_PER_BATCH_SIZE = 4


def weights_file_for(model: str, weights: str) -> str | None:
    """Return the weights file a pipeline loads for ``model`` given the ``weights`` setting.

    Or None for random initialisation, which only an explicit ``"none"`` gives: a vehicle must not
    drive on a model that silently fell back to random weights (WeightsError naming the fix
    instead).
    """
    fix = ("give a weights file (node parameter 'weights', tool option --weights), or weights "
           "'none' to run on random weights on purpose (tests, benchmarks: labels meaningless)")
    if weights == "none":
        return None
    if weights == "default":
        entry = shipped_weights(model)
        if entry is None:
            raise WeightsError(f"model {model!r} has no shipped weights (weights 'default'): "
                               f"{fix}")
        shipped = entry.file  # relative to the share directory
        if not share_path(shipped).is_file():
            raise WeightsError(f"the shipped weights of {model!r} ({share_path(shipped)}) are not "
                               f"installed: reinstall seg_ros, or {fix}")
        return str(share_path(shipped))
    if not weights or not str(weights).strip():
        raise WeightsError(f"weights is empty: {fix}")
    return str(weights)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that fixes a pipeline.

    ``weights``: ``"default"`` (the model's shipped weights;
    WeightsError when it has none), ``"none"`` (random, for tests and benchmarks), or a path.
    ``input_size`` (H, W): inference size; ``None`` takes the weights' training size, else the
    frame's own size. Sizes are rounded to the model's size divisor. ``min_frames_per_new_size``:
    when frames come in more sizes than the backend keeps graphs for, a new size replaces a kept
    one only once that has gone unused for this many frames; until then the frame runs at the
    nearest kept size (1: every new size is built at once, exact but slow when sizes cycle; see
    seg_ros/sizes.py).
    ``max_batch``: the most frames :meth:`SegmentationPipeline.segment_batch` runs in one forward
    pass (the node's camera count); backends keep graphs for every batch size up to it.
    ``keep_aspect``, ``output_resolution`` and ``max_input_pixels`` are defaults that
    :class:`FrameOptions` may override per frame. Frozen: a pipeline's configuration never changes
    under it (``dataclasses.replace`` makes a changed copy).
    """

    model: str = "ddrnet23_slim"
    weights: str = "default"
    backend: str = "torch"
    classes: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    input_size: tuple[int, int] | None = None
    keep_aspect: bool = True
    output_resolution: str = "input"
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    num_threads: int = 0
    min_frames_per_new_size: int = DEFAULT_MIN_FRAMES_PER_NEW_SIZE
    max_batch: int = 1
    model_options: dict[str, Any] = field(default_factory=dict)
    backend_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.backend not in list_backends():
            raise ConfigError(
                f"unknown backend {self.backend!r}; known backends: {', '.join(list_backends())}"
            )
        if self.model not in list_models():
            raise ConfigError(
                f"unknown model {self.model!r}; known models: {', '.join(list_models())}"
            )
        if self.input_size is not None:
            if len(self.input_size) != 2 or any(
                int(v) < 8 or int(v) > 16384 for v in self.input_size
            ):
                raise ConfigError(
                    "input_size must be [height, width] with each in 8..16384, got "
                    f"{list(self.input_size)}"
                )
        if not 1 <= int(self.max_input_pixels) <= 1 << 30:
            raise ConfigError(f"max_input_pixels must be in 1..2^30, got {self.max_input_pixels}")
        if self.num_threads < 0:
            raise ConfigError(
                f"num_threads must be >= 0 (0 = library default), got {self.num_threads}"
            )
        if int(self.min_frames_per_new_size) < 1:
            raise ConfigError(f"min_frames_per_new_size must be >= 1, "
                              f"got {self.min_frames_per_new_size}")
        if not 1 <= int(self.max_batch) <= MAX_BATCH:
            raise ConfigError(f"max_batch must be in 1..{MAX_BATCH}, got {self.max_batch}")
        check_output_resolution(self.output_resolution)


def check_output_resolution(value: str) -> None:
    if value not in OUTPUT_RESOLUTIONS:
        raise ConfigError(f"output_resolution must be one of {OUTPUT_RESOLUTIONS}, got {value!r}")


@dataclass(frozen=True)
class FrameOptions:
    """What to compute for one frame, chosen per call.

    What to compute for one frame, chosen per call (the node's run-time parameters) rather than
    fixed with the pipeline. Labels are always computed; ``color``, ``overlay`` and ``confidence``
    only when asked. ``keep_scores`` keeps the logits on the result (no extra work) so
    :meth:`SegmentationPipeline.refine` can run a CRF on them later. ``keep_aspect``,
    ``output_resolution`` and ``max_input_pixels``: None takes the pipeline configuration's.
    """

    color: bool = False
    overlay: bool = False
    confidence: bool = False
    overlay_alpha: float = 0.5
    keep_scores: bool = False
    profile: bool = False
    keep_aspect: bool | None = None
    output_resolution: str | None = None
    max_input_pixels: int | None = None

    def validate(self) -> None:
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ConfigError(f"overlay_alpha must be in 0..1, got {self.overlay_alpha}")
        if self.output_resolution is not None:
            check_output_resolution(self.output_resolution)
        if self.max_input_pixels is not None and not 1 <= int(self.max_input_pixels) <= 1 << 30:
            raise ConfigError(f"max_input_pixels must be in 1..2^30, got {self.max_input_pixels}")


@dataclass
class SegmentationResult:
    """uint8/uint16 labels (H, W).

    Optional RGB colour mask and overlay (H, W, 3) uint8 and confidence (H, W) float32;
    ``timings_ms`` per stage when profiling was requested.
    """

    labels: np.ndarray
    color: np.ndarray | None = None
    overlay: np.ndarray | None = None
    confidence: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    # kept by FrameOptions.keep_scores for refine(); None otherwise
    refine_input: RefineInput | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RefineInput:
    """What :meth:`SegmentationPipeline.refine` needs of a segmented frame.

    On the device: its class scores (1, C, h, w), the frame as RGB (H, W, 3) uint8 and the labels'
    size.
    """

    logits: torch.Tensor
    rgb: torch.Tensor
    out_hw: tuple[int, int]


def with_overrides(config: PipelineConfig, overrides: dict[str, Any]) -> PipelineConfig:
    """Return a copy of ``config`` with ``overrides`` applied (the caller's one is left alone)."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(PipelineConfig)})
    if unknown:
        raise ConfigError(f"unknown pipeline option {unknown[0]!r}")
    return dataclasses.replace(config, **overrides)


def round_to_multiple(value: float, divisor: int) -> int:
    return max(divisor, int(value / divisor + 0.5) * divisor)


def inference_size(frame_hw: tuple[int, int], target: tuple[int, int] | None, keep_aspect: bool,
                   divisor: int) -> tuple[int, int]:
    """Return the size the network runs at for a frame, rounded to the model's size divisor."""
    h, w = frame_hw
    if target is None:
        th, tw = h, w
    elif keep_aspect:
        scale = min(target[0] / h, target[1] / w)
        th, tw = h * scale, w * scale
    else:
        th, tw = target
    return round_to_multiple(th, divisor), round_to_multiple(tw, divisor)


class _StageClock:
    """Per-stage wall time; synchronises CUDA only when profiling, so the hot path never waits."""

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled = enabled
        self.sync = enabled and device.type == "cuda"
        self.times: dict[str, float] = {}
        self._last = time.perf_counter() if enabled else 0.0

    def mark(self, stage: str) -> None:
        if not self.enabled:
            return
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times[stage] = (now - self._last) * 1e3
        self._last = now


class SegmentationPipeline:
    """Model + pre/post-processing for one configuration. Not thread-safe: one caller at a time."""

    def __init__(self, config: PipelineConfig | None = None, **overrides: Any) -> None:
        config = with_overrides(config or PipelineConfig(), overrides)
        config.validate()
        self.config = config
        self.notes: list[str] = []
        choice = resolve_device(config.device, config.precision)
        self.device, self.half = choice.device, choice.half
        self.notes += choice.notes
        if config.num_threads and self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)

        weights = self._read_weights()
        meta = weights.meta if weights else {}
        self.classes = self._resolve_classes(meta)
        model = build_model(config.model, self.classes.num_classes, **config.model_options)
        if weights is not None:
            if meta.get("arch") and meta["arch"] != config.model:
                raise ConfigError(f"weights file {weights.path} holds a {meta['arch']!r} model, "
                                  f"not {config.model!r}")
            apply_state_dict(model, weights.state_dict, weights.path)
        self.weights_path = weights.path if weights else None
        self.trained = weights is not None
        self.size_divisor = model.size_divisor
        self.model = prepare_for_inference(model, self.device, half=self.half)
        self.dtype = torch.float16 if self.half else torch.float32
        self._uploader = PinnedUploader(self.device) if self.device.type == "cuda" else None
        self.sizes = KeptSizes(int(config.min_frames_per_new_size))
        self.forward_batch_sizes: Counter[int] = Counter()  # frames per forward pass -> passes

        mean = torch.tensor(meta.get("mean", IMAGENET_MEAN), dtype=torch.float32)
        std = torch.tensor(meta.get("std", IMAGENET_STD), dtype=torch.float32)
        self.mean, self.std = mean.tolist(), std.tolist()
        self._scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(self.device)
        self._shift = (-mean / std).view(1, 3, 1, 1).to(self.device)
        self._bgr_to_rgb = torch.tensor([2, 1, 0], device=self.device)
        self._palette = torch.from_numpy(self.classes.colors.copy()).to(self.device)
        self._label_dtype = torch.uint8 if self.classes.label_dtype == np.uint8 else torch.int32
        backend_options = {"max_shapes": SHAPES_PER_BATCH_SIZE * int(config.max_batch),
                           **config.backend_options}
        self.backend = create_backend(config.backend, self.model, self.device, self.half,
                                      self.backend_context(), **backend_options)
        size = config.input_size or meta.get("input_size")
        self.input_size: tuple[int, int] | None = tuple(int(v) for v in size) if size else None
        if not self.trained:
            msg = (f"model {config.model!r} has NO trained weights and runs with random "
                   f"initialisation: its labels are meaningless (fine for tests and benchmarks, "
                   f"useless for driving)")
            self.notes.append(msg)
        for note in self.notes:
            log.warning(note)

    # -- construction helpers -------------------------------------------------------------
    def backend_context(self) -> BackendContext:
        """Return what the backend may know of this pipeline (see :class:`BackendContext`)."""
        return BackendContext(model_name=self.config.model,
                              num_classes=self.classes.num_classes,
                              size_divisor=self.size_divisor, trained=self.trained,
                              num_threads=self.config.num_threads,
                              metadata=pipeline_metadata(self),
                              network_input=self.network_input)

    def _read_weights(self) -> WeightsFile | None:
        path = weights_file_for(self.config.model, self.config.weights)
        return read_weights(path) if path is not None else None

    def _resolve_classes(self, meta: dict[str, Any]) -> ClassSet:
        if self.config.classes:
            classes = load_classes(self.config.classes)
        elif meta.get("classes"):
            classes = ClassSet.from_entries(
                meta["classes"],
                name=meta.get("classes_name", "weights"),
                ignore_id=meta.get("ignore_id"),
                source="weights metadata",
            )
        else:
            classes = load_classes(DEFAULT_CLASSES)
        if meta.get("num_classes") is not None:
            classes.check_num_classes(
                int(meta["num_classes"]), f"weights file {self.config.weights}"
            )
        return classes

    # -- per-frame work -------------------------------------------------------------------
    def frame_options(self, options: FrameOptions | None = None, **fields: Any) -> FrameOptions:
        """``options`` (default: all defaults) with ``fields`` replaced, validated."""
        options = dataclasses.replace(options or FrameOptions(), **fields)
        options.validate()
        return options

    def check_image(self, image: Any, max_input_pixels: int | None = None) -> None:
        """Raise InputError (a ValueError) naming the problem before anything reaches torch."""
        if not isinstance(image, np.ndarray):
            raise InputError(
                "bad_type", f"image must be a numpy array, got {type(image).__name__}"
            )
        if image.dtype != np.uint8:
            raise InputError("bad_dtype", f"image dtype must be uint8, got {image.dtype}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError(
                "bad_channels", f"image must be HxWx3 (3 colour channels), got shape {image.shape}"
            )
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            raise InputError("empty", f"image is empty ({h}x{w})")
        limit = max_input_pixels or self.config.max_input_pixels
        if h * w > limit:
            raise InputError("too_large", f"image has {h}x{w} = {h * w} pixels, more than "
                                          f"max_input_pixels = {limit}")

    def inference_size_for(self, frame_hw: tuple[int, int],
                           keep_aspect: bool | None = None) -> tuple[int, int]:
        keep = self.config.keep_aspect if keep_aspect is None else keep_aspect
        return inference_size(frame_hw, self.input_size, keep, self.size_divisor)

    def _upload(self, image: np.ndarray) -> torch.Tensor:
        """Return the frame as an (H, W, 3) uint8 tensor on the device (zero-copy on the CPU)."""
        if any(
            stride < 0 for stride in image.strides
        ):  # e.g. image[:, ::-1]: torch cannot view it
            image = np.ascontiguousarray(image)
        if self.device.type == "cuda":
            return self._uploader(image)  # reusable pinned buffer, non-blocking copy
        with warnings.catch_warnings():  # ROS buffers are read-only views; never written to
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(image)

    def preprocess(self, frame: torch.Tensor, color_order: str = "rgb",
                   size: tuple[int, int] | None = None) -> torch.Tensor:
        """(H, W, 3) uint8 frame tensor on the device -> the network input (1, 3, h, w).

        At ``size`` (default: the frame's own inference size).
        """
        if color_order not in COLOR_ORDERS:
            raise ConfigError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
        size = size or self.inference_size_for(tuple(frame.shape[:2]))
        bgr_to_rgb = self._bgr_to_rgb if color_order == "bgr" else None
        return ops.resize_and_normalize(ops.image_to_tensor(frame), size, self._scale, self._shift,
                                        bgr_to_rgb, self.dtype)

    def network_input(self, image: np.ndarray, color_order: str = "rgb") -> torch.Tensor:
        """Return the network input for a uint8 HxWx3 frame.

        Checked, uploaded and preprocessed exactly as in ``__call__``: benchmarks, export checks
        and INT8 calibration use it, so every backend sees the same input.
        """
        self.check_image(image)
        return self.preprocess(self._upload(image), color_order)

    def _chosen_size(self, frame_hw: tuple[int, int], keep_aspect: bool | None) -> tuple[int, int]:
        """Return the size a frame runs at.

        The size a frame runs at: its own inference size, or the kept size
        :class:`KeptSizes` chooses when frames come in more sizes than the backend keeps graphs
        for (its capacity shared by the batch sizes in use).
        """
        capacity = self.backend.max_shapes
        if capacity is not None:
            capacity = max(1, capacity // int(self.config.max_batch))
        return self.sizes.choose(self.inference_size_for(frame_hw, keep_aspect), capacity)

    @torch.inference_mode()
    def forward_logits(self, image: np.ndarray, color_order: str = "rgb") -> torch.Tensor:
        """Class scores (1, C, h, w) on the device at the network's output stride."""
        self.check_image(image)
        frame = self._upload(image)
        size = self._chosen_size(tuple(frame.shape[:2]), None)
        return self.backend(self.preprocess(frame, color_order, size))

    def __call__(self, image: np.ndarray, color_order: str = "rgb",
                 options: FrameOptions | None = None, **fields: Any) -> SegmentationResult:
        """Segment one frame.

        Only the outputs asked for are computed: ``options`` and/or its fields as keywords
        (``color=True, overlay_alpha=0.3``, see :class:`FrameOptions`).
        """
        return self.segment_batch([(image, color_order)], self.frame_options(options, **fields))[0]

    @torch.inference_mode()
    def segment_batch(self, frames: Sequence[tuple[np.ndarray, str]],
                      options: FrameOptions | Sequence[FrameOptions]) -> list[SegmentationResult]:
        """Segment several frames (e.g. one per camera).

        ``(image, color_order)`` each: frames whose network input sizes agree share one forward
        pass, at most ``max_batch`` at a time; each keeps its own options (one for all, or one per
        frame). Results in input order. An invalid frame raises InputError before anything runs:
        check frames first (:meth:`check_image`) when one bad camera must not cost the others their
        frame.
        """
        per_frame = (list(options) if not isinstance(options, FrameOptions)
                     else [options] * len(frames))
        if len(per_frame) != len(frames):
            raise ConfigError(f"{len(frames)} frames but {len(per_frame)} options")
        uploads = []
        for (image, order), opts in zip(frames, per_frame):
            if order not in COLOR_ORDERS:
                raise ConfigError(f"color_order must be 'rgb' or 'bgr', got {order!r}")
            self.check_image(image, opts.max_input_pixels)
            uploads.append(self._upload(image))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (frame, opts) in enumerate(zip(uploads, per_frame)):
            size = self._chosen_size(tuple(frame.shape[:2]), opts.keep_aspect)
            groups.setdefault(size, []).append(i)
        results: list[SegmentationResult | None] = [None] * len(frames)
        limit = self.batch_limit()
        for size, members in groups.items():
            for start in range(0, len(members), limit):
                chunk = members[start:start + limit]
                profile = any(per_frame[i].profile for i in chunk)
                clock = _StageClock(profile, self.device)
                x = self._batch([self.preprocess(uploads[i], frames[i][1], size) for i in chunk])
                clock.mark("preprocess")
                logits = self.backend(x)
                clock.mark("forward")
                self.forward_batch_sizes[len(chunk)] += 1
                for j, i in enumerate(chunk):
                    results[i] = self._finish(logits[j:j + 1], uploads[i], frames[i][1],
                                              per_frame[i], _StageClock(profile, self.device),
                                              dict(clock.times))
        return results  # type: ignore[return-value]

    def batch_limit(self) -> int:
        """Return the most frames one forward pass takes.

        ``max_batch``, or less when the backend takes fewer (onnxruntime and TensorRT run one frame
        per pass).
        """
        limit = int(self.config.max_batch)
        return min(limit, self.backend.max_batch) if self.backend.max_batch else limit

    @staticmethod
    def _batch(inputs: list[torch.Tensor]) -> torch.Tensor:
        """One network input of several.

        A single frame's is used as it is (its strides, which key the per-shape graphs, stay those
        of the one-frame path).
        """
        if len(inputs) == 1:
            return inputs[0]
        return torch.cat(inputs).contiguous(memory_format=torch.channels_last)

    def _finish(self, logits: torch.Tensor, frame: torch.Tensor, color_order: str,
                opts: FrameOptions, clock: _StageClock,
                times: dict[str, float]) -> SegmentationResult:
        """Labels (and confidence, colour mask, overlay) of one frame from its class scores."""
        h, w = frame.shape[:2]
        resolution = opts.output_resolution or self.config.output_resolution
        out_hw = (
            (h, w) if resolution == "input" else self.inference_size_for((h, w), opts.keep_aspect)
        )
        conf = None
        if opts.confidence or self.device.type != "cpu":
            # GPUs upsample every score faster than they can sync on the sparse path's nonzero()
            scores = ops.upsample_logits(logits, out_hw)
            labels = ops.labels_from_logits(scores, self._label_dtype)
            conf = ops.confidence_from_logits(scores) if opts.confidence else None
        else:
            labels = ops.upsampled_argmax(logits, out_hw, self._label_dtype)
        clock.mark("postprocess")
        rgb = frame if color_order == "rgb" else frame.flip(-1)
        result = self.outputs_from_labels(labels, rgb, out_hw, opts, conf, clock)
        result.timings_ms = {**times, **clock.times}
        if opts.keep_scores:
            result.refine_input = RefineInput(logits, rgb, out_hw)
        return result

    def outputs_from_labels(self, labels: torch.Tensor, rgb: torch.Tensor,
                            out_hw: tuple[int, int], opts: FrameOptions,
                            conf: torch.Tensor | None = None,
                            clock: _StageClock | None = None) -> SegmentationResult:
        """Run the one colour / overlay / download step of raw, refined and TTA labels.

        ``labels`` (H, W) on the device, ``rgb`` the frame as RGB (any size: resized to
        ``out_hw`` for the overlay).
        """
        clock = clock or _StageClock(False, self.device)
        labels = labels.to(self._label_dtype)
        color_t = ops.colorize(labels, self._palette) if (opts.color or opts.overlay) else None
        clock.mark("color")
        overlay_t = None
        if opts.overlay:
            base = rgb if tuple(rgb.shape[:2]) == tuple(out_hw) else ops.resize_image(rgb, out_hw)
            overlay_t = ops.blend(base, color_t, opts.overlay_alpha)
        clock.mark("overlay")
        labels_np = labels.cpu().numpy()
        if labels_np.dtype == np.int32:
            labels_np = labels_np.astype(np.uint16)
        result = SegmentationResult(
            labels=labels_np,
            color=color_t.cpu().numpy() if opts.color else None,
            overlay=overlay_t.cpu().numpy() if overlay_t is not None else None,
            confidence=conf.cpu().numpy() if conf is not None else None)
        clock.mark("download")
        return result

    @torch.inference_mode()
    def refine(self, result: SegmentationResult, refiner: Any, options: FrameOptions | None = None,
               **fields: Any) -> SegmentationResult:
        """CRF-refined labels (and colour mask / overlay) of a result made with ``keep_scores``.

        From its logits (see :mod:`seg_ros.crf`). Reads only state fixed at construction, so it may
        run on another thread while the next frame goes through ``__call__``.
        """
        if result.refine_input is None:
            raise ConfigError(
                "this result kept no scores to refine: segment with keep_scores=True"
            )
        opts = self.frame_options(options, **fields)
        kept = result.refine_input
        t0 = time.perf_counter()
        labels = refiner(kept.rgb, kept.logits, kept.out_hw).to(self._label_dtype)
        refined = self.outputs_from_labels(labels, kept.rgb, kept.out_hw,
                                dataclasses.replace(opts, confidence=False), None,
                                _StageClock(False, self.device))
        refined.timings_ms = {"crf": (time.perf_counter() - t0) * 1e3}
        return refined

    def warm_up(self, batch_sizes: Sequence[int] = (1,)) -> tuple[int, int] | None:
        """Segment blank frames at the configured input size.

        Once per batch size, so the per-shape work (fused CPU graph, CUDA graph capture,
        onnxruntime session, cuDNN autotuning) happens now rather than on the first camera frames.
        Frames of the same aspect ratio then reuse it. Returns the size warmed, or None when the
        inference size depends on each frame (no input size set).
        """
        if self.input_size is None:
            return None
        h, w = self.input_size
        blank = np.zeros((h, w, 3), np.uint8)
        for batch in sorted({min(int(b), self.batch_limit()) for b in batch_sizes}):
            self.segment_batch(
                [(blank, "rgb")] * int(batch), FrameOptions(color=True, overlay=True)
            )
        self.sizes.mark_unused()  # built in advance; the first to go if no frame comes in it
        return h, w

    def describe(self) -> dict[str, Any]:
        """Return what is running, for logs, diagnostics and benchmark reports."""
        return {
            "model": self.config.model,
            "backend": getattr(self.backend, "name", self.config.backend),
            "device": str(self.device),
            "precision": "fp16" if self.half else "fp32",
            "weights": self.weights_path or "random-init",
            "classes": self.classes.name,
            "num_classes": self.classes.num_classes,
            "input_size": list(self.input_size) if self.input_size else None,
        }
