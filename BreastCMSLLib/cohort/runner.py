"""The resumable, sharded cohort run.

Each process runs its cases through :mod:`BreastCMSLLib.cohort.flow` with the network loaded once (BatchNorm
folded, as ``breastcmsl analyze``). Every case lands in ``OUT/cases/<id>/`` whole or
not at all; a rerun keeps the finished ones (same model file and label fraction) and redoes the rest. Under
torchrun each rank takes every world-th case on its own device and rank 0 merges ``results.csv`` and
``summary.md``.
"""

from __future__ import annotations

import glob
import json
import shutil
import time
from pathlib import Path

import torch

from BreastCMSLLib.atomic import atomic_write_text
from BreastCMSLLib.cohort.flow import Options, run_flow
from BreastCMSLLib.cohort.progress import Progress
from BreastCMSLLib.cohort.slots import check_room
from BreastCMSLLib.cohort.sources import CaseSource
from BreastCMSLLib.cohort.stages import Failed
from BreastCMSLLib.cohort.table import failed_row, ok_row, summary_text, write_results
from BreastCMSLLib.cohort.workers import Workers
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.memory import keep_freed_memory


def finished(folder: Path, model: dict, options: Options, dicom: bool) -> dict | None:
    """result.json of a case folder an earlier run completed with the same model file, label fraction and
    DICOM SEG choice; None when the case must be (re)done."""
    try:
        result = json.loads((folder / "result.json").read_text())
    except (OSError, ValueError):
        return None
    same = (result.get("model", {}).get("sha256") == model["sha256"]
            and result.get("label_fraction") == options.label_fraction
            and (folder / "coam_seg.dcm").is_file() == (options.seg and dicom))
    return result if same else None


def run_shard(sources: list[CaseSource], loaded, dev: torch.device, out: Path, options: Options, workers: Workers,
              partial_csv: Path, label: str = "cohort") -> tuple[dict[str, dict], dict]:
    """Analyze ``sources`` (this process's share) with the worker processes ``workers``; returns {id: results.csv
    row} and stage totals (seconds)."""
    model = loaded.info()
    rows: dict[str, dict] = {}
    todo: list[CaseSource] = []
    for s in sources:  # staging folders a killed run left behind (only this shard's: other ranks may be writing)
        for stale in (out / "cases").glob(f".{glob.escape(s.id)}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
    for s in sources:
        kind = s.kind
        if kind is None and s.folder.is_dir():
            rows[s.id] = failed_row(s.id, "skipped", f"{s.folder}: holds neither case volumes nor DICOM files", 0.0,
                                    s.label)
        elif kind is not None and (result := finished(out / "cases" / s.id, model, options, kind == "dicom")):
            rows[s.id] = ok_row(s.id, result, s.label)
        else:
            todo.append(s)
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
        totals = run_flow(todo, loaded, dev, out, options, workers, recorded)
    finally:
        progress.close()
    return rows, totals


def run_cohort(sources: list[CaseSource], model_path: Path, out: Path, device: str, workers: Workers,
               batch: int | None, seg: bool, label_fraction: float, summary: bool) -> dict | None:
    """Analyze every case (this rank's share under torchrun) with the rank's worker processes ``workers``, then
    (rank 0) write ``results.csv`` and, with ``summary``, ``summary.md``. Returns what the command prints."""
    from BreastCMSLLib.distributed import gather_objects, setup, teardown
    from BreastCMSLLib.network.modelfile import load_model
    from BreastCMSLLib.pipeline.analyze import select_device

    if out.exists() and not out.is_dir():
        raise InputError(out, "the output folder is an existing file")
    if len({s.id for s in sources}) != len(sources):
        raise InputError("cohort", "case ids repeat; every case needs its own output folder")
    if device not in ("auto", "cuda"):
        select_device(device)
    t0 = time.perf_counter()
    keep_freed_memory()
    loaded = load_model(model_path)
    d, dev = setup(device)
    options = Options(workers.n, batch or (4 if dev.type == "cuda" else 1), seg, label_fraction)
    try:
        cfg = loaded.config
        check_room(2 * options.workers + options.batch, (cfg.in_channels, *cfg.preprocess.input_size))
        (out / "cases").mkdir(parents=True, exist_ok=True)
        partial = out / "results.csv" if d.world == 1 else out / f".results.rank{d.rank}.csv"
        mine, totals = run_shard(sources[d.rank::d.world], loaded, dev, out, options, workers, partial,
                                 "cohort" if d.world == 1 else f"rank {d.rank}")
        shards = gather_objects((mine, totals), d)
    finally:
        teardown()
    if not d.main:
        return None  # rank 0 reports the whole cohort
    rows = {k: v for shard, _ in shards for k, v in shard.items()}
    table = [rows[s.id] for s in sources]
    write_results(out / "results.csv", table)
    for rank in range(1, d.world):
        (out / f".results.rank{rank}.csv").unlink(missing_ok=True)
    (out / ".results.rank0.csv").unlink(missing_ok=True)
    if summary:
        atomic_write_text(out / "summary.md", summary_text(table, loaded.info()))
    wall = time.perf_counter() - t0
    count = {s: sum(r["status"] == s for r in table) for s in ("ok", "error", "skipped")}
    return {"results": str(out / "results.csv"), "summary": str(out / "summary.md") if summary else None,
            "cases": len(table), **count, "ranks": d.world, "device": str(dev), "seconds": round(wall, 1),
            "cases_per_minute": round(60 * len(table) / wall, 2),
            "rank0_stages": {k: round(v, 1) for k, v in shards[0][1].items()}}
