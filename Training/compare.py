"""``breastcmsl-train compare-methods``: methods trained on the same splits over several seeds, compared paired.

For each seed s the cohort of one preprocessed cache is split again (label-stratified, seeded with s, the
paper's proportions: :func:`BreastCMSLLib.cohort.manifest.assign_splits`) into ``OUT/seed<s>/cache`` (its own
manifest; the entries are the shared cache's, linked), and every method is fitted there with seed s (the
split, the initialization, the batch order and the augmentation all follow s), calibrated on that seed's
validation split and evaluated on that seed's test cases. Seed 0 reproduces the split ``preprocess`` gives
a manifest without splits.

Statistics (``OUT/comparison.json``, ``OUT/comparison.md``):

- per method: the test AUC of every seed and their mean ± sd (sd over seeds, ddof 1);
- per seed and pair (the first method against each other): the paired AUC difference on that seed's test
  cases, DeLong's test for correlated ROC curves (:mod:`Training.delong`) and a paired percentile-bootstrap
  95 % CI (cases resampled, the same resample for both methods);
- pooled over seeds: the mean of the per-seed differences with a Student-t 95 % CI and p over the N seeds
  (``scipy.stats.ttest_1samp``, N - 1 degrees of freedom). Each seed is one replicate of the whole experiment
  (split, initialization, training), so this interval carries the training run-to-run variation as well as
  the test sampling. The seeds' test sets are drawn from the same cohort and overlap, so they are not
  independent samples of new patients; pooling the seeds' test predictions into one DeLong test would count
  a case several times and is not done.

A difference is called resolved when its 95 % CI excludes 0.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from BreastCMSLLib.atomic import atomic_write_text
from BreastCMSLLib.cohort.manifest import assign_splits, write_manifest
from BreastCMSLLib.cohort.metrics import replicate_metrics
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.network.net import bf16_native

from .cache import open_cache
from .delong import delong_test
from .methods import METHODS
from .runfiles import run_files

N_BOOT = 10_000


@dataclass(frozen=True)
class CompareConfig:
    """What ``compare-methods`` trains: methods (the first is compared with each other), seeds and the fit
    options (the demo's by default)."""

    cache: str
    out: str
    methods: tuple[str, ...] = ("cmsl", "bce", "nsl")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 30
    batch_size: int = 4
    lr: float = 1e-4
    width_factor: float = 0.25
    lr_patience: int = 3
    early_stop: int = 10
    device: str = "auto"
    n_boot: int = N_BOOT


def check(cfg: CompareConfig) -> None:
    """Refuse unknown or repeated methods, fewer than two methods, no seeds or repeated seeds."""
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or len(set(cfg.methods)) != len(cfg.methods) or len(cfg.methods) < 2:
        raise InputError("--methods", f"needs two or more distinct methods of {', '.join(METHODS)}, got "
                         f"{','.join(cfg.methods)}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise InputError("--seeds", f"needs one or more distinct seeds, got {list(cfg.seeds)}")


def seed_cache(cache_dir: str | Path, out: Path, seed: int) -> Path:
    """``out`` as a cache of the same entries with the cohort split again with ``seed`` (returns ``out``)."""
    base = open_cache(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(base.root / "cache.json", out / "cache.json")
    entries = out / "entries"
    if not entries.exists():
        entries.symlink_to((base.root / "entries").resolve(), target_is_directory=True)
    cleared = [dataclasses.replace(c, split="") for c in base.cases]
    write_manifest(out / "manifest.csv", assign_splits(cleared, seed))
    return out


def _fit_config(cfg: CompareConfig, cache: Path, run: Path, method: str, seed: int):
    from .trainer import FitConfig

    return FitConfig(cache=str(cache), out=str(run), method=method, epochs=cfg.epochs, batch_size=cfg.batch_size,
                     lr=cfg.lr, seed=seed, device=cfg.device, width_factor=cfg.width_factor,
                     lr_patience=cfg.lr_patience, early_stop=cfg.early_stop)


def _finished(run: Path, fit_cfg) -> bool:
    """True when ``run`` was fitted with the options of ``fit_cfg`` and evaluated (a rerun then reuses it)."""
    try:
        done = json.loads(run_files(run)["run"].read_text())["fit"]
    except (OSError, ValueError, KeyError):
        return False
    same = all(done.get(k) == v for k, v in dataclasses.asdict(fit_cfg).items())
    return same and (run / "eval" / "predictions.csv").is_file() and (run / "eval" / "metrics.json").is_file()


def read_predictions(run: Path) -> dict[str, tuple[int, float]]:
    """subject_id -> (label, pre-sigmoid score) from ``RUN/eval/predictions.csv`` (the score ranks the cases
    as the probability does, without the probability's saturation at 0 and 1)."""
    with open(run / "eval" / "predictions.csv", newline="") as f:
        return {r["subject_id"]: (int(r["label"]), float(r["score"])) for r in csv.DictReader(f)}


def fit_and_evaluate(cfg: CompareConfig, seed: int, method: str, threads: int = 0) -> None:
    """Fit, calibrate and evaluate one (seed, method) unless finished; ``threads`` > 0 sets torch's threads
    (for a worker process of ``--jobs``)."""
    from .evaluate import evaluate
    from .trainer import fit

    if threads:
        torch.set_num_threads(threads)
    run = Path(cfg.out) / f"seed{seed}" / method
    fit_cfg = _fit_config(cfg, Path(cfg.out) / f"seed{seed}" / "cache", run, method, seed)
    if _finished(run, fit_cfg):
        return
    t0 = time.perf_counter()
    if run.exists():
        shutil.rmtree(run)
    fit(fit_cfg)
    evaluate(run, "test", device=cfg.device, ood=False)  # the AUC and calibration only
    atomic_write_text(run / "seconds.json", json.dumps({"fit_and_evaluate": time.perf_counter() - t0,
                                                        "torch_threads": torch.get_num_threads()}))


def run_record(cfg: CompareConfig, seed: int, method: str) -> dict:
    """What the summary keeps of one finished (seed, method) run."""
    run = Path(cfg.out) / f"seed{seed}" / method
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    with open(run_files(run)["log"], newline="") as f:
        history = list(csv.DictReader(f))
    after = metrics["calibration"]["after"] or {}
    return {"seed": seed, "method": method, "run": str(run), "n_test": metrics["n"], "auc": metrics["metrics"]["auc"],
            "ece_after": after.get("ece"), "epochs": len(history),
            "best_epoch": int(min(history, key=lambda r: float(r["val_loss"]))["epoch"]) if history else 0,
            **json.loads((run / "seconds.json").read_text())}


def train_and_evaluate(cfg: CompareConfig, jobs: int = 1, log=print) -> dict:
    """Fit, calibrate and evaluate every (seed, method) not finished yet, ``jobs`` at a time (each process then
    runs torch with cores // jobs threads), the first two methods of every seed before the others; returns
    the per-run records."""
    for seed in cfg.seeds:
        seed_cache(cfg.cache, Path(cfg.out) / f"seed{seed}" / "cache", seed)
    order = [(s, m) for s in cfg.seeds for m in cfg.methods[:2]] + [(s, m) for m in cfg.methods[2:] for s in cfg.seeds]
    runs: dict[str, dict] = {}

    def done(seed: int, method: str) -> None:
        r = runs[f"{seed}/{method}"] = run_record(cfg, seed, method)
        log(f"[compare] seed {seed} {method}: test AUC {r['auc']['value']:.3f} ({r['epochs']} epochs, "
            f"{r['fit_and_evaluate']:.0f} s)")

    if jobs <= 1:
        for seed, method in order:
            fit_and_evaluate(cfg, seed, method)
            done(seed, method)
        return runs
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(fit_and_evaluate, cfg, s, m, threads): (s, m) for s, m in order}
        for future in as_completed(futures):
            future.result()
            done(*futures[future])
    return {f"{s}/{m}": runs[f"{s}/{m}"] for s, m in order}


def paired_bootstrap(label: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, n_boot: int = N_BOOT,
                     seed: int = 0) -> dict:
    """Percentile 95 % CI of AUC(a) - AUC(b): cases resampled with replacement, the same resample for both
    (resamples with one class only are left out). The AUC is unbiased (a U-statistic), so the percentile
    interval needs no bias correction."""
    idx = np.random.default_rng(seed).integers(0, len(label), (n_boot, len(label)))
    diff = replicate_metrics(label, score_a, idx)["auc"] - replicate_metrics(label, score_b, idx)["auc"]
    diff = diff[np.isfinite(diff)]
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return {"ci_low": float(lo), "ci_high": float(hi), "n_boot": int(diff.size)}


def paired_runs(run_a: str | Path, run_b: str | Path, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """DeLong's test and the paired bootstrap CI of AUC(a) - AUC(b) on the test cases both runs were evaluated on
    (``RUN/eval/predictions.csv``; refused unless they are the same cases)."""
    pa, pb = read_predictions(Path(run_a)), read_predictions(Path(run_b))
    if set(pa) != set(pb):
        raise InputError(run_a, f"was evaluated on other cases than {run_b}")
    ids = sorted(pa)
    label = np.array([pa[i][0] for i in ids])
    sa, sb = np.array([pa[i][1] for i in ids]), np.array([pb[i][1] for i in ids])
    d = delong_test(label, sa, sb)
    return {"n": len(ids), "n_malignant": int(label.sum()), "auc_a": d.auc_a, "auc_b": d.auc_b,
            "difference": d.difference,
            "delong": {"se": d.se, "z": d.z, "p": d.p, "ci_low": d.ci_low, "ci_high": d.ci_high},
            "bootstrap": paired_bootstrap(label, sa, sb, n_boot, seed)}


def paired_seed(runs: dict, seed: int, a: str, b: str, n_boot: int) -> dict:
    """:func:`paired_runs` of methods a and b of one seed."""
    return {"seed": seed, **paired_runs(runs[f"{seed}/{a}"]["run"], runs[f"{seed}/{b}"]["run"], n_boot, seed)}


def pooled(differences: list[float]) -> dict:
    """Mean of the per-seed differences with its Student-t 95 % CI and two-sided p (one-sample t-test)."""
    d = np.asarray(differences, dtype=float)
    n = d.size
    mean = float(d.mean())
    if n < 2:
        return {"n_seeds": n, "mean": mean, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan,
                "method": "one seed: no interval over seeds"}
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    p = float(stats.ttest_1samp(d, 0.0).pvalue) if sd > 0 else (1.0 if mean == 0 else 0.0)
    return {"n_seeds": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "p": p,
            "method": f"mean of the {n} per-seed differences, Student-t CI and one-sample t-test ({n - 1} df)"}


def verdict(name: str, low: float, high: float, p: float) -> str:
    """One sentence: is the difference resolved (95 % CI excludes 0)?"""
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{name}: no interval (one seed)"
    if low > 0 or high < 0:
        side = "higher" if low > 0 else "lower"
        return f"{name}: resolved, the first method's AUC is {side} (95 % CI [{low:+.3f}, {high:+.3f}] excludes 0, " \
               f"p = {p:.2g})"
    return (f"{name}: not resolved, the 95 % CI [{low:+.3f}, {high:+.3f}] contains 0 (p = {p:.2g}); these runs "
            "cannot tell which method ranks the cases better")


def machine() -> dict:
    """The CPU, torch's kernel level, whether bf16 is native, the threads and the training precision."""
    cpu = platform.processor()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    cuda = torch.cuda.is_available()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_native_cpu": bf16_native(torch.device("cpu")),
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "training_precision": "bf16 autocast (CUDA)" if cuda else
            "fp32 (Training runs bf16 autocast on CUDA only; on any CPU fit and evaluate are fp32)"}


def summarize(cfg: CompareConfig, runs: dict) -> dict:
    """Per-method AUC over seeds, per-seed and pooled paired differences (first method minus each other)."""
    per_method = {}
    for m in cfg.methods:
        aucs = [runs[f"{s}/{m}"]["auc"]["value"] for s in cfg.seeds]
        per_method[m] = {"auc": aucs, "mean": float(np.mean(aucs)),
                         "sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else math.nan,
                         "ece_after": [(runs[f"{s}/{m}"]["ece_after"] or {}).get("value") for s in cfg.seeds],
                         "ece_after_debiased": [(runs[f"{s}/{m}"]["ece_after"] or {}).get("debiased")
                                                for s in cfg.seeds],
                         "epochs": [runs[f"{s}/{m}"]["epochs"] for s in cfg.seeds]}
    a = cfg.methods[0]
    pairs = {}
    for b in cfg.methods[1:]:
        seeds = [paired_seed(runs, s, a, b, cfg.n_boot) for s in cfg.seeds]
        pool = pooled([r["difference"] for r in seeds])
        pairs[f"{a}-{b}"] = {"per_seed": seeds, "pooled": pool,
                             "seeds_favouring_a": sum(r["difference"] > 0 for r in seeds),
                             "seeds_resolved_by_delong": sum(r["delong"]["p"] < 0.05 for r in seeds),
                             "verdict": verdict(f"{a.upper()} - {b.upper()}", pool["ci_low"], pool["ci_high"],
                                                pool["p"])}
    return {"config": dataclasses.asdict(cfg), "machine": machine(), "methods": per_method, "pairs": pairs,
            "runs": runs}


def report(summary: dict) -> str:
    """``comparison.md``: the AUC per method over seeds, the paired differences per seed and pooled."""
    cfg, methods = summary["config"], summary["methods"]
    seeds = cfg["seeds"]
    mach = summary["machine"]
    minutes = sum(r["fit_and_evaluate"] for r in summary["runs"].values()) / 60
    threads = sorted({r.get("torch_threads") for r in summary["runs"].values()} - {None})
    n_seeds = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
    lines = [f"# Paired comparison over {n_seeds}", "",
             f"Methods {', '.join(cfg['methods'])}; seeds {', '.join(map(str, seeds))} (each seed: its own "
             "label-stratified train/val/test split of the cohort, initialization, batch order and augmentation; "
             "all methods of a seed share the split and are tested on the same cases). Training: Adam lr "
             f"{cfg['lr']}, batch {cfg['batch_size']}, ≤ {cfg['epochs']} epochs, early stop after "
             f"{cfg['early_stop']} epochs without validation-loss improvement, ResNet34-3D width "
             f"{cfg['width_factor']}; the model of the lowest validation loss is tested.", "",
             "| Method | " + " | ".join(f"AUC seed {s}" for s in seeds) + " | mean ± sd |",
             "|---|" + "---|" * (len(seeds) + 1)]
    for m, r in methods.items():
        lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in r["auc"]) + f" | {r['mean']:.3f} ± {r['sd']:.3f} |"
                     if len(seeds) > 1 else f"| {m} | {r['auc'][0]:.3f} | {r['mean']:.3f} (one seed) |")
    lines += ["", "Test ECE after temperature scaling (15 bins; BCa's bias-corrected estimate, plug-in in parentheses; "
              "n/a: not calibrated):", "", "| Method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for m, r in methods.items():
        cells = [f"{d:.3f} ({v:.3f})" if d is not None and v is not None else "n/a"
                 for d, v in zip(r.get("ece_after_debiased", [None] * len(seeds)), r["ece_after"], strict=True)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for name, pair in summary["pairs"].items():
        pool = pair["pooled"]
        lines += ["", f"## {name.upper()} (paired AUC difference)", "",
                  "| seed | n test (malignant) | difference | DeLong 95 % CI | DeLong p | paired bootstrap 95 % CI |",
                  "|---|---|---|---|---|---|"]
        for r in pair["per_seed"]:
            dl, bs = r["delong"], r["bootstrap"]
            lines.append(f"| {r['seed']} | {r['n']} ({r['n_malignant']}) | {r['difference']:+.3f} | "
                         f"[{dl['ci_low']:+.3f}, {dl['ci_high']:+.3f}] | {dl['p']:.2g} | "
                         f"[{bs['ci_low']:+.3f}, {bs['ci_high']:+.3f}] |")
        if len(seeds) > 1:
            lines.append(f"| pooled | {n_seeds} | {pool['mean']:+.3f} (sd {pool['sd']:.3f}) | "
                         f"t: [{pool['ci_low']:+.3f}, {pool['ci_high']:+.3f}] | {pool['p']:.2g} | |")
        lines += ["",
                  f"Pooled: {pool['method']}. {pair['seeds_favouring_a']} of {len(seeds)} seeds favour "
                  f"{name.split('-')[0].upper()}; DeLong p < 0.05 in {pair['seeds_resolved_by_delong']}.", "",
                  f"**{pair['verdict']}.**"]
    lines += ["", "## Machine and precision", "",
              f"- CPU: {mach['cpu']} ({mach['cores']} cores, torch {mach['torch']}, kernels "
              f"{mach['cpu_capability']}, bf16 native: {mach['bf16_native_cpu']}); torch threads per fit: "
              f"{', '.join(map(str, threads)) or 'n/a'}; GPU: {mach['gpu'] or 'none'}",
              f"- precision: {mach['training_precision']}",
              f"- wall time of the fits and evaluations, summed: {minutes:.0f} min", ""]
    return "\n".join(lines)


def compare_methods(cfg: CompareConfig, jobs: int = 1, log=print) -> dict:
    """Train, evaluate and compare; writes ``OUT/comparison.json`` and ``OUT/comparison.md``, returns the summary."""
    check(cfg)
    open_cache(cfg.cache)  # a missing or foreign cache is refused before anything is written
    runs = train_and_evaluate(cfg, jobs, log)
    summary = summarize(cfg, runs)
    out = Path(cfg.out)
    atomic_write_text(out / "comparison.json", json.dumps(summary, indent=1))
    atomic_write_text(out / "comparison.md", report(summary))
    return summary
