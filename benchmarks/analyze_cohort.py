"""``breastcmsl analyze-cohort`` against a shell-style loop of ``breastcmsl analyze`` over the same cases.

12 phantom cases (default grid) and an untrained full-size model (the paper's input size 340 x 220 x 128); the
loop starts one ``breastcmsl analyze`` process per case, the cohort command runs once over the folder. Both run
in the same invocation (with ``--repeats`` > 1 in alternating order); prints seconds per case of each, the ratio
of their medians (goal <= 0.5), the median of each repeat's own ratio (its two runs back to back, so a machine
that slows down for a while weighs on both), and the cohort's stage totals: time the network waited for the
worker processes vs time in the network, which says which stage bounds the run. Case folders and model are kept
in ``--work`` for reuse.

    python benchmarks/analyze_cohort.py [--cases 12] [--device cpu|cuda] [--workers N] [--repeats 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "BreastCMSLLib.cli"]


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return time.perf_counter() - t0, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="the cohort's --workers (default: its own)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="folder for the cases, model and outputs")
    args = parser.parse_args()

    work = (args.work or Path(tempfile.mkdtemp(prefix="bench-cohort-"))).resolve()
    cases, model = work / "cases", work / "model.safetensors"
    for i in range(args.cases):
        if not (cases / f"case_{i:02d}" / "case.json").is_file():
            subprocess.run([*CLI, "synth", "--out", str(cases / f"case_{i:02d}"), "--seed", str(i),
                            "--malignant" if i % 2 else "--benign"], check=True, capture_output=True, cwd=ROOT)
    if not model.exists():
        subprocess.run([*CLI, "init-model", "--out", str(model)], check=True, capture_output=True, cwd=ROOT)
    names = sorted(p.name for p in cases.iterdir() if p.is_dir())[: args.cases]
    root = work / f"root_{len(names)}"  # exactly these cases for the cohort (--work may hold more)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for name in names:
        (root / name).symlink_to(cases / name, target_is_directory=True)

    loop, cohort, stages = [], [], []
    for r in range(args.repeats):
        for side in (("loop", "cohort") if r % 2 == 0 else ("cohort", "loop")):
            out = work / f"out_{side}"
            shutil.rmtree(out, ignore_errors=True)
            if side == "loop":
                t0 = time.perf_counter()
                for name in names:
                    timed([*CLI, "analyze", str(cases / name), "--model", str(model), "--out", str(out / name),
                           "--device", args.device])
                loop.append((time.perf_counter() - t0) / len(names))
                print(f"repeat {r}: loop of analyze {loop[-1]:.2f} s per case", flush=True)
            else:
                extra = ["--workers", str(args.workers)] if args.workers else []
                seconds, stdout = timed([*CLI, "analyze-cohort", "--root", str(root), "--model", str(model),
                                         "--out", str(out), "--device", args.device, *extra])
                report = json.loads(stdout)
                assert report["ok"] == len(names), report
                cohort.append(seconds / len(names))
                stages.append(report["rank0_stages"])
                print(f"repeat {r}: analyze-cohort {cohort[-1]:.2f} s per case ({60 / cohort[-1]:.1f} cases/min), "
                      f"stages {report['rank0_stages']}", flush=True)
    a, b = statistics.median(loop), statistics.median(cohort)
    print(f"\n{len(names)} cases on {args.device}: loop of `breastcmsl analyze` {a:.2f} s per case, "
          f"`breastcmsl analyze-cohort` {b:.2f} s per case ({60 / b:.1f} cases/min); ratio {b / a:.2f} (goal <= 0.5)")
    paired = [c / one for one, c in zip(loop, cohort, strict=True)]  # each repeat's two runs were timed back to back
    print(f"per-repeat ratio median {statistics.median(paired):.2f}   {[round(r, 2) for r in paired]}")
    waited, network = (statistics.median(s[k] for s in stages) for k in ("waiting_for_workers_s", "network_s"))
    bound = "the worker processes (reading, preprocessing)" if waited > network else "the network"
    print(f"cohort stages: network {network:.1f} s, waiting for workers {waited:.1f} s: bounded by {bound}")


if __name__ == "__main__":
    main()
