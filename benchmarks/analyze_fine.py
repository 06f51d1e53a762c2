"""What the fine map costs: a warm in-process ``analyze_case`` with and without it, in the same run.

One phantom case at the paper's voxel size and an untrained full-size model (``breastcmsl synth`` and
``breastcmsl init-model``, made once in ``--work``) at the paper's input size (340 x 220 x 128). One
untimed analysis warms the process (imports, BatchNorm folding, oneDNN kernels); then every repeat runs
the analysis with and without the fine map, alternating which goes first, and then writes its result
folder (``write_analysis``: result.json, the maps, overview.png). Prints the median wall time of each
(analysis alone, and analysis + writing), their ratios, the median of the ``maps`` stage, and the peak
resident memory each analysis reached above the memory held before it (Linux: VmHWM after resetting it
through /proc/self/clear_refs).

    python benchmarks/analyze_fine.py [--repeats 7] [--device cpu] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a source checkout too

from benchmarks.workbench import measured, phantom_case, untrained_model, work_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="folder for the phantom case and the model")
    parser.add_argument("--input-size", type=int, nargs=3, default=None, help="model input (default the paper's)")
    args = parser.parse_args()

    import torch

    from BreastCMSLLib.config import FINE_MAP
    from BreastCMSLLib.network.modelfile import load_model
    from BreastCMSLLib.pipeline.analyze import analyze_case
    from BreastCMSLLib.pipeline.output import write_analysis
    from BreastCMSLLib.pipeline.preprocess import load_case

    work = work_folder(args.work, "bench-fine-")
    size = ["--input-size", *map(str, args.input_size)] if args.input_size else []
    loaded = load_model(untrained_model(work / "model.safetensors", *size))
    inputs = load_case(phantom_case(work / "case"))
    modes = {"with fine": FINE_MAP, "without": None}
    analyze_case(inputs, loaded, device=args.device)  # warm-up, untimed
    times = {m: [] for m in modes}
    written = {m: [] for m in modes}
    maps = {m: [] for m in modes}
    memory = {m: [] for m in modes}
    for repeat in range(args.repeats):
        order = list(modes) if repeat % 2 == 0 else list(modes)[::-1]
        for mode in order:
            seconds, mib, a = measured(lambda m=mode: analyze_case(inputs, loaded, device=args.device,
                                                                   fine=modes[m]))
            times[mode].append(seconds)
            t0 = time.perf_counter()
            write_analysis(a, work / "out", {})
            written[mode].append(seconds + time.perf_counter() - t0)
            maps[mode].append(a.timings["maps_s"])
            memory[mode].append(mib)
            del a
    median = {m: statistics.median(v) for m, v in times.items()}
    median_written = {m: statistics.median(v) for m, v in written.items()}
    report = {
        "repeats": args.repeats, "device": args.device, "torch_threads": torch.get_num_threads(),
        "input_size": list(loaded.config.preprocess.input_size), "fine_map": str(FINE_MAP),
        "median_s": median, "ratio_with_over_without": median["with fine"] / median["without"],
        "median_with_writing_s": median_written,
        "ratio_with_writing": median_written["with fine"] / median_written["without"],
        "median_maps_s": {m: statistics.median(v) for m, v in maps.items()},
        "peak_memory_above_start_mib": {m: max(v) for m, v in memory.items()},
        "all_s": times,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
