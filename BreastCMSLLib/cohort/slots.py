"""Shared-memory slots that carry network inputs between the worker processes and the network.

A slot holds one case's float32 (C, I, J, K) network input. The slots are made once per run in the network's
process, and a worker process maps each the first time it meets it (:class:`Slot`): preprocessing writes the
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

_ATTACHED: dict[str, tuple[shared_memory.SharedMemory | mmap.mmap, np.ndarray]] = {}  # this process's, by block


def _attach(name: str, nbytes: int) -> shared_memory.SharedMemory | mmap.mmap:
    """A worker process's writable mapping of the block ``name``. Where the system has ``MAP_POPULATE`` (Linux)
    all its pages are mapped in one call instead of a page fault each (56 k per slot at the paper's size;
    timings: ``benchmarks/README.md``)."""
    path = SHM / name
    if hasattr(mmap, "MAP_POPULATE") and path.is_file():
        with open(path, "r+b") as f:
            return mmap.mmap(f.fileno(), nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
    return shared_memory.SharedMemory(name=name)


def _keep(name: str, block: shared_memory.SharedMemory | mmap.mmap, shape: tuple[int, ...]) -> np.ndarray:
    """Keep the mapping ``block`` of the block ``name`` in this process and return its float32 array."""
    array = np.ndarray(shape, np.float32, buffer=getattr(block, "buf", block))
    _ATTACHED[name] = (block, array)
    return array


@dataclass(frozen=True)
class Slot:
    """One slot as it travels to a worker process (a few bytes to pickle): its shared-memory block's ``name`` and
    the ``shape`` of the network input it holds."""

    name: str
    shape: tuple[int, ...]

    def array(self) -> np.ndarray:
        """The slot as a writable float32 (C, I, J, K) array (no copy); a worker process maps the block the first
        time it meets it."""
        if self.name in _ATTACHED:
            return _ATTACHED[self.name][1]
        return _keep(self.name, _attach(self.name, slot_bytes(self.shape)), self.shape)


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
    """Slots of ``shape`` in shared memory (``n`` to start with), attached to this process, and which of them are
    free; a context manager that removes the blocks on exit."""

    def __init__(self, n: int, shape: tuple[int, ...]):
        remove_stale()
        self.shape = shape
        self.blocks: list[shared_memory.SharedMemory] = []
        self.free: deque[str] = deque()
        self.grow(n)

    def grow(self, n: int) -> None:
        """Make more slots, up to ``n`` in all (a GPU's batches need more than the run starts with)."""
        while len(self.blocks) < n:
            block = shared_memory.SharedMemory(f"{PREFIX}{os.getpid()}_{len(self.blocks)}", create=True,
                                               size=slot_bytes(self.shape))
            self.blocks.append(block)
            _keep(block.name, block, self.shape)
            self.free.append(block.name)

    def take(self) -> Slot | None:
        """A free slot (the one given back last), or None when every slot is in use."""
        return Slot(self.free.popleft(), self.shape) if self.free else None

    def give(self, slot: Slot) -> None:
        """``slot`` is free again."""
        self.free.appendleft(slot.name)

    def __enter__(self) -> SlotPool:
        return self

    def __exit__(self, *exc) -> None:
        for block in self.blocks:
            _ATTACHED.pop(block.name, None)  # the array over the block goes first
            block.unlink()
            with contextlib.suppress(BufferError):  # an array still referenced (a traceback's): unmapped at exit
                block.close()
