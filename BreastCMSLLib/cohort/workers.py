"""The cohort's worker processes: how many, how each is set up, and a pool that survives one of them dying.

Each worker process reads, preprocesses and writes one case at a time (:mod:`BreastCMSLLib.cohort.stages`);
the cohort gets its parallelism from running cases side by side, so a worker's SimpleITK filters run on its
share of the cores instead of competing for all of them with the network and the other workers.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import multiprocessing
import os
import sys
from concurrent import futures
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import SimpleITK as sitk

from BreastCMSLLib.cohort.sources import CaseSource
from BreastCMSLLib.cohort.stages import Failed
from BreastCMSLLib.memory import huge_pages_for_children, keep_freed_memory

# The network is the one stage a case cannot overlap with itself, so it comes first: the workers run at this
# niceness (on a core they share with it, about a tenth of its share) and have the cores whenever it does not
# need them (benchmarks/README.md)
NICENESS = 10


def cores_per_rank() -> int:
    """This node's cores over the torchrun ranks on it (``LOCAL_WORLD_SIZE``), at least 1."""
    return max(1, (os.cpu_count() or 2) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def default_workers() -> int:
    """Worker processes per rank: half the rank's cores, at least 2, at most 8 (each holds one or two cases'
    volumes)."""
    return min(8, max(2, cores_per_rank() // 2))


def network_threads(workers: int) -> int:
    """The network's threads on a CPU: the rank's cores the ``workers`` processes leave, at least 1."""
    return max(1, cores_per_rank() - workers)


def start_worker(threads: int) -> None:
    """A worker process's initializer: yield the cores to the network (niceness +:data:`NICENESS`), keep freed
    memory, run SimpleITK on ``threads`` and import what the stages use, then move it out of the garbage
    collector's sight (``gc.freeze``: its collections then walk only what a case creates, not the objects of
    SimpleITK and matplotlib); at its exit, :func:`end_worker`."""
    if hasattr(os, "nice"):
        os.nice(NICENESS)
    for module in ("BreastCMSLLib.pipeline.output", "BreastCMSLLib.pipeline.figures"):  # else on the first case
        importlib.import_module(module)
    keep_freed_memory()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    gc.freeze()
    atexit.register(end_worker)


def end_worker() -> None:
    """A worker process's end: it has nothing left to finish (a case's files are in place and its record sent
    before its task returns), so it leaves without the interpreter's teardown, which the end of every run
    waited for (``benchmarks/README.md``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def started() -> int:
    """The task the first worker process gets first: its process id."""
    return os.getpid()


class Workers:
    """Up to ``n`` spawned worker processes, each with its share of the rank's cores (a context manager that closes
    them). The first starts at once and imports while the network's process plans the run; it gets the first
    case, which it reads and preprocesses while that process loads torch and the network. The others start as
    later cases find every process busy. Rebuilt when one of them dies (the cases then in flight are recorded as
    failed; a rerun retries them)."""

    def __init__(self, n: int):
        self.n = n
        self.threads = max(1, cores_per_rank() // (2 * n))
        self.pool, self.up = self._new()

    def _new(self) -> tuple[ProcessPoolExecutor, Future]:
        pool = ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker,
                                   initargs=(self.threads,))
        return pool, self._submit(pool, started)

    @staticmethod
    def _submit(pool: ProcessPoolExecutor, fn, *args) -> Future:
        """``pool.submit``: the pool starts a process for a task that finds none idle, with transparent huge pages
        for its memory (a new process faulted in its first cases' volumes page by page; ``benchmarks/README.md``)."""
        with huge_pages_for_children():
            return pool.submit(fn, *args)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(cancel=exc_type is not None)

    def submit(self, fn, *args) -> Future:
        """Run ``fn(*args)`` in a worker process. The first task waits until the first process is up, so that it
        goes to that process instead of starting a second one beside it."""
        futures.wait([self.up])
        try:
            return self._submit(self.pool, fn, *args)
        except BrokenProcessPool:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool, self.up = self._new()
            futures.wait([self.up])
            return self._submit(self.pool, fn, *args)

    def close(self, cancel: bool = False) -> None:
        self.pool.shutdown(wait=not cancel, cancel_futures=cancel)


def outcome(future: Future, source: CaseSource):
    """A stage's record; a worker process that died makes it a :class:`Failed`."""
    try:
        return future.result()
    except BrokenProcessPool as err:
        return Failed(source, f"a worker process died while this case was in flight ({err}); rerun to retry", 0.0)
