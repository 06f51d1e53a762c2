"""A cohort case's kinetics (``analyze-cohort --kinetics``, the manifest's ``roi_box``): the BI-RADS curve type at
the fine map's peak and the FTV of the manifest's box, computed with the functions ``breastcmsl kinetics`` uses
(:mod:`BreastCMSLLib.pipeline.kinetics_case`), so the values equal its ``--point`` and ``--roi-box`` on the same
case. Points and boxes are LPS mm; FTV in mL.

The FTV is measured while the worker that preprocesses the case holds its phases; the fine peak is known only
after the network, so the writing worker re-reads the pre-contrast, early and late phase (no others) for the curve.
"""

from __future__ import annotations

from dataclasses import dataclass

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.kinetics import KineticsConfig, box_region, curve_at
from BreastCMSLLib.pipeline.kinetics_case import case_kinetics, check_phases
from BreastCMSLLib.pipeline.phase_times import case_times, choose_phases
from BreastCMSLLib.pipeline.volumes import read_volume


@dataclass(frozen=True)
class CohortKinetics:
    """result.json's ``kinetics`` of a cohort case so far (``record``: phase choice, FTV of the box) and, for the
    curve at the fine peak, the phases to re-read: the pre-contrast, early and late phase (``phases``: file paths,
    or DICOM :class:`~BreastCMSLLib.dicom.series.Phase`; None: no curve) named ``sources``."""

    record: dict
    phases: tuple | None = None
    sources: tuple[str, ...] = ()
    radius_mm: float = KineticsConfig.radius_mm

    def result(self, fine_peak_lps) -> dict:
        """The complete record, with ``peak_curves`` {``fine``: the curve at ``fine_peak_lps``, or a note} when the
        curve was asked for."""
        if self.phases is None:
            return self.record
        if fine_peak_lps is None:
            return {**self.record, "peak_curves": {"fine": {"note": "no fine map for this model"}}}
        from BreastCMSLLib.dicom.series import read_phase

        try:
            images = [read_volume(p) if isinstance(p, str) else read_phase(p) for p in self.phases]
            curve = curve_at(images, list(self.sources), fine_peak_lps, 0, 1 if len(images) == 3 else None,
                             self.radius_mm).as_dict()
        except InputError as err:
            curve = {"note": str(err)}
        return {**self.record, "peak_curves": {"fine": curve}}


def case_phase_times(inputs, study, folder):
    """The post-contrast phase times of a case folder (its ``times.json``) or a DICOM ``study`` (headers)."""
    if study is None:
        return case_times(folder, len(inputs.series) - 1)
    from BreastCMSLLib.dicom.times import study_times

    return study_times(study.assignment, str(folder))


def prepare_kinetics(inputs, study, folder, roi_box, curve: bool,
                     cfg: KineticsConfig | None = None) -> CohortKinetics | None:
    """In the preprocessing worker: the phase choice, the FTV of ``roi_box`` (6 floats, two LPS corners; None: no
    FTV) and, with ``curve``, the phases the curve at the fine peak needs. None when neither is asked for. A case
    without kinetics (subtractions only, no times to choose phases by, a box off the volume) gets a note."""
    if roi_box is None and not curve:
        return None
    cfg = cfg or KineticsConfig()
    try:
        check_phases(inputs)
        times = case_phase_times(inputs, study, folder)
        choice = choose_phases(times, len(inputs.series) - 1, cfg.early_s, cfg.late_s)
    except InputError as err:
        return CohortKinetics({"available": False, "note": str(err), "ftv_ml": None, "asked": asked(roi_box, curve)})
    record = {"available": True, **choice.as_dict(times), "ftv_ml": None, "asked": asked(roi_box, curve)}
    if roi_box is not None:
        try:
            region = box_region(inputs.reference, roi_box[:3], roi_box[3:], "roi_box")
            record.update(case_kinetics(inputs, times, cfg, region).ftv(region, "roi_box", require_enhancement=False))
        except InputError as err:
            record["ftv_note"] = str(err)
    if not curve:
        return CohortKinetics(record)
    keep = [0, 1 + choice.early, *([] if choice.late is None else [1 + choice.late])]
    if study is None:
        phases = [inputs.sources[1 + k] for k in keep]
    else:
        series = study.assignment.phases()[inputs.t1 is not None:]
        phases = [series[k] for k in keep]
    return CohortKinetics(record, tuple(phases), tuple(inputs.sources[1 + k] or "" for k in keep), cfg.radius_mm)


def asked(roi_box, curve: bool) -> dict:
    """What a run asks of a case's kinetics, as its record keeps it (to tell whether a rerun must redo the case)."""
    return {"roi_box": None if roi_box is None else list(roi_box), "fine_curve": curve}


def up_to_date(result: dict, roi_box, curve: bool) -> bool:
    """Whether an earlier run's result.json holds the kinetics this run asks for (``roi_box``, ``curve``)."""
    if roi_box is None and not curve:
        return True
    return (result.get("kinetics") or {}).get("asked") == asked(roi_box, curve)
