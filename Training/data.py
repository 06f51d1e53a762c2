"""Batches for training and evaluation: cached uint8 volumes -> augmented float tensors on the device.

The data path is built so that it never starves a GPU at the paper's size (57 MB per uint8 volume):
when the split fits the ``resident_bytes`` budget it is copied once into device memory and batches are
gathered there; otherwise a background thread reads the memory-mapped entries into pinned host memory
and copies them asynchronously. Augmentation runs on the device, per volume, with parameters drawn
from a seed derived from (run seed, epoch, case index): identical whatever the process, the rank or a
resume, and needing no random state of its own.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from BreastCMSLLib.cohort.manifest import Case

from .cache import Cache


@dataclass(frozen=True)
class Augment:
    """Random left-right flip along i (axis 1 of C, I, J, K), intensity gain 1 + U(-scale, scale) and
    offset U(-shift, shift) per volume: the draws of MONAI's RandFlip, RandScaleIntensity and
    RandShiftIntensity. :func:`Training.inference.prepare` applies them in one pass with the uint8 ->
    float conversion (why there, and not with MONAI's transforms, is said there)."""

    flip_prob: float = 0.5
    scale: float = 0.1
    shift: float = 0.05

    def draw(self, seed: int) -> tuple[bool, float, float]:
        """(flip, gain, offset) of the volume with this augmentation seed."""
        flip, gain, offset = np.random.default_rng(seed).random(3)
        return bool(flip < self.flip_prob), float(1 + self.scale * (2 * gain - 1)), float(self.shift * (2 * offset - 1))


def augment_seed(seed: int, epoch: int, index: int) -> int:
    """Deterministic per-volume augmentation seed."""
    return (seed * 1_000_003 + epoch * 10_007 + index) % (2**32)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device``, copied asynchronously (pinned) on CUDA, so that the host never
    waits for the GPU to drain its queue (a plain host-to-device copy would synchronize every step)."""
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


def device_index(index: Sequence[int], device: torch.device) -> torch.Tensor:
    """A long tensor of ``index`` on ``device`` (:func:`to_device`)."""
    return to_device(torch.tensor(list(index), dtype=torch.long), device)


class VolumeSource:
    """The volumes of one split as uint8 (C, I, J, K) on ``device``: resident, or streamed via pinned memory."""

    def __init__(self, cache: Cache, cases: Sequence[Case], device: torch.device, resident_bytes: int):
        self.cache, self.cases, self.device = cache, list(cases), device
        self.labels = torch.tensor([c.label for c in self.cases], dtype=torch.long)
        self.birads = torch.tensor([-100 if c.birads is None else c.birads for c in self.cases], dtype=torch.long)
        self.labels_dev, self.birads_dev = self.labels.to(device), self.birads.to(device)
        arrays = [cache.load(c.subject_id) for c in self.cases]
        self.shape = tuple(arrays[0].shape) if arrays else None
        total = sum(a.nbytes for a in arrays)
        self.resident: torch.Tensor | None = None
        if arrays and total <= resident_bytes:
            self.resident = torch.empty((len(arrays), *self.shape), dtype=torch.uint8, device=device)
            staging = torch.empty(self.shape, dtype=torch.uint8)
            for n, a in enumerate(arrays):
                staging.numpy()[...] = a  # memory-mapped read straight into the staging buffer
                self.resident[n].copy_(staging)
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.cases)

    def gather(self, index: Sequence[int]) -> torch.Tensor:
        """uint8 (B, C, I, J, K) of the given case indices: on the device when resident, else in (pinned)
        host memory, copied to the device asynchronously by :func:`Training.inference.prepare`."""
        if self.resident is not None:
            return self.resident[device_index(index, self.device)]
        host = torch.empty((len(index), *self.shape), dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        for n, i in enumerate(index):
            host[n].numpy()[...] = self.arrays[i]
        return host

    def batches(self, order: Sequence[Sequence[int]], prefetch: int = 2) -> Iterator[tuple[list[int], torch.Tensor]]:
        """Yield (indices, uint8 batch) for each index list of ``order``; a thread reads host batches ahead."""
        if self.resident is not None:
            for idx in order:
                yield list(idx), self.gather(idx)
            return
        q: queue.Queue = queue.Queue(maxsize=prefetch)
        stop = threading.Event()

        def reader() -> None:
            for idx in order:
                if stop.is_set():
                    return
                q.put((list(idx), self.gather(idx)))
            q.put(None)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            while (item := q.get()) is not None:
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(0.01)
