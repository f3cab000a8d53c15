"""Fleet runs: replay or evaluate many bags in one command.

In-process, on local worker processes or on a Ray cluster, with a resumable JSON-lines manifest
(ROS-free core of ``seg-ros replay`` / ``seg-ros eval``; docs/replay.md).

- sources: which bags, where their outputs go, chunks of long bags
- segment / score: one bag (or chunk) replayed / scored; the single-bag tools use them too
- tasks: a picklable unit of work and what a worker holds (the pipeline, loaded once)
- engines: in-process, local processes, Ray actors
- manifest, report: the per-bag record and the fleet evaluation report
- runner: plans the tasks, drives an engine, merges chunks, writes manifest and reports
"""
