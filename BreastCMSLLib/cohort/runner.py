"""The resumable, sharded cohort run.

Each process runs its cases through :mod:`BreastCMSLLib.cohort.flow` with the network loaded once (BatchNorm
folded, as ``breastcmsl analyze``). The run is planned from the model file's header alone, so the first case is
read and preprocessed while this process imports torch and loads the network. Every case lands in
``OUT/cases/<id>/`` whole or not at all; a rerun keeps the finished ones (same model file and label fraction) and
redoes the rest. Under torchrun each rank takes every world-th case on its own device and rank 0 merges
``results.csv`` and ``summary.md``.
"""

from __future__ import annotations

import glob
import json
import shutil
import time
from pathlib import Path

from BreastCMSLLib.atomic import atomic_write_text
from BreastCMSLLib.cohort.flow import Options, run_flow, send_to_prepare
from BreastCMSLLib.cohort.kinetics import up_to_date
from BreastCMSLLib.cohort.progress import Progress
from BreastCMSLLib.cohort.slots import SlotPool, check_room
from BreastCMSLLib.cohort.sources import CaseSource
from BreastCMSLLib.cohort.stages import Failed
from BreastCMSLLib.cohort.table import failed_row, ok_row, summary_text, write_results
from BreastCMSLLib.cohort.workers import Workers
from BreastCMSLLib.distributed import Dist, device_index, gather_objects, teardown
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.memory import keep_freed_memory
from BreastCMSLLib.network.header import file_sha256, model_info, read_model_file_metadata


def finished(folder: Path, model: dict, label_fraction: float, seg: bool, source: CaseSource,
             kinetics: bool = False) -> dict | None:
    """result.json of a case folder an earlier run completed with the same model file, label fraction, DICOM
    SEG choice (``seg``: the case gets one) and the kinetics asked for (``kinetics``, the ``source``'s
    ``roi_box``); None when the case must be (re)done."""
    try:
        result = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return None
    same = (result.get("model", {}).get("sha256") == model["sha256"]
            and result.get("label_fraction") == label_fraction
            and (folder / "coam_seg.dcm").is_file() == seg and up_to_date(result, source.roi_box, kinetics))
    return result if same else None


def plan(sources: list[CaseSource], out: Path, model: dict, label_fraction: float, seg: bool, kinetics: bool = False
         ) -> tuple[dict[str, dict], list[CaseSource]]:
    """This process's share ``sources`` split into the results.csv rows known already (folders without a case,
    cases an earlier run finished with the same ``model``, label fraction and DICOM SEG choice) and the cases to
    do; removes the staging folders a killed run left behind (only this shard's: other ranks may be writing)."""
    for s in sources:
        for stale in (out / "cases").glob(f".{glob.escape(s.id)}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    rows: dict[str, dict] = {}
    todo: list[CaseSource] = []
    for s in sources:
        kind = s.kind
        if kind is None and s.folder.is_dir():
            rows[s.id] = failed_row(s.id, "skipped", f"{s.folder}: holds neither case volumes nor DICOM files", 0.0,
                                    s.label)
        elif kind is not None and (result := finished(out / "cases" / s.id, model, label_fraction,
                                                      seg and kind == "dicom", s, kinetics)):
            rows[s.id] = ok_row(s.id, result, s.label)
        else:
            todo.append(s)
    return rows, todo


def run_cohort(sources: list[CaseSource], model_path: Path, out: Path, device: str, workers: Workers,
               batch: int | None, seg: bool, label_fraction: float, summary: bool, kinetics: bool = False
               ) -> dict | None:
    """Analyze every case (this rank's share under torchrun) with the rank's worker processes ``workers``, then
    (rank 0) write ``results.csv`` and, with ``summary``, ``summary.md``. Returns what the command prints."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "the output folder is an existing file")
    if len({s.id for s in sources}) != len(sources):
        raise InputError("cohort", "case ids repeat; every case needs its own output folder")
    device_index(device)  # the name; whether such a GPU exists is known once torch is loaded
    t0 = time.perf_counter()
    keep_freed_memory()
    cfg, provenance, _ = read_model_file_metadata(model_path)
    model = model_info(model_path, cfg, provenance, file_sha256(model_path))
    d = Dist.from_env()
    shard = sources[d.rank::d.world]
    rows, todo = plan(shard, out, model, label_fraction, seg, kinetics)
    shape = (cfg.in_channels, *cfg.preprocess.input_size)

    def slots_for(batch: int) -> int:  # the cases read ahead and those being written
        return min(2 * workers.n + batch, len(todo))

    check_room(slots_for(batch or 1), shape)
    try:
        with SlotPool(slots_for(batch or 1), shape) as slots:
            started = []  # the first case, read and preprocessed while this process loads torch and the network
            if todo:
                started.append(send_to_prepare(workers, todo[0], slots.take(), cfg, model["name"], label_fraction,
                                               seg, kinetics))
            loaded, dev = load_network(model_path, model["sha256"], device)
            options = Options(workers.n, batch or (4 if dev.type == "cuda" else 1), seg, label_fraction, kinetics)
            if slots_for(options.batch) > len(slots.blocks):  # a GPU's default batches need more
                check_room(slots_for(options.batch) - len(slots.blocks), shape)
                slots.grow(slots_for(options.batch))
            (out / "cases").mkdir(parents=True, exist_ok=True)
            partial = out / "results.csv" if d.world == 1 else out / f".results.rank{d.rank}.csv"
            totals = run_shard(shard, rows, todo, started, loaded, dev, out, options, workers, slots, partial,
                               "cohort" if d.world == 1 else f"rank {d.rank}")
        shards = gather_objects((rows, totals), d)
    finally:
        teardown()
    if not d.main:
        return None  # rank 0 reports the whole cohort
    rows = {k: v for shard_rows, _ in shards for k, v in shard_rows.items()}
    table = [rows[s.id] for s in sources]
    write_results(out / "results.csv", table)
    for rank in range(1, d.world):
        (out / f".results.rank{rank}.csv").unlink(missing_ok=True)
    (out / ".results.rank0.csv").unlink(missing_ok=True)
    if summary:
        atomic_write_text(out / "summary.md", summary_text(table, model))
    wall = time.perf_counter() - t0
    count = {s: sum(r["status"] == s for r in table) for s in ("ok", "error", "skipped")}
    return {"results": str(out / "results.csv"), "summary": str(out / "summary.md") if summary else None,
            "cases": len(table), **count, "ranks": d.world, "device": str(dev), "seconds": round(wall, 1),
            "cases_per_minute": round(60 * len(table) / wall, 2),
            "rank0_stages": {k: round(v, 1) for k, v in shards[0][1].items()}}


def load_network(model_path: Path, sha256: str, device: str):
    """torch, the network (its file hashed already: ``sha256``) and the device of this process, as
    (:class:`~BreastCMSLLib.network.modelfile.LoadedModel`, ``torch.device``)."""
    from BreastCMSLLib.distributed import setup
    from BreastCMSLLib.network.modelfile import load_model
    from BreastCMSLLib.pipeline.analyze import select_device

    if device not in ("auto", "cuda"):
        select_device(device)
    loaded = load_model(model_path, sha256=sha256)
    return loaded, setup(device)[1]


def run_shard(sources: list[CaseSource], rows: dict[str, dict], todo: list[CaseSource], started: list, loaded,
              dev, out: Path, options: Options, workers: Workers, slots: SlotPool, partial_csv: Path,
              label: str = "cohort") -> dict:
    """Analyze ``todo`` of this process's share ``sources`` (``started``: those already sent to be prepared) with
    the worker processes ``workers``, adding each case's results.csv row to ``rows`` and rewriting
    ``partial_csv`` as each ends; returns the stage totals (seconds)."""
    order = {s.id: i for i, s in enumerate(sources)}
    progress = Progress(len(sources), len(rows), sum(r["status"] == "error" for r in rows.values()), label)

    def record(row: dict) -> None:
        rows[row["id"]] = row
        write_results(partial_csv, sorted(rows.values(), key=lambda r: order[r["id"]]))
        progress.step(row["status"] != "ok")

    def recorded(item, source: CaseSource) -> None:
        if isinstance(item, Failed):
            record(failed_row(source.id, "error", item.error, item.seconds, source.label))
        else:
            record(ok_row(source.id, item, source.label))

    try:
        return run_flow(todo, loaded, dev, out, options, workers, slots, started, recorded)
    finally:
        progress.close()
