"""Where fleet tasks run: in the driver process, on N local worker processes, or on Ray actors.

Every engine holds workers that load the pipeline once (see tasks.Worker) and run one task at a
time, so a worker that dies is attributed to exactly the task it held: the runner retries or
records that task (``Lost``) and the engine starts a replacement. Progress reaches the driver
as frame counts per task (``on_progress(key, n)``); ``stop()`` makes running tasks end within
one frame with an ``interrupted`` result. The in-process engine runs a task inside ``poll()``, so
it also watches the runner's stop event (set by Ctrl-C) while the task runs.

The runner uses an engine as: ``start()``; while work remains: ``submit(task)`` while ``free()``,
then handle the events of ``poll(timeout)``; ``stop()`` on Ctrl-C; ``close()`` at the end.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..errors import ConfigError, SegRosError
from .control import Control
from .tasks import PipelineSpec, Task, TaskResult, Worker, worker_name

ProgressFn = Callable[[str, int], None]
PROGRESS_INTERVAL_S = 0.25
READY_TIMEOUT_S = 300.0  # Ray actors: start-up and model loading; beyond that they are stuck


@dataclass
class Done:
    """A task came back (ok, failed or interrupted)."""

    result: TaskResult


@dataclass
class Lost:
    """The worker holding the task died (killed, out of memory, node lost)."""

    key: str
    error: str


Event = Done | Lost


class Engine(Protocol):
    name: str

    def start(self) -> None: ...
    def free(self) -> int: ...
    def submit(self, task: Task) -> None: ...
    def poll(self, timeout: float) -> list[Event]: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class EngineError(SegRosError):
    """Workers could not be started (bad weights, no Ray cluster, ...)."""


# -- in-process ------------------------------------------------------------------------------
class InProcessEngine:
    """One worker: the driver itself (the default, and what the single-bag tools always did).

    ``poll()`` runs the whole task, so the runner's loop cannot call ``stop()`` during it: the task
    also checks ``stop_event`` (the runner's, set by the Ctrl-C handler) at every frame.
    """

    name = "in-process"

    def __init__(self, spec: PipelineSpec, on_progress: ProgressFn,
                 stop_event: threading.Event | None = None) -> None:
        self.spec, self.on_progress = spec, on_progress
        self.stop_event = stop_event or threading.Event()
        self.worker: Worker | None = None
        self.task: Task | None = None

    def start(self) -> None:
        self.worker = Worker(self.spec)

    def free(self) -> int:
        return 0 if self.task is not None else 1

    def submit(self, task: Task) -> None:
        self.task = task

    def poll(self, timeout: float) -> list[Event]:
        task, self.task = self.task, None
        if task is None or self.worker is None:
            return []
        control = Control(lambda n: self.on_progress(task.key, n), self.stop_event.is_set)
        return [Done(self.worker.run(task, control))]

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.worker = None


# -- local processes ---------------------------------------------------------------------------
def _process_main(conn: Any, spec: PipelineSpec, stop: Any) -> None:
    """Run a local worker process: load the pipeline once, run the tasks sent over ``conn``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C, tells us by ``stop``
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by _spawn until ignored
    try:
        worker = Worker(spec)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, SegRosError) else f"{type(exc).__name__}: {exc}"
        conn.send(("error", reason))
        return
    conn.send(("ready", worker.name))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the driver is gone
        if task is None:
            return
        control = Control(lambda n: conn.send(("frames", n)), stop.is_set, PROGRESS_INTERVAL_S)
        conn.send(("done", worker.run(task, control)))


@dataclass
class _Slot:
    process: Any
    conn: Any
    task: Task | None = None
    ready: bool = False
    name: str = ""


def exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by signal {-exitcode} ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class LocalProcessEngine:
    """N worker processes on this machine (multiprocessing, spawn), one pipe each."""

    name = "local processes"

    def __init__(self, spec: PipelineSpec, workers: int, on_progress: ProgressFn) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        self.spec, self.workers, self.on_progress = spec, workers, on_progress
        self.ctx = multiprocessing.get_context("spawn")
        self.stop_event = self.ctx.Event()
        self.slots: list[_Slot] = []

    def _spawn(self) -> _Slot:
        parent, child = self.ctx.Pipe()
        process = self.ctx.Process(target=_process_main, args=(child, self.spec, self.stop_event),
                                   name="seg-ros-worker", daemon=True)
        # A terminal's Ctrl-C reaches the whole process group: the new process inherits SIGINT
        # blocked, so one arriving while it starts up cannot kill it with a traceback.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.close()
        return _Slot(process, parent)

    def start(self) -> None:
        self.slots = [self._spawn() for _ in range(self.workers)]
        while not all(s.ready for s in self.slots):
            self.poll(1.0)

    def free(self) -> int:
        return sum(1 for s in self.slots if s.ready and s.task is None)

    def submit(self, task: Task) -> None:
        slot = next(s for s in self.slots if s.ready and s.task is None)
        slot.task = task
        try:
            slot.conn.send(task)
        except OSError:
            pass  # the worker just died: poll() sees its sentinel and reports the task Lost

    def poll(self, timeout: float) -> list[Event]:
        waitables = [s.conn for s in self.slots] + [s.process.sentinel for s in self.slots]
        multiprocessing.connection.wait(waitables, timeout)
        events: list[Event] = []
        for i, slot in enumerate(self.slots):
            events += self._receive(slot)
            if not slot.process.is_alive():
                events += self._replace(i)
        return events

    def _receive(self, slot: _Slot) -> list[Event]:
        events: list[Event] = []
        try:
            while slot.conn.poll():
                kind, value = slot.conn.recv()
                if kind == "ready":
                    slot.ready, slot.name = True, value
                elif kind == "error":
                    raise EngineError(f"a worker process cannot load the pipeline: {value}")
                elif kind == "frames" and slot.task is not None:
                    self.on_progress(slot.task.key, value)
                elif kind == "done":
                    slot.task = None
                    events.append(Done(value))
        except (EOFError, OSError):
            pass  # died: the sentinel tells
        return events

    def _replace(self, i: int) -> list[Event]:
        """Replace an ended worker process.

        Its task is lost; the new one loads the pipeline anew.
        """
        slot = self.slots[i]
        slot.process.join()
        if not slot.ready:
            raise EngineError(f"a worker process died while loading the pipeline "
                              f"({exit_reason(slot.process.exitcode)})")
        reason = f"worker process {slot.name} died ({exit_reason(slot.process.exitcode)})"
        lost = [Lost(slot.task.key, reason)] if slot.task else []
        slot.conn.close()
        self.slots[i] = self._spawn()
        return lost

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        for slot in self.slots:
            try:
                slot.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        for slot in self.slots:
            slot.process.join(max(0.1, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            slot.conn.close()
        self.slots = []


# -- Ray ---------------------------------------------------------------------------------------
class RayWorker:
    """The Ray actor: a Worker plus a frame counter the driver collects and a stop flag.

    Threaded (max_concurrency > 1), so ``frames`` and ``stop`` are answered while ``run`` works.
    Its name carries the GPUs Ray assigned it (manifest ``workers``: which GPU ran a bag).
    """

    def __init__(self, spec: PipelineSpec) -> None:
        import ray
        self.lock = threading.Lock()
        self.count = 0
        self.stop_flag = threading.Event()
        self.error: str | None = None
        self.name = worker_name()
        gpus = ray.get_gpu_ids()
        if gpus:
            self.name += f" GPU {','.join(str(g) for g in gpus)}"
        try:
            self.worker: Worker | None = Worker(spec, self.name)
        except SegRosError as exc:
            self.worker, self.error = None, str(exc)

    def ready(self) -> tuple[str, str | None]:
        return self.name, self.error

    def pid(self) -> int:
        return os.getpid()

    def _add(self, n: int) -> None:
        with self.lock:
            self.count += n

    def frames(self) -> int:
        with self.lock:
            n, self.count = self.count, 0
        return n

    def stop(self) -> None:
        self.stop_flag.set()

    def run(self, task: Task) -> TaskResult:
        if self.worker is None:  # the engine does not use a worker that failed to load
            raise EngineError(f"Ray worker {self.name} has no pipeline: {self.error}")
        control = Control(self._add, self.stop_flag.is_set, PROGRESS_INTERVAL_S)
        return self.worker.run(task, control)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray / --ray-address need the 'ray' package: "
                          "pip install 'seg_ros[ray]'") from None
    return ray


@dataclass
class _Actor:
    handle: Any
    name: str = ""
    task: Task | None = None
    ref: Any = None


class RayEngine:
    """Ray actors, each holding a pipeline.

    A local Ray started in-process (``address`` None) or an existing cluster. Inputs and outputs
    must be on storage every node sees at the same path. Workers that the cluster's resources
    cannot hold are refused at start (EngineError), and actors not ready within
    ``ready_timeout_s`` (resources held by other jobs, a stuck node) are an EngineError too.
    """

    name = "Ray"

    def __init__(self, spec: PipelineSpec, workers: int | None, on_progress: ProgressFn, *,
                 address: str | None = None, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.ray = import_ray()
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        if cpus_per_worker <= 0 or gpus_per_worker < 0:
            raise ConfigError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
        self.spec, self.workers, self.on_progress = spec, workers, on_progress
        self.address = address
        self.cpus, self.gpus = cpus_per_worker, gpus_per_worker
        self.ready_timeout_s = ready_timeout_s
        self.actors: list[_Actor] = []
        self.started_ray = False
        self.last_progress = 0.0
        self._cls: Any = None

    def _new_actor(self) -> Any:
        """Return a RayWorker actor: it reserves the worker's CPUs / GPUs.

        Threaded, so progress and stop calls are answered while a task runs.
        """
        if self._cls is None:
            self._cls = self.ray.remote(RayWorker).options(num_cpus=self.cpus, num_gpus=self.gpus,
                                                           max_concurrency=4)
        return self._cls.remote(self.spec)

    def _worker_count(self) -> int:
        """Return --workers, else as many workers as the cluster holds; EngineError if too many.

        Checked against the cluster's total CPUs / GPUs, as Ray would otherwise keep actors that
        can never be placed pending forever.
        """
        res = self.ray.cluster_resources()
        cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
        room = math.floor(cpus / self.cpus + 1e-9)
        if self.gpus > 0:
            room = min(room, math.floor(gpus / self.gpus + 1e-9))
        n = self.workers if self.workers is not None else room
        if n < 1 or n > room:
            asked = f"{n} workers" if n > 1 else "one worker"
            raise EngineError(f"the Ray cluster has {cpus:g} CPU and {gpus:g} GPU in all: no room "
                              f"for {asked} of {self.cpus:g} CPU and {self.gpus:g} GPU each (at "
                              f"most {room}; lower --workers, --cpus-per-worker or "
                              f"--gpus-per-worker)")
        return n

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.WARNING}
        if self.address is None:  # a local Ray: the CPUs the workers reserve, else all of them
            need = self.workers * self.cpus if self.workers else os.cpu_count() or 1
            kwargs["num_cpus"] = max(1, math.ceil(need))
        try:
            ray.init(address=self.address or "local", **kwargs)
        except Exception as exc:
            where = self.address or "local"
            raise EngineError(f"cannot start or reach Ray ({where}): {exc}") from None
        self.started_ray = True

    def start(self) -> None:
        self._connect()
        self.actors = [_Actor(self._new_actor()) for _ in range(self._worker_count())]
        self._await_ready(self.actors)

    def _await_ready(self, actors: list[_Actor]) -> None:
        """Wait until ``actors`` have loaded the pipeline, at most ``ready_timeout_s``."""
        ray = self.ray
        try:
            answers = ray.get([a.handle.ready.remote() for a in actors],
                              timeout=self.ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise EngineError(f"Ray workers not ready after {self.ready_timeout_s:g} s: the "
                              f"cluster cannot place them now (its CPUs / GPUs held by other "
                              f"jobs? see `ray status`) or they hang loading the model") from None
        except ray.exceptions.RayError as exc:
            raise EngineError(f"a Ray worker cannot start: {str(exc).splitlines()[0]}") from None
        for actor, (name, error) in zip(actors, answers):
            if error:
                raise EngineError(f"a Ray worker cannot load the pipeline: {error}")
            actor.name = name

    def free(self) -> int:
        return sum(1 for a in self.actors if a.task is None)

    def submit(self, task: Task) -> None:
        actor = next(a for a in self.actors if a.task is None)
        actor.task, actor.ref = task, actor.handle.run.remote(task)

    def poll(self, timeout: float) -> list[Event]:
        busy = [a for a in self.actors if a.task is not None]
        if not busy:
            return []
        refs = [a.ref for a in busy]
        self.ray.wait(refs, num_returns=1, timeout=timeout)
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        done = [a for a in busy if a.ref in ready]
        if done or time.monotonic() - self.last_progress >= PROGRESS_INTERVAL_S:
            self._collect_progress(busy)  # before a task's Done: its last frames first
        return [self._finish(actor, task) for actor in done if (task := actor.task) is not None]

    def _finish(self, actor: _Actor, task: Task) -> Event:
        ref = actor.ref
        actor.task = actor.ref = None
        try:
            return Done(self.ray.get(ref))
        except self.ray.exceptions.RayActorError as exc:
            self._replace(actor)
            return Lost(task.key, f"Ray worker {actor.name} died: {str(exc).splitlines()[0]}")

    def _replace(self, actor: _Actor) -> None:
        """Replace a dead actor by a new one (which loads the pipeline anew)."""
        try:
            self.ray.kill(actor.handle)
        except Exception:
            pass
        actor.handle = self._new_actor()
        self._await_ready([actor])

    def _collect_progress(self, busy: list[_Actor]) -> None:
        """Frame counts of the busy actors since the last call (a dead actor's die with it)."""
        self.last_progress = time.monotonic()
        asks = {actor.handle.frames.remote(): actor for actor in busy}
        answered, _ = self.ray.wait(list(asks), num_returns=len(asks), timeout=2.0)
        for ref in answered:
            try:
                n = self.ray.get(ref)
            except self.ray.exceptions.RayError:
                continue  # a dead actor: its task's ref reports it
            task = asks[ref].task
            if n and task is not None:
                self.on_progress(task.key, n)

    def stop(self) -> None:
        for actor in self.actors:
            if actor.task is not None:
                actor.handle.stop.remote()

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor.handle)
            except Exception:
                pass
        self.actors = []
        if self.started_ray:
            self.ray.shutdown()
