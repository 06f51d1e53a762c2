"""One analysis request and the one function that runs it: the ``breastcmsl analyze`` command and the panel's
warm worker both build an :class:`AnalyzeRequest` and call :func:`run_analysis`.

It sits above ``pipeline/`` and ``dicom/`` (a request may name a DICOM study) and below ``mrml/`` and ``panel/``.
Paths are files and folders on this machine; points in the summary are LPS mm.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from BreastCMSLLib.config import FINE_MAP, MAP_NAMES
from BreastCMSLLib.errors import InputError

Report = Callable[[float, str], None]  # (fraction done, stage name), before each stage


@dataclass(frozen=True)
class AnalyzeRequest:
    """What to analyze and how. Inputs: a ``case_dir``; or ``sub`` (subtractions) or ``pre`` + ``post`` (phases),
    with an optional ``t1``; or a ``dicom`` study (``roles``/``patterns`` JSON files optional). ``label_fraction``:
    labelmaps are 1 where a map >= this fraction of its maximum; ``dicom_seg``: also write the labelmap of the map
    ``seg_map`` (coam, cam or fine) as a DICOM Segmentation ``MAP_seg.dcm`` (with ``dicom`` only); ``fine_map``
    False: COAM and CAM only (the paper's maps); ``kinetics``: also the PE/SER maps and the enhancement curve at
    every map's peak (:mod:`BreastCMSLLib.pipeline.kinetics_case`)."""

    model: Path
    out: Path
    case_dir: Path | None = None
    t1: Path | None = None
    sub: tuple[Path, ...] = ()
    pre: Path | None = None
    post: tuple[Path, ...] = ()
    dicom: Path | None = None
    roles: Path | None = None
    patterns: Path | None = None
    device: str = "auto"
    label_fraction: float = 0.5
    dicom_seg: bool = False
    seg_map: str = "coam"
    fine_map: bool = True
    kinetics: bool = False

    @classmethod
    def for_volumes(cls, t1, series: list, kind: str, **settings) -> AnalyzeRequest:
        """A request for named volume files: ``kind`` "subtractions" (``series`` are they) or "phases"
        (pre-contrast, then the post-contrast phases in time order)."""
        if kind == "subtractions":
            return cls(t1=t1, sub=tuple(series), **settings)
        if kind == "phases":
            return cls(t1=t1, pre=series[0], post=tuple(series[1:]), **settings)
        raise InputError("inputs", f"unknown input kind {kind!r} (phases or subtractions)")

    def __post_init__(self) -> None:
        """Paths as ``Path``, sequences as tuples, types checked: a value of a wrong type is an :class:`InputError`
        (ranges are checked where they are used)."""
        convert = object.__setattr__
        for name in ("model", "out", "case_dir", "t1", "pre", "dicom", "roles", "patterns"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, Path)):
                raise InputError(name, f"must be a path, not {value!r}")
            convert(self, name, None if value is None else Path(value))
        for name in ("sub", "post"):
            values = getattr(self, name) or ()
            if isinstance(values, (str, Path)) or not all(isinstance(v, (str, Path)) for v in values):
                raise InputError(name, f"must be a list of paths, not {values!r}")
            convert(self, name, tuple(map(Path, values)))
        if not isinstance(self.device, str):
            raise InputError("device", f"must be auto, cpu or cuda[:N], not {self.device!r}")
        if isinstance(self.label_fraction, bool) or not isinstance(self.label_fraction, (int, float)):
            raise InputError("label fraction", f"must be a number, not {self.label_fraction!r}")
        convert(self, "label_fraction", float(self.label_fraction))
        if not isinstance(self.dicom_seg, bool):
            raise InputError("dicom_seg", f"must be true or false, not {self.dicom_seg!r}")
        for name in ("fine_map", "kinetics"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(name, f"must be true or false, not {getattr(self, name)!r}")
        if self.seg_map == "fine" and not self.fine_map:
            raise InputError("--seg-map", "fine needs the fine map (drop --no-fine-map)")
        if self.seg_map not in MAP_NAMES:
            raise InputError("--seg-map", f"must be one of {', '.join(MAP_NAMES)}, not {self.seg_map!r}")

    def to_dict(self) -> dict:
        """JSON-ready: paths as strings."""
        def plain(value):
            return [str(v) for v in value] if isinstance(value, tuple) else str(value) if isinstance(value, Path) \
                else value
        return {field.name: plain(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data) -> AnalyzeRequest:
        """The request :meth:`to_dict` gave; unknown or missing fields are an :class:`InputError`."""
        if not isinstance(data, dict):
            raise InputError("request", "must be a JSON object")
        names = {field.name for field in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - names):
            raise InputError("request", f"unknown field(s) {', '.join(unknown)}")
        if missing := sorted({"model", "out"} - set(data)):
            raise InputError("request", f"missing field(s) {', '.join(missing)}")
        return cls(**data)


def gather_inputs(request: AnalyzeRequest):
    """The case's volumes from a case folder or from [t1] + sub or pre + post; returns (inputs, used)."""
    from BreastCMSLLib.pipeline.preprocess import load_case, load_inputs

    named = request.t1 or request.sub or request.pre or request.post
    if request.case_dir and named:
        raise InputError(request.case_dir, "give either a case folder or --sub/--pre/--post (and --t1), not both")
    if request.case_dir:
        inputs = load_case(request.case_dir)
    elif request.sub and not (request.pre or request.post):
        inputs = load_inputs(request.t1, list(request.sub), "subtractions")
    elif request.pre and request.post and not request.sub:
        inputs = load_inputs(request.t1, [request.pre, *request.post], "phases")
    else:
        raise InputError("analyze", "give a case folder, or either --sub F... or --pre F --post F... "
                         "(--t1 F optional)")
    used = {"kind": inputs.kind, "t1": inputs.sources[0], "series": inputs.sources[1:]}
    return inputs, used


def kinetics_fields(request: AnalyzeRequest, inputs, study, analysis) -> tuple[dict, dict]:
    """``analyze --kinetics``: result.json's ``kinetics`` and the writers of its maps. The phase times come from the
    DICOM study, else the ``times.json`` of the case folder (or beside the reference volume); a case without
    kinetics (subtractions only, unreadable or missing times) gets a note, not a failure."""
    import SimpleITK as sitk

    from BreastCMSLLib.pipeline.kinetics_case import analysis_kinetics, check_phases
    from BreastCMSLLib.pipeline.phase_times import case_times

    try:
        check_phases(inputs)
        if study is not None:
            from BreastCMSLLib.dicom.times import study_times

            times = study_times(study.assignment, str(request.dicom))
        else:
            times = case_times(request.case_dir or Path(inputs.reference_source).parent, len(inputs.series) - 1)
    except InputError as err:
        return {"kinetics": {"available": False, "note": str(err)}}, {}
    peaks = {name: getattr(analysis, f"{name}_peak_lps") for name in MAP_NAMES}
    record, maps = analysis_kinetics(inputs, times, peaks)
    writers = {f"{stem}.nrrd": (lambda path, image=image, stem=stem: sitk.WriteImage(image, str(path),
                                                                                      stem.endswith("label")))
               for stem, image in maps.items()}
    return {"kinetics": record}, writers


def dicom_inputs(request: AnalyzeRequest, config):
    """The inputs of ``request``'s DICOM study for a model of ``config`` (the study and result.json's ``inputs``
    entry): a model that records its phase times takes a longer study's nearest phases
    (:mod:`BreastCMSLLib.pipeline.model_phases`), with the times after the injection where the study gives it."""
    from BreastCMSLLib.dicom.study import study_inputs

    if request.case_dir or request.t1 or request.sub or request.pre or request.post:
        raise InputError(request.dicom, "give either --dicom or a case folder / named volumes, not both")
    timed = config.preprocess.phase_times_s is not None
    study, used = study_inputs(request.dicom, request.roles, None if timed else config.in_channels, request.patterns)
    if timed and study.inputs.kind == "phases":
        from BreastCMSLLib.dicom.times import study_times

        times = study_times(study.assignment, str(request.dicom))
        post_s = times.post_s if times.injection_given else None
        study = dataclasses.replace(study, inputs=dataclasses.replace(
            study.inputs, extra={**(study.inputs.extra or {}), "post_s": post_s}))
    return study, used


_LOADER = ThreadPoolExecutor(1, thread_name_prefix="breastcmsl-model-load")


def load_for_request(request: AnalyzeRequest, load: Callable | None = None):
    """The request's device checked, its model loaded (``load``, default
    :func:`~BreastCMSLLib.network.modelfile.load_model`) and its inference module built for that device.
    :func:`run_analysis` runs it in :data:`_LOADER`'s thread, so that importing torch, loading the model and folding
    it overlap reading and preprocessing the volumes, which need only the model file's header
    (``benchmarks/README.md``)."""
    from BreastCMSLLib.network.modelfile import load_model
    from BreastCMSLLib.pipeline.analyze import select_device

    device = select_device(request.device)
    loaded = (load or load_model)(request.model)
    loaded.inference_module(device)
    return loaded


@dataclass
class PreparedInputs:
    """A request's inputs read and preprocessed ahead of its analysis (the warm worker's ``PREPARE``,
    :func:`prepare_inputs`): the :class:`~BreastCMSLLib.pipeline.preprocess.CaseInputs`, result.json's ``inputs``
    entry, the network inputs (:func:`~BreastCMSLLib.pipeline.preprocess.prepare_study`) and the seconds it took."""

    inputs: object
    used: dict
    prepared: list
    seconds: float


def prepare_inputs(request: AnalyzeRequest, given: Callable) -> PreparedInputs:
    """Read (``given()``, as :func:`run_analysis` takes it) and preprocess the inputs of ``request`` for its model
    (the model file's header only: no torch), ahead of :func:`run_analysis` with ``ahead``."""
    from BreastCMSLLib.network.header import model_name, read_model_metadata
    from BreastCMSLLib.pipeline.preprocess import prepare_study

    t0 = time.perf_counter()
    config, provenance = read_model_metadata(request.model)
    inputs, used = given()
    prepared = prepare_study(inputs, config, model_name(request.model, provenance), request.label_fraction)
    return PreparedInputs(inputs, used, prepared, time.perf_counter() - t0)


def run_analysis(request: AnalyzeRequest, load: Callable | None = None, report: Report | None = None,
                 given: Callable | None = None, write: Callable | None = None,
                 ahead: PreparedInputs | None = None) -> dict:
    """Analyze ``request``'s inputs and write every result file into ``request.out`` (all or nothing); return the
    summary (probability, cos θ, prediction, COAM and CAM peaks in LPS mm). ``load(path)`` loads the model
    (default :func:`~BreastCMSLLib.network.modelfile.load_model`; the warm worker passes its cache);
    ``report(fraction, stage)`` is called before each stage. The warm worker also passes ``given()`` (returns the
    :class:`~BreastCMSLLib.pipeline.preprocess.CaseInputs` and result.json's ``inputs`` entry, in place of reading
    the request's files) and ``write`` (in place of :func:`~BreastCMSLLib.pipeline.output.write_analysis`, with its
    signature), and ``ahead``: :func:`prepare_inputs`'s output for this request, read and preprocessed before it
    came (result.json's ``read_s`` and ``preprocess_s`` are then 0, ``prepared_ahead_s`` what that took). A user
    mistake is an :class:`InputError`."""
    from BreastCMSLLib.network.header import model_name, read_model_metadata
    from BreastCMSLLib.pipeline.output import write_analysis
    from BreastCMSLLib.pipeline.preprocess import prepare_study

    if request.out.exists() and not request.out.is_dir():
        raise InputError(request.out, "the output folder is an existing file")
    report = report or (lambda fraction, stage: None)
    report(0.0, "read")
    t0 = time.perf_counter()
    loading = _LOADER.submit(load_for_request, request, load)
    if write is None:  # then the overview figure's imports (matplotlib), in the same thread, off the critical path
        _LOADER.submit(importlib.import_module, "BreastCMSLLib.pipeline.figures")
    if request.seg_map != "coam" and not request.dicom_seg:
        raise InputError("--seg-map", "needs --dicom-seg (and --dicom STUDY_DIR)")
    if (request.roles or request.patterns or request.dicom_seg) and not request.dicom:
        raise InputError("analyze", "--roles, --patterns and --dicom-seg need --dicom STUDY_DIR")
    study = None
    if ahead is not None:
        inputs, used, prepared = ahead.inputs, ahead.used, ahead.prepared
        t_read = t_prep = 0.0
    else:
        try:
            config, provenance = read_model_metadata(request.model)  # what preprocessing needs of the model
            if request.dicom:
                study, used = dicom_inputs(request, config)
                inputs = study.inputs
            else:
                inputs, used = given() if given is not None else gather_inputs(request)
            t_read = time.perf_counter() - t0
            report(0.1, "preprocess")
            prepared = prepare_study(inputs, config, model_name(request.model, provenance), request.label_fraction)
        except InputError:
            loading.result()  # a bad model or device is reported first, as when the model was loaded first
            raise
        t_prep = time.perf_counter() - t0 - t_read
    loaded = loading.result()
    from BreastCMSLLib.pipeline.analyze import analyze_case  # torch, imported by the loading by now

    analysis = analyze_case(inputs, loaded, device=request.device, label_fraction=request.label_fraction,
                            progress=report, fine=FINE_MAP if request.fine_map else None, prepared=prepared)
    analysis.timings.update(read_s=t_read, preprocess_s=t_prep)
    if ahead is not None:
        analysis.timings["prepared_ahead_s"] = ahead.seconds
    centre = (inputs.extra or {}).get("center_lps")
    extra = {}
    if request.dicom_seg:
        from BreastCMSLLib.dicom.seg import map_segmentation

        seg = map_segmentation(getattr(analysis, f"{request.seg_map}_label"), study.reference, request.seg_map)
        extra[f"{request.seg_map}_seg.dcm"] = lambda path: seg.save_as(path)
    fields = {}
    if request.kinetics:
        fields, writers = kinetics_fields(request, inputs, study, analysis)
        extra.update(writers)
    report(0.9, "write")
    result = (write or write_analysis)(analysis, request.out, used, centre, extra, fields)
    report(1.0, "done")
    keys = ("applicability", "phases_used", "probability", "probability_uncalibrated", "cos_theta", "threshold",
            "prediction", "calibrated",
            "operating_line", *(f"{name}_peak_lps" for name in MAP_NAMES))
    return {k: result[k] for k in keys if k in result}
