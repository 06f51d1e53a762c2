"""What the training-domain check adds to a warm Analyze, and to a model file, at the paper's input size.

One process loads an untrained full-width model (512 pooled features) with a training-domain record (a feature
density fitted on random features of that width, the envelope of one study) and analyzes a phantom case once to warm
up; then, per repeat, it times (1) a warm ``analyze_case`` of the case (preprocess, the forward pass, the maps: the
check included) and (2) the check's own parts on the same case: the study geometry (quantiles, coverage), the
Mahalanobis score of the pooled feature and the applicability with its reasons. Prints the medians, the ratio of the
medians (budget <= 0.02) and each repeat's own ratio; and the model file's size with and without the record
(budget <= 1 MB).

    python benchmarks/applicability_cost.py [--repeats 5] [--work DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a source checkout too

from benchmarks.workbench import phantom_case, untrained_model, work_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=None, help="folder for the phantom case and the models")
    args = parser.parse_args()

    import numpy as np
    import torch

    from BreastCMSLLib.network.domain import DomainRecord, Envelope, applicability
    from BreastCMSLLib.network.modelfile import load_model, save_model
    from BreastCMSLLib.pipeline.analyze import analyze_case
    from BreastCMSLLib.pipeline.envelope import study_geometry
    from BreastCMSLLib.pipeline.model_phases import PhasesUsed
    from BreastCMSLLib.pipeline.preprocess import load_case, prepare
    from Training.domain import fit_density, fit_pattern

    work = work_folder(args.work, "bench-applicability-")
    case, plain = phantom_case(work / "case"), untrained_model(work / "plain.safetensors")
    base = load_model(plain)
    inputs = load_case(case)
    prep = prepare(inputs, base.config, base.name)
    rng = np.random.default_rng(0)
    d = base.model.head.weight.shape[1]
    features = rng.normal(size=(1200, d))
    patterns = np.asarray(prep.study.pattern) + 0.01 * rng.normal(size=(200, len(prep.study.pattern)))
    record = DomainRecord(Envelope.of([prep.study]), fit_density(features, np.arange(1200) % 2, features[:165]),
                          fit_pattern(patterns[:180], patterns[180:]), prep.study.phases, prep.study.phase_times_s)
    with_record = work / "with_record.safetensors"
    save_model(with_record, base.model, base.config, base.provenance, domain=record)
    loaded = load_model(with_record)
    dev = torch.device("cpu")
    analyze_case(inputs, loaded, device="cpu")  # warm-up: the folded network, the allocator
    used = PhasesUsed(prep.study.phases, prep.study.phases_of, prep.study.phase_times_s, prep.study.phase_rule)
    feature = features[0].astype(np.float32)
    full, check = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        analysis = analyze_case(inputs, loaded, device="cpu")
        full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        study = study_geometry(inputs.reference, prep.array, prep.input_grid, used)
        applicability(record.check(feature), study)
        check.append(time.perf_counter() - t0)
    med = statistics.median
    print(f"device: {dev} (CPU threads {torch.get_num_threads()}), input {prep.array.shape}, untrained full-width "
          f"model ({d} pooled features), precision {analysis.precision}, repeats {args.repeats}; "
          f"in_domain {analysis.applicability['in_domain']}")
    print(f"warm analyze_case     median {med(full):7.3f} s   {[round(t, 3) for t in full]}")
    print(f"the check's parts     median {med(check) * 1e3:7.2f} ms  {[round(t * 1e3, 2) for t in check]}")
    print(f"ratio check / warm Analyze = {med(check) / med(full):.4f}  (budget <= 0.02)")
    paired = [c / f for c, f in zip(check, full, strict=True)]
    print(f"per-repeat ratio median {med(paired):.4f}   {[round(r, 4) for r in paired]}")
    size = with_record.stat().st_size - plain.stat().st_size
    print(f"model file {plain.stat().st_size / 1e6:.1f} MB; the record adds {size / 1e6:.3f} MB (budget <= 1 MB)")


if __name__ == "__main__":
    main()
