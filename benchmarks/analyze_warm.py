"""Cold first vs warm second Analyze through the panel's session, at the paper's input size.

Each repeat opens a new :class:`BreastCMSLLib.panel.session.Session` on a new scene and times, as a user clicking
Analyze meets them, (1) the first Analyze of phantom case A (cold: the worker process starts, imports torch,
loads the untrained full-size model and folds BatchNorm, then analyzes) and (2) the next Analyze of another
phantom case B on the same session (warm: the worker and its model are reused). Each time runs from the
call to ``session.analyze`` until the result nodes are in the scene (exporting the input nodes, the analysis,
writing and reading the maps included), and (3) a third, warm Analyze of case B without the fine map
(``fine_map=False``: COAM and CAM only), so the fine map's cost is measured in the same run. The three
alternate in every repeat; prints medians, the ratio of the medians warm / cold (target <= 0.6), warm with /
without the fine map (budget <= 1.10), and the median of each repeat's own ratios.

    python benchmarks/analyze_warm.py [--repeats 5] [--device cpu] [--work DIR]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a source checkout too

from benchmarks.workbench import phantom_case, untrained_model, work_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="folder for the phantom cases and the model")
    args = parser.parse_args()

    import slicer
    import torch

    from BreastCMSLLib.panel.session import Session

    work = work_folder(args.work, "bench-warm-")
    cases = {name: phantom_case(work / f"case_{name}", seed) for seed, name in enumerate(("A", "B"), start=1)}
    model = untrained_model(work / "model.safetensors")

    cold, warm, plain, results = [], [], [], []
    for _ in range(args.repeats):
        session = Session(slicer.vtkMRMLScene())  # volumes exchanged through /dev/shm where it has room
        loaded = {name: session.load_case_folder(case) for name, case in cases.items()}
        times = []
        for name, fine in (("A", True), ("B", True), ("B", False)):
            session.set_inputs(t1=loaded[name]["t1"], phases=loaded[name]["series"])
            t0 = time.perf_counter()
            job = session.analyze(model, device=args.device, fine_map=fine)
            result = job.wait(timeout=900)
            times.append(time.perf_counter() - t0)
            assert ("fine" in result.maps) == fine
        results.append(result)
        assert job.worker_pid == session.job.worker_pid
        session.close()
        cold.append(times[0])
        warm.append(times[1])
        plain.append(times[2])
        del session, loaded, job
        # this repeat's scene (20 volumes of 40 MB) freed now, not by a collection inside a later timed Analyze
        # (one took 0.3-0.9 s there)
        gc.collect()

    med = statistics.median
    print(f"device: {args.device} (CPU threads {torch.get_num_threads()}), input 6x340x220x128, untrained full-size "
          f"model, phantom cases {list(cases)}, repeats {args.repeats}, precision {results[-1].precision}")
    print(f"cold first Analyze   median {med(cold):6.2f} s   {[round(t, 2) for t in cold]}")
    print(f"warm second Analyze  median {med(warm):6.2f} s   {[round(t, 2) for t in warm]}")
    print(f"warm, no fine map    median {med(plain):6.2f} s   {[round(t, 2) for t in plain]}")
    print(f"ratio warm / cold = {med(warm) / med(cold):.3f}  (target <= 0.6)")
    print(f"ratio warm with / without the fine map = {med(warm) / med(plain):.3f}  (budget <= 1.10)")
    for label, top, bottom in (("warm / cold", warm, cold), ("fine / no fine", warm, plain)):
        paired = [a / b for a, b in zip(top, bottom)]  # each repeat's own ratio: the machine's load changes
        print(f"per-repeat {label:14s} median {med(paired):.3f}   {[round(r, 3) for r in paired]}")


if __name__ == "__main__":
    main()
