"""A fleet task (one bag, or one chunk of a long bag) and the worker that runs it.

Tasks, options and results are plain picklable dataclasses, so the same task runs in-process, in
a local worker process or in a Ray actor and gives the same result. A :class:`Worker` builds the
pipeline (and the CRF refiner) once and runs every task it is given with it.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError, SegRosError
from ..pipeline import PipelineConfig
from .control import Control, Interrupted
from .score import EvalOptions, EvalPart, eval_bag
from .segment import ReplayOptions, ReplayPart, replay_bag
from .sources import Span

REPLAY, EVAL = "replay", "eval"


@dataclass(frozen=True)
class PipelineSpec:
    """How every worker builds its pipeline: the pipeline configuration and the CRF mode."""

    config: PipelineConfig
    crf: str = "off"
    crf_config: str | None = None

    def with_threads(self, threads: int) -> "PipelineSpec":
        """Return the spec with ``threads`` CPU threads.

        The spec with ``threads`` CPU threads unless a thread count was chosen explicitly.
        """
        if self.config.num_threads or threads <= 0:
            return self
        config = dataclasses.replace(self.config, num_threads=threads)
        return dataclasses.replace(self, config=config)

    def settings(self) -> dict[str, Any]:
        """Return what decides the outputs, for the manifest's config fingerprint."""
        return {"pipeline": dataclasses.asdict(self.config), "crf": self.crf,
                "crf_config": self.crf_config}


@dataclass(frozen=True)
class Task:
    """One unit of work: replay or score ``input`` within ``span``.

    ``output`` is the output bag of this task (the bag's own output, or a chunk's part that is
    merged later).
    """

    key: str
    bag: str
    input: str
    kind: str
    span: Span
    output: str | None = None
    replay: ReplayOptions | None = None
    eval: EvalOptions | None = None
    label_folder: str | None = None

    def __post_init__(self) -> None:
        """Check that the task carries what its kind needs (where it is made, not run)."""
        if self.kind not in (REPLAY, EVAL):
            raise ConfigError(f"task {self.key}: unknown kind {self.kind!r}")
        if self.kind == REPLAY and (self.replay is None or self.output is None):
            raise ConfigError(f"task {self.key}: a replay task needs replay options and output")
        if self.kind == EVAL and self.eval is None:
            raise ConfigError(f"task {self.key}: an eval task needs eval options")


@dataclass
class TaskResult:
    """What a task gives back. ``status``: ok, failed (``error`` says why) or interrupted.

    ``loads``: pipelines built so far in the process that ran it; 1 in a worker process or Ray
    actor, however many tasks it ran (each worker loads the model once).
    """

    key: str
    status: str
    part: ReplayPart | EvalPart | None = None
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""
    pipeline: dict[str, Any] = field(default_factory=dict)
    trained: bool = False
    class_names: list[str] = field(default_factory=list)
    loads: int = 0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """The pipeline and refiner of one worker (process, actor or the driver), loaded once.

    ``name`` (default host:pid) identifies it in results and the manifest.
    """

    loads: ClassVar[int] = 0  # Workers built in this process (see TaskResult.loads)

    def __init__(self, spec: PipelineSpec, name: str | None = None) -> None:
        from ..crf import create_refiner, load_crf_config
        from ..pipeline import SegmentationPipeline
        self.spec = spec
        self.pipe = SegmentationPipeline(copy.deepcopy(spec.config))
        self.refiner = None
        if spec.crf != "off":
            crf_config = load_crf_config(spec.crf_config)
            self.refiner = create_refiner(spec.crf, crf_config, self.pipe.device)
        self.pipe.warm_up()  # per-shape tracing / graph capture now, not inside the first bag
        self.name = name or worker_name()
        Worker.loads += 1

    def run(self, task: Task, control: Control) -> TaskResult:
        """Run ``task``; every failure becomes a failed result (a bad bag never stops a run)."""
        t0 = time.perf_counter()
        result = TaskResult(task.key, "ok", worker=self.name, pipeline=self.pipe.describe(),
                            trained=bool(self.pipe.trained),
                            class_names=list(self.pipe.classes.names), loads=Worker.loads)
        try:
            result.part = self._execute(task, control)
        except Interrupted:
            result.status = "interrupted"
        except SegRosError as exc:
            result.status, result.error = "failed", str(exc)
        except Exception as exc:  # a bug or an unforeseen library error: record it, keep going
            traceback.print_exc(file=sys.stderr)
            result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
        result.seconds = time.perf_counter() - t0
        return result

    def _execute(self, task: Task, control: Control) -> ReplayPart | EvalPart:
        if task.kind == REPLAY:  # its replay options and output are set: Task.__post_init__
            return replay_bag(Path(task.input), Path(str(task.output)), self.pipe, task.replay,
                              refiner=self.refiner, span=task.span, control=control)
        label_folder = Path(task.label_folder) if task.label_folder else None
        return eval_bag(Path(task.input), self.pipe, task.eval, refiner=self.refiner,
                        span=task.span, label_folder=label_folder,
                        keep_unpaired=task.span.count > 1, control=control)
