"""The public-cohort steps of docs/reproduce.md per study on this machine, on a MAMA-MIA replica of full-size
phantoms (Testing/publiccohorts.py at the phantom's default grid, 360 x 232 x 120 voxels of 1 x 1 x 1.2 mm):

1. ``ingest-mama-mia`` per study (reading the pre-contrast phase, the breast mask for the midline, linking);
2. ``preprocess --unit breast`` per breast unit at 170 x 220 x 128, against the anchor ``--unit whole`` per study at
   the paper's 340 x 220 x 128 (the same studies, interleaved, ratio of medians);
3. ``analyze`` per study with an untrained full-width per-breast model (both breasts, one forward pass) against
   the anchor, a whole-study model at the paper's input.

Prints one JSON object: medians (s) and the ratios. Scale to a cohort by its study count (docs/reproduce.md).

    python benchmarks/public_cohorts.py [--work DIR] [--device cpu] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE, SPACING = (360, 232, 120), (1.0, 1.0, 1.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="analyze passes per study and model")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="public_cohorts_"))

    import torch

    from BreastCMSLLib.config import ModelConfig, PreprocessConfig
    from BreastCMSLLib.network.modelfile import load_model, save_model
    from BreastCMSLLib.network.net import build_model
    from BreastCMSLLib.pipeline.analyze import analyze_case
    from BreastCMSLLib.pipeline.breasts import BREAST_INPUT_SIZE
    from BreastCMSLLib.pipeline.preprocess import load_case, prepare
    from Testing.publiccohorts import write_mama_mia
    from Training.mamamia import ingest_mama_mia
    from Training.unitmanifest import read_units

    root = work / "MAMA-MIA"
    if not root.is_dir():
        write_mama_mia(root, SHAPE, SPACING, SHAPE)
    t0 = time.perf_counter()
    summary = ingest_mama_mia(root, work / "out" / "manifest.csv")
    ingest_s = (time.perf_counter() - t0) / (summary["studies"] + len(summary["failures"]))
    units = [u for u in read_units(work / "out" / "manifest.csv") if u.breast != "single"]
    phases = (1, 2)  # the replica's studies have 2 to 5 post-contrast phases
    breast_cfg = PreprocessConfig(input_size=BREAST_INPUT_SIZE, phases=phases, unit="breast")
    whole_cfg = PreprocessConfig(phases=phases)
    per_unit, per_study = [], []
    for u in units:
        inputs = load_case(u.case.case_dir)
        t0 = time.perf_counter()
        prepare(inputs, breast_cfg, "benchmark")
        per_unit.append(time.perf_counter() - t0)
        if u.breast == "left":
            whole = dataclasses.replace(inputs, extra={})
            t0 = time.perf_counter()
            prepare(whole, whole_cfg, "benchmark")
            per_study.append(time.perf_counter() - t0)

    torch.manual_seed(0)
    models = {}
    for name, pcfg in (("breast", breast_cfg), ("whole", whole_cfg)):
        cfg = ModelConfig(in_channels=len(phases), preprocess=pcfg)
        save_model(work / f"{name}.safetensors", build_model(cfg), cfg, {"name": name, "untrained": True})
        models[name] = load_model(work / f"{name}.safetensors")
    studies = [u for u in units if u.breast == "left"][:2]
    times = {"breast": [], "whole": []}
    for _ in range(args.repeats):
        for u in studies:
            inputs = dataclasses.replace(load_case(u.case.case_dir), extra={})
            for name, loaded in models.items():
                t0 = time.perf_counter()
                analyze_case(inputs, loaded, device=args.device)
                times[name].append(time.perf_counter() - t0)
    med = statistics.median
    print(json.dumps({
        "studies": summary["studies"], "grid": SHAPE, "ingest_mama_mia_s_per_study": round(ingest_s, 2),
        "preprocess_breast_s_per_unit": round(med(per_unit), 2),
        "preprocess_whole_s_per_study": round(med(per_study), 2),
        "preprocess_breast_units_per_study_over_whole": round(2 * med(per_unit) / med(per_study), 2),
        "analyze_breast_model_s_per_study": round(med(times["breast"]), 2),
        "analyze_whole_model_s_per_study": round(med(times["whole"]), 2),
        "analyze_breast_over_whole": round(med(times["breast"]) / med(times["whole"]), 2),
        "device": args.device}, indent=1))


if __name__ == "__main__":
    main()
