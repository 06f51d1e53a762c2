"""glibc malloc settings for processes that analyze case after case: the panel's warm worker and the cohort's
processes.

With glibc's defaults every freed block over its mmap threshold (32 MB at most) goes back to the system, the top
of the heap is trimmed beyond 128 KB, and each thread allocates from an arena of its own that maps every large
block anew; so each analysis at the paper's size faulted in 2-3 GB of fresh zero pages again (volumes, network
input, activations, maps). With these settings every block comes from one heap that is never trimmed, and an
analysis reuses the pages the previous one freed; in exchange an idle process keeps its peak memory until it
exits. The cohort's worker processes also ask for transparent huge pages (:func:`huge_pages_for_children`): a new
worker faulted in its first cases' volumes 4 KB at a time. Timings: ``benchmarks/README.md``. Other C libraries
ignore the variables and the call.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

import numpy as np

__all__ = ["HUGE_PAGES", "MALLOC_SETTINGS", "fault_in", "huge_pages_for_children", "keep_freed_memory",
           "malloc_environment"]

# glibc's environment variable, mallopt's parameter number and the value: one arena, no mmap, no trimming (the
# largest threshold mallopt takes), 64 MB asked for beyond each heap extension
MALLOC_SETTINGS = (("MALLOC_ARENA_MAX", -8, 1), ("MALLOC_MMAP_MAX_", -4, 0),
                   ("MALLOC_TRIM_THRESHOLD_", -1, 2**31 - 1), ("MALLOC_TOP_PAD_", -2, 64 << 20))


# glibc (2.35 and later) tunable: malloc marks the memory it takes from the system for transparent huge pages
# (madvise); read only when a process starts, so it reaches child processes only
HUGE_PAGES = "glibc.malloc.hugetlb=1"


def malloc_environment() -> dict[str, str]:
    """The settings as environment variables, for a process about to start."""
    return {name: str(value) for name, _, value in MALLOC_SETTINGS}


def keep_freed_memory() -> None:
    """Apply the settings to this running process (``mallopt``); nothing happens without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for _, parameter, value in MALLOC_SETTINGS:
        libc.mallopt(parameter, value)


@contextlib.contextmanager
def huge_pages_for_children() -> Iterator[None]:
    """Within the block, processes this one starts get :data:`HUGE_PAGES` (added to ``GLIBC_TUNABLES``, where a
    ``glibc.malloc.hugetlb`` value already there wins); the variable is as before afterwards."""
    before = os.environ.get("GLIBC_TUNABLES")
    tunables = [t for t in (before or "").split(":") if t]
    if not any(t.startswith("glibc.malloc.hugetlb=") for t in tunables):
        tunables.append(HUGE_PAGES)
    os.environ["GLIBC_TUNABLES"] = ":".join(tunables)
    try:
        yield
    finally:
        if before is None:
            del os.environ["GLIBC_TUNABLES"]
        else:
            os.environ["GLIBC_TUNABLES"] = before


def fault_in(nbytes: int) -> None:
    """Write ``nbytes`` of fresh memory and free it again, so that (after :func:`keep_freed_memory`, which keeps it
    in this process's heap) the allocations that follow find their pages already mapped. The cohort's network
    process does this once before its first forward pass, which otherwise faulted in its memory page by page
    while the worker processes faulted in theirs, and took twice as long as the next ones (``benchmarks/README.md``).
    """
    block = np.ones(nbytes // 4, np.float32)
    del block

