"""Shared-memory slots that carry network inputs between the worker processes and the network.

A slot holds one case's float32 (C, I, J, K) network input. The slots are made once per run in the network's
process and handed to every worker process when it starts: preprocessing writes the input straight into a
slot, the network reads it from there, and the worker that finishes the case draws the figure from the same
slot. Nothing of the volume is copied or pickled per case and the slots' pages stay mapped for the whole run
(fresh shared memory per case cost more kernel time than the copy itself: ``benchmarks/README.md``).

A slot is taken when its case is sent to be prepared and given back when the case is written or has failed.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

_ATTACHED: list[torch.Tensor] = []  # this process's view of the run's slots


def attach(slots: list[torch.Tensor]) -> None:
    """Make ``slots`` (shared tensors) this process's slots: the worker processes' initializer calls it."""
    _ATTACHED[:] = slots


def slot_array(index: int) -> np.ndarray:
    """Slot ``index`` of this process as a writable float32 (C, I, J, K) array (no copy)."""
    return _ATTACHED[index].numpy()


class SlotPool:
    """``n`` slots of ``shape`` in shared memory, attached to this process, and which of them are free."""

    def __init__(self, n: int, shape: tuple[int, ...]):
        self.slots = [torch.empty(shape, dtype=torch.float32).share_memory_() for _ in range(n)]
        self.free = deque(range(n))
        attach(self.slots)

    def take(self) -> int | None:
        """A free slot's index, or None when every slot is in use."""
        return self.free.popleft() if self.free else None

    def give(self, index: int) -> None:
        """Slot ``index`` is free again."""
        self.free.append(index)
