"""``segment_node``: the ROS 2 adapter over :class:`~seg_ros.pipeline.SegmentationPipeline`.

Subscription callbacks -> :class:`~seg_ros.batching.LatestFrames` (one latest-wins slot per
camera) -> one worker thread that gathers the waiting frames of all cameras, decodes them
(:mod:`seg_ros.image_codec`), segments them in one batch and publishes each camera's results
(:mod:`seg_ros.node.cameras`). Everything that is not ROS glue lives in the ROS-free core, so the
node, the tools and the tests share it.

The node is built from :class:`SegmentParts` (declare parameters; load model, weights and
publishers; warm up; subscribe; stop; release): :class:`SegmentNode` runs them all at start-up,
the managed ``segment_lifecycle_node`` (:mod:`seg_ros.node.lifecycle_node`) one per transition.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any, Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from .. import image_codec
from ..batching import LatestFrames
from ..crf import CRFConfig, create_refiner
from ..crf.worker import BackgroundRefiner
from ..errors import ConfigError, InputError, SegRosError
from ..memory import give_back_memory
from ..pipeline import PipelineConfig, SegmentationPipeline
from ..worker import BackgroundWorker
from . import params as P
from .cameras import Camera, frame_options
from .class_info import class_info_json
from .dds_transport import apply_transport_defaults
from .diagnostics import OK, NodeStats, Report
from .qos import diagnostics_qos, input_qos, latched_qos, output_qos
from .shutdown import SignalGuard

NODE_NAME = "segment_node"
PROCESSING_ERROR = "processing_error"
WARN_THROTTLE_S = 5.0
EXIT_STARTUP_ERROR = 2
STOP_TIMEOUT_S = 2.0
SPIN_PERIOD_S = 0.1  # how often the spin loop looks at the stop request


ERROR_KINDS = image_codec.ERROR_KINDS + ("bad_channels", PROCESSING_ERROR)


@dataclasses.dataclass(frozen=True)
class _Frame:
    """A camera's frame as it came in, and when."""

    camera: Camera
    msg: Any
    received: float


@dataclasses.dataclass(frozen=True)
class _Job:
    """A decoded frame and what to compute for it."""

    frame: _Frame
    image: Any
    order: str
    wanted: dict[str, bool]
    refine: bool


class _RosLogHandler(logging.Handler):
    """Routes the core's Python logging (e.g. 'no trained weights') into the node's ROS log."""

    def __init__(self, logger) -> None:
        super().__init__()
        self._logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            self._logger.error(msg)
        elif record.levelno >= logging.WARNING:
            self._logger.warning(msg)
        elif record.levelno >= logging.INFO:
            self._logger.info(msg)
        else:
            self._logger.debug(msg)


class SegmentParts:
    """The node's parts, shared by the plain and the managed node.

    The node's parts, shared by :class:`SegmentNode` (everything at start-up) and the managed
    :class:`~seg_ros.node.lifecycle_node.SegmentLifecycleNode` (one part per transition).

    Mixed into an rclpy ``Node`` (or ``LifecycleNode``): the parts create that node's publishers,
    subscription and timer. The parts, in the order a node calls them: :meth:`init_parts`,
    :meth:`declare_node_parameters` / :meth:`config_values`, :meth:`start_diagnostics`,
    :meth:`load` (model, weights, publishers), :meth:`warm_up`, :meth:`subscribe` (frames in,
    results out), :meth:`stop_frames` and :meth:`release` (model and publishers gone, memory given
    back).

    A subclass sets :attr:`RECONFIGURABLE` and may override the hooks :meth:`_create_output`,
    :meth:`_destroy_output`, :meth:`_restart_parameter_refusal` and :meth:`_health`.
    """

    # True: parameters marked read-only (model, weights, device...) may change while no model is
    # loaded, and release() withdraws the class metadata parameters, so a later load() can
    # declare another model's. False: they are fixed for the life of the process.
    RECONFIGURABLE = False

    # -- parts ----------------------------------------------------------------------------
    def init_parts(self) -> None:
        """Route the core's Python logging into this node's ROS log; nothing loaded yet."""
        self._log_handler = _RosLogHandler(self.get_logger())
        core_log = logging.getLogger("seg_ros")
        core_log.addHandler(self._log_handler)
        core_log.setLevel(logging.INFO)
        core_log.propagate = False
        self.pipeline: SegmentationPipeline | None = None
        self.info: dict[str, Any] = {}
        self._outputs: list[Any] = []
        self.crf_mode = "off"
        self.refiner = None
        self.crf_worker: BackgroundRefiner | None = None
        self.cameras: list[Camera] = []
        self.frames: LatestFrames[int, tuple[Any, float]] | None = None
        self.batches: Counter[int] = Counter()  # frames per gathered batch -> how often
        self._first_camera = 0  # round robin: which camera's frame goes first in a batch
        self._input_subscriptions: list[Any] = []
        self._worker: BackgroundWorker[dict[int, tuple[Any, float]]] | None = None
        self.startup_error: str | None = None
        # set by run() to its signal guard's event: long transitions give up when it is set
        self.stop_requested = threading.Event()
        self._diag_status_name = f"seg_ros: {self.get_fully_qualified_name()}"
        self._hardware_id = socket.gethostname()

    def declare_node_parameters(self, cli_args: list[str] | None = None) -> dict[str, Any]:
        """Declare every configurable parameter (command-line and params-file overrides applied).

        Their values, not yet validated (:meth:`config_values`). Raises ConfigError for a value
        rclpy refuses (wrong type, out of range). ``cli_args``: the process's ROS arguments, to
        warn about overrides of parameters this node does not have.
        """
        values = {spec.name: self._declare(spec) for spec in P.PARAMETERS if spec.in_yaml}
        node_names = [self.get_name(), self.get_fully_qualified_name()]
        for name in P.unknown_overrides(sys.argv if cli_args is None else cli_args, node_names):
            self.get_logger().warning(f"parameter {name!r} is not a segment_node parameter; "
                                      f"ignored (known: {', '.join(P.CONFIG_NAMES)})")
        return values

    def _declare(self, spec: P.ParamSpec) -> Any:
        """Declare one parameter; its value.

        Two kinds are declared loosely (dynamically typed) first and get their real descriptor once
        their value is fixed: a mode with an 'off' choice, so that an unquoted ``off`` (YAML's
        false) reads as 'off'; and the string array ``cameras`` with its [] default, which ROS can
        hold only dynamically typed (an empty array has no element type; a params file's ``[]``
        arrives unset, which would empty ``ros2 param dump``), so :func:`params.validate` checks
        its type instead.
        """
        descriptor = self._descriptor(spec)
        empty_array = spec.default == []
        try:
            if not empty_array and (spec.choices is None or "off" not in spec.choices):
                return self.declare_parameter(spec.name, spec.default, descriptor).value
            loose = ParameterDescriptor(name=spec.name, dynamic_typing=True)
            value = self.declare_parameter(spec.name, spec.default, loose).value
            fixed = [] if empty_array and value is None else P.unquoted_off(spec.name, value)
            if fixed is not value:
                result = self.set_parameters([Parameter(spec.name, value=fixed)])[0]
                if not result.successful:
                    raise ConfigError(f"parameter {spec.name!r}: {result.reason}")
            if empty_array:
                descriptor.dynamic_typing, descriptor.type = True, 0
            self.set_descriptor(spec.name, descriptor)
            return self.get_parameter(spec.name).value
        except ValueError as exc:  # unquoted_off: a boolean true names no mode
            raise ConfigError(str(exc)) from None
        except ParameterException as exc:
            raise ConfigError(f"parameter {spec.name!r}: {exc}") from None

    def config_values(self) -> dict[str, Any]:
        """Return the current value of every configurable parameter.

        ConfigError naming the first invalid one (a choice or structure rclpy's descriptors cannot
        express).
        """
        values = {name: self.get_parameter(name).value for name in P.CONFIG_NAMES}
        for name, value in values.items():
            reason = P.validate(name, value)
            if reason:
                raise ConfigError(f"parameter {name!r} {reason}")
        return values

    def start_diagnostics(self, period: float) -> None:
        """/diagnostics every ``period`` seconds, whatever is loaded (see :meth:`_health`)."""
        self.pub_diagnostics = self.create_publisher(
            DiagnosticArray, "/diagnostics", diagnostics_qos()
        )
        self._diag_timer = self.create_timer(period, self._publish_diagnostics)

    def load(self, values: dict[str, Any]) -> None:
        """Build the pipeline (model and weights).

        Declare the class metadata parameters and create the output publishers and the CRF refiner.
        Raises ConfigError / WeightsError with one clear message; what it built before failing is
        dropped by :meth:`release`.
        """
        self.settings = P.settings_from(values)
        self.transport = values["input_transport"]
        self._qos_reliability = values["qos_reliability"]
        self._qos_depth = values["qos_depth"]
        names = list(values["cameras"] or [""])
        self.cameras = [Camera(name, self.resolve_topic_name, self.transport) for name in names]
        self.input_topic = ", ".join(camera.input_topic for camera in self.cameras)
        self.pipeline = SegmentationPipeline(
            PipelineConfig(
                model=values["model"],
                backend=values["backend"],
                weights=values["weights"],
                classes=values["classes"] or None,
                device=values["device"],
                precision=values["precision"],
                input_size=P.input_size(values["input_size"]),
                keep_aspect=values["keep_aspect"],
                output_resolution=values["output_resolution"],
                max_input_pixels=values["max_input_pixels"],
                num_threads=values["num_threads"],
                max_batch=len(self.cameras),
                model_options=P.model_options(values),
            )
        )
        self.info = self.pipeline.describe()
        self._hardware_id = f"{socket.gethostname()}/{self.info['device']}"
        self._declare_class_metadata()

        depth = values["qos_depth"]
        self._setup_crf(values)
        for camera in self.cameras:
            camera.create_outputs(lambda msg_type, topic: self._output(msg_type, topic,
                                                                      output_qos(depth)),
                                  refined=self.crf_worker is not None)
            camera.stats = NodeStats(ERROR_KINDS)
        self.pub_class_info = self._output(String, "~/class_info", latched_qos())
        self.batches = Counter()
        self._last_warn: dict[str, tuple[float, int]] = {}

    def warm_up(self) -> None:
        """Trace/capture the per-shape graph at the configured input size now.

        Not on the first camera frame. Raises what the model raises when it cannot run at all.
        """
        started = time.monotonic()
        batch_sizes = range(1, len(self.cameras) + 1)
        warmed = self.pipeline.warm_up(batch_sizes)
        if warmed:
            batches = f", batches of 1..{len(self.cameras)}" if len(self.cameras) > 1 else ""
            self.get_logger().info(f"warmed up at {warmed[0]}x{warmed[1]}{batches} in "
                                   f"{time.monotonic() - started:.1f} s")

    def announce_ready(self) -> None:
        """Publish the class metadata on ~/class_info and log it.

        Latched: it also says 'ready'.
        """
        self.pub_class_info.publish(String(data=class_info_json(self.pipeline)))
        self.get_logger().info(
            f"ready: model {self.info['model']} ({self.info['weights']}), "
            f"{self.info['num_classes']} classes '{self.info['classes']}', device "
            f"{self.info['device']} {self.info['precision']}; input {self.input_topic} "
            f"({self.transport}, {self._qos_reliability})")

    def subscribe(self, first: Callable[[threading.Event], bool] | None = None) -> None:
        """Take frames: subscribe and start the worker thread.

        Take frames: subscription callbacks -> LatestFrames (one latest-wins slot per camera)
        -> a new worker thread, which runs ``first(stopping)`` (if given) before its first batch
        and ends at once when that returns False. Each camera's camera_info is kept for
        republishing with its labels.
        """
        self.frames = LatestFrames(list(range(len(self.cameras))))
        self.frames.wait_s = self.settings.batch_timeout_ms / 1e3
        self._worker = BackgroundWorker(self._handle_batch, self._on_batch_error,
                                        name="segment_worker", first=first, mailbox=self.frames)
        qos = input_qos(self._qos_reliability, self._qos_depth)
        msg_type = CompressedImage if self.transport == "compressed" else Image
        for index, camera in enumerate(self.cameras):
            self._input_subscriptions += [
                self.create_subscription(msg_type, camera.input_topic,
                                         functools.partial(self._on_frame, index), qos),
                self.create_subscription(CameraInfo, camera.info_topic, camera.on_camera_info,
                                         qos)]

    def stop_frames(self, timeout: float | None = STOP_TIMEOUT_S) -> bool:
        """Stop taking frames: unsubscribe.

        And let the worker finish the batch in hand; wait for it at most ``timeout`` seconds (None:
        as long as that batch takes). False when it is still busy, e.g. in the warm-up trace, which
        cannot be interrupted.
        """
        for subscription in self._input_subscriptions:
            self.destroy_subscription(subscription)
        self._input_subscriptions = []
        return self._worker is None or self._worker.stop(timeout)

    def release(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Drop the CRF refiner.

        The output publishers and the model, and give the memory back (CUDA cache, glibc's free
        pages), so that another model can be loaded in this process. Call after
        :meth:`stop_frames`; safe after a partial :meth:`load`.
        """
        if self.crf_worker is not None:
            self.crf_worker.stop(timeout)
            self.crf_worker = None
        if self.refiner is not None:
            self.refiner.close()
            self.refiner = None
        for publisher in self._outputs:
            self._destroy_output(publisher)
        self._outputs = []
        if self.RECONFIGURABLE:
            for name in P.METADATA_NAMES:
                if self.has_parameter(name):
                    self.undeclare_parameter(name)
        device = self.pipeline.device if self.pipeline is not None else None
        self.pipeline = None
        self.info = {}
        give_back_memory(device, forget_graphs=self.RECONFIGURABLE)

    def remove_core_log_handler(self) -> None:
        """At the very end: the core's logging no longer goes to this node."""
        logging.getLogger("seg_ros").removeHandler(self._log_handler)

    # -- hooks ----------------------------------------------------------------------------
    def _create_output(self, msg_type: type, topic: str, qos) -> Any:
        return self.create_publisher(msg_type, topic, qos)

    def _destroy_output(self, publisher: Any) -> None:
        self.destroy_publisher(publisher)

    def _restart_parameter_refusal(self, name: str) -> str | None:
        """Why parameter ``name`` (read-only in the table) cannot change now; None: it can."""
        return f"parameter {name!r} is read-only (needs a restart)"

    def _health(self) -> Report:
        """Return what /diagnostics says: the frame statistics and what is running."""
        return self._running_report()

    # -- parameters -----------------------------------------------------------------------
    def _descriptor(self, spec: P.ParamSpec):
        desc = P.descriptor(spec)
        if self.RECONFIGURABLE and spec.read_only:  # _on_set_parameters decides when
            desc.read_only = False
            desc.additional_constraints = "; ".join(
                filter(
                    None,
                    [
                        desc.additional_constraints,
                        "set by the node"
                        if not spec.in_yaml
                        else "changeable while unconfigured; applied at the next configure",
                    ],
                )
            )
        return desc

    def _declare_class_metadata(self) -> None:
        classes = self.pipeline.classes
        metadata = {"class_names": list(classes.names),
                    "class_colors": [int(c) for c in classes.colors.reshape(-1)],
                    "ignore_id": -1 if classes.ignore_id is None else int(classes.ignore_id)}
        for name in P.METADATA_NAMES:
            self.declare_parameter(name, metadata[name], self._descriptor(P.SPECS[name]),
                                   ignore_override=True)

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        changes: dict[str, Any] = {}
        for param in parameters:
            spec = P.SPECS.get(param.name)
            if spec is None:
                continue
            if spec.read_only and self.has_parameter(param.name):  # not while being declared
                refusal = self._restart_parameter_refusal(param.name)
                if refusal:
                    return SetParametersResult(successful=False, reason=refusal)
            reason = P.validate(param.name, param.value)
            if reason:
                return SetParametersResult(
                    successful=False, reason=f"parameter {param.name!r} {reason}"
                )
            changes[param.name] = param.value
        updates = {k: v for k, v in changes.items() if k in P.RUNTIME_NAMES}
        if updates:
            self.settings = dataclasses.replace(self.settings, **updates)
            self.get_logger().info(
                "parameters changed: " + ", ".join(f"{k}={v}" for k, v in updates.items())
            )
        return SetParametersResult(successful=True)

    # -- frames -------------------------------------------------------------------------
    def _output(self, msg_type: type, topic: str, qos) -> Any:
        publisher = self._create_output(msg_type, topic, qos)
        self._outputs.append(publisher)
        return publisher

    def _on_frame(self, camera: int, msg) -> None:
        """Never blocks, never runs inference: the newest frame replaces a waiting one."""
        dropped = self.frames.put(camera, (msg, time.monotonic()))
        self.cameras[camera].stats.frame_received(dropped)

    def _handle_batch(self, batch: dict[int, tuple[Any, float]]) -> None:
        self.frames.wait_s = self.settings.batch_timeout_ms / 1e3  # for the next batch
        self._process(self._round_robin(batch))

    def _on_batch_error(self, batch: dict[int, tuple[Any, float]], exc: Exception) -> None:
        """Report a failure outside any one frame's handling.

        A failure outside any one frame's handling: said once (throttled), unless ROS is gone
        (shutting down).
        """
        if rclpy.ok(context=self.context):
            self._warn_throttled(PROCESSING_ERROR, f"batch failed: {type(exc).__name__}: {exc}",
                                 error=True)

    def _round_robin(self, batch: dict[int, tuple[Any, float]]) -> list[_Frame]:
        """Return the batch's frames, a different camera first each time (its group runs first)."""
        order = sorted(batch, key=lambda i: (i - self._first_camera) % len(self.cameras))
        self._first_camera = (self._first_camera + 1) % len(self.cameras)
        return [_Frame(self.cameras[i], *batch[i]) for i in order]

    def _process(self, frames: list[_Frame]) -> None:
        """Decode each camera's frame, segment them together, publish each camera's results.

        One camera's bad frame is counted against that camera and costs the others nothing.
        """
        s = self.settings
        inline = self.refiner is not None and self.crf_worker is None  # crf_replaces_labels
        jobs = [job for job in (self._prepare(frame, s) for frame in frames) if job is not None]
        if not jobs:
            return
        self.batches[len(jobs)] += 1
        options = [frame_options({**job.wanted, **({"color": False, "overlay": False}
                                                   if inline else {})},
                                 s, keep_scores=self.refiner is not None) for job in jobs]
        try:
            results = self.pipeline.segment_batch([(job.image, job.order) for job in jobs],
                                                  options)
        except Exception as exc:
            for job in jobs:
                self._frame_failed(job.frame, exc)
            return
        refine_later = []
        for job, result in zip(jobs, results):
            try:
                if inline:
                    refined = self.pipeline.refine(result, self.refiner,
                                                   frame_options(job.wanted, s, False))
                    result.labels, result.color, result.overlay = (
                        refined.labels, refined.color, refined.overlay)
                self._publish(job, result)
            except Exception as exc:
                self._frame_failed(job.frame, exc)
                continue
            if job.refine:
                refine_later.append((job.frame.camera, result, job.frame.msg.header))
        if refine_later:  # after the raw outputs are out: refined ones follow on ~/*_refined
            self.crf_worker.submit(refine_later)

    def _prepare(self, frame: _Frame, s: Any) -> _Job | None:
        """Return the decoded frame and what to compute for it.

        None when nothing is wanted (counted idle) or the frame is bad (counted by kind).
        """
        camera = frame.camera
        wanted = camera.raw.wanted(s)
        refine = self.crf_worker is not None and any(camera.refined.wanted(s).values())
        if not any(wanted.values()) and not refine:
            camera.stats.frame_idle()
            return None
        msg = frame.msg
        try:
            if self.transport == "compressed":
                image, order = image_codec.decode_compressed(msg.format, msg.data,
                                                             max_pixels=s.max_input_pixels)
            else:
                image, order = image_codec.decode_image(msg.encoding, msg.height, msg.width,
                                                        msg.step, msg.is_bigendian, msg.data,
                                                        max_pixels=s.max_input_pixels)
            self.pipeline.check_image(image, s.max_input_pixels)
        except Exception as exc:
            self._frame_failed(frame, exc)
            return None
        return _Job(frame, image, order, wanted, refine)

    def _publish(self, job: _Job, result: Any) -> None:
        camera, header = job.frame.camera, job.frame.msg.header
        camera.raw.publish(result, header, job.wanted)
        camera.publish_camera_info(header, job.image.shape[:2], result.labels.shape[:2])
        camera.stats.frame_done(time.monotonic() - job.frame.received)

    def _frame_failed(self, frame: _Frame, exc: Exception) -> None:
        """Count a failed frame against its camera and say why (throttled, per kind)."""
        where = f"{frame.camera.name} " if frame.camera.name else ""
        if isinstance(exc, InputError):
            frame.camera.stats.frame_failed(exc.kind, str(exc))
            self._warn_throttled(exc.kind, f"skipped {where}frame (stamp {_stamp(frame.msg)}): "
                                           f"{exc}")
            return
        frame.camera.stats.frame_failed(PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
        self._warn_throttled(PROCESSING_ERROR, f"{where}frame (stamp {_stamp(frame.msg)}) failed: "
                                               f"{type(exc).__name__}: {exc}", error=True)

    def _warn_throttled(self, kind: str, text: str, error: bool = False) -> None:
        """Log at most one line per error kind every WARN_THROTTLE_S.

        Each says how many were not shown.
        """
        now = time.monotonic()
        last, suppressed = self._last_warn.get(kind, (-1e9, 0))
        if now - last < WARN_THROTTLE_S:
            self._last_warn[kind] = (last, suppressed + 1)
            return
        if suppressed:
            text += f" ({suppressed} more '{kind}' frames since the last warning)"
        self._last_warn[kind] = (now, 0)
        (self.get_logger().error if error else self.get_logger().warning)(text)

    # -- CRF refinement (docs/crf.md) ----------------------------------------------------
    def _setup_crf(self, values: dict[str, Any]) -> None:
        """Refiner per the crf* parameters.

        Refined outputs go to ~/*_refined from a background worker (the raw stream never waits), or
        replace the raw ones with crf_replaces_labels.
        """
        self.crf_mode = values["crf"]
        config = CRFConfig.from_dict(
            {
                name[4:]: values[name]
                for name in values
                if name.startswith("crf_") and name != "crf_replaces_labels"
            },
            source="segment_node parameters",
        )
        # dense holds the GIL for seconds: a helper process runs it, so callbacks keep flowing
        replaces = values["crf_replaces_labels"]
        self.refiner = create_refiner(self.crf_mode, config, self.pipeline.device, isolate=True)
        if self.refiner is None:
            return
        if not replaces:
            self.crf_worker = BackgroundRefiner(self._publish_refined, self._on_refine_error)
        self.get_logger().info(
            f"crf {self.crf_mode}: refined labels on "
            + ("~/labels (crf_replaces_labels)" if replaces else "~/labels_refined")
        )

    def _publish_refined(self, batch: list[tuple[Camera, Any, Any]]) -> None:
        """On the CRF worker thread.

        Refine a batch's raw results from their kept logits and publish them; a batch replaces a
        waiting one, so every camera keeps its turn.
        """
        s = self.settings
        for camera, result, header in batch:
            wanted = camera.refined.wanted(s)
            refined = self.pipeline.refine(result, self.refiner, frame_options(wanted, s, False))
            camera.refined.publish(refined, header, wanted)

    def _on_refine_error(self, batch: list[tuple[Camera, Any, Any]], exc: Exception) -> None:
        header = batch[0][2]
        stamp = f"{header.stamp.sec}.{header.stamp.nanosec:09d}"
        self._warn_throttled("crf_error", f"CRF refinement of frame (stamp {stamp}) failed: "
                                          f"{type(exc).__name__}: {exc}", error=True)

    def _crf_diagnostics(self) -> list[tuple[str, str]]:
        values = [("crf", self.crf_mode)]
        if self.crf_worker is not None:
            values += [("crf_frames_refined", str(self.crf_worker.done)),
                       ("crf_frames_dropped", str(self.crf_worker.dropped)),
                       ("crf_frames_failed", str(self.crf_worker.failed))]
        return values


    # -- diagnostics --------------------------------------------------------------------
    def _static_values(self) -> list[tuple[str, str]]:
        """Return what is running (the loaded model) and where its frames come from."""
        return [
            ("model", self.info["model"]),
            ("backend", self.info["backend"]),
            ("device", self.info["device"]),
            ("precision", self.info["precision"]),
            ("weights", str(self.info["weights"])),
            ("trained", str(self.pipeline.trained).lower()),
            ("classes", self.info["classes"]),
            ("input_topic", self.input_topic),
            ("input_transport", self.transport),
        ]

    def _running_report(self) -> Report:
        """Return the node's status: its one camera's statistics.

        Or with several cameras the worst camera's level and the batch sizes (each camera also gets
        a status of its own).
        """
        s = self.settings
        if len(self.cameras) == 1:
            report = self.cameras[0].stats.report(s.stale_input_timeout, s.error_threshold,
                                                  self.input_topic)
        else:
            report = self._cameras_summary()
        report.values += self._static_values() + self._crf_diagnostics() + self._batch_values()
        return report

    def _camera_report(self, camera: Camera) -> Report:
        s = self.settings
        report = camera.stats.report(s.stale_input_timeout, s.error_threshold,
                                     camera.input_topic)
        report.values += [("camera", camera.name), ("input_topic", camera.input_topic)]
        return report

    def _cameras_summary(self) -> Report:
        reports = [(camera.name, self._camera_report(camera)) for camera in self.cameras]
        level = max(report.level for _, report in reports)
        worst = [f"{name}: {report.message}" for name, report in reports if report.level == level]
        message = (f"running, {len(reports)} cameras" if level == OK
                   else "; ".join(worst))
        values = [("cameras", ", ".join(name for name, _ in reports))]
        values += [(f"{name}.{key}", reports_value) for name, report in reports
                   for key, reports_value in report.values
                   if key in ("frames_processed", "frames_dropped", "frames_failed",
                              "latency_median_ms")]
        return Report(level, message, values)

    def _batch_values(self) -> list[tuple[str, str]]:
        """How many frames each gathered batch held, and each forward pass."""
        values = [(f"batches_of_{size}", str(n)) for size, n in sorted(self.batches.items())]
        if self.pipeline is not None:
            values += [(f"forward_passes_of_{size}", str(n))
                       for size, n in sorted(self.pipeline.forward_batch_sizes.items())]
        return values

    def _status(self, name: str, report: Report) -> DiagnosticStatus:
        return DiagnosticStatus(level=bytes([report.level]), name=name, message=report.message,
                                hardware_id=self._hardware_id,
                                values=[KeyValue(key=k, value=v) for k, v in report.values])

    def _publish_diagnostics(self) -> None:
        statuses = [self._status(self._diag_status_name, self._health())]
        if len(self.cameras) > 1 and self.frames is not None and not self.frames.closed:
            statuses += [self._status(f"{self._diag_status_name}: {camera.name}",
                                      self._camera_report(camera)) for camera in self.cameras]
        msg = DiagnosticArray(status=statuses)
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diagnostics.publish(msg)


class SegmentNode(SegmentParts, Node):
    """The plain node: loads, warms up and takes frames from start-up to exit.

    Raises ConfigError / WeightsError (one clear message) when it cannot start.
    """

    def __init__(self, cli_args: list[str] | None = None, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.init_parts()
        self.declare_node_parameters(cli_args)
        values = self.config_values()
        self.load(values)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.start_diagnostics(values["diagnostics_period"])
        # subscribed before the warm-up: frames that arrive meanwhile are counted (as dropped)
        self.subscribe(first=self._warm_up_on_worker)

    def _warm_up_on_worker(self, stopping: threading.Event) -> bool:
        """On the worker thread.

        While the subscription already counts frames: warm up, then announce readiness. A model
        that cannot run at all is a start-up error (exit code 2).
        """
        try:
            self.warm_up()
        except Exception as exc:
            self.startup_error = f"warm-up failed: {type(exc).__name__}: {exc}"
            return False
        if stopping.is_set():
            return False
        self.announce_ready()
        return True

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Stop the worker (it finishes the frame in hand) and wait for it.

        At most ``timeout`` seconds (launch escalates to SIGTERM after 5 s), then release the
        model. False when the worker is still busy, e.g. in the warm-up trace, which cannot be
        interrupted.
        """
        finished = self.stop_frames(timeout)
        self.release(timeout)
        self.remove_core_log_handler()
        return finished


def _stamp(msg) -> str:
    try:
        return f"{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}"
    except AttributeError:
        return "?"


def _check_params_files(args: list[str]) -> str | None:
    """Why a ``--params-file`` argument is unusable (None when all are fine)."""
    import yaml

    for flag, path in zip(args, args[1:]):
        if flag != "--params-file":
            continue
        try:
            P.load_params_file(path)
        except OSError as exc:
            return f"params file {path} cannot be read: {exc.strerror or exc}"
        except yaml.YAMLError as exc:
            return f"params file {path} is not valid YAML: {' '.join(str(exc).split())}"
    return None


def run(args: list[str], guard: SignalGuard, node_class: type = SegmentNode) -> int:
    """Run the node's life: check the command line, start, spin until a stop signal, clean up.

    Start-up errors: one log line, exit code 2, no traceback. A stop signal: exit code 0.
    ``node_class``: :class:`SegmentNode` or the managed ``SegmentLifecycleNode``; it has a
    ``startup_error`` and a ``stop(timeout) -> bool`` (False: still busy, do not wait).
    """
    apply_transport_defaults(NODE_NAME)  # before rclpy.init: large outputs without DDS stalls
    problem = _check_params_files(args) or P.override_problem(args, NODE_NAME)
    if problem:  # rcl would print its own unhelpful line first, or drop the override silently
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {problem}")
        return EXIT_STARTUP_ERROR
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # malformed --ros-args or params file
        rclpy.logging.get_logger(NODE_NAME).fatal(
            f"cannot start: cannot initialise ROS: {str(exc).strip()}")
        return EXIT_STARTUP_ERROR
    node: SegmentParts | None = None
    executor: SingleThreadedExecutor | None = None
    code = 0
    finished = True
    try:
        node = node_class(cli_args=args)
        node.stop_requested = guard.requested
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        guard.running()
        while not guard.requested.is_set() and node.startup_error is None:
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        if node.startup_error is not None:
            node.get_logger().fatal(f"cannot start: {node.startup_error}")
            code = EXIT_STARTUP_ERROR
        else:
            node.get_logger().info(f"{guard.signal_name}: shutting down")
    except (SegRosError, ParameterException) as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        code = EXIT_STARTUP_ERROR
    except ExternalShutdownException:
        pass
    finally:
        guard.running()  # a signal during clean-up must not interrupt it
        if node is not None:
            finished = node.stop()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if not finished:  # the worker is inside a trace that cannot be interrupted: do not wait
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the node (``python -m seg_ros.node.segment_node``).

    Kept for ``python -m seg_ros.node.segment_node``; the console script is
    :func:`seg_ros.node.entry.main`, which guards the imports too.
    """
    from .entry import main as entry_main

    return entry_main(argv)


if __name__ == "__main__":
    sys.exit(main())
