"""The panel's session, Qt-free: inputs, models, the background analysis, the result, display, evaluation.

Both faces (the Slicer module ``BreastCMSL/`` and the browser ``BreastCMSLWeb/``) only bind widgets to a
:class:`Session`. MRML goes through the adapter modules (:mod:`~BreastCMSLLib.mrml.nodes`, ``display``,
``centres``), which take the scene as an argument, so a session runs on desktop Slicer and on the ``slicer-core``
wheel alike. The model store is :mod:`.models`, the background work :mod:`.jobs`, the texts :mod:`.text`.

State lives in the scene, on the module's parameter node (a ``vtkMRMLScriptedModuleNode`` with singleton tag
``BreastCMSL``, as Slicer's ``ScriptedLoadableModuleLogic.getParameterNode`` makes it): node references for
the inputs, the lesion centre and the evaluation table, and the result as one
:class:`~BreastCMSLLib.panel.state.AnalysisResult` under its own prefix. The faces keep their GUI settings
(device choice, label fraction, ...) apart from it. A scene saved and loaded again shows the same result.
Points are RAS mm here (MRML), LPS mm inside the Lib.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from BreastCMSLLib.config import MAP_NAMES
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.mrml import centres, display, nodes
from BreastCMSLLib.panel import exchange
from BreastCMSLLib.panel.jobs import AnalysisJob, DemoBuild, WarmWorker
from BreastCMSLLib.panel.kinetics import KineticsSection
from BreastCMSLLib.panel.models import clear_models, download_model, import_model, models_in
from BreastCMSLLib.panel.processes import BackgroundCommand
from BreastCMSLLib.panel.state import PREFIX as RESULT_PREFIX
from BreastCMSLLib.panel.state import AnalysisResult
from BreastCMSLLib.run import AnalyzeRequest

MODULE_NAME = "BreastCMSL"
LIBRARY_ROOT = Path(__file__).resolve().parent.parent  # the folder holding the BreastCMSLLib package


class Session:
    """Everything a BreastCMSL panel does, on one MRML scene.

    ``model_dir``: the model store; ``idle_timeout_s``: the worker exits after this long without work;
    ``python``/``env``: the worker's interpreter and environment (Slicer: PythonSlicer and its startup
    environment); ``temp_dir``: where inputs and maps are exchanged with the worker (default
    :func:`transfer_folder`).
    """

    def __init__(self, scene, model_dir: str | Path | None = None, idle_timeout_s: float = 600.0,
                 python: str | None = None, env: dict | None = None, temp_dir: str | Path | None = None):
        self.scene = scene
        self.model_dir = Path(model_dir) if model_dir else None
        self.idle_timeout_s = float(idle_timeout_s)
        self.python = python or sys.executable
        self.env = dict(env if env is not None else os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LIBRARY_ROOT), self.env.get("PYTHONPATH")]))
        self.temp_dir = Path(temp_dir) if temp_dir else transfer_folder()
        self.warm = WarmWorker(self.python, self.env, self.idle_timeout_s, self.temp_dir)
        self.job: AnalysisJob | None = None
        self._ahead: tuple | None = None  # prepare()'s (request settings, job folder, exported volumes), unused yet
        self.linked: display.LinkedViews | None = None
        self.times = None  # the inputs' post-contrast phase times (PhaseTimes) where a case folder or study gave them
        self._kinetics: tuple | None = None  # (the inputs' node IDs, their KineticsSection)

    # ---- state on the parameter node

    @property
    def parameter_node(self):
        """The module's parameter node in the scene (created on first use)."""
        return nodes.module_parameter_node(self.scene, MODULE_NAME)

    def _ref(self, role: str):
        return self.parameter_node.GetNodeReference(role)

    def _set_ref(self, role: str, node) -> None:
        self.parameter_node.SetNodeReferenceID(role, node.GetID() if node is not None else None)

    # ---- inputs

    def set_inputs(self, t1=None, phases=None, subtractions=None) -> None:
        """The volume nodes to analyze: ``phases`` (pre-contrast, then post-contrast in time order) or
        ``subtractions``; ``t1`` (the non-fat-suppressed T1) may be None."""
        if (phases is None) == (subtractions is None):
            raise InputError("inputs", "give either phases or subtractions")
        p = self.parameter_node
        self.times = None
        self._set_ref("t1", t1)
        self._set_ref("displayReference", None)
        p.RemoveNodeReferenceIDs("series")
        for node in phases if phases is not None else subtractions:
            p.AddNodeReferenceID("series", node.GetID() if node is not None else "")
        p.SetParameter("inputKind", "phases" if phases is not None else "subtractions")

    def set_inputs_from_sequence(self, t1, sequence_node, pre_index: int = 0) -> None:
        """The phases from a volume Sequence: frame ``pre_index`` is the pre-contrast phase, the frames after
        it the post-contrast phases. The maps are shown over the sequence browser's proxy volume."""
        self.set_inputs(t1, phases=nodes.sequence_volume_nodes(sequence_node, pre_index))
        self._set_ref("displayReference", nodes.sequence_proxy(self.scene, sequence_node))

    def inputs(self) -> tuple:
        """(t1 node or None, series nodes, kind) as set."""
        p = self.parameter_node
        series = [p.GetNthNodeReference("series", i) for i in range(p.GetNumberOfNodeReferences("series"))]
        return self._ref("t1"), series, p.GetParameter("inputKind") or "phases"

    def load_case_folder(self, folder: str | Path) -> dict:
        """Load a case folder's volumes (``t1`` optional, ``pre`` + ``post_k`` or ``sub_k``) as volume nodes (a
        stored voxel type of at most 16 bits kept, as Slicer's loaders keep it) and make them the inputs. Nothing is
        added when a file is unreadable (the error names it)."""
        from BreastCMSLLib.pipeline.phase_times import case_times
        from BreastCMSLLib.pipeline.volumes import find_case_files, read_volume

        folder = Path(folder)
        files = find_case_files(folder)
        paths = [files.t1, *files.series]
        images = [None if path is None else read_volume(path, keep_type=True) for path in paths]  # as Slicer loads
        names = [None if path is None else f"{folder.name} {_volume_stem(path)}" for path in paths]
        added = [None if image is None else nodes.volume_node_from_image(self.scene, image, name)
                 for image, name in zip(images, names)]
        t1, series = added[0], added[1:]
        self.set_inputs(t1, **{files.kind: series})
        self.times = case_times(folder, len(series) - 1)
        self._retire_points()
        reference = series[1] if files.kind == "phases" else series[0]
        return {"t1": t1, "series": series, "kind": files.kind, "reference": reference,
                "center_lps": (files.extra or {}).get("center_lps")}

    def load_dicom_study(self, folder: str | Path, roles: dict | None = None, patterns=None,
                         n_channels: int | None = None) -> dict:
        """Assign the series roles of a DICOM study (``roles`` overrides them as ROLES.json does), load the
        chosen volumes as nodes and make them the inputs; returns the role table and the nodes."""
        from BreastCMSLLib.dicom.roles import RolePatterns
        from BreastCMSLLib.dicom.study import load_study
        from BreastCMSLLib.dicom.times import study_times

        folder = Path(folder)
        study = load_study(folder, roles, n_channels, patterns or RolePatterns())
        case = study.inputs
        t1_entry = study.assignment.t1
        t1 = (nodes.volume_node_from_image(self.scene, case.t1, f"{folder.name} t1 "
                                           f"{t1_entry.phase.series.description}") if t1_entry else None)
        series_entries = [entry for entry in study.assignment.entries if entry is not t1_entry]
        series = [nodes.volume_node_from_image(self.scene, image, f"{folder.name} {entry.role} "
                                               f"{entry.phase.series.description}")
                  for image, entry in zip(case.series, series_entries)]
        self.set_inputs(t1, **{case.kind: series})
        self.times = study_times(study.assignment, str(folder)) if case.kind == "phases" else None
        self._retire_points()
        rows = [{"role": e.role, "series_number": e.phase.series.number, "description": e.phase.series.description,
                 "phase": e.phase.label, "confidence": e.confidence, "reason": e.reason}
                for e in study.assignment.entries]
        return {"roles": rows, "t1": t1, "series": series, "kind": case.kind,
                "reference": series[1] if case.kind == "phases" else series[0]}

    def auto_assign(self, volume_nodes: list, dicom_files: list[list] | None = None, n_channels: int = 6,
                    kind: str = "phases", patterns=None) -> list[str]:
        """Assign roles to loaded volumes and make them the inputs: by the DICOM role rules when the nodes
        came from DICOM (``dicom_files``: the files behind each node), else (or when the rules find the study
        ambiguous) by the same patterns on node names. Returns notes on what could not be assigned."""
        from BreastCMSLLib.dicom.roles import RolePatterns, assign_by_name

        patterns = patterns or RolePatterns()
        assigned, notes = None, []
        if dicom_files and any(dicom_files):
            with_files = [(node, files) for node, files in zip(volume_nodes, dicom_files) if files]
            try:
                assigned = nodes.assign_by_dicom([files for _, files in with_files], n_channels, patterns)
                volume_nodes = [node for node, _ in with_files]
            except InputError as err:
                notes.append(f"DICOM roles: {err}")
        if assigned is None:
            assigned = assign_by_name([n.GetName() for n in volume_nodes], kind, n_channels, patterns)
        pick = lambda index: volume_nodes[index] if index is not None else None  # noqa: E731
        self.set_inputs(pick(assigned["t1"]), **{assigned["inputs"]: [pick(i) for i in assigned["series"]]})
        self.times = assigned.get("times")  # the DICOM headers' phase times (names give none)
        return notes + assigned["notes"]

    def check_inputs(self, model_path: str | Path | None = None) -> list[str]:
        """What Analyze would say about the inputs, before running it (see :func:`nodes.check_inputs`)."""
        t1, series, kind = self.inputs()
        return nodes.check_inputs(t1, series, kind, model_path)

    # ---- models

    def models(self) -> list[dict]:
        return models_in(self.model_dir) if self.model_dir and self.model_dir.is_dir() else []

    def import_model(self, path: str | Path) -> Path:
        return import_model(path, self._store())

    def download_model(self, entry: dict) -> Path:
        return download_model(entry, self._store())

    def clear_models(self) -> int:
        return clear_models(self._store())

    def build_demo_model(self, arguments: list[str], out_dir: str | Path) -> DemoBuild:
        """Start building the synthetic demo model (the registry's ``command``, e.g. ``-m Training.cli demo``)
        into ``out_dir`` in a background process; :meth:`DemoBuild.poll` imports it once built."""
        out_dir = Path(out_dir)
        command = BackgroundCommand([self.python, *arguments, "--out", str(out_dir / "demo")], out_dir / "build.log",
                                    env=self.env)
        command.start()
        return DemoBuild(command, out_dir, self.import_demo_model)

    def import_demo_model(self, out_dir: str | Path) -> Path:
        """Import the trained model a demo build exported (synthetic CMSL first)."""
        from BreastCMSLLib.network.header import read_model_metadata

        exported = [(path, read_model_metadata(path)[1]) for path in sorted(Path(out_dir).rglob("*.safetensors"))]
        trained = [(path, provenance) for path, provenance in exported if not provenance.get("untrained")]
        if not trained:
            raise InputError(out_dir, "the demo run exported no trained model file")
        trained.sort(key=lambda item: (not item[1].get("synthetic"), item[1].get("method") != "cmsl"))
        return self.import_model(trained[0][0])

    def _store(self) -> Path:
        if self.model_dir is None:
            raise InputError("models", "this session has no model folder")
        return self.model_dir

    # ---- analysis

    def prepare(self, model_path: str | Path, device: str = "auto", label_fraction: float = 0.5) -> bool:
        """Export the inputs and have the warm worker read and preprocess them for ``model_path`` now (and load the
        model for ``device``), ahead of an :meth:`analyze` of the same inputs and model, which then waits only for the
        network and the maps. The faces call it when the inputs or the model change; returns whether a preparation
        was sent (not when an analysis runs, an input or the model is missing, or the same inputs, unchanged, are
        already prepared)."""
        if (self.job is not None and not self.job.done) or not Path(model_path).is_file():
            return False
        t1, series, kind = self.inputs()
        if not series or any(node is None for node in series):
            return False
        described = self._described([t1, *series])
        settings = (str(Path(model_path).resolve()), float(label_fraction), kind)
        if self._still_ahead(described, settings):
            return False
        self._drop_ahead()
        self.warm.prepare()  # a new worker imports torch while the inputs are exported
        work, volumes = self._export(described)
        self._ahead = (settings, work, volumes)
        self.warm.prepare_ahead(self._request(volumes, kind, work, model_path, device, label_fraction), volumes)
        return True

    def wait_prepared(self, timeout: float | None = None) -> bool:
        """Wait until the worker has finished the last :meth:`prepare` (for scripts and benchmarks: an
        :meth:`analyze` need not wait); False when ``timeout`` seconds pass first."""
        return self.warm.wait_ahead(timeout)

    def analyze(self, model_path: str | Path, device: str = "auto", label_fraction: float = 0.5,
                fine_map: bool = True) -> AnalysisJob:
        """Start analyzing the inputs in the warm worker; returns at once. The inputs are exported here (in
        the calling thread), so the scene is only read until :meth:`AnalysisJob.poll` adds the result; inputs
        that :meth:`prepare` exported, unchanged since, are not exported again (the worker has preprocessed them).
        ``fine_map`` False: COAM and CAM only."""
        if self.job is not None and not self.job.done:
            raise InputError("Analyze", "an analysis is already running; cancel it first")
        t1, series, kind = self.inputs()
        if not series or any(node is None for node in series):
            raise InputError("inputs", "a DCE volume selector is empty")
        reference = series[1] if kind == "phases" else series[0]
        shown = self._ref("displayReference") or reference  # a Sequence's frames are shown through its proxy
        described = self._described([t1, *series])
        if self._still_ahead(described, (str(Path(model_path).resolve()), float(label_fraction), kind)):
            (_, work, volumes), self._ahead = self._ahead, None
            self.warm.prepare()
        else:
            self._drop_ahead()
            self.warm.prepare()  # first, so that a new worker imports torch while the inputs are exported
            work, volumes = self._export(described)
        names = {volume["path"]: node.GetName() for volume, node in zip(volumes, [t1, *series]) if node is not None}
        request = self._request(volumes, kind, work, model_path, device, label_fraction, fine_map)
        self.job = self.warm.submit(request, work, reference.GetName(), shown, names, self.add_result, volumes)
        return self.job

    @staticmethod
    def _described(volume_nodes: list) -> list:
        """(voxels, LPS geometry, name) of each node (None stays None), as :func:`.exchange.write_inputs` takes them."""
        return [None if node is None else (*nodes.voxels_and_geometry(node), node.GetName()) for node in volume_nodes]

    def _export(self, described: list) -> tuple[Path, list]:
        """A new job folder holding the inputs (:func:`.exchange.write_inputs`); returns it and the volumes."""
        work = Path(tempfile.mkdtemp(prefix="BreastCMSL-", dir=self.temp_dir))
        try:
            return work, exchange.write_inputs(described, work / "inputs")
        except Exception:
            shutil.rmtree(work, ignore_errors=True)
            raise

    @staticmethod
    def _request(volumes: list, kind: str, work: Path, model_path, device: str = "auto", label_fraction: float = 0.5,
                 fine_map: bool = True) -> AnalyzeRequest:
        paths = [None if volume is None else Path(volume["path"]) for volume in volumes]
        return AnalyzeRequest.for_volumes(paths[0], paths[1:], kind, model=model_path, out=work / "out", device=device,
                                          label_fraction=label_fraction, fine_map=fine_map)

    def _still_ahead(self, described: list, settings: tuple) -> bool:
        """Whether :meth:`prepare` exported these inputs (:meth:`_described`), unchanged since, for these settings
        (model file, label fraction, input kind)."""
        return self._ahead is not None and self._ahead[0] == settings and exchange.still_hold(described,
                                                                                              self._ahead[2])

    def _drop_ahead(self) -> None:
        """Forget an unused preparation and remove its folder (in the background)."""
        if self._ahead is not None:
            self.warm.remove_later(self._ahead[1])
            self._ahead = None

    def add_result(self, case: str, reference, out_dir: Path) -> AnalysisResult:
        """Add an analysis output folder (``breastcmsl analyze --out``, or the warm worker's arrays,
        :mod:`.exchange`) to the scene as the result of ``case`` over the ``reference`` volume node and record it on
        the parameter node; all or nothing."""
        read = exchange.read_result if exchange.holds_arrays(out_dir) else nodes.read_result_folder
        output, maps = read(out_dir)
        peaks = {name: output[f"{name}_peak_lps"] for name in MAP_NAMES if f"{name}_peak_lps" in output}
        ids = nodes.add_result_nodes(self.scene, case, maps, peaks)
        self._retire_points(centre=False)  # the earlier result's peaks (the new ones are not referenced yet)
        result = AnalysisResult.from_output(case, output, {**ids, "reference": reference.GetID()})
        result.write(self.parameter_node)
        return result

    @property
    def result(self) -> AnalysisResult | None:
        """The current result, from the parameter node (None before the first analysis)."""
        return AnalysisResult.read(self.parameter_node)

    # ---- display

    def _maps(self, which: str):
        """(heat volume, labelmap) of the current result's map ``which`` (one of MAP_NAMES that the result has)."""
        if which not in MAP_NAMES:
            raise ValueError(f"which must be one of {MAP_NAMES}, not {which!r}")
        result = self.result
        if result is None:
            raise InputError("Analyze", "no result to show yet")
        if which not in result.maps:
            raise InputError(which, f"this result has no {which} map (it has {', '.join(result.maps)}); "
                             "analyze the case again")
        return self._result_node(f"{which}_volume"), self._result_node(f"{which}_label")

    def _result_node(self, role: str):
        """A node of the current result by its role (:data:`~BreastCMSLLib.panel.state.NODE_ROLES`)."""
        return self._ref(RESULT_PREFIX + role)

    def show(self, slice_nodes, which: str | None = "coam", opacity: float = 0.5, outline: bool = True) -> None:
        """The reference volume with ``which`` map as heat overlay (``opacity``) and its labelmap (outline or
        filled) on the given slice views; ``which=None``: the reference alone (overlay off)."""
        heat, label = self._maps(which) if which else (None, None)
        display.show_layers(slice_nodes, self._result_node("reference"), heat, label, opacity, outline)

    def set_window_level(self, window: float, level: float, volume=None) -> None:
        """Window and level (image units) of ``volume``'s display, by default the result's reference volume;
        the heat maps keep their fixed [0, 1] range."""
        display.set_window_level(volume or self._result_node("reference"), window, level)

    def _retire_points(self, centre: bool = True) -> None:
        """Hide the current result's peaks (a new result replaces it, or a new case was loaded) and, with
        ``centre``, clear the lesion centre (it belongs to the case loaded before)."""
        peaks = self._result_node("peaks")
        if peaks is not None and peaks.GetDisplayNode() is not None:
            peaks.GetDisplayNode().SetVisibility(False)
        if centre and self.lesion_centre is not None:
            self.lesion_centre.RemoveAllControlPoints()

    def peak_ras(self, which: str = "coam") -> list[float]:
        self._maps(which)
        return self.result.peaks_ras[which]

    def jump_to_peak(self, slice_nodes, which: str | None = "coam", centred: bool = True) -> None:
        """Move the slice views onto the peak of ``which`` map (None: COAM): ``centred``, the peak to each view's
        centre; else only each view's slice through the peak, its framing kept."""
        display.jump_to(slice_nodes, self.peak_ras(which or "coam"), centred)

    def map_choices(self, overlay: str, pair: tuple[str, str]) -> tuple[str, tuple[str, str]]:
        """The overlay map and the compare pair a face offers, kept within the current result's maps: an overlay
        the result lacks becomes COAM, a pair it lacks :meth:`compare_pair`."""
        maps = self.result.maps if self.result is not None else MAP_NAMES
        return (overlay if overlay in maps else "coam",
                tuple(pair) if set(pair) <= set(maps) else self.compare_pair())

    def compare_pair(self) -> tuple[str, str]:
        """The two maps the compare view shows unless the user picks others: COAM | fine when the result has
        the fine map, else CAM | COAM."""
        result = self.result
        return ("coam", "fine") if result is not None and "fine" in result.maps else ("cam", "coam")

    def compare(self, left_slice_node, right_slice_node, opacity: float = 0.5, outline: bool = True,
                pair: tuple[str, str] = ("cam", "coam")) -> None:
        """Two maps side by side (``pair``: left, right; default CAM | COAM), both axial: each view shows its map
        over the reference on the slice through its own peak, the right view framed as the left one is (the
        face frames the left view), and the two move together (scroll, zoom, pan), each on its peak's slice."""
        for which in pair:
            self._maps(which)  # both maps exist before anything changes
        self.stop_compare()
        for slice_node, which in zip((left_slice_node, right_slice_node), pair):
            self.show([slice_node], which, opacity, outline)
        left_peak, right_peak = (self.peak_ras(which) for which in pair)
        left_slice_node.SetOrientation("Axial")
        display.jump_to([left_slice_node], left_peak, centred=False)
        display.follow_slice(left_slice_node, right_slice_node,
                             display.normal_offset(left_slice_node, left_peak, right_peak))
        self.linked = display.LinkedViews([(left_slice_node, left_peak), (right_slice_node, right_peak)])

    def stop_compare(self) -> None:
        if self.linked is not None:
            self.linked.unlink()
            self.linked = None

    # ---- kinetics

    def kinetics(self) -> KineticsSection:
        """The Kinetics section of the current inputs (:class:`~BreastCMSLLib.panel.kinetics.KineticsSection`:
        curve at a point or a map's peak, PE/SER overlays, FTV of a markups ROI), made on first use and again
        once the inputs change; subtractions only are an :class:`InputError` (no pre-contrast signal)."""
        _, series, _ = self.inputs()
        key = tuple(node.GetID() if node is not None else None for node in series)
        if self._kinetics is None or self._kinetics[0] != key:
            self._kinetics = (key, KineticsSection(self, self.times))
        return self._kinetics[1]

    def kinetics_point_to_place(self):
        """The kinetics point list (one point, created on first use) emptied, for a face's place mode: the next
        click is the point whose curve is drawn."""
        return self._markups_to_place("kineticsPoint", "vtkMRMLMarkupsFiducialNode", "Kinetics point")

    def kinetics_box_to_place(self):
        """The kinetics box (a markups ROI, created on first use) emptied, for a face's place mode: the box drawn
        next is the FTV's region."""
        return self._markups_to_place("kineticsBox", "vtkMRMLMarkupsROINode", "Kinetics box")

    def _markups_to_place(self, role: str, node_class: str, name: str):
        node = self._ref(role)
        if node is None:
            node = self.scene.AddNewNodeByClass(node_class, name)
            node.CreateDefaultDisplayNodes()
            if node_class == "vtkMRMLMarkupsFiducialNode":
                node.SetMaximumNumberOfControlPoints(1)
            self._set_ref(role, node)
        node.RemoveAllControlPoints()
        return node

    def _kinetics_at_centre(self) -> dict | None:
        """The evaluation table's kinetics at the lesion centre, None where the inputs have none or the centre
        lies outside them (the row then leaves them empty)."""
        centre = self.lesion_centre
        if self.inputs()[2] != "phases" or centre is None or centre.GetNumberOfControlPoints() < 1:
            return None
        ras = [0.0, 0.0, 0.0]
        centre.GetNthControlPointPositionWorld(0, ras)
        try:
            return self.kinetics().evaluation_values(ras)
        except InputError:
            return None

    # ---- lesion centre and evaluation

    @property
    def lesion_centre(self):
        return self._ref("lesionCentre")

    def centre_node(self):
        """The lesion-centre point list (created on first use), holding at most one point."""
        node = self.lesion_centre
        if node is None:
            node = centres.new_centre_node(self.scene)
            self._set_ref("lesionCentre", node)
        return node

    def centre_to_place(self):
        """The lesion-centre point list emptied, for a face's place mode to put the next click in (a new centre
        replaces the earlier one)."""
        node = self.centre_node()
        node.RemoveAllControlPoints()
        return node

    def set_lesion_centre(self, ras) -> object:
        """Place the lesion centre at the RAS point (mm), replacing an earlier one."""
        node = self.centre_to_place()
        centres.set_centre(node, ras)
        return node

    @property
    def evaluation_table(self):
        return self._ref("evaluationTable")

    def evaluate(self) -> dict:
        """Distances from the lesion centre to each map's peak (COAM, CAM, fine; NaN for a map the result lacks)
        and the kinetics there (curve classes, early PE, the FTV of the last ROI measured), appended to the
        evaluation table; returns the row and the summary over all rows (mean ± std, n)."""
        result = self.result
        if result is None:
            raise InputError("Evaluate", "analyze a case first")
        evaluation_ = centres.centre_distances(self.scene, result.case, result.probability, result.peaks_ras,
                                                self.lesion_centre, self.evaluation_table,
                                                self._kinetics_at_centre())
        self._set_ref("evaluationTable", self.scene.GetNodeByID(evaluation_["table_id"]))
        return evaluation_

    def evaluation_rows(self) -> list[dict]:
        table = self.evaluation_table
        return centres.table_records(table) if table is not None else []

    def save_table_csv(self, path: str | Path) -> Path:
        if self.evaluation_table is None:
            raise InputError(path, "there is no evaluation table yet; evaluate a case first")
        return centres.save_table_csv(self.evaluation_table, path)

    # ---- end

    def close(self) -> None:
        """Cancel a running analysis, stop the worker and remove the session's temporary files."""
        if self.job is not None and not self.job.done:
            self.job.cancel()
        self.stop_compare()
        self._drop_ahead()
        self.warm.close()


def transfer_folder(min_free_bytes: int = 4 << 30) -> Path | None:
    """Where the session and its worker exchange volumes: RAM-backed ``/dev/shm`` where it exists with room
    (writing is faster there than on the disk: ``benchmarks/README.md``), else None (the system's temporary
    folder)."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free >= min_free_bytes:
            return shm
    except OSError:
        pass
    return None


def _volume_stem(path: Path) -> str:
    """``post_1`` of ``post_1.nii.gz``."""
    from BreastCMSLLib.pipeline.volumes import VOLUME_SUFFIXES

    suffix = next((s for s in VOLUME_SUFFIXES if path.name.lower().endswith(s)), path.suffix)
    return path.name[: len(path.name) - len(suffix)]
