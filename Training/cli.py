"""``breastcmsl-train``: synth, preprocess, fit, calibrate, evaluate, compare, localize, export, demo,
localization-study.

User mistakes (:class:`InputError`) print one line naming the file and the problem and exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from BreastCMSLLib.command import dispatch
from BreastCMSLLib.errors import InputError

from . import ingest, mamamia
from .fastconv import MODES
from .methods import METHODS


def _triple(kind=int):
    return dict(nargs=3, type=kind, metavar=("I", "J", "K"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="breastcmsl-train", description="Train and evaluate CMSL and the "
                                     "paper's baselines on a cohort (Luo et al., MICCAI 2019).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="a phantom cohort: case folders + manifest.csv")
    p.add_argument("--n", type=int, required=True, help="number of cases")
    p.add_argument("--out", type=Path, required=True, help="cohort folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", **_triple(), help="phantom grid in voxels (i, j, k)")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("X", "Y", "Z"), help="phantom spacing, mm")
    p.add_argument("--malignant-fraction", type=float, default=0.5)
    p.add_argument("--difficulty", type=float, default=None, help="class overlap of the phantom (its default)")
    p.add_argument("--workers", type=int, default=1)

    p = sub.add_parser("preprocess", help="preprocess a cohort into a cache (resumable, parallel)")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--input-size", **_triple(), help="network input (default 340 220 128; 170 220 128 for one "
                   "breast)")
    p.add_argument("--unit", choices=("whole", "breast"), default="whole",
                   help="the bilateral study, or one breast (a manifest of breasts: ingest-mama-mia, ingest --unit)")
    p.add_argument("--phases", default=None, metavar="N,N",
                   help="post-contrast phase numbers to keep (1 = the first; default: every phase), e.g. 1,2 for a "
                   "model of two-phase protocols")
    p.add_argument("--seed", type=int, default=0, help="seed of the split for rows without one")

    p = sub.add_parser("fit", help="train one method (runs under torchrun for DDP)")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--method", choices=METHODS, required=True)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8, help="global batch (over all ranks)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--init", type=str, default=None, help="run folder or model file to start from")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--width-factor", type=float, default=1.0)
    p.add_argument("--s", type=float, default=20.0, help="CMSL/NSL scale")
    p.add_argument("--m", type=float, default=0.35, help="CMSL margin")
    p.add_argument("--lr-patience", type=int, default=3)
    p.add_argument("--early-stop", type=int, default=8)
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--resident-gb", type=float, default=8.0, help="keep a split on the device up to this size")
    p.add_argument("--conv1", choices=MODES, default="s2d", help="CUDA: exact conv1 rewrite (Training/fastconv.py)")
    p.add_argument("--compile", action="store_true", help="CUDA: torch.compile the network (slow first steps)")

    p = sub.add_parser("calibrate", help="temperature scaling on the run's validation split (RUN/calibration.json)")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--cache", type=str, default=None, help="another cache (default: the run's)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("domain", help="the training-domain record of the run's best model (RUN/domain.json): input "
                       "envelope, feature density and input-pattern density, thresholds on held-out cases")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--cache", type=str, default=None, help="another cache (default: the run's)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("evaluate", help="Table-1 and calibration metrics with bootstrap CIs, ROC, reliability "
                       "diagram, cos histograms")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--cache", type=str, default=None, help="another cache (default: the run's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-ood", action="store_true", help="skip the training-domain check's evidence (in-domain "
                   "rate, AUROC against inputs made out of distribution from the split's case folders)")

    p = sub.add_parser("compare", help="Table 1 of evaluated runs")
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("localize", help="COAM and CAM peak distances to the annotated lesion centres")
    p.add_argument("--run", "--run-dir", type=Path, required=True,
                   help="run folder (--run-dir under torchrun, which takes --run... options itself)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--centers", type=Path, default=None, help="CSV subject_id,x,y,z (LPS mm)")
    p.add_argument("--cache", type=str, default=None)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("export", help="the deployable model file of a run")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default=None)
    p.add_argument("--synthetic", action="store_true",
                   help="mark the model as trained on synthetic phantoms (shown as such, not for diagnosis)")
    p.add_argument("--operating-point", default=None, metavar="RULE",
                   help="sensitivity=X or specificity=X: the threshold chosen on the calibrated validation "
                   "probabilities (default: p >= 0.5)")

    p = sub.add_parser("localization-study", help="COAM vs CAM localization at the paper's feature grid (phantoms)")
    p.add_argument("--out", type=Path, required=True, help="study folder")
    p.add_argument("--input-size", **_triple(), default=(340, 220, 128), help="network input (the paper's)")
    p.add_argument("--spacing", nargs=3, type=float, metavar=("X", "Y", "Z"), default=(1.1, 1.1, 1.1),
                   help="phantom voxel size, mm (the paper's 1.1)")
    p.add_argument("--width-factor", type=float, default=0.125)
    p.add_argument("--n", type=int, default=110, help="number of phantom cases")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes for synthesis and preprocessing")

    p = sub.add_parser("compare-methods", help="methods trained on the same splits over seeds; paired AUC "
                       "differences (DeLong, bootstrap) per seed and pooled")
    p.add_argument("--cache", type=Path, required=True, help="preprocessed cache (split again per seed)")
    p.add_argument("--out", type=Path, required=True, help="comparison folder")
    p.add_argument("--methods", default="cmsl,bce,nsl", help="comma-separated; the first is compared with each other")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds")
    p.add_argument("--first-seed", type=int, default=0, help="seeds FIRST .. FIRST + N - 1")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--width-factor", type=float, default=0.25)
    p.add_argument("--early-stop", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="fits in parallel (each with cores / jobs torch threads)")

    p = sub.add_parser("demo", help="phantom cohort -> CMSL and BCE -> evaluate, localize, compare, export")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=2)
    ingest.add_parser(sub)
    mamamia.add_parser(sub)
    return parser


def cmd_synth(args) -> dict:
    from .cohort import synth_cohort

    return synth_cohort(args.out, args.n, seed=args.seed, shape=args.shape, spacing=args.spacing,
                        malignant_fraction=args.malignant_fraction, difficulty=args.difficulty, workers=args.workers)


def cmd_preprocess(args) -> dict:
    import dataclasses

    from BreastCMSLLib.config import PreprocessConfig
    from BreastCMSLLib.pipeline.breasts import BREAST_INPUT_SIZE

    from .cache import preprocess_cohort
    from .unitmanifest import lists_breasts

    if args.unit == "whole" and lists_breasts(args.manifest):
        raise InputError(args.manifest, "lists breasts (one row per breast): preprocess it with --unit breast")
    cfg = PreprocessConfig(unit=args.unit)
    if args.unit == "breast" and not args.input_size:
        cfg = dataclasses.replace(cfg, input_size=BREAST_INPUT_SIZE)
    if args.input_size:
        try:
            cfg = dataclasses.replace(cfg, input_size=tuple(args.input_size))
        except ValueError as err:
            raise InputError("--input-size", str(err)) from None
    if args.phases:
        try:
            cfg = dataclasses.replace(cfg, phases=tuple(int(n) for n in args.phases.split(",")))
        except ValueError as err:
            raise InputError("--phases", f"post-contrast phase numbers from 1, increasing, e.g. 1,2 ({err})") from None
    r = preprocess_cohort(args.manifest, args.cache, cfg, workers=args.workers, seed=args.seed)
    return {"done": len(r.done), "skipped_finished": len(r.skipped), "failed": r.failed,
            "seconds": round(r.seconds, 1)}


def cmd_fit(args) -> dict:
    from .trainer import FitConfig, fit

    cfg = FitConfig(cache=str(args.cache), out=str(args.out), method=args.method, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                    width_factor=args.width_factor, s=args.s, m=args.m, lr_patience=args.lr_patience,
                    early_stop=args.early_stop, checkpoint_every=args.checkpoint_every, init=args.init,
                    resident_gb=args.resident_gb, conv1=args.conv1, compile=args.compile)
    return fit(cfg, resume=args.resume)


def cmd_calibrate(args) -> dict:
    from .evaluate import calibrate

    return calibrate(args.run, args.cache, args.device)


def cmd_domain(args) -> dict:
    from .domain import domain

    return domain(args.run, args.cache, args.device)


def cmd_evaluate(args) -> dict:
    from .evaluate import evaluate

    r = evaluate(args.run, args.split, args.cache, args.device, ood=not args.no_ood)
    app = r.get("applicability")
    return {"metrics": {k: v["value"] for k, v in r["metrics"].items()}, "n": r["n"],
            **({"in_domain_rate": app["in_domain_rate"], "ood_auroc": {k: v["auroc"] for k, v in app["kinds"].items()}
                | {"all": app["overall"]["auroc"]}} if app else {}),
            "written": str(args.run / "eval" / "metrics.json")}


def cmd_compare(args) -> dict:
    from .evaluate import compare

    print(compare(args.runs, args.out))
    return {"written": str(args.out)}


def cmd_localize(args) -> dict:
    from .localize import localize

    return localize(args.run, args.split, args.centers, args.device, args.cache)


def cmd_export(args) -> dict:
    from .evaluate import export

    return {"model": str(args.out),
            "sha256": export(args.run, args.out, args.name, args.synthetic, args.operating_point)}


def cmd_study(args) -> dict:
    from .study import StudyConfig, run_study

    cfg = StudyConfig(n_cases=args.n, epochs=args.epochs, input_size=tuple(args.input_size),
                      spacing_mm=tuple(args.spacing), width_factor=args.width_factor, seed=args.seed,
                      device=args.device, workers=args.workers)
    return run_study(args.out, cfg)


def cmd_compare_methods(args) -> dict:
    from .compare import CompareConfig, compare_methods

    cfg = CompareConfig(cache=str(args.cache), out=str(args.out), methods=tuple(args.methods.split(",")),
                        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)), epochs=args.epochs,
                        batch_size=args.batch_size, lr=args.lr,
                        width_factor=args.width_factor, early_stop=args.early_stop, device=args.device)
    summary = compare_methods(cfg, jobs=args.jobs)
    return {"written": str(args.out / "comparison.md"), **{k: v["verdict"] for k, v in summary["pairs"].items()}}


def cmd_demo(args) -> None:
    from .demo import demo, headline

    print(headline(demo(args.out, workers=args.workers), args.out))


COMMANDS = {"synth": cmd_synth, "preprocess": cmd_preprocess, "fit": cmd_fit, "calibrate": cmd_calibrate,
            "domain": cmd_domain, "evaluate": cmd_evaluate,
            "compare": cmd_compare, "localize": cmd_localize, "export": cmd_export, "demo": cmd_demo,
            "localization-study": cmd_study,
            "compare-methods": cmd_compare_methods,
            "ingest": ingest.cmd_ingest, "ingest-mama-mia": mamamia.cmd_ingest_mama_mia}


def main(argv: list[str] | None = None) -> int:
    return dispatch("breastcmsl-train", build_parser(), COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
