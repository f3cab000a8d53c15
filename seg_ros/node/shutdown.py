"""One orderly stop for SIGINT and SIGTERM, whenever they arrive.

A terminal's Ctrl-C reaches every process of the group, and ``ros2 launch`` forwards another
SIGINT (then SIGTERM) to the node: the node must stop once, cleanly, and ignore the repeats.
rclpy's own handler shuts the context down under the node's feet (start-up code then fails with
``RCLError: ... context is invalid``) and lets the second signal raise ``KeyboardInterrupt`` in the
middle of clean-up. So the node installs this guard first thing, before its heavy imports:

- during start-up (imports, model loading), the first signal raises :class:`ShutdownRequested`
  in the main thread, which the entry point turns into one log line and exit code 0;
- once running, a signal only sets :attr:`SignalGuard.requested`; the spin loop polls it;
- every later signal is ignored: clean-up is already under way.

ROS-free and light (standard library only), so it can be imported before anything else.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
REDELIVER_AFTER_S = 0.01  # a stop dropped inside a callback is sent again this much later


class ShutdownRequested(BaseException):
    """The first stop signal during start-up.

    Raised in the main thread by the first stop signal during start-up (a BaseException, so
    that ``except Exception`` in start-up code cannot swallow it).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """Turns the stop signals into one request; see the module docstring."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.signum: int | None = None
        self._raise_on_signal = True

    def install(self) -> "SignalGuard":
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._on_signal)
        self._previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = self._on_unraisable
        return self

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "none"

    def running(self) -> None:
        """Start-up is over: from now on a signal only sets :attr:`requested`."""
        self._raise_on_signal = False

    def ignore_from_now(self) -> None:
        """At the very end: ignore the stop signals.

        Python resets its handlers to the defaults while it finalises, so launch's forwarded second
        SIGINT would otherwise kill the exiting process (exit code -2, 'process has died').
        """
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _on_unraisable(self, unraisable) -> None:
        """Deliver again a stop that Python could not raise where it landed.

        A signal handler runs wherever the main thread is, also inside a callback whose
        exceptions Python can only print and drop ("Exception ignored in: ... _get_module_lock
        ... cb", seen during imports under load): start-up then went on as if no signal had
        come. Such a ShutdownRequested is not printed; the same signal is sent again, to land
        at the next ordinary point of start-up.
        """
        stop = unraisable.exc_value
        if not isinstance(stop, ShutdownRequested):
            self._previous_unraisablehook(unraisable)
            return
        self.signum, self._raise_on_signal = None, True
        threading.Timer(REDELIVER_AFTER_S, os.kill, (os.getpid(), stop.signum)).start()

    def _on_signal(self, signum: int, _frame) -> None:
        if self.signum is not None:
            return  # a repeat (terminal + launch): the stop is already under way
        self.signum = signum
        self.requested.set()
        if self._raise_on_signal:
            self._raise_on_signal = False
            raise ShutdownRequested(signum)


EXIT_WITH_PARENT_ENV = "SEG_ROS_EXIT_WITH_PARENT"
_PR_SET_PDEATHSIG = 1


def exit_with_parent(signum: int = signal.SIGTERM) -> bool:
    """Have Linux send ``signum`` to this process when its parent dies (prctl PR_SET_PDEATHSIG).

    ``ros2 launch`` ended with SIGTERM exits at once without stopping the processes it started
    (upstream launch warns 'using SIGTERM can result in orphaned processes'): with this, the
    orphaned node receives SIGTERM and stops cleanly through :class:`SignalGuard`. The launch file
    asks for it through the environment (``SEG_ROS_EXIT_WITH_PARENT=1``). False where not
    supported (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        return False
    if parent == 1 or os.getppid() != parent:  # the parent was gone before we asked
        os.kill(os.getpid(), signum)
    return True
