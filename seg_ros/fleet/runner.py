"""Run a fleet job.

Find the bags, plan their tasks, drive an engine, merge chunks, and record every bag in the
manifest as it finishes.

A bag is ``ok`` once all its tasks came back ok (chunk outputs merged, summary or scores
written); ``failed`` when it cannot be read, a task fails, or its worker died on every attempt.
A failure never stops the other bags. Ctrl-C (or SIGTERM) stops the run within about a frame:
running tasks end ``interrupted``, their partial outputs are removed, the manifest holds only
finished bags, and ``--resume`` continues from it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from .. import bags
from ..errors import ConfigError, SegRosError
from ..metrics import ConfusionAccumulator
from . import report as fleet_report
from .engines import Done, Engine, Lost, ProgressFn
from .manifest import Manifest, fingerprint, is_done, utc_now
from .score import EvalOptions, EvalPart, pair_leftovers
from .segment import ReplayOptions, ReplayPart, merge_parts, summarize
from .sources import BAG_SUFFIXES, BagPlan, BagSource, Missing, find_bags, plan_bag
from .tasks import EVAL, REPLAY, PipelineSpec, Task, TaskResult

EngineFactory = Callable[[PipelineSpec, ProgressFn], Engine]
BarFactory = Callable[[int, str], Any]  # (total frames, kind) -> a tqdm-like bar
STOP_GRACE_S = 30.0


def progress_bar(total: int, kind: str) -> tqdm:
    """Return the run's one bar: frames over all bags, on stderr when it is a terminal."""
    return tqdm(total=total, desc=kind, unit="frame", disable=None, file=sys.stderr)


@dataclass
class FleetJob:
    """Everything a fleet run is asked to do (what the CLI options say)."""

    kind: str
    inputs: Sequence[str]
    out_dir: Path
    spec: PipelineSpec
    replay: ReplayOptions | None = None
    eval: EvalOptions | None = None
    list_file: Path | None = None
    chunk_frames: int | None = None
    resume: bool = False
    overwrite: bool = False
    attempts: int = 2

    def __post_init__(self) -> None:
        """Check that the job has a known kind and its options (the runner relies on both)."""
        if self.kind not in (REPLAY, EVAL):
            raise ConfigError(f"unknown fleet job kind {self.kind!r}")
        if (self.replay if self.kind == REPLAY else self.eval) is None:
            raise ConfigError(f"a fleet {self.kind} job needs its {self.kind} options")

    def settings(self) -> dict[str, Any]:
        """Return the options that decide outputs (not threads, engine or overwrite).

        The fingerprint that tells --resume whether a finished bag still counts.
        """
        spec = self.spec.settings()
        spec["pipeline"] = {k: v for k, v in spec["pipeline"].items() if k != "num_threads"}
        chosen = self.replay if self.kind == REPLAY else self.eval
        options = dataclasses.asdict(chosen) if chosen is not None else {}
        options.pop("overwrite", None)
        return {"kind": self.kind, "spec": spec, "options": options}


@dataclass
class BagWork:
    """A bag being processed: its plan, tasks and the results received so far."""

    source: BagSource
    plan: BagPlan
    tasks: list[Task]
    results: dict[str, TaskResult] = field(default_factory=dict)
    frames_reported: int = 0
    lost: int = 0
    closed: bool = False

    @property
    def rel(self) -> str:
        return str(self.source.rel)

    @property
    def chunked(self) -> bool:
        return len(self.tasks) > 1


@dataclass
class FleetOutcome:
    """What the run ended with (for the CLI's summary and exit code)."""

    bags: int
    ok: int
    failed: list[dict[str, Any]]
    skipped: int
    interrupted: bool
    frames: int
    wall_s: float
    manifest: Path
    reports: dict[str, Path] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0: every bag ok; 1: some bag failed; 130: stopped by Ctrl-C (resume with --resume)."""
        return 130 if self.interrupted else (1 if self.failed else 0)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """First Ctrl-C / SIGTERM: set the event (stop cleanly); a second Ctrl-C aborts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()  # only that: the runner says so from its loop (no I/O in a signal handler)

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _rel_path(out_dir: Path, path: Path) -> str:
    return str(path.relative_to(out_dir))


def label_folder_of(label_dir: Path, rel: Path) -> Path:
    """Return the label PNGs of the bag ``rel``: ``label_dir/<rel without .mcap / .db3>/``."""
    return label_dir / (rel.with_suffix("") if rel.suffix in BAG_SUFFIXES else rel)


class FleetRunner:
    """Plans and runs one FleetJob on the engine ``make_engine`` builds.

    ``stop`` is the event that Ctrl-C sets (stop_on_signals); ``make_bar`` makes the progress bar.
    """

    def __init__(self, job: FleetJob, make_engine: EngineFactory,
                 stop: threading.Event | None = None,
                 make_bar: BarFactory = progress_bar) -> None:
        self.job = job
        self.make_engine = make_engine
        self.stop = stop or threading.Event()
        self.make_bar = make_bar
        self.out = job.out_dir
        self.manifest = Manifest(job.out_dir)
        self.config = fingerprint(job.settings())
        self.works: dict[str, BagWork] = {}
        self.task_frames: Counter[str] = Counter()  # frames reported per task (undone on a retry)
        self.losses: Counter[str] = Counter()  # worker deaths per task
        self.closed = 0  # bags finished (ok or failed) in this run
        self.bar: Any = None
        # for benchmarks: engine start-up / running the tasks / closing, and per task the time from
        # submitting it to seeing its result minus the time inside it (dispatch overhead)
        self.timings: dict[str, float] = {}
        self.task_overheads_s: list[float] = []

    # -- set-up ------------------------------------------------------------------------------
    def _prepare_out(self) -> dict[str, dict[str, Any]]:
        """Check the output folder against --resume / --overwrite; the entries to resume from."""
        if self.manifest.exists() and not (self.job.resume or self.job.overwrite):
            raise ConfigError(f"{self.manifest.path} exists: pass --resume to continue that run "
                              f"or --overwrite to start again")
        if self.job.overwrite and not self.job.resume:
            self.manifest.reset()
        self.out.mkdir(parents=True, exist_ok=True)
        return self.manifest.entries() if self.job.resume else {}

    def _outputs(self, rel: Path) -> dict[str, Path]:
        if self.job.kind == REPLAY:
            return {"bag": self.out / rel, "summary": self.out / f"{rel}.summary.json",
                    "parts": self.out / f"{rel}.parts"}
        return {"report": self.out / f"{rel}.eval.json"}

    def _plan(self, source: BagSource) -> BagWork:
        """Open the bag's metadata, choose topics, cut chunks, make its tasks (BagError if bad)."""
        return self._plan_replay(source) if self.job.kind == REPLAY else self._plan_eval(source)

    def _plan_replay(self, source: BagSource) -> BagWork:
        job, out = self.job, self._outputs(source.rel)  # job.replay is set (__post_init__)
        if out["bag"].exists() and not (job.resume or job.overwrite):
            raise bags.BagError(f"output bag {out['bag']} exists already (pass --overwrite or "
                                f"--resume)")
        plan = plan_bag(source.path, job.replay.topics, job.chunk_frames, job.replay.max_frames)
        options = dataclasses.replace(job.replay, topics=plan.topics, overwrite=True)
        if len(plan.spans) == 1:
            task = Task(f"{source.rel}#0", str(source.rel), str(source.path), REPLAY,
                        plan.spans[0], output=str(out["bag"]), replay=options)
            return BagWork(source, plan, [task])
        part = dataclasses.replace(options, storage=None)  # chunks: .mcap parts, merged later
        tasks = [Task(f"{source.rel}#{s.index}", str(source.rel), str(source.path), REPLAY, s,
                      output=str(out["parts"] / f"part-{s.index:05d}.mcap"), replay=part)
                 for s in plan.spans]
        return BagWork(source, plan, tasks)

    def _plan_eval(self, source: BagSource) -> BagWork:
        job = self.job  # job.eval is set: FleetJob.__post_init__
        given = [job.eval.image_topic] if job.eval.image_topic else None
        labels = [job.eval.label_topic] if job.eval.label_topic else []
        plan = plan_bag(source.path, given, job.chunk_frames, job.eval.max_frames,
                        not_images=labels)
        if len(plan.topics) > 1:
            raise bags.BagError(f"bag {source.path} has several image topics "
                                f"({', '.join(plan.topics)}): choose one with --image-topic")
        options = dataclasses.replace(job.eval, image_topic=plan.topics[0])
        folder = None
        if job.eval.label_dir:
            folder = label_folder_of(Path(job.eval.label_dir), source.rel)
        tasks = [Task(f"{source.rel}#{s.index}", str(source.rel), str(source.path), EVAL, s,
                      eval=options, label_folder=str(folder) if folder else None)
                 for s in plan.spans]
        return BagWork(source, plan, tasks)

    # -- manifest entries ------------------------------------------------------------------------
    def _entry(self, rel: str, input_: str, status: str, *, frames: int = 0, seconds: float = 0.0,
               outputs: Sequence[Path] = (), error: str | None = None, work: BagWork | None = None,
               **extra: Any) -> dict[str, Any]:
        entry = {"bag": rel, "input": input_, "status": status, "frames": int(frames),
                 "seconds": round(float(seconds), 3),
                 "outputs": [_rel_path(self.out, p) for p in outputs],
                 "error": error, "retries": work.lost if work else 0,
                 "chunks": len(work.tasks) if work else 0,
                 "workers": sorted({r.worker for r in work.results.values()}) if work else [],
                 "config": self.config, "finished": utc_now()}
        entry.update(extra)
        return entry

    def _record(self, entry: dict[str, Any]) -> None:
        self.manifest.append(entry)
        if entry["status"] != "ok":
            line = f"failed: {entry['bag']}: {entry['error']}"
        else:
            line = f"ok: {entry['bag']} ({entry['frames']} frames, {entry['seconds']:.1f} s)"
        tqdm.write(line, file=sys.stderr)

    # -- progress -------------------------------------------------------------------------------
    def _progress(self, key: str, n: int) -> None:
        work = self.works.get(key.rsplit("#", 1)[0])
        if work is None or work.closed:
            return
        self.task_frames[key] += n
        work.frames_reported += n
        if self.bar is not None:
            self.bar.update(n)

    def _settle_bar(self, work: BagWork) -> None:
        """Count a finished bag for its planned frames, whatever was reported."""
        self.closed += 1
        if self.bar is not None:
            self.bar.update(work.plan.frames - work.frames_reported)
            self.bar.set_postfix_str(f"bags {self.closed}/{len(self.works)}")
        work.frames_reported = work.plan.frames

    # -- results ----------------------------------------------------------------------------------
    def _on_result(self, result: TaskResult) -> None:
        work = self.works[result.key.rsplit("#", 1)[0]]
        if work.closed:
            task = next(t for t in work.tasks if t.key == result.key)
            if task.output and work.chunked:
                shutil.rmtree(Path(task.output).parent, ignore_errors=True)
            return
        if result.status == "interrupted":
            return
        work.results[result.key] = result
        if result.status == "failed":
            self._fail(work, result.error or "failed")
        elif len(work.results) == len(work.tasks):
            try:
                self._finish(work)
            except SegRosError as exc:
                self._fail(work, str(exc))

    def _on_lost(self, task: Task, error: str) -> Task | None:
        """Handle a worker that died holding ``task``: return it to rerun, or None (given up)."""
        work = self.works[task.bag]
        work.lost += 1
        self.losses[task.key] += 1
        if self.bar is not None:
            self.bar.update(-self.task_frames[task.key])
        work.frames_reported -= self.task_frames.pop(task.key, 0)
        attempts = self.losses[task.key]
        if attempts < self.job.attempts:
            tqdm.write(f"retrying {task.key}: {error}", file=sys.stderr)
            return task
        self._fail(work, f"{error}; gave up after {attempts} attempts")
        return None

    def _fail(self, work: BagWork, error: str) -> None:
        work.closed = True
        self._remove_outputs(work)
        seconds = sum(r.seconds for r in work.results.values())
        self._record(self._entry(work.rel, str(work.source.path), "failed",
                                 frames=work.plan.frames, seconds=seconds, error=error, work=work))
        self._settle_bar(work)

    def _remove_outputs(self, work: BagWork) -> None:
        """Nothing of an unfinished or failed bag is left to be taken for a result."""
        for kind, path in self._outputs(work.source.rel).items():
            if kind == "parts":
                shutil.rmtree(path, ignore_errors=True)
            elif kind != "bag":
                path.unlink(missing_ok=True)
            else:
                try:
                    bags.remove_bag(path)
                except bags.BagError as exc:  # something not ours is in the way: leave it, say so
                    tqdm.write(f"warning: {exc}", file=sys.stderr)

    def _finish(self, work: BagWork) -> None:
        results = [work.results[t.key] for t in work.tasks]
        if self.job.kind == REPLAY:
            entry = self._finish_replay(work, results)
        else:
            entry = self._finish_eval(work, results)
        work.closed = True
        self._record(entry)
        self._settle_bar(work)

    def _finish_replay(self, work: BagWork, results: list[TaskResult]) -> dict[str, Any]:
        out = self._outputs(work.source.rel)
        parts: list[ReplayPart] = [r.part for r in results]  # type: ignore[misc]
        if work.chunked:
            merge_parts([Path(str(t.output)) for t in work.tasks], out["bag"],
                        self.job.replay.storage, overwrite=True)
            shutil.rmtree(out["parts"], ignore_errors=True)
        summary = summarize(parts, str(out["bag"]), results[0].pipeline, results[0].trained,
                            self.job.spec.crf)
        summary.update(bag=work.rel, elapsed_s=sum(r.seconds for r in results))
        out["summary"].write_text(json.dumps(summary, indent=2))
        ok = bool(summary["segmented"]) or not summary["frames"]
        error = None if ok else f"no frame could be segmented: {summary['failure_examples']}"
        return self._entry(work.rel, str(work.source.path), "ok" if ok else "failed",
                           frames=summary["frames"], seconds=summary["elapsed_s"],
                           outputs=[out["bag"], out["summary"]], error=error, work=work,
                           segmented=summary["segmented"], failed_frames=summary["failed"])

    def _finish_eval(self, work: BagWork, results: list[TaskResult]) -> dict[str, Any]:
        parts: list[EvalPart] = [r.part for r in results]  # type: ignore[misc]
        first = parts[0].acc
        acc = ConfusionAccumulator(first.num_classes, first.ignore_id)
        acc.matrix = np.sum([p.acc.matrix for p in parts], axis=0)
        acc.images = sum(p.acc.images for p in parts)
        skipped = [s for p in parts for s in p.skipped]
        if work.chunked:
            image_topic = str(work.plan.topics[0])
            pair_leftovers(parts, acc, skipped, image_topic, self.job.eval.label_topic)
        frames = sum(p.frames for p in parts)
        seconds = sum(r.seconds for r in results)
        if acc.images == 0:
            why = "; ".join(skipped[:3]) or "no data"
            return self._entry(work.rel, str(work.source.path), "failed", frames=frames,
                               seconds=seconds, error=f"no image could be scored: {why}",
                               work=work)
        rep = acc.scores().to_dict(results[0].class_names)
        rep.update({"bag": work.rel, "input": str(work.source.path), "images": acc.images,
                    "frames": frames, "skipped_frames": len(skipped), "skipped": skipped,
                    "ignore_id": first.ignore_id,
                    "model": results[0].pipeline, "trained": results[0].trained,
                    "crf": self.job.spec.crf, "image_topic": work.plan.topics[0]})
        path = self._outputs(work.source.rel)["report"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rep, indent=2))
        return self._entry(work.rel, str(work.source.path), "ok", frames=frames, seconds=seconds,
                           outputs=[path], work=work, images=acc.images, miou=rep["miou"],
                           pixel_accuracy=rep["pixel_accuracy"])

    # -- the loop ----------------------------------------------------------------------------
    def _drive(self, engine: Engine, works: list[BagWork]) -> None:
        pending = deque(t for w in works for t in w.tasks)
        running: dict[str, Task] = {}
        submitted: dict[str, float] = {}
        deadline: float | None = None
        while pending or running:
            if self.stop.is_set() and deadline is None:
                tqdm.write("stopping: running bags are abandoned, finished ones stay in the "
                           "manifest (continue with --resume; Ctrl-C again to abort at once)",
                           file=sys.stderr)
                engine.stop()
                pending.clear()
                deadline = time.monotonic() + STOP_GRACE_S
            if deadline is not None and time.monotonic() > deadline:
                break  # tasks that ignore the stop are killed by engine.close()
            while pending and engine.free():
                task = pending.popleft()
                if not self.works[task.bag].closed:
                    submitted[task.key] = time.perf_counter()
                    engine.submit(task)
                    running[task.key] = task
            for event in engine.poll(0.2):
                if isinstance(event, Done):
                    running.pop(event.result.key, None)
                    waited = time.perf_counter() - submitted.pop(event.result.key)
                    self.task_overheads_s.append(waited - event.result.seconds)
                    self._on_result(event.result)
                elif isinstance(event, Lost):
                    task = running.pop(event.key)
                    if self.stop.is_set():
                        continue  # stopping: the task is simply not done
                    if (again := self._on_lost(task, event.error)) is not None:
                        pending.appendleft(again)

    def run(self) -> FleetOutcome:
        t0 = time.perf_counter()
        previous = self._prepare_out()
        sources, missing = find_bags(self.job.inputs, self.job.list_file, exclude=self.out)
        if not sources and not missing:
            raise ConfigError("no bag given")
        for m in missing:
            self._record(self._entry(m.text, m.text, "failed", error=m.error))
        todo = [s for s in sources if not is_done(previous.get(str(s.rel)), self.config, self.out)]
        works: list[BagWork] = []
        for source in todo:
            try:
                works.append(self._plan(source))
            except bags.BagError as exc:
                self._record(self._entry(str(source.rel), str(source.path), "failed",
                                         error=str(exc)))
        self.works = {w.rel: w for w in works}
        try:
            if works:
                self._run_engine(works)
        finally:
            for work in works:
                if not work.closed:  # interrupted, or the engine failed: nothing half-done stays
                    self._remove_outputs(work)
        interrupted = self.stop.is_set()
        wall = time.perf_counter() - t0
        return self._outcome(sources, missing, len(sources) - len(todo), interrupted, wall)

    def _run_engine(self, works: list[BagWork]) -> None:
        total = sum(w.plan.frames for w in works)
        self.bar = self.make_bar(total, self.job.kind)
        self.bar.set_postfix_str(f"bags 0/{len(works)}")
        engine = self.make_engine(self.job.spec, self._progress)
        try:
            t0 = time.perf_counter()
            engine.start()
            t1 = time.perf_counter()
            self._drive(engine, works)
            self.timings.update(startup_s=t1 - t0, drive_s=time.perf_counter() - t1)
        finally:
            t2 = time.perf_counter()
            engine.close()
            self.timings["close_s"] = time.perf_counter() - t2
            self.bar.close()

    def _outcome(self, sources: list[BagSource], missing: list[Missing], skipped: int,
                 interrupted: bool, wall_s: float) -> FleetOutcome:
        entries = self.manifest.entries()
        names = [str(s.rel) for s in sources] + [m.text for m in missing]
        final = [entries[n] for n in names if n in entries]
        ok = [e for e in final if e["status"] == "ok"]
        failed = [e for e in final if e["status"] != "ok"]
        outcome = FleetOutcome(len(names), len(ok), failed, skipped, interrupted,
                               sum(e["frames"] for e in ok), wall_s, self.manifest.path)
        if not interrupted:
            outcome.reports = self._write_summary(ok, failed)
        return outcome

    def _write_summary(self, ok: list[dict[str, Any]],
                       failed: list[dict[str, Any]]) -> dict[str, Path]:
        """Return the run's overall files.

        replay_summary.json, or eval_report.json / .md / .png.
        """
        if self.job.kind == EVAL:
            if not ok:
                return {}
            reports = [json.loads((self.out / e["outputs"][0]).read_text()) for e in ok]
            return fleet_report.write_report(self.out, fleet_report.fleet_report(reports, failed))
        seconds = sum(e["seconds"] for e in ok)
        frames = sum(e.get("segmented", 0) for e in ok)
        summary = {"bags": len(ok) + len(failed), "ok": len(ok), "failed": len(failed),
                   "frames": sum(e["frames"] for e in ok), "segmented": frames,
                   "task_seconds": seconds,
                   "frames_per_task_second": frames / seconds if seconds > 0 else None,
                   "failed_bags": [{"bag": e["bag"], "error": e["error"]} for e in failed]}
        path = self.out / "replay_summary.json"
        path.write_text(json.dumps(summary, indent=2))
        return {"json": path}
