"""The kinetics of one case (``breastcmsl kinetics``, ``analyze --kinetics``): maps on the reference grid, FTV in a
region, the curve at points, and the output files (``kinetics.json``, ``pe_early.nrrd``, ``ser.nrrd``,
``ser_label.nrrd``, ``ftv_label.nrrd``).

Every point is LPS mm; every map lies on the reference grid (the first post-contrast phase's). See
:mod:`.kinetics` for the definitions and :mod:`.phase_times` for the choice of the early and late phase.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from BreastCMSLLib.atomic import staging_folder
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.pipeline.grids import resample
from BreastCMSLLib.pipeline.kinetics import (
    SER_COLOURS,
    SER_LABELS,
    SER_LEGEND,
    KineticMaps,
    KineticsConfig,
    array_on,
    curve_at,
    enhancement_maps,
    functional_volume,
    image_like,
    voxel_ml,
)
from BreastCMSLLib.pipeline.mask import breast_mask
from BreastCMSLLib.pipeline.phase_times import PhaseChoice, PhaseTimes, choose_phases
from BreastCMSLLib.pipeline.preprocess import CaseInputs, canonical_grid

KINETICS_FILES = ("kinetics.json", "pe_early.nrrd", "ser.nrrd", "ser_label.nrrd", "ftv_label.nrrd")


def check_phases(inputs: CaseInputs) -> None:
    """Kinetics need the pre-contrast signal: subtractions alone are refused (:class:`InputError`)."""
    if inputs.kind != "phases":
        raise InputError(inputs.sources[1], "subtractions only: no pre-contrast signal, so no enhancement "
                         "kinetics (PE, SER, curve, FTV); give the pre- and post-contrast phases")


@dataclass
class CaseKinetics:
    """The maps of one case on its reference grid and the phase choice they were made with."""

    inputs: CaseInputs
    times: PhaseTimes
    choice: PhaseChoice
    cfg: KineticsConfig
    maps: KineticMaps
    report: dict = field(default_factory=dict)
    ftv_label: np.ndarray | None = None  # uint8 (K, J, I): SER label inside the FTV of the last region measured

    @property
    def grid(self) -> sitk.Image:
        return self.inputs.reference

    def curve(self, point_lps) -> dict:
        """The curve at ``point_lps`` (LPS mm) as a JSON-ready dict (:class:`~.kinetics.Curve`)."""
        sources = [s or "" for s in self.inputs.sources[1:]]
        return curve_at(self.inputs.series, sources, point_lps, self.choice.early, self.choice.late,
                        self.cfg.radius_mm).as_dict()

    def ftv(self, region: np.ndarray, source: str, require_enhancement: bool = True) -> dict:
        """FTV of ``region`` (bool (K, J, I) on the reference grid) as a JSON-ready dict, its label kept in
        :attr:`images`. ``require_enhancement``: a region without any FTV voxel is an :class:`InputError`."""
        pre = array_on(self.inputs.series[0], self.grid)
        ftv = functional_volume(pre, self.maps.pe, self.maps.ser, region, voxel_ml(self.grid), self.cfg, source)
        if require_enhancement and ftv.ftv_ml == 0:
            raise InputError(source, f"no voxel of the region enhances by PE >= {self.cfg.pe_threshold:g} % above "
                             f"the background threshold ({ftv.region_voxels} voxels looked at)")
        self.ftv_label = ftv.label
        return {"ftv_ml": ftv.ftv_ml, "ser_volumes_ml": ftv.ser_volumes_ml, "region_voxels": ftv.region_voxels,
                "background_level": round(ftv.background_level, 3)}

    def images(self) -> dict[str, sitk.Image]:
        """The maps (and the FTV label when an FTV was measured) by output file stem."""
        images = self.maps.images(self.grid)
        if self.ftv_label is not None:
            images["ftv_label"] = image_like(self.ftv_label, self.grid)
        return images


def file_region(path: str | Path, grid: sitk.Image) -> np.ndarray:
    """bool (K, J, I) of ``grid``: where the labelmap file ``path`` (NRRD, NIfTI, ...) is non-zero, carried onto the
    grid by nearest-neighbour resampling in LPS. An empty labelmap, or one outside the volume, is an
    :class:`InputError`."""
    if not Path(path).is_file():
        raise InputError(path, "no such file")
    try:
        label = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(path, "cannot be read as a labelmap (NRRD, NIfTI, ...) or a DICOM SEG") from None
    if label.GetDimension() != 3 or label.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "expected a 3D scalar labelmap")
    if not sitk.GetArrayViewFromImage(label).any():
        raise InputError(path, "the region is empty (no labelled voxel)")
    region = sitk.GetArrayFromImage(resample(label != 0, grid, label=True)).astype(bool)
    if not region.any():
        raise InputError(path, "the region lies outside the volume (no labelled voxel on the image grid)")
    return region


def check_in_breast(inputs: CaseInputs, point_lps, source: str = "--point") -> None:
    """Raise :class:`InputError` naming ``source`` unless ``point_lps`` (LPS mm) lies in the breast mask (made as
    the analysis makes it: :func:`~BreastCMSLLib.pipeline.mask.breast_mask` on the reference grid, axial)."""
    volume, _ = inputs.mask_volume()
    canon = canonical_grid(inputs.reference, None)
    mask = breast_mask(resample(volume, canon), fat_suppressed=inputs.t1 is None)
    index = np.rint(mask.TransformPhysicalPointToContinuousIndex([float(v) for v in point_lps])).astype(int)
    where = np.round(np.asarray(point_lps, float), 2).tolist()
    if np.any(index < 0) or np.any(index >= np.asarray(mask.GetSize())):
        raise InputError(source, f"the point {where} (LPS mm) lies outside the volume")
    if not mask[[int(v) for v in index]]:
        raise InputError(source, f"the point {where} (LPS mm) lies outside the breast (breast mask from "
                         f"mask_source {inputs.mask_source})")


def case_kinetics(inputs: CaseInputs, times: PhaseTimes, cfg: KineticsConfig | None = None,
                  region: np.ndarray | None = None) -> CaseKinetics:
    """PE/SER maps of a case (``times``: its post-contrast phase times); the maps' background threshold from
    ``region`` (bool (K, J, I) on the reference grid) where given, else the whole volume."""
    check_phases(inputs)
    cfg = cfg or KineticsConfig()
    choice = choose_phases(times, len(inputs.series) - 1, cfg.early_s, cfg.late_s)
    grid = inputs.reference
    pre = array_on(inputs.series[0], grid)
    early = array_on(inputs.series[1 + choice.early], grid)
    late = None if choice.late is None else array_on(inputs.series[1 + choice.late], grid)
    maps = enhancement_maps(pre, early, late, cfg, region)
    return CaseKinetics(inputs, times, choice, cfg, maps)


def settings(cfg: KineticsConfig, maps: KineticMaps) -> dict:
    """The thresholds of a kinetics result, as kinetics.json and result.json report them."""
    return {"pe_threshold": cfg.pe_threshold,
            "background": {"percent": cfg.background, "of": "95th percentile of the pre-contrast signal in the "
                           "region (the whole volume for the maps)", "maps_level": round(maps.background, 3)},
            "min_neighbours": cfg.min_neighbours, "early_s": cfg.early_s, "late_s": cfg.late_s,
            "radius_mm": cfg.radius_mm,
            "ser_labels": {str(k): {"name": name, "legend": SER_LEGEND[k], "rgb": SER_COLOURS[k]}
                           for k, name in SER_LABELS.items()}}


def kinetics_report(kin: CaseKinetics, region: np.ndarray | None = None, region_source: str | None = None,
                    point=None, inputs_used: dict | None = None) -> dict:
    """kinetics.json's dict: times, phases, thresholds, FTV of ``region`` (bad regions raise
    :class:`InputError` before anything is written) and the curve at ``point``."""
    report = {**kin.choice.as_dict(kin.times), **settings(kin.cfg, kin.maps), "ftv_ml": None,
              "ser_volumes_ml": None, "point": None}
    if region is not None:
        report.update(kin.ftv(region, region_source or "region"), region=region_source)
    if point is not None:
        report["point"] = kin.curve(point)
    if inputs_used is not None:
        report["inputs"] = inputs_used
    kin.report = report
    return report


def write_kinetics(kin: CaseKinetics, out_dir: str | Path) -> None:
    """Write kinetics.json and the maps into ``out_dir`` (created if needed) all together: staged beside it and
    moved in only when every file is written; kinetics files of an earlier run that this one does not write are
    removed."""
    out_dir = Path(out_dir)
    with staging_folder(out_dir) as tmp:
        names = []
        for stem, image in kin.images().items():
            sitk.WriteImage(image, str(tmp / f"{stem}.nrrd"), stem.endswith("label"))
            names.append(f"{stem}.nrrd")
        (tmp / "kinetics.json").write_text(json.dumps(kin.report, indent=2))
        names.append("kinetics.json")
        out_dir.mkdir(exist_ok=True)
        for name in names:
            os.replace(tmp / name, out_dir / name)
        for name in set(KINETICS_FILES).difference(names):
            (out_dir / name).unlink(missing_ok=True)


def analysis_kinetics(inputs: CaseInputs, times: PhaseTimes, peaks: dict[str, tuple | None],
                      cfg: KineticsConfig | None = None) -> tuple[dict, dict[str, sitk.Image]]:
    """``analyze --kinetics``: result.json's ``kinetics`` (phase choice, thresholds, the curve at every map's peak
    ``peaks`` {map name: LPS mm}) and the maps by file stem. Where kinetics are unavailable (subtractions only, no
    times to choose phases by) the record says why, with no maps: a note, not a failure."""
    try:
        kin = case_kinetics(inputs, times, cfg)
    except InputError as err:
        return {"available": False, "note": str(err)}, {}
    curves = {}
    for name, point in peaks.items():
        if point is None:
            continue
        try:
            curves[name] = kin.curve(point)
        except InputError as err:
            curves[name] = {"note": str(err)}
    record = {"available": True, **kin.choice.as_dict(times), **settings(kin.cfg, kin.maps), "peak_curves": curves}
    return record, kin.maps.images(kin.grid)
