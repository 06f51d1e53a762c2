"""``breastcmsl analyze-cohort`` (and ``python -m BreastCMSLLib.cohort``, the form torchrun starts): its arguments
and its run. Ctrl-C keeps the finished cases and exits with 130."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from BreastCMSLLib.command import dispatch
from BreastCMSLLib.errors import InputError

NAME = "analyze-cohort"
HELP = ("analyze every case of a cohort: per-case folders, results.csv, summary.md; pipelined, resumable, sharded "
        "under torchrun")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments on ``p``."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--manifest", type=Path, help="cohort manifest CSV (subject_id,label,case_dir,...; "
                       "labels and centres give summary.md; a roi_box column gives ftv_ml)")
    where.add_argument("--root", type=Path, help="folder of case folders and/or DICOM studies, one per subfolder")
    p.add_argument("--model", required=True, type=Path, help="model .safetensors file")
    p.add_argument("--out", required=True, type=Path, help="output folder (cases/<id>/, results.csv, summary.md)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (under torchrun: each rank its own GPU)")
    p.add_argument("--workers", type=int, help="worker processes reading/preprocessing and writing "
                   "(default: half the cores per rank, 2 to 8)")
    p.add_argument("--batch", type=int, help="cases per forward pass (default 4 on a GPU, 1 on the CPU)")
    p.add_argument("--seg", action="store_true", help="DICOM studies: also write coam_seg.dcm (DICOM Segmentation)")
    p.add_argument("--label-fraction", type=float, default=0.5,
                   help="labelmaps are 1 where the map >= this fraction of its maximum")
    p.add_argument("--kinetics", action="store_true", help="also the BI-RADS curve type at the fine map's peak "
                   "(fine_initial, fine_delayed in results.csv; re-reads the pre-contrast, early and late phase; "
                   "docs/kinetics.md)")


def run(args) -> dict | None:
    """Analyze the cohort of the parsed arguments: see :mod:`BreastCMSLLib.cohort.runner`."""
    # the network's OpenMP threads share the cores with the worker processes: they sleep while they wait
    # instead of spinning (read when torch loads OpenMP: in a fresh process, once the run is planned)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from BreastCMSLLib.cohort.sources import from_manifest, from_root
    from BreastCMSLLib.cohort.workers import Workers, default_workers

    if not 0.0 < args.label_fraction <= 1.0:
        raise InputError("--label-fraction", f"must be in (0, 1], got {args.label_fraction}")
    for name in ("workers", "batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name}", f"must be at least 1, got {getattr(args, name)}")
    if args.manifest:
        try:
            import scipy.stats  # noqa: F401
            import sklearn.metrics  # noqa: F401
        except ImportError as err:
            raise InputError(args.manifest, f"summary.md's metrics need {err.name} (the train extra: "
                             "pip install 'breastcmsl[train]')") from None
        sources = from_manifest(args.manifest)
    else:
        sources = from_root(args.root, args.out)
    try:
        # the first worker process starts now and imports while this process plans the run
        with Workers(args.workers or default_workers()) as workers:
            from BreastCMSLLib.cohort.runner import run_cohort

            return run_cohort(sources, args.model, args.out, args.device, workers, args.batch, args.seg,
                              args.label_fraction, summary=args.manifest is not None, kinetics=args.kinetics)
    except KeyboardInterrupt:
        print("breastcmsl analyze-cohort: interrupted; finished cases are kept, rerun the same command to do the "
              "rest", file=sys.stderr)
        raise SystemExit(130) from None


def main(argv: list[str] | None = None) -> int:
    """``python -m BreastCMSLLib.cohort ARGS``: the same as ``breastcmsl analyze-cohort ARGS``."""
    parser = argparse.ArgumentParser(prog=f"breastcmsl {NAME}", description=HELP)
    add_arguments(parser)
    parser.set_defaults(command=NAME)
    return dispatch("breastcmsl", parser, {NAME: run}, argv)
