"""torchrun integration: process group set-up (NCCL on GPU, gloo on CPU) and small collectives. A process
learns its place in the job (:meth:`Dist.from_env`) without torch; torch comes with :func:`setup`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from BreastCMSLLib.errors import InputError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; ``world == 1`` outside torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        """This process's place as torchrun's environment gives it (rank 0 of 1 outside torchrun)."""
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))


def device_index(device: str) -> int | None:
    """The GPU index a device name as the command line takes it asks for (``cuda``: 0, ``cuda:N``: N), None for
    ``auto`` and ``cpu``; an :class:`InputError` for anything else. Needs no torch."""
    match = re.fullmatch(r"auto|cpu|cuda(?::(\d+))?", device)
    if not match:
        raise InputError("--device", f"expected auto, cpu, cuda or cuda:N, got {device!r}")
    return int(match.group(1) or 0) if device.startswith("cuda") else None


def setup(device: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job (if any) and pick this process's device ("auto", "cpu", "cuda")."""
    import torch
    import torch.distributed as dist

    d = Dist.from_env()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_local_gpu = device.startswith("cuda") and ":" not in device
    dev = torch.device(f"cuda:{d.local_rank}") if on_local_gpu else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if d.world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return d, dev


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj, d: Dist) -> list:
    """Every rank's ``obj`` in rank order (just ``[obj]`` outside torchrun)."""
    if d.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list = [None] * d.world
    dist.all_gather_object(out, obj)
    return out
