"""Shared-memory slots that carry network inputs between the worker processes and the network.

A slot holds one case's float32 (C, I, J, K) network input. The slots are made once per run in the network's
process, and a worker process maps them the first time it meets one (:class:`Slot`): preprocessing writes the
input straight into a slot, the network reads it from there, and the worker that finishes the case draws the
figure from the same slot. Nothing of the volume is copied or pickled per case, and the slots' pages stay mapped
for the whole run instead of being faulted in afresh for every case (timings: ``benchmarks/README.md``).

A slot is taken when its case is sent to be prepared and given back when the case is written or has failed; the
slot given back last is taken first, so a short run touches (and the kernel zeroes) no more slots than it needs.
The blocks live in ``/dev/shm`` (``multiprocessing.shared_memory``), named after the process that made them; the
run removes them at its end, multiprocessing's resource tracker when only the run is killed, and the next run
those of a process that no longer exists (a whole process group killed, tracker included).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections import deque
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from BreastCMSLLib.errors import InputError

PREFIX = "breastcmsl_slot_"
SHM = Path("/dev/shm")  # where Linux keeps the blocks

_ATTACHED: dict[tuple[str, ...], list[tuple[shared_memory.SharedMemory, np.ndarray]]] = {}  # this process's views


def _use(names: tuple[str, ...], blocks: list, shape: tuple[int, ...]) -> None:
    _ATTACHED.clear()  # one run's slots at a time
    _ATTACHED[names] = [(b, np.ndarray(shape, np.float32, buffer=getattr(b, "buf", b))) for b in blocks]


def _attach(name: str, nbytes: int) -> shared_memory.SharedMemory | mmap.mmap:
    """A worker process's writable mapping of the block ``name``. Where the system has ``MAP_POPULATE`` (Linux)
    all its pages are mapped in one call: touched one by one they cost 56 k page faults per slot at the paper's
    size, about three times as long (``benchmarks/README.md``)."""
    path = SHM / name
    if hasattr(mmap, "MAP_POPULATE") and path.is_file():
        with open(path, "r+b") as f:
            return mmap.mmap(f.fileno(), nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
    return shared_memory.SharedMemory(name=name)


@dataclass(frozen=True)
class Slot:
    """One slot of a run as it travels to a worker process (a few bytes to pickle): the run's block ``names``, the
    slot ``shape`` and this slot's ``index``."""

    names: tuple[str, ...]
    shape: tuple[int, ...]
    index: int

    def array(self) -> np.ndarray:
        """The slot as a writable float32 (C, I, J, K) array (no copy); a worker process maps the run's blocks the
        first time it meets one of them."""
        if self.names not in _ATTACHED:
            _use(self.names, [_attach(name, slot_bytes(self.shape)) for name in self.names], self.shape)
        return _ATTACHED[self.names][self.index][1]


def slot_bytes(shape: tuple[int, ...]) -> int:
    """The size of one slot of ``shape`` (float32), bytes."""
    return int(np.prod(shape)) * np.dtype(np.float32).itemsize


def _running(pid: int) -> bool:
    """Whether another process with id ``pid`` exists (this process's own id: an earlier process's slots)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(folder: Path = SHM) -> None:
    """Remove from ``folder`` the slots of processes that no longer exist."""
    for path in folder.glob(f"{PREFIX}*_*"):
        pid = path.name[len(PREFIX):].split("_")[0]
        if pid.isdigit() and not _running(int(pid)):
            path.unlink(missing_ok=True)


def check_room(n: int, shape: tuple[int, ...], folder: Path = SHM) -> None:
    """An :class:`InputError` when ``folder`` (where the slots live) has no room for ``n`` slots of ``shape`` once
    stale slots are removed: writing beyond a full ``/dev/shm`` kills the process that writes. Nothing is checked
    where there is no such folder."""
    if not folder.is_dir():
        return
    remove_stale(folder)
    stat = os.statvfs(folder)
    free, need = stat.f_bavail * stat.f_frsize, n * slot_bytes(shape)
    if free < need:
        raise InputError(folder, f"{free / 2**30:.2f} GiB free, the run needs {need / 2**30:.2f} GiB for {n} input "
                         "slots (give a container more with --shm-size, or use fewer --workers)")


class SlotPool:
    """``n`` slots of ``shape`` in shared memory, attached to this process, and which of them are free; a
    context manager that removes the blocks on exit."""

    def __init__(self, n: int, shape: tuple[int, ...]):
        remove_stale()
        self.blocks = [shared_memory.SharedMemory(f"{PREFIX}{os.getpid()}_{k}", create=True, size=slot_bytes(shape))
                       for k in range(n)]
        self.names, self.shape = tuple(b.name for b in self.blocks), shape
        self.free = deque(range(n))
        _use(self.names, self.blocks, shape)

    def take(self) -> Slot | None:
        """A free slot (the one given back last), or None when every slot is in use."""
        return Slot(self.names, self.shape, self.free.popleft()) if self.free else None

    def give(self, slot: Slot) -> None:
        """``slot`` is free again."""
        self.free.appendleft(slot.index)

    def __enter__(self) -> SlotPool:
        return self

    def __exit__(self, *exc) -> None:
        _ATTACHED.clear()  # the arrays over the blocks go first
        for block in self.blocks:
            block.unlink()
            with contextlib.suppress(BufferError):  # an array still referenced (a traceback's): unmapped at exit
                block.close()
