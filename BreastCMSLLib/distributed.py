"""torchrun integration: process group set-up (NCCL on GPU, gloo on CPU) and small collectives."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; ``world == 1`` outside torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> tuple[Dist, torch.device]:
    """Join the torchrun job (if any) and pick this process's device ("auto", "cpu", "cuda")."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local}") if device.startswith("cuda") and ":" not in device else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local), dev


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj, d: Dist) -> list:
    """Every rank's ``obj`` in rank order (just ``[obj]`` outside torchrun)."""
    if d.world == 1:
        return [obj]
    out: list = [None] * d.world
    dist.all_gather_object(out, obj)
    return out
