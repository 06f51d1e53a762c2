"""What ``analyze --kinetics`` adds to a warm Analyze (issue 28: at most 10 %), and its peak memory.

One phantom case at the paper's voxel size (``breastcmsl synth``, with its times.json) and an untrained full-size
model at the paper's input size (340 x 220 x 128), made once in ``--work``. The model is loaded once (the warm
worker's cache); one untimed analysis warms the process. Every repeat then runs :func:`BreastCMSLLib.run.run_analysis`
(reading the case, the analysis, writing the result folder) with and without ``kinetics``, alternating which goes
first, and then the kinetics part alone (:func:`~BreastCMSLLib.pipeline.kinetics_case.analysis_kinetics` on the case's
volumes, read once, and writing its three maps): on a busy machine the difference of two whole analyses drowns in
their spread, the part alone does not. Prints the medians, the ratios to the warm analysis without kinetics, the
peak resident memory each reached above the memory held before it (:func:`benchmarks.analyze_fine.measured`), and
the machine's CPU flags that matter for the network (AVX512-BF16: bf16, else float32).

    python benchmarks/analyze_kinetics.py [--repeats 7] [--device cpu] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a source checkout too

from benchmarks.workbench import measured, phantom_case, untrained_model, work_folder  # noqa: E402


def cpu_flags() -> dict:
    """The CPU model and whether it has the AVX-512 / BF16 / AMX instructions (Linux /proc/cpuinfo)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {"cpu": model, **{f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="folder for the phantom case and the model")
    args = parser.parse_args()

    import SimpleITK as sitk
    import torch

    from BreastCMSLLib.network.modelfile import load_model
    from BreastCMSLLib.pipeline.kinetics_case import analysis_kinetics
    from BreastCMSLLib.pipeline.phase_times import case_times
    from BreastCMSLLib.pipeline.preprocess import load_case
    from BreastCMSLLib.run import AnalyzeRequest, run_analysis

    work = work_folder(args.work, "bench-kinetics-")
    case = phantom_case(work / "case")
    model = untrained_model(work / "model.safetensors")
    loaded = load_model(model)

    def analyze(kinetics: bool) -> dict:
        request = AnalyzeRequest(model=model, out=work / "out", case_dir=case, device=args.device, kinetics=kinetics)
        return run_analysis(request, load=lambda path: loaded)

    summary = analyze(True)  # warm-up, untimed
    kinetics = json.loads((work / "out" / "result.json").read_text())["kinetics"]
    inputs = load_case(case)
    peaks = {name: summary[f"{name}_peak_lps"] for name in ("coam", "cam", "fine")}

    def kinetics_alone() -> None:
        _, maps = analysis_kinetics(inputs, case_times(case, len(inputs.series) - 1), peaks)
        for stem, image in maps.items():
            sitk.WriteImage(image, str(work / f"{stem}.nrrd"), stem.endswith("label"))
    modes = {"with kinetics": True, "without": False}
    times = {m: [] for m in (*modes, "kinetics alone")}
    memory = {m: [] for m in (*modes, "kinetics alone")}
    for repeat in range(args.repeats):
        for mode in (list(modes) if repeat % 2 == 0 else list(modes)[::-1]):
            seconds, mib, _ = measured(lambda m=mode: analyze(modes[m]))
            times[mode].append(seconds)
            memory[mode].append(mib)
        seconds, mib, _ = measured(kinetics_alone)
        times["kinetics alone"].append(seconds)
        memory["kinetics alone"].append(mib)
    median = {m: statistics.median(v) for m, v in times.items()}
    print(json.dumps({
        "repeats": args.repeats, "device": args.device, "torch_threads": torch.get_num_threads(), **cpu_flags(),
        "input_size": list(loaded.config.preprocess.input_size), "median_s": median,
        "ratio_with_over_without": median["with kinetics"] / median["without"],
        "ratio_kinetics_alone_over_without": median["kinetics alone"] / median["without"],
        "per_repeat_ratio_median": statistics.median(a / b for a, b in zip(times["with kinetics"], times["without"])),
        "peak_memory_above_start_mib": {m: max(v) for m, v in memory.items()},
        "early_late": [kinetics["early_phase"], kinetics["late_phase"]], "all_s": times,
    }, indent=1))


if __name__ == "__main__":
    main()
