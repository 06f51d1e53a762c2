"""``breastcmsl-train demo``: the whole workflow on a small phantom cohort, sized for 2 CPU cores.

synth -> preprocess -> fit CMSL and BCE (each calibrated on its validation split at the end of ``fit``) ->
evaluate -> localize (CMSL) -> compare -> export, and ``DEMO_DIR/report.md`` with Table 1, the calibration
table, the CAM/COAM distances and the figures (ROC, reliability diagrams, cos theta histogram). The paper's input size
(340 x 220 x 128, full-width ResNet34) is for GPUs; the demo uses phantoms of 96 x 64 x 40 voxels
(~3.7 mm), network input 64 x 48 x 32 and width factor 0.25 so that it ends in a few minutes on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from BreastCMSLLib.config import NETWORK_STRIDE, PreprocessConfig
from BreastCMSLLib.network.calibration import operating_line
from BreastCMSLLib.network.header import read_model_file_metadata
from BreastCMSLLib.phantom.grid import FOV_MM

from .cache import preprocess_cohort
from .cohort import synth_cohort
from .compare import paired_runs
from .evaluate import compare, evaluate, export
from .localize import localize
from .metrics import shown
from .ood import ood_table
from .stages import Stages
from .trainer import FitConfig, fit


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo (see the module docstring for why they are small)."""

    n_cases: int = 240
    difficulty: float = 0.4  # phantom class overlap (default 0.5: CMSL test AUC 0.835; 0.3: 0.993, see README)
    phantom_shape: tuple[int, int, int] = (96, 64, 40)
    input_size: tuple[int, int, int] = (64, 48, 32)
    width_factor: float = 0.25
    epochs: int = 30
    batch_size: int = 4
    lr: float = 1e-4
    lr_patience: int = 3
    early_stop: int = 10
    seed: int = 0
    methods: tuple[str, ...] = ("cmsl", "bce")


def demo(out: str | Path, workers: int = 2, cfg: DemoConfig = DemoConfig(), device: str = "auto") -> dict:
    """Run the demo into ``out`` and return a summary (also in ``out/report.md`` and ``summary.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.txt").unlink(missing_ok=True)
    stage = Stages("demo", log=out / "log.txt")

    stage("synth", synth_cohort, out / "cohort", cfg.n_cases, seed=cfg.seed, shape=cfg.phantom_shape,
          difficulty=cfg.difficulty, workers=workers)
    prep = stage("preprocess", preprocess_cohort, out / "cohort" / "manifest.csv", out / "cache",
                 PreprocessConfig(input_size=cfg.input_size), workers=workers,
                 seed=cfg.seed)
    runs, results = {}, {}
    for method in cfg.methods:
        runs[method] = out / "runs" / method
        if runs[method].exists():
            shutil.rmtree(runs[method])
        stage(f"fit {method}", fit, FitConfig(
            cache=str(out / "cache"), out=str(runs[method]), method=method, epochs=cfg.epochs,
            batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, device=device, width_factor=cfg.width_factor,
            lr_patience=cfg.lr_patience, early_stop=cfg.early_stop))
        results[method] = stage(f"evaluate {method}", evaluate, runs[method], "test", device=device)
    loc = stage("localize cmsl", localize, runs["cmsl"], "test", device=device)
    a, b = cfg.methods[:2]
    paired = {"methods": [a, b], **paired_runs(runs[a], runs[b], seed=cfg.seed)}
    table = compare([runs[m] for m in cfg.methods], out / "table1.md")
    models = {m: str(out / f"{m}.safetensors") for m in cfg.methods}
    for m in cfg.methods:
        export(runs[m], models[m], name=f"demo-{m}", synthetic=True)
    lines = {m: operating_line(read_model_file_metadata(models[m])[2]) for m in cfg.methods}
    times = stage.total()
    summary = {"config": dataclasses.asdict(cfg), "seconds": times, "failed_cases": prep.failed,
               "auc": {m: results[m]["metrics"]["auc"]["value"] for m in cfg.methods},
               "auc_ci": {m: [results[m]["metrics"]["auc"][k] for k in ("ci_low", "ci_high")] for m in cfg.methods},
               "paired_auc_difference": paired,
               "calibration": {m: {"temperature": results[m]["calibration"]["temperature"],
                                   **{f"ece_{k}": (results[m]["calibration"][k] or {}).get("ece")
                                      for k in ("before", "after")}} for m in cfg.methods},
               "operating_lines": lines,
               "localization": loc, "models": models}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(_report(cfg, table, loc, results, runs, out, times, prep.failed, lines, paired))
    return summary


def headline(summary: dict, out: str | Path) -> str:
    """The demo's last console lines (at most 12): AUC per method with its CI, the paired AUC difference of the
    first two methods, the ECE after calibration, the fine map's distance and where the report is."""
    out = Path(out)
    paired, cal, fine = summary["paired_auc_difference"], summary["calibration"], summary["localization"]["fine_mm"]
    a, b = paired["methods"]
    lines = [f"Test split: {paired['n']} phantom cases ({paired['n_malignant']} malignant), value [95 % CI]",
             f"{'method':<8}{'AUC':<24}ECE after calibration (bias-corrected, BCa)"]
    for m, auc in summary["auc"].items():
        lo, hi = summary["auc_ci"][m]
        ece = shown(cal[m]["ece_after"])
        ece_text = f"{ece['value']:.3f} [{ece['ci_low']:.3f}, {ece['ci_high']:.3f}]" if ece else "not calibrated"
        lines.append(f"{m.upper():<8}{f'{auc:.3f} [{lo:.3f}, {hi:.3f}]':<24}{ece_text}")
    bs, dl = paired["bootstrap"], paired["delong"]
    resolved = "resolved" if bs["ci_low"] > 0 or bs["ci_high"] < 0 else "not resolved"
    lines += [f"{a.upper()} - {b.upper()} AUC: {paired['difference']:+.3f} [{bs['ci_low']:+.3f}, {bs['ci_high']:+.3f}] "
              f"(paired bootstrap), DeLong p = {dl['p']:.2g}: {resolved} (one seed; several: compare-methods)",
              f"fine map peak to lesion centre: {fine['mean']:.1f} ± {fine['std']:.1f} mm (n = {fine['n']})"
              if fine["n"] else "fine map peak to lesion centre: no test case called malignant",
              f"report: {out / 'report.md'} (all numbers: {out / 'summary.json'}; stage output: {out / 'log.txt'})"]
    return "\n".join(lines)


def calibration_table(results: dict) -> str:
    """Test-split calibration per method: T (fitted on the validation split) and each metric before -> after."""
    def cell(m: dict | None) -> str:
        m = shown(m)
        return "n/a" if m is None else f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"

    rows = ["| Method | T | n val | ECE before | ECE after | MCE before | MCE after | Brier before | Brier after | "
            "NLL before | NLL after |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, r in results.items():
        cal = r["calibration"]
        cells = [cell((cal[k] or {}).get(metric)) for metric in ("ece", "mce", "brier", "nll")
                 for k in ("before", "after")]
        t = f"{cal['temperature']:.3g}" if cal["calibrated"] else "uncalibrated"
        rows.append(f"| {method} | {t} | {cal['n_val']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _report(cfg: DemoConfig, table: str, loc: dict, results: dict, runs: dict, out: Path, times: dict,
            failed: dict, lines: dict, paired: dict) -> str:
    def rel(p: Path) -> str:
        return p.relative_to(out).as_posix()

    def mm(d: dict) -> str:
        return f"{d['mean']:.1f} ± {d['std']:.1f} mm (n = {d['n']})" if d["n"] else "n/a (n = 0)"

    test = results["cmsl"]
    grid = [-(-n // NETWORK_STRIDE) for n in cfg.input_size]
    cell = [NETWORK_STRIDE * f / p for f, p in zip(FOV_MM, cfg.phantom_shape, strict=True)]  # mm (phantom spacing)
    figures = []
    for m, run in runs.items():
        figures.append(f"![ROC {m}]({rel(run / 'eval' / 'roc.png')})")
        if (run / "eval" / "cos_hist.png").is_file():
            figures.append(f"![cos theta {m}]({rel(run / 'eval' / 'cos_hist.png')})")
    lines = [
        "# BreastCMSL demo report", "",
        "Synthetic phantom cohort (no patient data). Everything below was produced by "
        "`breastcmsl-train demo` in this folder.", "",
        "## Set-up", "",
        f"- cohort: {cfg.n_cases} phantom cases ({cfg.phantom_shape[0]}×{cfg.phantom_shape[1]}×"
        f"{cfg.phantom_shape[2]} voxels, ~3.7 mm), half malignant, difficulty {cfg.difficulty}; seeded "
        "label-stratified split in the paper's proportions 1204/165/346; test split: "
        f"{test['n']} cases ({test['n_malignant']} malignant)",
        f"- network input {cfg.input_size[0]}×{cfg.input_size[1]}×{cfg.input_size[2]}, 6 subtraction channels, "
        f"ResNet34-3D width factor {cfg.width_factor} (the paper's 340×220×128 at full width is for GPUs; "
        "these sizes keep the demo within minutes on 2 CPU cores)",
        f"- Adam lr {cfg.lr}, batch {cfg.batch_size}, ≤ {cfg.epochs} epochs, lr ÷10 after {cfg.lr_patience} "
        f"epochs without training-loss improvement, early stop after {cfg.early_stop} epochs without "
        "validation-loss improvement; the model of the lowest validation loss is kept",
        f"- preprocessing: the core's, with the upper intensity clip at the {PreprocessConfig().clip_percentile} "
        "percentile of the masked subtraction voxels (at 99.5, 11 % of the lesion voxels of these phantoms, up "
        "to 32 % in a case, saturate in all six phases, which flattens their kinetic curves; measured on 12 "
        "cases; at 99.9 none do)",
        f"- cases that failed preprocessing: {len(failed)}", "",
        "## Table 1 (test split)", "", table, "",
        f"Paired AUC difference {paired['methods'][0].upper()} − {paired['methods'][1].upper()} on the same "
        f"{paired['n']} test cases: {paired['difference']:+.3f}, paired bootstrap 95 % CI "
        f"[{paired['bootstrap']['ci_low']:+.3f}, {paired['bootstrap']['ci_high']:+.3f}] (cases resampled, the same "
        f"resample for both), DeLong's test for correlated ROC curves p = {paired['delong']['p']:.2g} "
        f"(95 % CI [{paired['delong']['ci_low']:+.3f}, {paired['delong']['ci_high']:+.3f}]). One split and one "
        "initialization: `breastcmsl-train compare-methods` repeats the comparison over seeds.", "",
        "## Calibration (test split)", "",
        "Temperature scaling: one scalar T fitted on the validation split by minimizing the negative "
        "log-likelihood; p = sigmoid(score / T). Expected (ECE) and maximum (MCE) calibration error over 15 "
        "equal-width probability bins, Brier score and NLL, value [95 % bootstrap CI], before (T = 1) and after. "
        "ECE and MCE are biased upward on few cases, so their cells show BCa's bias-corrected estimate with the BCa "
        "interval (the plug-in values are in each run's `eval/metrics.json` and the reliability diagrams); Brier "
        "and NLL are means of per-case losses, with percentile intervals. "
        "Table 1 above does not change: T keeps the order of the cases and the p = 0.5 decision.", "",
        calibration_table(results), "",
        *[f"![reliability {m}]({rel(run / 'eval' / 'reliability.png')})" for m, run in runs.items()], "",
        "What the exported models report beside their probability:", "",
        *[f"- `{m}.safetensors`: {line}" for m, line in lines.items()], "",
        "## Localization (CMSL model, test cases it calls malignant)", "",
        f"- final feature grid at this input size: {grid[0]}×{grid[1]}×{grid[2]} positions of about "
        f"{cell[0]:.0f}×{cell[1]:.0f}×{cell[2]:.0f} mm, so CAM and COAM can only point at one of these "
        "blocks: the distances below measure the demo's coarse grid, "
        "not the maps' quality; the paper's input (340×220×128 at ~1 mm) gives an 11×7×4 grid",
        f"- COAM peak to annotated lesion centre: {mm(loc['coam_mm'])}",
        f"- CAM peak to annotated lesion centre: {mm(loc['cam_mm'])}",
        f"- fine map peak (Eq. 5 on layer2, 4× finer grid than COAM's; docs/maps.md) to annotated lesion centre: "
        f"{mm(loc['fine_mm'])}",
        f"- per case: `{rel(runs['cmsl'] / 'localize' / 'cases.csv')}`", "",
        f"![montage]({rel(runs['cmsl'] / 'localize' / 'montage.png')})", "",
        "## Applicability (does a study lie inside what the model was trained on? docs/applicability.md)", "",
        *[f"**{m}**: " + (ood_table(r["applicability"]) if r.get("applicability") else
                          "no training-domain record (a validation split of fewer than 10 cases)\n")
          for m, r in results.items()],
        "## Figures", "", *figures, "",
        "## Time (seconds)", "",
        "| stage | s |", "|---|---|", *[f"| {k} | {v} |" for k, v in times.items()], "",
        "## Models", "",
        *[f"- `{m}.safetensors` (load with `breastcmsl analyze CASE --model {m}.safetensors`)" for m in runs], "",
    ]
    return "\n".join(lines)
