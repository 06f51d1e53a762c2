"""``breastcmsl``: the runtime command line (synth, init-model, analyze, analyze-cohort, roles, kinetics).

User mistakes (:class:`InputError`) print one line naming the file and the problem and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from BreastCMSLLib.cohort import command as cohort_command
from BreastCMSLLib.command import dispatch, run_console
from BreastCMSLLib.config import MAP_NAMES
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.memory import keep_freed_memory
from BreastCMSLLib.run import AnalyzeRequest, run_analysis


def _triple(kind):
    return dict(nargs=3, type=kind, metavar=("I", "J", "K") if kind is int else ("X", "Y", "Z"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="breastcmsl",
        description="Breast DCE-MRI malignancy classification (CMSL) with COAM and CAM localization maps "
        "(Luo et al., MICCAI 2019). Research software, not for diagnosis.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write one synthetic DCE phantom case folder (known truth)")
    p.add_argument("--out", required=True, type=Path, help="case folder to create")
    p.add_argument("--seed", type=int, default=0)
    label = p.add_mutually_exclusive_group()
    label.add_argument("--malignant", dest="label", action="store_const", const=1)
    label.add_argument("--benign", dest="label", action="store_const", const=0)
    p.add_argument("--shape", **_triple(int), help="grid size in voxels (i, j, k)")
    p.add_argument("--spacing", **_triple(float), help="voxel spacing in mm")
    p.add_argument("--inputs", choices=["phases", "subtractions"], default="phases",
                   help="write pre + post_k phases (default) or sub_k subtractions")

    p = sub.add_parser("init-model", help="write an untrained model file (smoke tests, benchmarks)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--input-size", **_triple(int), default=None, help="network input size (default 340 220 128)")
    p.add_argument("--width-factor", type=float, default=1.0)
    p.add_argument("--channels", type=int, default=6, help="number of subtraction channels")
    p.add_argument("--loss", choices=["cmsl", "nsl", "bce"], default="cmsl")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("analyze", help="malignancy probability and the COAM, CAM and fine maps for one case")
    p.add_argument("case_dir", nargs="?", type=Path, help="case folder ([t1] + pre/post_k or sub_k)")
    p.add_argument("--t1", type=Path, help="non-fat-suppressed T1 (optional; without it the breast mask comes "
                   "from the pre-contrast phase)")
    p.add_argument("--sub", type=Path, nargs="+", help="subtraction volumes, in phase order")
    p.add_argument("--pre", type=Path, help="pre-contrast phase")
    p.add_argument("--post", type=Path, nargs="+", help="post-contrast phases, in time order")
    p.add_argument("--model", required=True, type=Path, help="model .safetensors file")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--progress", action="store_true",
                   help="print 'progress <fraction> <stage>' lines on stderr before each stage (for GUIs)")
    p.add_argument("--label-fraction", type=float, default=0.5,
                   help="labelmaps are 1 where the map >= this fraction of its maximum")
    p.add_argument("--dicom", type=Path, help="DICOM study folder (series roles assigned automatically)")
    p.add_argument("--roles", type=Path, help="with --dicom: ROLES.json overriding roles by series UID or number")
    p.add_argument("--patterns", type=Path, help="with --dicom: PATTERNS.json replacing role-rule patterns")
    p.add_argument("--dicom-seg", action="store_true", help="with --dicom: also write a map's labelmap as "
                   "a DICOM Segmentation (MAP_seg.dcm) referencing the reference series")
    p.add_argument("--no-fine-map", dest="fine_map", action="store_false",
                   help="the paper's COAM and CAM only, without the fine map (docs/maps.md)")
    p.add_argument("--seg-map", choices=MAP_NAMES, default="coam",
                   help="with --dicom-seg: the map whose labelmap is exported (default coam)")
    p.add_argument("--kinetics", action="store_true", help="also the PE/SER maps and the enhancement curve at every "
                   "map's peak (docs/kinetics.md)")

    cohort_command.add_arguments(sub.add_parser(cohort_command.NAME, help=cohort_command.HELP))

    p = sub.add_parser("kinetics", help="enhancement kinetics of one case: PE/SER maps, the curve at a point "
                       "(BI-RADS initial and delayed phase) and the functional tumour volume of a region")
    p.add_argument("case_dir", nargs="?", type=Path, help="case folder ([t1] + pre/post_k; times.json optional)")
    p.add_argument("--dicom", type=Path, help="DICOM study folder instead of a case folder")
    region = p.add_mutually_exclusive_group()
    region.add_argument("--roi-box", nargs=6, type=float, metavar=("X1", "Y1", "Z1", "X2", "Y2", "Z2"),
                        help="FTV region: a box between two LPS corners (mm)")
    region.add_argument("--roi-mask", type=Path, help="FTV region: a labelmap (NRRD, NIfTI) or a DICOM SEG")
    p.add_argument("--point", **_triple(float), help="the curve at this LPS point (mm)")
    p.add_argument("--pe-threshold", type=float, default=70.0, help="FTV and SER label: PE at least this (%%)")
    p.add_argument("--background", type=float, default=60.0, help="background threshold: this %% of the 95th "
                   "percentile of the pre-contrast signal in the region (0: off)")
    p.add_argument("--early-s", type=float, default=150.0, help="early phase: the one nearest this time (s)")
    p.add_argument("--late-s", type=float, default=450.0, help="late phase: the one nearest this time (s)")
    p.add_argument("--radius", type=float, default=2.0, help="the curve is the mean in a sphere of this radius (mm)")
    p.add_argument("--times", type=float, nargs="+", help="post-contrast phase times (s; replace the study's)")
    p.add_argument("--injection-s", type=float, help="with --times: the injection on their clock (default: the "
                   "first post-contrast phase)")
    p.add_argument("--out", required=True, type=Path, help="output folder (kinetics.json and the maps)")

    p = sub.add_parser("roles", help="show which series of a DICOM study fill which role")
    p.add_argument("study_dir", type=Path, help="DICOM study folder (searched recursively, .gz included)")
    p.add_argument("--roles", type=Path, help="ROLES.json overriding roles by series UID or number")
    p.add_argument("--patterns", type=Path, help="PATTERNS.json replacing role-rule patterns (site wording)")
    p.add_argument("--channels", type=int, help="number of subtraction channels the model takes")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def cmd_synth(args) -> dict:
    from BreastCMSLLib.phantom.synth import synth_case

    return synth_case(args.out, seed=args.seed, label=args.label, shape=args.shape, spacing=args.spacing,
                      inputs=args.inputs)


def cmd_init_model(args) -> dict:
    from BreastCMSLLib.config import ModelConfig, PreprocessConfig
    from BreastCMSLLib.network.modelfile import save_untrained_model

    try:
        pre = PreprocessConfig() if args.input_size is None else PreprocessConfig(input_size=tuple(args.input_size))
        cfg = ModelConfig(in_channels=args.channels, width_factor=args.width_factor, loss=args.loss, preprocess=pre)
    except ValueError as err:
        raise InputError("init-model", str(err)) from None
    sha = save_untrained_model(args.out, cfg, args.seed)
    return {"model": str(args.out), "sha256": sha, "config": json.loads(cfg.to_json())}


def analyze_request(args) -> AnalyzeRequest:
    """The :class:`AnalyzeRequest` of ``breastcmsl analyze``'s arguments."""
    return AnalyzeRequest(model=args.model, out=args.out, case_dir=args.case_dir, t1=args.t1, sub=args.sub or (),
                          pre=args.pre, post=args.post or (), dicom=args.dicom, roles=args.roles,
                          patterns=args.patterns, device=args.device, label_fraction=args.label_fraction,
                          dicom_seg=args.dicom_seg, seg_map=args.seg_map,
                          fine_map=args.fine_map, kinetics=args.kinetics)


def print_progress(fraction: float, stage: str) -> None:
    """``progress <fraction> <stage>`` on stderr, before each stage (for GUIs)."""
    print(f"progress {fraction:.2f} {stage}", file=sys.stderr, flush=True)


def cmd_analyze(args) -> dict:
    """``breastcmsl analyze``: :func:`~BreastCMSLLib.run.run_analysis` of the arguments' request, with glibc told
    to reuse what the analysis frees (:mod:`BreastCMSLLib.memory`)."""
    keep_freed_memory()
    return run_analysis(analyze_request(args), report=print_progress if args.progress else None)


def cmd_roles(args) -> dict | None:
    """``breastcmsl roles``: the role table (or JSON). When the roles cannot be assigned, the study's series
    inventory (table, or JSON with the error) goes to stdout before the one-line error."""
    from BreastCMSLLib.dicom.roles import inventory, inventory_table
    from BreastCMSLLib.dicom.study import RolesError, study_roles

    try:
        assignment = study_roles(args.study_dir, args.roles, args.channels, args.patterns)
    except RolesError as err:
        if args.json:
            print(json.dumps({"error": str(err), "series": inventory(err.series, err.patterns)}, indent=2))
        else:
            print(inventory_table(err.series, err.patterns))
        raise
    if args.json:
        return assignment.as_dict()
    print(assignment.table())
    return None


def cmd_kinetics(args) -> dict:
    """``breastcmsl kinetics``: see :mod:`BreastCMSLLib.pipeline.kinetics_case`. Every input is checked before
    anything is written."""
    from BreastCMSLLib.pipeline import kinetics_case as kc
    from BreastCMSLLib.pipeline.kinetics import KineticsConfig, box_region
    from BreastCMSLLib.pipeline.phase_times import case_times, given_times

    if (args.case_dir is None) == (args.dicom is None):
        raise InputError("kinetics", "give a case folder or --dicom STUDY (one of them)")
    if args.injection_s is not None and not args.times:
        raise InputError("--injection-s", "only with --times")
    cfg = KineticsConfig(pe_threshold=args.pe_threshold, background=args.background, early_s=args.early_s,
                         late_s=args.late_s, radius_mm=args.radius)
    if args.dicom:
        from BreastCMSLLib.dicom.study import study_inputs
        from BreastCMSLLib.dicom.times import study_times

        study, used = study_inputs(args.dicom)
        inputs = study.inputs
        kc.check_phases(inputs)
        times = study_times(study.assignment, str(args.dicom))
    else:
        from BreastCMSLLib.pipeline.preprocess import load_case

        inputs = load_case(args.case_dir)
        kc.check_phases(inputs)
        used = {"kind": inputs.kind, "t1": inputs.sources[0], "series": inputs.sources[1:]}
        times = case_times(args.case_dir, len(inputs.series) - 1)
    if args.times:
        times = given_times(args.times, args.injection_s, len(inputs.series) - 1)
    region, source = None, None
    if args.roi_box:
        source = "--roi-box"
        region = box_region(inputs.reference, args.roi_box[:3], args.roi_box[3:], source)
    elif args.roi_mask:
        from BreastCMSLLib.dicom.seg_region import is_segmentation, segmentation_region

        source = str(args.roi_mask)
        segmentation = args.roi_mask.is_file() and is_segmentation(args.roi_mask)
        region = (segmentation_region if segmentation else kc.file_region)(args.roi_mask, inputs.reference)
        if segmentation and not region.any():
            raise InputError(args.roi_mask, "the region lies outside the volume (no segmented voxel on the grid)")
    if args.point:
        kc.check_in_breast(inputs, args.point)
    kin = kc.case_kinetics(inputs, times, cfg, region)
    report = kc.kinetics_report(kin, region, source, args.point, used)
    kc.write_kinetics(kin, args.out)
    return {key: report[key] for key in ("times_s", "early_phase", "late_phase", "note", "ftv_ml", "ser_volumes_ml",
                                          "point")}


COMMANDS = {"synth": cmd_synth, "init-model": cmd_init_model, "analyze": cmd_analyze,
            cohort_command.NAME: cohort_command.run, "roles": cmd_roles, "kinetics": cmd_kinetics}


def main(argv: list[str] | None = None) -> int:
    return dispatch("breastcmsl", build_parser(), COMMANDS, argv)


def console() -> None:
    """The ``breastcmsl`` executable: :func:`main` (see :func:`~BreastCMSLLib.command.run_console`)."""
    run_console(main)


if __name__ == "__main__":
    console()
