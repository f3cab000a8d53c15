"""``segment_lifecycle_node``: ``segment_node`` as a ROS 2 managed (lifecycle) node.

Same name, parameters and topics as ``segment_node``, built from the same
:class:`~seg_ros.node.segment_node.SegmentParts`; a system manager (launch's lifecycle events,
Nav2's lifecycle manager, ``ros2 lifecycle set``) drives it through ``~/change_state``:

- *unconfigured*: parameters declared, nothing loaded. Parameters that ``segment_node`` fixes
  for its lifetime (model, weights, device, ...) may be set now; they apply at ``configure``.
- ``configure``: load model and weights, warm up, create the (managed) publishers. A failure
  (missing weights, bad parameter) is one log line and FAILURE: still unconfigured, ready for
  another try.
- ``activate``: subscribe, segment and publish; ~/class_info announces the model.
- ``deactivate``: unsubscribe (the frame in hand finishes), publishers off; the model stays warm.
- ``cleanup``: release the model and the publishers and give the memory back, so that another
  ``configure`` can load another model or weights in the same process.
- ``shutdown`` (from any primary state) and error processing: stop frames, release everything.
  A stop signal (Ctrl-C, SIGTERM) runs the shutdown transition before the process exits.

/diagnostics carries ``lifecycle_state`` in every state.
"""
from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

import rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from ..errors import SegRosError
from ..memory import resident_bytes
from . import params as P
from .diagnostics import OK, Report
from .segment_node import NODE_NAME, SPIN_PERIOD_S, STOP_TIMEOUT_S, SegmentParts

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE
ERROR = TransitionCallbackReturn.ERROR
PRIMARY_STATES = ("unconfigured", "inactive", "active")  # those a shutdown can start from
IDLE_MESSAGES = {
    "unconfigured": "unconfigured: no model loaded (configure loads it)",
    "inactive": "inactive: model loaded and warm, not taking frames (activate starts)",
    "finalized": "finalized: shut down, nothing loaded",
}

Transition = Callable[["SegmentLifecycleNode", LifecycleState], TransitionCallbackReturn]


def _reason(exc: Exception) -> str:
    """Our own errors say what is wrong in their message; others need their type too."""
    return str(exc) if isinstance(exc, SegRosError) else f"{type(exc).__name__}: {exc}"


def _logged(name: str) -> Callable[[Transition], Transition]:
    """Log one line and return ERROR when a transition callback raises.

    A transition callback that raises logs one line and returns ERROR (rclpy would turn the
    exception into ERROR silently), so error processing follows with the reason on record.
    """
    def wrap(callback: Transition) -> Transition:
        @functools.wraps(callback)
        def run(self: "SegmentLifecycleNode", state: LifecycleState) -> TransitionCallbackReturn:
            try:
                return callback(self, state)
            except Exception as exc:
                self.get_logger().error(f"{name} failed: {_reason(exc)}")
                return ERROR
        return run
    return wrap


def _mib(size: int | None) -> str:
    return "?" if size is None else f"{size / 2**20:.0f} MiB"


class SegmentLifecycleNode(SegmentParts, LifecycleNode):
    """The managed segment node; see the module docstring for what each transition does."""

    RECONFIGURABLE = True

    def __init__(self, cli_args: list[str] | None = None, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.init_parts()
        values = self.declare_node_parameters(cli_args)
        self.settings = P.settings_from(values)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.start_diagnostics(values["diagnostics_period"])
        self._finished = True
        self._warming: threading.Thread | None = None
        self.transition_times: dict[str, float] = {}
        self.get_logger().info("unconfigured: parameters declared, waiting for configure")

    def lifecycle_state(self) -> str:
        """Return the current state's label.

        The current state's label (rclpy has no public getter; its own trigger_shutdown reads
        the state machine the same way).
        """
        return self._state_machine.current_state[1]

    # -- transitions ----------------------------------------------------------------------
    @_logged("configure")
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        started = time.monotonic()
        try:
            values = self.config_values()
            self.load(values)
            self._diag_timer.timer_period_ns = int(values["diagnostics_period"] * 1e9)
            if not self._warm_up_unless_stopped():
                self.get_logger().warning("configure abandoned: a stop was requested during "
                                          "the warm-up")
                return FAILURE
        except Exception as exc:  # missing weights, bad parameter, a model that cannot run
            self.release()
            self.get_logger().error(f"configure failed: {_reason(exc)}; still unconfigured")
            return FAILURE
        info = self.info
        self._record("configure", started,
                     f"model {info['model']} ({info['weights']}) on {info['device']}")
        return SUCCESS

    @_logged("activate")
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        started = time.monotonic()
        result = super().on_activate(state)  # the managed publishers publish from now on
        if result != SUCCESS:
            return result
        self.subscribe()
        self.announce_ready()
        self._record("activate", started, f"taking frames on {self.input_topic}")
        return SUCCESS

    @_logged("deactivate")
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        started = time.monotonic()
        self.stop_frames(timeout=None)  # the frame in hand finishes: one worker at a time
        result = super().on_deactivate(state)
        self._record("deactivate", started, "not taking frames; the model stays loaded")
        return result

    @_logged("cleanup")
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        started = time.monotonic()
        before = resident_bytes()
        result = super().on_cleanup(state)
        self.release()
        self._record("cleanup", started, f"model released, RSS {_mib(before)} -> "
                                         f"{_mib(resident_bytes())}")
        return result

    @_logged("shutdown")
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        started = time.monotonic()
        self._finished = self.stop_frames(STOP_TIMEOUT_S) and not self._still_warming()
        result = super().on_shutdown(state)
        if self._finished:  # else the process ends without waiting (run()): leave it be
            self.release()
        self._record("shutdown", started, f"finalized from {state.label}: everything released")
        return result

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """After a transition raised (logged by :func:`_logged`).

        Back to unconfigured with nothing loaded, so a manager can configure again; FAILURE
        (finalized) if even that fails.
        """
        try:
            self.stop_frames(timeout=None)
            self.release()
        except Exception as exc:
            self.get_logger().error(f"error processing failed: {_reason(exc)}; finalizing")
            return FAILURE
        self.get_logger().warning(f"error processing (from {state.label}): frames stopped, "
                                  "model released; unconfigured")
        return SUCCESS

    def _warm_up_unless_stopped(self) -> bool:
        """:meth:`warm_up` on a helper thread.

        Waited for here, so that a stop signal during a trace that cannot be interrupted still ends
        the process promptly. False: a stop was requested first (the trace runs on; the process
        will not wait for it).
        """
        failure: list[Exception] = []

        def warm_up() -> None:
            try:
                self.warm_up()
            except Exception as exc:  # raised again on the transition's thread
                failure.append(exc)

        self._warming = threading.Thread(target=warm_up, name="segment_warm_up", daemon=True)
        self._warming.start()
        while self._warming.is_alive():
            if self.stop_requested.is_set():
                return False
            self._warming.join(SPIN_PERIOD_S)
        if failure:
            raise failure[0]
        return True

    def _still_warming(self) -> bool:
        return self._warming is not None and self._warming.is_alive()

    def _record(self, transition: str, started: float, what: str) -> None:
        seconds = time.monotonic() - started
        self.transition_times[transition] = seconds
        self.get_logger().info(f"{transition} done in {seconds * 1e3:.0f} ms: {what}")

    # -- the end of the process -----------------------------------------------------------
    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """On a stop signal.

        The shutdown transition from whatever primary state the node is in (managers see
        'finalized'). False when the worker is still busy with a frame.
        """
        if self.lifecycle_state() in PRIMARY_STATES and rclpy.ok(context=self.context):
            self.trigger_shutdown()
        else:  # finalized already, or ROS shut down under us: just let go of everything
            self._finished = self.stop_frames(timeout) and not self._still_warming()
            if self._finished:
                self.release(timeout)
        self.remove_core_log_handler()
        return self._finished

    # -- hooks of SegmentParts ------------------------------------------------------------
    def _create_output(self, msg_type: type, topic: str, qos) -> Any:
        return self.create_lifecycle_publisher(msg_type, topic, qos)

    def _destroy_output(self, publisher: Any) -> None:
        self.destroy_lifecycle_publisher(publisher)

    def _restart_parameter_refusal(self, name: str) -> str | None:
        if not P.SPECS[name].in_yaml:
            return f"parameter {name!r} is set by the node from the loaded model"
        state = self.lifecycle_state()
        if state == "unconfigured":
            return None
        return (f"parameter {name!r} can be changed only while the node is unconfigured "
                f"(now {state}; deactivate and clean up first, then configure)")

    def _health(self) -> Report:
        state = self.lifecycle_state()
        if state == "active":
            report = self._running_report()
        else:
            loaded = self._static_values() if self.pipeline is not None else []
            report = Report(OK, IDLE_MESSAGES.get(state, state), loaded)
        report.values.insert(0, ("lifecycle_state", state))
        return report

