"""The flow of one process's cases: worker processes read and preprocess the next cases into
shared-memory slots (:mod:`BreastCMSLLib.cohort.slots`) while this process runs the network on the previous ones
(on a GPU in batches); the network outputs go back to the workers, which carry the maps onto the reference grid
and write each case folder whole (:mod:`BreastCMSLLib.cohort.stages`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from BreastCMSLLib.cohort.slots import Slot, SlotPool, slot_bytes
from BreastCMSLLib.cohort.sources import CaseSource
from BreastCMSLLib.cohort.stages import Failed, Prepared, finish_case, one_line, prepare_case
from BreastCMSLLib.cohort.workers import Workers, cores_per_rank, network_threads, outcome
from BreastCMSLLib.config import ModelConfig
from BreastCMSLLib.memory import fault_in

if TYPE_CHECKING:
    import torch

Pending = tuple[Future, CaseSource, Slot]  # a case sent to a worker process, and its slot


@dataclass(frozen=True)
class Options:
    """How to run: ``workers`` processes for reading/preprocessing and writing, ``batch`` cases per forward
    pass, ``seg``: a DICOM SEG of COAM for DICOM studies, ``label_fraction`` as ``analyze --label-fraction``,
    ``kinetics``: the curve type at the fine map's peak (:mod:`BreastCMSLLib.cohort.kinetics`)."""

    workers: int
    batch: int
    seg: bool = False
    label_fraction: float = 0.5
    kinetics: bool = False


def send_to_prepare(workers: Workers, source: CaseSource, slot: Slot, config: ModelConfig, model_name: str,
                    label_fraction: float, seg: bool, kinetics: bool) -> Pending:
    """Send ``source`` to a worker process to be read and preprocessed into ``slot``."""
    return workers.submit(prepare_case, source, slot, config, model_name, label_fraction, seg, kinetics), source, slot


def run_flow(todo: list[CaseSource], loaded, dev: torch.device, out: Path, options: Options, workers: Workers,
             slots: SlotPool, started: list[Pending], recorded: Callable[[object, CaseSource], None]) -> dict:
    """Analyze ``todo`` with the model ``loaded`` on ``dev``, the worker processes ``workers`` and the input slots
    ``slots`` into ``out/cases/``; ``started``: the first of ``todo`` already sent to be prepared.
    ``recorded(item, source)`` gets each case's result.json dict or :class:`Failed` as it ends. Returns the stage
    totals (seconds)."""
    import torch

    from BreastCMSLLib.pipeline.analyze import infer

    model = loaded.info()
    if dev.type == "cpu":
        torch.set_num_threads(network_threads(options.workers))
        fault_in(2 * slot_bytes(slots.shape) * options.batch)  # the forward pass's memory, mapped at once
    cfg, name = loaded.config, loaded.name
    totals = {"waiting_for_workers_s": 0.0, "network_s": 0.0, "forward_passes": 0}
    depth = options.workers + options.batch  # cases read ahead
    queue = deque(todo[len(started):])
    preparing: deque[Pending] = deque(started)
    writing: list[Pending] = []

    def refill() -> None:
        while len(preparing) < depth and slots.free and queue:
            preparing.append(send_to_prepare(workers, queue.popleft(), slots.take(), cfg, name,
                                             options.label_fraction, options.seg, options.kinetics))

    def harvest(wait: bool) -> None:
        if wait and writing:
            futures.wait([w[0] for w in writing], return_when=futures.FIRST_COMPLETED)
        for item in [w for w in writing if w[0].done()]:
            writing.remove(item)
            slots.give(item[2])
            recorded(outcome(*item[:2]), item[1])

    while True:
        refill()
        if not preparing:  # all read; or every slot is being written: wait for one
            if not writing:
                break
            harvest(wait=True)
            continue
        t0 = time.perf_counter()
        batch: list[Prepared] = []
        while preparing and len(batch) < options.batch and (not batch or preparing[0][0].done()):
            future, source, slot = preparing.popleft()
            item = outcome(future, source)
            if isinstance(item, Failed):
                slots.give(slot)
                recorded(item, source)
            else:
                batch.append(item)
            refill()
        t1 = time.perf_counter()
        totals["waiting_for_workers_s"] += t1 - t0
        if batch:
            if dev.type == "cpu" and not queue and not preparing:  # every case read: the workers only write now
                torch.set_num_threads(cores_per_rank())
            try:
                nets = infer(loaded, [c.slot.array() for c in batch], dev)
            except Exception as err:  # e.g. out of GPU memory: these cases fail, the rest go on
                for c in batch:
                    slots.give(c.slot)
                    recorded(Failed(c.source, one_line(err), sum(c.timings.values())), c.source)
                nets = []
            seconds = time.perf_counter() - t1
            totals["network_s"] += seconds
            totals["forward_passes"] += 1
            for case, net in zip(batch, nets, strict=False):
                case.timings["inference_s"] = seconds
                writing.append((workers.submit(finish_case, case, net, model, options.label_fraction,
                                               out / "cases" / case.source.id), case.source, case.slot))
        harvest(wait=False)
    return totals
