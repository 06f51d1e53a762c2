"""The two halves of a case that run in worker processes: reading + preprocessing before the network, maps +
writing after it (:func:`~BreastCMSLLib.pipeline.preprocess.prepare` and :func:`~BreastCMSLLib.pipeline.maps.finish`,
as ``breastcmsl analyze`` runs them; neither needs torch, so a worker never imports it). Each returns a record
instead of raising, so one broken case never stops the cohort."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from BreastCMSLLib.atomic import replace_folder, staging_folder, write_through
from BreastCMSLLib.cohort.kinetics import CohortKinetics, prepare_kinetics
from BreastCMSLLib.cohort.slots import Slot
from BreastCMSLLib.cohort.sources import CaseSource
from BreastCMSLLib.config import ModelConfig
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.maps import NetResult, finish
from BreastCMSLLib.pipeline.preprocess import Preprocessed, prepare


@dataclass
class Failed:
    """A case that could not be analyzed: the one-line error and the seconds spent on it."""

    source: CaseSource
    error: str
    seconds: float


@dataclass
class Prepared:
    """A case read and preprocessed: its network input is in shared-memory slot ``slot``
    (:mod:`BreastCMSLLib.cohort.slots`), ``prep`` is the rest of :class:`Preprocessed`; ``used`` the ``inputs``
    record of result.json; ``reference`` the reference DICOM phase when a DICOM SEG is wanted; ``kinetics`` the
    case's kinetics so far (:mod:`BreastCMSLLib.cohort.kinetics`; None: none asked for)."""

    source: CaseSource
    slot: Slot
    prep: Preprocessed
    used: dict
    centre: tuple[float, float, float] | None
    mask_source: str
    reference: object | None
    timings: dict
    kinetics: CohortKinetics | None = None


def one_line(err: BaseException) -> str:
    """An error as one line: a user-facing :class:`InputError` as it is, anything else with its type."""
    text = str(err) if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
    return " ".join(text.split())[:500]


def read_source(source: CaseSource, n_channels: int):
    """The case's :class:`CaseInputs`, the ``inputs`` record and (for a DICOM study) the study, exactly as
    ``breastcmsl analyze`` reads a case folder or a ``--dicom`` study."""
    from BreastCMSLLib.pipeline.preprocess import load_case

    kind = source.kind
    if kind == "folder":
        inputs = load_case(source.folder)
        return inputs, {"kind": inputs.kind, "t1": inputs.sources[0], "series": inputs.sources[1:]}, None
    if kind == "dicom":
        from BreastCMSLLib.dicom.study import study_inputs

        study, used = study_inputs(source.folder, source.study_file("ROLES.json"), n_channels,
                                   source.study_file("PATTERNS.json"))
        return study.inputs, used, study
    if not source.folder.is_dir():
        raise InputError(source.folder, "no such case folder")
    raise InputError(source.folder, "holds neither case volumes nor DICOM files")


def prepare_case(source: CaseSource, slot: Slot, config: ModelConfig, model_name: str, label_fraction: float,
                 seg: bool, kinetics: bool = False) -> Prepared | Failed:
    """Read and preprocess one case into slot ``slot`` (in a worker process); with ``kinetics`` or the manifest's
    ``roi_box``, also the case's kinetics (:func:`~BreastCMSLLib.cohort.kinetics.prepare_kinetics`)."""
    t0 = time.perf_counter()
    try:
        inputs, used, study = read_source(source, config.in_channels)
        t1 = time.perf_counter()
        prep = prepare(inputs, config, model_name, label_fraction, slot.array())
        t2 = time.perf_counter()
        kin = prepare_kinetics(inputs, study, source.folder, source.roi_box, kinetics)
    except Exception as err:  # a broken case is recorded, never raised: the cohort goes on
        return Failed(source, one_line(err), time.perf_counter() - t0)
    centre = source.centre or (inputs.extra or {}).get("center_lps")
    reference = study.reference if seg and study is not None else None
    timings = {"read_s": t1 - t0, "preprocess_s": t2 - t1}
    if kin is not None:
        timings["kinetics_s"] = time.perf_counter() - t2
    return Prepared(source, slot, dataclasses.replace(prep, array=None), used, centre, inputs.mask_source,
                    reference, timings, kin)


def finish_case(case: Prepared, net: NetResult, model: dict, label_fraction: float, out_dir: Path) -> dict | Failed:
    """Maps, labelmaps, figure (from the case's slot), [DICOM SEG] and result.json of one case, written to a
    staging folder, put on disk (:func:`~BreastCMSLLib.atomic.write_through`) and moved to ``out_dir`` whole (in a
    worker process). Returns result.json's dict."""
    from BreastCMSLLib.pipeline.output import write_analysis

    t0 = time.perf_counter()
    try:
        prep = dataclasses.replace(case.prep, array=case.slot.array())
        analysis = finish(prep, net, model, case.mask_source, label_fraction, case.timings)
        extra = {}
        if case.reference is not None:
            from BreastCMSLLib.dicom.seg import map_segmentation

            seg = map_segmentation(analysis.coam_label, case.reference)
            extra["coam_seg.dcm"] = lambda path: seg.save_as(path)
        fields = None
        if case.kinetics is not None:
            t1 = time.perf_counter()
            fields = {"kinetics": case.kinetics.result(analysis.fine_peak_lps)}
            analysis.timings["kinetics_s"] = analysis.timings.get("kinetics_s", 0.0) + time.perf_counter() - t1
        with staging_folder(out_dir) as tmp:
            result = write_analysis(analysis, tmp / "case", case.used, case.centre, extra, fields)
            write_through(tmp / "case")
            replace_folder(tmp / "case", out_dir)
        return result
    except Exception as err:
        return Failed(case.source, one_line(err), sum(case.timings.values()) + time.perf_counter() - t0)
