"""Options of a fleet run (many bags), shared by ``seg-ros replay`` and ``seg-ros eval``.

A run over many bags writes under ``--out`` a mirror of the input tree, ``manifest.jsonl`` and
the overall summary or report; see docs/replay.md "Many bags".
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
from pathlib import Path

from ..errors import ConfigError
from ..fleet.engines import InProcessEngine, LocalProcessEngine, RayEngine, import_ray
from ..fleet.runner import EngineFactory, FleetJob, FleetOutcome, FleetRunner, stop_on_signals
from ..fleet.tasks import PipelineSpec
from .common import pipeline_config_from_args

FLEET_ONLY = ("bag_list", "resume", "workers", "ray", "ray_address", "chunk_frames")


def add_fleet_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("many bags (docs/replay.md)")
    g.add_argument("--bag-list", type=Path, default=None, metavar="FILE",
                   help="file naming bags, folders or globs, one a line (relative to the file's "
                        "folder)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out: bags the manifest records ok are skipped")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="N local worker processes (with --ray: N Ray actors; default one per "
                        "free CPU/GPU)")
    g.add_argument("--ray", action="store_true", help="run on a local Ray started in this process")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="run on an existing Ray cluster (e.g. ray://head:10001 or auto)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="Ray: CPUs reserved per worker")
    g.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="Ray: GPUs per worker (0.5 puts two workers on a GPU)")
    g.add_argument("--chunk-frames", type=int, default=None, metavar="N",
                   help="split bags of more than N frames into tasks of about N frames (equal "
                        "time spans)")
    g.add_argument("--retries", type=int, default=1,
                   help="times a task is run again when its worker process dies (then: failed)")


def fleet_requested(args: argparse.Namespace) -> bool:
    """Whether a fleet-only option was given (a single bag then also runs as a fleet)."""
    return any(getattr(args, name) for name in FLEET_ONLY)


def check_fleet_args(args: argparse.Namespace) -> None:
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.chunk_frames is not None and args.chunk_frames < 1:
        raise ConfigError(f"--chunk-frames must be >= 1, got {args.chunk_frames}")
    if args.retries < 0:
        raise ConfigError(f"--retries must be >= 0, got {args.retries}")
    ray_sizing = args.gpus_per_worker or args.cpus_per_worker != 1.0
    if ray_sizing and not (args.ray or args.ray_address):
        raise ConfigError("--cpus-per-worker / --gpus-per-worker are Ray options: add --ray or "
                          "--ray-address")


def spec_from_args(args: argparse.Namespace) -> PipelineSpec:
    """Return the pipeline every worker builds.

    File paths made absolute (workers may run elsewhere).
    """
    config = pipeline_config_from_args(args)
    if config.weights not in ("default", "none", "") and Path(config.weights).exists():
        config = dataclasses.replace(config, weights=str(Path(config.weights).absolute()))
    crf_config = getattr(args, "crf_config", None)
    crf_path = str(Path(crf_config).absolute()) if crf_config else None
    return PipelineSpec(config, getattr(args, "crf", "off"), crf_path)


def engine_factory(args: argparse.Namespace, stop: threading.Event) -> EngineFactory:
    """In-process (default), --workers N local processes, or Ray (--ray / --ray-address).

    Each worker gets an equal share of the CPU threads unless --threads says otherwise. ``stop``
    is the run's Ctrl-C event: the in-process engine checks it at every frame of a task.
    """
    cpus = os.cpu_count() or 1
    if args.ray or args.ray_address:
        import_ray()  # a missing extra is a usage error before anything runs
        threads = max(1, int(args.cpus_per_worker))
        return lambda spec, progress: RayEngine(
            spec.with_threads(threads), args.workers, progress, address=args.ray_address,
            cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker)
    if args.workers:
        threads = max(1, cpus // args.workers)
        return lambda spec, progress: LocalProcessEngine(spec.with_threads(threads), args.workers,
                                                         progress)
    return lambda spec, progress: InProcessEngine(spec, progress, stop)


def run_fleet(job: FleetJob, args: argparse.Namespace) -> FleetOutcome:
    """Run ``job`` on the engine the options ask for; Ctrl-C / SIGTERM stop it cleanly."""
    with stop_on_signals() as stop:
        return FleetRunner(job, engine_factory(args, stop), stop).run()


def print_outcome(outcome: FleetOutcome, kind: str) -> None:
    print(f"{kind}: {outcome.bags} bags: {outcome.ok} ok, {len(outcome.failed)} failed"
          + (f", {outcome.skipped} already done (--resume)" if outcome.skipped else "")
          + f"; {outcome.frames} frames in {outcome.wall_s:.1f} s")
    for e in outcome.failed:
        print(f"  failed {e['bag']}: {e['error']}")
    print(f"  manifest:   {outcome.manifest}")
    for name, path in outcome.reports.items():
        print(f"  {name + ':':<11} {path}")
    if outcome.interrupted:
        print(f"{kind}: interrupted; finished bags are in the manifest: run again with --resume "
              f"to continue", file=sys.stderr)
