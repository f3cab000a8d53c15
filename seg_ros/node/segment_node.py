"""``segment_node``: the ROS 2 adapter over :class:`~seg_ros.pipeline.SegmentationPipeline`.

Subscription callback -> :class:`~seg_ros.worker.BackgroundWorker` (latest frame wins, one
thread) that decodes (:mod:`seg_ros.image_codec`), segments and publishes. Everything that is
not ROS glue lives in the ROS-free core, so the node, the tools and the tests share it.

The node is built from :class:`SegmentParts` (declare parameters; load model, weights and
publishers; warm up; subscribe; stop; release): :class:`SegmentNode` runs them all at start-up,
the managed ``segment_lifecycle_node`` (:mod:`seg_ros.node.lifecycle_node`) one per transition.
"""
from __future__ import annotations

import array
import dataclasses
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from .. import image_codec
from ..errors import ConfigError, InputError, SegRosError
from ..memory import give_back_memory
from ..pipeline import PipelineConfig, SegmentationPipeline
from ..crf import CRFConfig, create_refiner
from ..crf.worker import BackgroundRefiner
from ..worker import BackgroundWorker
from . import params as P
from .class_info import class_info_json
from .dds_transport import apply_transport_defaults
from .diagnostics import NodeStats, Report
from .qos import diagnostics_qos, input_qos, latched_qos, output_qos
from .shutdown import SignalGuard

NODE_NAME = "segment_node"
PROCESSING_ERROR = "processing_error"
WARN_THROTTLE_S = 5.0
EXIT_STARTUP_ERROR = 2
STOP_TIMEOUT_S = 2.0
SPIN_PERIOD_S = 0.1  # how often the spin loop looks at the stop request


@dataclasses.dataclass(frozen=True)
class Settings:
    """Run-time changeable parameters; replaced as a whole, so the worker reads a consistent set."""

    keep_aspect: bool
    output_resolution: str
    max_input_pixels: int
    publish_labels: bool
    publish_color_mask: bool
    publish_overlay: bool
    publish_confidence: bool
    overlay_alpha: float
    stale_input_timeout: float
    error_threshold: int

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> "Settings":
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


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
    """The node's parts, shared by :class:`SegmentNode` (everything at start-up) and the managed
    :class:`~seg_ros.node.lifecycle_node.SegmentLifecycleNode` (one part per transition).

    Mixed into an rclpy ``Node`` (or ``LifecycleNode``): the parts create that node's publishers,
    subscription and timer. The parts, in the order a node calls them: :meth:`init_parts`,
    :meth:`declare_node_parameters` / :meth:`config_values`, :meth:`start_diagnostics`, :meth:`load`
    (model, weights, publishers), :meth:`warm_up`, :meth:`subscribe` (frames in, results out),
    :meth:`stop_frames` and :meth:`release` (model and publishers gone, memory given back).

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
        self._subscription = None
        self._worker: BackgroundWorker[tuple[Any, float]] | None = None
        self.startup_error: str | None = None
        # set by run() to its signal guard's event: long transitions give up when it is set
        self.stop_requested = threading.Event()
        self._diag_status_name = f"seg_ros: {self.get_fully_qualified_name()}"
        self._hardware_id = socket.gethostname()

    def declare_node_parameters(self) -> dict[str, Any]:
        """Declare every configurable parameter (command-line and params-file overrides applied);
        their values, not yet validated (:meth:`config_values`). Raises ConfigError for a value
        rclpy refuses (wrong type, out of range)."""
        values: dict[str, Any] = {}
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        for spec in P.PARAMETERS:
            if not spec.in_yaml:
                continue
            if spec.name in overrides:
                try:
                    fixed = P.unquoted_off(spec.name, overrides[spec.name].value)
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None
                if fixed is not overrides[spec.name].value:
                    overrides[spec.name] = Parameter(spec.name, Parameter.Type.STRING, fixed)
            try:
                values[spec.name] = self.declare_parameter(spec.name, spec.default,
                                                           self._descriptor(spec)).value
            except ParameterException as exc:
                raise ConfigError(f"parameter {spec.name!r}: {exc}") from None
        for name in sorted(set(overrides) - set(P.SPECS)):
            if name != "use_sim_time" and not name.startswith("qos_overrides."):
                self.get_logger().warning(f"parameter {name!r} is not a segment_node parameter; ignored "
                                          f"(known: {', '.join(P.CONFIG_NAMES)})")
        return values

    def config_values(self) -> dict[str, Any]:
        """The current value of every configurable parameter; ConfigError naming the first
        invalid one (a choice or structure rclpy's descriptors cannot express)."""
        values = {name: self.get_parameter(name).value for name in P.CONFIG_NAMES}
        for name, value in values.items():
            reason = P.validate(name, value)
            if reason:
                raise ConfigError(f"parameter {name!r} {reason}")
        return values

    def start_diagnostics(self, period: float) -> None:
        """/diagnostics every ``period`` seconds, whatever is loaded (see :meth:`_health`)."""
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", diagnostics_qos())
        self._diag_timer = self.create_timer(period, self._publish_diagnostics)

    def load(self, values: dict[str, Any]) -> None:
        """Build the pipeline (model and weights), declare the class metadata parameters and
        create the output publishers and the CRF refiner. Raises ConfigError / WeightsError with
        one clear message; what it built before failing is dropped by :meth:`release`."""
        self.settings = Settings.from_values(values)
        self.transport = values["input_transport"]
        self._qos_reliability = values["qos_reliability"]
        self._qos_depth = values["qos_depth"]
        base_topic = self.resolve_topic_name("image")
        self.input_topic = (base_topic.rstrip("/") + "/compressed" if self.transport == "compressed"
                            else base_topic)
        self.pipeline = SegmentationPipeline(PipelineConfig(
            model=values["model"], backend=values["backend"], weights=values["weights"],
            classes=values["classes"] or None,
            device=values["device"], precision=values["precision"],
            input_size=P.input_size(values["input_size"]), keep_aspect=values["keep_aspect"],
            output_resolution=values["output_resolution"], max_input_pixels=values["max_input_pixels"],
            num_threads=values["num_threads"], model_options=P.model_options(values)))
        self.info = self.pipeline.describe()
        self._hardware_id = f"{socket.gethostname()}/{self.info['device']}"
        self._declare_class_metadata()

        depth = values["qos_depth"]
        self.pub_labels = self._output(Image, "~/labels", output_qos(depth))
        self.pub_color = self._output(Image, "~/color_mask", output_qos(depth))
        self.pub_overlay = self._output(Image, "~/overlay", output_qos(depth))
        self.pub_confidence = self._output(Image, "~/confidence", output_qos(depth))
        self.pub_class_info = self._output(String, "~/class_info", latched_qos())
        self._setup_crf(values, depth)

        self.stats = NodeStats(image_codec.ERROR_KINDS + ("bad_channels", PROCESSING_ERROR))
        self._last_warn: dict[str, tuple[float, int]] = {}

    def warm_up(self) -> None:
        """Trace/capture the per-shape graph at the configured input size now, not on the first
        camera frame. Raises what the model raises when it cannot run at all."""
        started = time.monotonic()
        warmed = self.pipeline.warm_up()
        if warmed:
            self.get_logger().info(f"warmed up at {warmed[0]}x{warmed[1]} in "
                                   f"{time.monotonic() - started:.1f} s")

    def announce_ready(self) -> None:
        """Publish the class metadata on ~/class_info (latched: it also says 'ready') and log it."""
        self.pub_class_info.publish(String(data=class_info_json(self.pipeline)))
        self.get_logger().info(
            f"ready: model {self.info['model']} ({self.info['weights']}), "
            f"{self.info['num_classes']} classes '{self.info['classes']}', device "
            f"{self.info['device']} {self.info['precision']}; input {self.input_topic} "
            f"({self.transport}, {self._qos_reliability})")

    def subscribe(self, first: Callable[[threading.Event], bool] | None = None) -> None:
        """Take frames: subscription callback -> a new latest-wins worker thread, which runs
        ``first(stopping)`` (if given) before its first frame and ends at once when that returns
        False."""
        self._worker = BackgroundWorker(self._handle_frame, self._on_frame_error,
                                        name="segment_worker", first=first)
        qos = input_qos(self._qos_reliability, self._qos_depth)
        msg_type = CompressedImage if self.transport == "compressed" else Image
        self._subscription = self.create_subscription(msg_type, self.input_topic, self._on_frame, qos)

    def stop_frames(self, timeout: float | None = STOP_TIMEOUT_S) -> bool:
        """Stop taking frames: unsubscribe, and let the worker finish the frame in hand; wait for
        it at most ``timeout`` seconds (None: as long as that frame takes). False when it is still
        busy, e.g. in the warm-up trace, which cannot be interrupted."""
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        return self._worker is None or self._worker.stop(timeout)

    def release(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Drop the CRF refiner, the output publishers and the model, and give the memory back
        (CUDA cache, glibc's free pages), so that another model can be loaded in this process.
        Call after :meth:`stop_frames`; safe after a partial :meth:`load`."""
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
        """What /diagnostics says: the frame statistics and what is running."""
        return self._running_report()

    # -- parameters -----------------------------------------------------------------------
    def _descriptor(self, spec: P.ParamSpec):
        desc = P.descriptor(spec)
        if self.RECONFIGURABLE and spec.read_only:  # _on_set_parameters decides when
            desc.read_only = False
            desc.additional_constraints = "; ".join(
                filter(None, [desc.additional_constraints,
                              "set by the node" if not spec.in_yaml
                              else "changeable while unconfigured; applied at the next configure"]))
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
                return SetParametersResult(successful=False, reason=f"parameter {param.name!r} {reason}")
            changes[param.name] = param.value
        fields = {f.name for f in dataclasses.fields(Settings)}
        updates = {k: v for k, v in changes.items() if k in fields}
        if updates:
            self.settings = dataclasses.replace(self.settings, **updates)
            self.get_logger().info("parameters changed: " + ", ".join(f"{k}={v}" for k, v in updates.items()))
        return SetParametersResult(successful=True)

    # -- frames -------------------------------------------------------------------------
    def _output(self, msg_type: type, topic: str, qos) -> Any:
        publisher = self._create_output(msg_type, topic, qos)
        self._outputs.append(publisher)
        return publisher

    def _on_frame(self, msg) -> None:
        """Never blocks, never runs inference: the newest frame replaces a waiting one."""
        self.stats.frame_received(self._worker.submit((msg, time.monotonic())))

    def _handle_frame(self, item: tuple[Any, float]) -> None:
        self._process(*item)

    def _on_frame_error(self, item: tuple[Any, float], exc: Exception) -> None:
        """Bad input: counted by kind; anything else: a processing error, unless ROS is gone."""
        msg = item[0]
        if isinstance(exc, InputError):
            self.stats.frame_failed(exc.kind, str(exc))
            self._warn_throttled(exc.kind, f"skipped frame (stamp {_stamp(msg)}): {exc}")
            return
        if not rclpy.ok(context=self.context):
            return
        self.stats.frame_failed(PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
        self._warn_throttled(PROCESSING_ERROR, f"frame (stamp {_stamp(msg)}) failed: "
                                               f"{type(exc).__name__}: {exc}", error=True)

    def _wanted(self, s: Settings) -> dict[str, bool]:
        return {"labels": s.publish_labels and self.pub_labels.get_subscription_count() > 0,
                "color": s.publish_color_mask and self.pub_color.get_subscription_count() > 0,
                "overlay": s.publish_overlay and self.pub_overlay.get_subscription_count() > 0,
                "confidence": s.publish_confidence and self.pub_confidence.get_subscription_count() > 0}

    def _process(self, msg, received: float) -> None:
        s = self.settings
        want = self._wanted(s)
        refine_later = self.crf_worker is not None and any(self._refined_wanted(s).values())
        if not any(want.values()) and not refine_later:
            self.stats.frame_idle()
            return
        config = self.pipeline.config  # run-time parameters take effect between frames
        config.keep_aspect, config.output_resolution = s.keep_aspect, s.output_resolution
        config.max_input_pixels = s.max_input_pixels
        if self.transport == "compressed":
            image, order = image_codec.decode_compressed(msg.format, msg.data, max_pixels=s.max_input_pixels)
        else:
            image, order = image_codec.decode_image(msg.encoding, msg.height, msg.width, msg.step,
                                                    msg.is_bigendian, msg.data, max_pixels=s.max_input_pixels)
        inline = self.refiner is not None and self.crf_worker is None  # crf_replaces_labels
        result = self.pipeline(image, order, color=want["color"] and not inline,
                               overlay=want["overlay"] and not inline, confidence=want["confidence"],
                               overlay_alpha=s.overlay_alpha, keep_scores=self.refiner is not None)
        if inline:
            refined = self.pipeline.refine(result, self.refiner, color=want["color"], overlay=want["overlay"],
                                           overlay_alpha=s.overlay_alpha)
            result.labels, result.color, result.overlay = refined.labels, refined.color, refined.overlay
        header = msg.header
        if want["labels"]:
            self.pub_labels.publish(_image_msg(header, *image_codec.encode_labels(result.labels), result.labels))
        if want["color"]:
            self.pub_color.publish(_image_msg(header, *image_codec.encode_rgb(result.color), result.color))
        if want["overlay"]:
            self.pub_overlay.publish(_image_msg(header, *image_codec.encode_rgb(result.overlay), result.overlay))
        if want["confidence"]:
            self.pub_confidence.publish(
                _image_msg(header, *image_codec.encode_float(result.confidence), result.confidence))
        self.stats.frame_done(time.monotonic() - received)
        if refine_later:  # after the raw outputs are out: refined ones follow on ~/*_refined
            self.crf_worker.submit((result, header))

    def _warn_throttled(self, kind: str, text: str, error: bool = False) -> None:
        """At most one line per error kind every WARN_THROTTLE_S, saying how many were not shown."""
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
    def _setup_crf(self, values: dict[str, Any], depth: int) -> None:
        """Refiner per the crf* parameters. Refined outputs go to ~/*_refined from a background
        worker (the raw stream never waits), or replace the raw ones with crf_replaces_labels."""
        self.crf_mode = values["crf"]
        config = CRFConfig.from_dict({name[4:]: values[name] for name in values
                                      if name.startswith("crf_") and name != "crf_replaces_labels"},
                                     source="segment_node parameters")
        # dense holds the GIL for seconds: a helper process runs it, so callbacks keep flowing
        replaces = values["crf_replaces_labels"]
        self.refiner = create_refiner(self.crf_mode, config, self.pipeline.device, isolate=True)
        if self.refiner is None:
            return
        if not replaces:
            self.pub_labels_refined = self._output(Image, "~/labels_refined", output_qos(depth))
            self.pub_color_refined = self._output(Image, "~/color_mask_refined", output_qos(depth))
            self.pub_overlay_refined = self._output(Image, "~/overlay_refined", output_qos(depth))
            self.crf_worker = BackgroundRefiner(self._publish_refined, self._on_refine_error)
        self.get_logger().info(f"crf {self.crf_mode}: refined labels on "
                               + ("~/labels (crf_replaces_labels)" if replaces else "~/labels_refined"))

    def _refined_wanted(self, s: Settings) -> dict[str, bool]:
        return {"labels": s.publish_labels and self.pub_labels_refined.get_subscription_count() > 0,
                "color": s.publish_color_mask and self.pub_color_refined.get_subscription_count() > 0,
                "overlay": s.publish_overlay and self.pub_overlay_refined.get_subscription_count() > 0}

    def _publish_refined(self, item: tuple[Any, Any]) -> None:
        """On the CRF worker thread: refine a raw result from its kept logits and publish."""
        result, header = item
        s = self.settings
        want = self._refined_wanted(s)
        refined = self.pipeline.refine(result, self.refiner, color=want["color"], overlay=want["overlay"],
                                       overlay_alpha=s.overlay_alpha)
        if want["labels"]:
            self.pub_labels_refined.publish(
                _image_msg(header, *image_codec.encode_labels(refined.labels), refined.labels))
        if want["color"]:
            self.pub_color_refined.publish(_image_msg(header, *image_codec.encode_rgb(refined.color), refined.color))
        if want["overlay"]:
            self.pub_overlay_refined.publish(
                _image_msg(header, *image_codec.encode_rgb(refined.overlay), refined.overlay))

    def _on_refine_error(self, item: tuple[Any, Any], exc: Exception) -> None:
        stamp = f"{item[1].stamp.sec}.{item[1].stamp.nanosec:09d}"
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
        """What is running (the loaded model) and where its frames come from."""
        return [("model", self.info["model"]), ("backend", self.info["backend"]),
                ("device", self.info["device"]), ("precision", self.info["precision"]),
                ("weights", str(self.info["weights"])), ("trained", str(self.pipeline.trained).lower()),
                ("classes", self.info["classes"]), ("input_topic", self.input_topic),
                ("input_transport", self.transport)]

    def _running_report(self) -> Report:
        s = self.settings
        report = self.stats.report(s.stale_input_timeout, s.error_threshold, self.input_topic)
        report.values += self._static_values() + self._crf_diagnostics()
        return report

    def _publish_diagnostics(self) -> None:
        report = self._health()
        status = DiagnosticStatus(level=bytes([report.level]), name=self._diag_status_name,
                                  message=report.message, hardware_id=self._hardware_id,
                                  values=[KeyValue(key=k, value=v) for k, v in report.values])
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diagnostics.publish(msg)


class SegmentNode(SegmentParts, Node):
    """The plain node: loads, warms up and takes frames from start-up to exit. Raises
    ConfigError / WeightsError (one clear message) when it cannot start."""

    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.init_parts()
        self.declare_node_parameters()
        values = self.config_values()
        self.load(values)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.start_diagnostics(values["diagnostics_period"])
        # subscribed before the warm-up: frames that arrive meanwhile are counted (as dropped)
        self.subscribe(first=self._warm_up_on_worker)

    def _warm_up_on_worker(self, stopping: threading.Event) -> bool:
        """On the worker thread, while the subscription already counts frames: warm up, then
        announce readiness. A model that cannot run at all is a start-up error (exit code 2)."""
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
        """Stop the worker (it finishes the frame in hand) and wait for it, at most ``timeout``
        seconds (launch escalates to SIGTERM after 5 s), then release the model. False when the
        worker is still busy, e.g. in the warm-up trace, which cannot be interrupted."""
        finished = self.stop_frames(timeout)
        self.release(timeout)
        self.remove_core_log_handler()
        return finished


def _image_msg(header, encoding: str, step: int, data, array_2d) -> Image:
    """An Image sharing ``header``; the pixels are copied once, into the array.array rclpy uses
    (``check_fields=True`` makes the setter keep that array instead of copying it again)."""
    msg = Image(check_fields=True)
    msg.header = header
    msg.height, msg.width = int(array_2d.shape[0]), int(array_2d.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = encoding, 0, int(step)
    buf = array.array("B")
    buf.frombytes(data)
    msg.data = buf
    return msg


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
            with open(path, encoding="utf-8") as f:
                yaml.safe_load(f)
        except OSError as exc:
            return f"params file {path} cannot be read: {exc.strerror or exc}"
        except yaml.YAMLError as exc:
            return f"params file {path} is not valid YAML: {' '.join(str(exc).split())}"
    return None


def run(args: list[str], guard: SignalGuard, node_class: type = SegmentNode) -> int:
    """The node's life: check the command line, start, spin until a stop signal, clean up.
    Start-up errors: one log line, exit code 2, no traceback. A stop signal: exit code 0.
    ``node_class``: :class:`SegmentNode` or the managed ``SegmentLifecycleNode``; it has a
    ``startup_error`` and a ``stop(timeout) -> bool`` (False: still busy, do not wait)."""
    apply_transport_defaults(NODE_NAME)  # before rclpy.init: large outputs without DDS stalls
    problem = _check_params_files(args) or P.override_problem(args, NODE_NAME)
    if problem:  # rcl would print its own unhelpful line first, or drop the override silently
        print(f"[{NODE_NAME}] error: {problem}", file=sys.stderr)
        return EXIT_STARTUP_ERROR
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # malformed --ros-args or params file
        print(f"[{NODE_NAME}] error: cannot initialise ROS: {str(exc).strip()}", file=sys.stderr)
        return EXIT_STARTUP_ERROR
    node: SegmentParts | None = None
    executor: SingleThreadedExecutor | None = None
    code = 0
    finished = True
    try:
        node = node_class()
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
    """Kept for ``python -m seg_ros.node.segment_node``; the console script is
    :func:`seg_ros.node.entry.main`, which guards the imports too."""
    from .entry import main as entry_main

    return entry_main(argv)


if __name__ == "__main__":
    sys.exit(main())
