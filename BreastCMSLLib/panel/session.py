"""The panel's state and behaviour, Qt-free: inputs, models, the background analysis, results, display, evaluation.

Both faces (the Slicer module ``BreastCMSL/`` and the browser ``BreastCMSLWeb/``) only bind widgets to a
:class:`Session`. MRML goes through the adapter modules (:mod:`.nodes`, :mod:`.display`, :mod:`.evaluation`),
which take the scene as an argument, so a session runs on desktop Slicer and on the ``slicer-core`` wheel alike.

State lives in the scene, on the module's parameter node (a ``vtkMRMLScriptedModuleNode`` with singleton tag
``BreastCMSL``, as Slicer's ``ScriptedLoadableModuleLogic.getParameterNode`` makes it): node references for
the inputs, the reference volume, the maps, labelmaps, peaks, lesion centre and evaluation table, and plain
values (probability, prediction, model, ...). A scene saved and loaded again shows the same result.

Analyses run in a warm worker process (:mod:`.worker`) that keeps the model loaded between analyses; a job's
result is added to the scene by :meth:`AnalysisJob.poll` / :meth:`AnalysisJob.wait`, in the calling thread
(MRML is not thread-safe), all or nothing. Points are RAS mm here (MRML), LPS mm inside the Lib.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from BreastCMSLLib.errors import InputError
from BreastCMSLLib.mrml import centres, display, nodes
from BreastCMSLLib.panel.processes import BackgroundCommand, analyze_arguments, kill_group, start_group
from BreastCMSLLib.panel.worker import MEMORY_ENVIRONMENT

MODULE_NAME = "BreastCMSL"
LIBRARY_ROOT = Path(__file__).resolve().parent.parent  # the folder holding the BreastCMSLLib package
MASK_SOURCES = {"t1": "non-fat-suppressed T1", "pre": "pre-contrast phase", "sub": "subtractions"}
MAP_ROLES = {"coam_volume": "coamVolume", "coam_label": "coamLabel", "cam_volume": "camVolume",
             "cam_label": "camLabel", "peaks": "peaks"}


def disclaimer(model: dict) -> str:
    """The line a panel shows under a result or a model."""
    if model.get("untrained"):
        return "Untrained model (random weights): the output means nothing. Research software, not for diagnosis."
    if model.get("synthetic"):
        return "Synthetic demo model, trained on phantoms only. Research software, not for diagnosis."
    return "Research software, not for diagnosis."


def result_text(result: dict | None) -> dict[str, str]:
    """What a panel shows of a result: ``probability`` (3 decimals and cos θ), ``prediction`` (with the breast
    mask's source), ``model`` (name, version, short sha256) and ``disclaimer``; dashes before any result."""
    if not result:
        return {"probability": "-", "prediction": "-", "model": "-", "disclaimer": ""}
    model, mask = result["model"], MASK_SOURCES.get(result["mask_source"], result["mask_source"])
    return {"probability": f"{result['probability']:.3f} (cos θ = {result['cos_theta']:.3f})",
            "prediction": f"{result['prediction']} (breast mask from the {mask})",
            "model": f"{model['name']} {model['version'] or ''} (sha256 {model['sha256'][:12]}…)".replace("  ", " "),
            "disclaimer": disclaimer(model)}


def evaluation_text(evaluation: dict) -> str:
    """One line on an evaluation: this case's distances and the running mean ± std over the table."""
    s, row = evaluation["summary"], evaluation["row"]
    return (f"This case: COAM {row['COAM mm']:.1f} mm, CAM {row['CAM mm']:.1f} mm. Over {s['n']} case(s): COAM "
            f"{s['coam_mean_mm']:.1f} ± {s['coam_std_mm']:.1f} mm, CAM {s['cam_mean_mm']:.1f} ± "
            f"{s['cam_std_mm']:.1f} mm (mean ± std).")


# ---- the model store: a folder of .safetensors model files


def models_in(folder: str | Path) -> list[dict]:
    """The BreastCMSL model files in ``folder`` with what their metadata says, by file name. Files that are
    not BreastCMSL models (or are pickles) are left out; nothing is unpickled."""
    from BreastCMSLLib.network.modelfile import file_sha256, model_name, read_model_metadata

    models = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            cfg, provenance = read_model_metadata(path)
        except InputError:
            continue
        sha, name = file_sha256(path), model_name(path, provenance)
        flags = ", ".join(flag for flag in ("untrained", "synthetic") if provenance.get(flag))
        models.append({
            "path": str(path), "name": name, "sha256": sha, "short_sha": sha[:12],
            "untrained": bool(provenance.get("untrained")), "synthetic": bool(provenance.get("synthetic")),
            "in_channels": cfg.in_channels,
            "title": " ".join(filter(None, [name, provenance.get("version"), f"({flags})" if flags else ""])),
            "details": (f"{name}: {cfg.loss.upper()}, {cfg.in_channels} channels, input "
                        f"{' x '.join(map(str, cfg.preprocess.input_size))}, width x{cfg.width_factor}\n"
                        f"sha256 {sha}\n{disclaimer(provenance)}"),
        })
    return models


def import_model(path: str | Path, folder: str | Path) -> Path:
    """Check that ``path`` is a BreastCMSL model (never unpickled; a pickle is refused) and copy it into
    ``folder`` as ``<stem>-<sha256[:12]>.safetensors``; returns the copy."""
    from BreastCMSLLib.network.modelfile import file_sha256, read_model_metadata

    read_model_metadata(path)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{Path(path).stem}-{file_sha256(path)[:12]}.safetensors"
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(path, partial)
    return partial.replace(target)


def download_model(entry: dict, folder: str | Path) -> Path:
    """Download a registry entry (``id``, ``version``, ``url``, ``sha256``) into ``folder``; a file whose
    sha256 differs from the registry's, or that is not a BreastCMSL model, is deleted and refused."""
    from BreastCMSLLib.network.modelfile import file_sha256, read_model_metadata

    if not entry.get("url") or not entry.get("sha256"):
        raise InputError(entry.get("id", "registry entry"), "has no download url and sha256")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{entry['id']}.download"
    try:
        urllib.request.urlretrieve(entry["url"], partial)
        sha = file_sha256(partial)
        if sha != entry["sha256"]:
            raise InputError(entry["url"], f"sha256 {sha} differs from the registry's {entry['sha256']}")
        read_model_metadata(partial)
    except (InputError, OSError) as err:
        partial.unlink(missing_ok=True)
        if isinstance(err, InputError):
            raise
        raise InputError(entry["url"], f"download failed ({err})") from None
    return partial.replace(folder / f"{entry['id']}-{entry['version']}.safetensors")


def clear_models(folder: str | Path) -> int:
    """Delete every model file in ``folder``; returns how many."""
    paths = list(Path(folder).glob("*.safetensors"))
    for path in paths:
        path.unlink()
    return len(paths)


# ---- the warm worker


class Worker:
    """One ``python -m BreastCMSLLib.panel.worker`` process in its own process group; a thread reads its messages."""

    def __init__(self, python: str, env: dict, idle_timeout_s: float, log_path: Path):
        self.idle_timeout_s = idle_timeout_s
        self.log_path = log_path
        self.listener: AnalysisJob | None = None
        self.last_used = time.monotonic()
        with open(log_path, "ab") as log:
            self.process = start_group([python, "-m", "BreastCMSLLib.panel.worker",
                                        "--idle-timeout", repr(idle_timeout_s)],
                                       stdout=subprocess.PIPE, stdin=subprocess.PIPE, stderr=log,
                                       env={**MEMORY_ENVIRONMENT, **env})
        threading.Thread(target=self._read, daemon=True, name="breastcmsl-worker-reader").start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def usable(self) -> bool:
        """Alive, idle, and not about to exit for idleness (a margin against sending into its exit)."""
        margin = min(5.0, self.idle_timeout_s / 2)
        return (self.process.poll() is None and self.listener is None
                and time.monotonic() - self.last_used < self.idle_timeout_s - margin)

    def submit(self, job: AnalysisJob, argv: list[str]) -> None:
        self.listener = job
        self.last_used = time.monotonic()
        self.process.stdin.write((json.dumps({"argv": argv}) + "\n").encode())
        self.process.stdin.flush()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            job = self.listener
            if "ready" in message:
                continue
            if job is not None:
                if "progress" not in message:
                    self.listener = None
                    self.last_used = time.monotonic()
                job.receive(message)
        code = self.process.wait()
        job, self.listener = self.listener, None
        if job is not None:
            # not a bug to show as a traceback: the process was killed (out of memory, by the system) or crashed
            job.receive({"error": f"the analysis worker exited with code {code}; its log: {self.log_path}"})

    def stop(self, graceful: bool) -> None:
        """End the worker and its process group: at once, or (``graceful``, when idle) by closing its input
        so that it exits by itself, killed after 2 s if it has not."""
        if graceful:
            try:
                self.process.stdin.close()
                self.process.wait(timeout=2.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        kill_group(self.process)


class AnalysisJob:
    """One Analyze in the session's worker. ``progress`` is (fraction, stage) from the worker's stages."""

    def __init__(self, session: Session, worker: Worker, work: Path, case: str, reference, names: dict[str, str]):
        self.session = session
        self.worker = worker
        self.work = work
        self.case = case
        self.reference = reference
        self.names = names  # exported file -> node name, to name nodes in the worker's messages
        self.progress: tuple[float, str] = (0.0, "queued")
        self.stages: list[tuple[float, str]] = []  # every (fraction, stage) reported, in order
        self.cancelled = False
        self._messages: queue.Queue[dict] = queue.Queue()
        self._final: dict | None = None
        self._result: dict | None = None
        self._error: Exception | None = None
        self._applied = False

    @property
    def worker_pid(self) -> int:
        return self.worker.pid

    @property
    def done(self) -> bool:
        """True once the worker has answered (or the job was cancelled)."""
        return self.cancelled or self._final is not None or not self._messages.empty()

    def receive(self, message: dict) -> None:
        """Called by the worker's reader thread."""
        if "progress" in message:
            fraction, stage = message["progress"]
            self.progress = (float(fraction), str(stage))
            self.stages.append(self.progress)
        else:
            self._messages.put(message)

    def _named(self, text: str) -> str:
        for path, name in self.names.items():
            text = text.replace(path, name)
        return text

    def poll(self) -> dict | None:
        """None while running; once finished, the result (its nodes added to the scene on the first call).
        Raises :class:`InputError` (one line naming the node or file) when the analysis failed."""
        if self.cancelled:
            raise InputError(self.case, "the analysis was cancelled")
        if self._final is None:
            try:
                self._final = self._messages.get_nowait()
            except queue.Empty:
                return None
        return self._finish()

    def wait(self, timeout: float | None = None) -> dict:
        """Block until the analysis ends; return :meth:`poll`'s result or raise its error. ``TimeoutError``
        when ``timeout`` seconds pass first."""
        if self.cancelled:
            raise InputError(self.case, "the analysis was cancelled")
        if self._final is None:
            try:
                self._final = self._messages.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"the analysis of {self.case} did not finish in {timeout} s") from None
        return self._finish()

    def _finish(self) -> dict:
        """Add the result to the scene on the first call; later calls return it, or raise the same error."""
        if not self._applied:
            self._applied = True
            try:
                if "ok" in self._final:
                    self.progress = (1.0, "done")
                    self._result = self.session._add_result(self.case, self.reference, self.work / "out")
                elif "crash" in self._final:  # a bug: the traceback is what a developer needs
                    self._error = RuntimeError(f"the analysis of {self.case} failed:\n{self._final['crash']}")
                else:
                    self._error = InputError(None, self._named(self._final["error"]))
            except InputError as err:  # the output could not be read back
                self._error = err
            finally:
                self.session._remove_later(self.work)
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> None:
        """Kill the worker's process group (the next analysis starts a new worker); nothing is added to the
        scene and the job's temporary folder is removed. Safe to call after the job has ended."""
        if self._applied or self.cancelled:
            return
        self.cancelled = True
        self.session._drop_worker(self.worker)
        shutil.rmtree(self.work, ignore_errors=True)


class DemoBuild:
    """Building the synthetic demo model in the background, polled like an :class:`AnalysisJob`."""

    def __init__(self, session: Session, command: BackgroundCommand, out_dir: Path):
        self.session, self.command, self.out_dir = session, command, out_dir
        self.progress: tuple[float, str] = (0.0, "training the demo model")

    @property
    def done(self) -> bool:
        return self.command.poll() is not None

    def poll(self) -> Path | None:
        """None while building; then the imported model file. Raises :class:`InputError` if the build failed."""
        code = self.command.poll()
        if code is None:
            return None
        if code != 0:
            raise InputError(self.command.log_path, f"building the demo model failed (exit code {code})")
        return self.session.import_demo_model(self.out_dir)

    def cancel(self) -> None:
        self.command.cancel()


# ---- the session


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
        self.worker: Worker | None = None
        self.job: AnalysisJob | None = None
        self.linked: display.LinkedViews | None = None
        self._removals: list[threading.Thread] = []
        self._log_dir: Path | None = None

    # ---- state on the parameter node

    @property
    def parameter_node(self):
        """The module's parameter node in the scene (created on first use)."""
        import slicer

        node = self.scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(MODULE_NAME)
            node.SetName(MODULE_NAME)
            node.SetAttribute("ModuleName", MODULE_NAME)
            node = self.scene.AddNode(node)
        return node

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
        """Load a case folder's volumes (``t1`` optional, ``pre`` + ``post_k`` or ``sub_k``) as volume nodes
        and make them the inputs. Nothing is added when a file is unreadable (the error names it)."""
        from BreastCMSLLib.pipeline.volumes import find_case_files, read_volume

        folder = Path(folder)
        files = find_case_files(folder)
        paths = [files.t1, *files.series]
        images = [None if path is None else read_volume(path) for path in paths]
        names = [None if path is None else f"{folder.name} {_volume_stem(path)}" for path in paths]
        added = [None if image is None else nodes.volume_node_from_image(self.scene, image, name)
                 for image, name in zip(images, names)]
        t1, series = added[0], added[1:]
        self.set_inputs(t1, **{files.kind: series})
        self._retire_points()
        reference = series[1] if files.kind == "phases" else series[0]
        return {"t1": t1, "series": series, "kind": files.kind, "reference": reference,
                "center_lps": (files.extra or {}).get("center_lps")}

    def load_dicom_study(self, folder: str | Path, roles: dict | None = None, patterns=None,
                         n_channels: int | None = None) -> dict:
        """Assign the series roles of a DICOM study (``roles`` overrides them as ROLES.json does), load the
        chosen volumes as nodes and make them the inputs; returns the role table and the nodes."""
        from BreastCMSLLib.dicom.roles import RolePatterns, load_study

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
        return DemoBuild(self, command, out_dir)

    def import_demo_model(self, out_dir: str | Path) -> Path:
        """Import the trained model a demo build exported (synthetic CMSL first)."""
        from BreastCMSLLib.network.modelfile import read_model_metadata

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

    def analyze(self, model_path: str | Path, device: str = "auto", label_fraction: float = 0.5) -> AnalysisJob:
        """Start analyzing the inputs in the warm worker; returns at once. The inputs are exported here (in
        the calling thread), so the scene is only read until :meth:`AnalysisJob.poll` adds the result."""
        if self.job is not None and not self.job.done:
            raise InputError("Analyze", "an analysis is already running; cancel it first")
        t1, series, kind = self.inputs()
        if not series or any(node is None for node in series):
            raise InputError("inputs", "a DCE volume selector is empty")
        reference = series[1] if kind == "phases" else series[0]
        shown = self._ref("displayReference") or reference  # a Sequence's frames are shown through its proxy
        if self.worker is None or not self.worker.usable():
            self._start_worker()  # first, so that a new worker imports torch while the inputs are exported
        work = Path(tempfile.mkdtemp(prefix="BreastCMSL-", dir=self.temp_dir))
        try:
            t1_path, paths = nodes.export_input_nodes(t1, series, work / "inputs")
        except Exception:
            shutil.rmtree(work, ignore_errors=True)
            raise
        names = {str(path): node.GetName() for path, node in zip([t1_path, *paths], [t1, *series]) if node is not None}
        argv = analyze_arguments(t1_path, paths, kind, model_path, work / "out", device, label_fraction)
        try:
            return self._submit(argv, work, reference.GetName(), shown, names)
        except OSError:  # the worker died since it was last used (its stdin is a broken pipe): one replacement
            self._start_worker()
        try:
            return self._submit(argv, work, reference.GetName(), shown, names)
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
            raise InputError("Analyze", f"the analysis worker could not be started; see {self._log_path()}") from None

    def _start_worker(self) -> None:
        self._drop_worker(self.worker)
        self.worker = Worker(self.python, self.env, self.idle_timeout_s, self._log_path())

    def _submit(self, argv: list[str], work: Path, case: str, shown, names: dict[str, str]) -> AnalysisJob:
        self.job = AnalysisJob(self, self.worker, work, case, shown, names)
        self.worker.submit(self.job, argv)
        return self.job

    def _remove_later(self, folder: Path) -> None:
        """Remove a finished job's folder in a background thread: the user sees the result 40 ms sooner (the
        unlinking of 280 MB of volumes at the paper's size); :meth:`close` waits for it."""
        self._removals = [thread for thread in self._removals if thread.is_alive()]
        thread = threading.Thread(target=shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True},
                                  name="breastcmsl-cleanup")
        thread.start()
        self._removals.append(thread)

    def _log_path(self) -> Path:
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="BreastCMSL-log-", dir=self.temp_dir))
        return self._log_dir / "worker.log"

    def _drop_worker(self, worker: Worker | None, graceful: bool = False) -> None:
        if worker is not None:
            worker.stop(graceful)
        if worker is self.worker:
            self.worker = None

    def _add_result(self, case: str, reference, out_dir: Path) -> dict:
        """Add the worker's output to the scene and record it on the parameter node; all or nothing."""
        result, maps = nodes.read_result_folder(out_dir)
        peaks = {"coam": result["coam_peak_lps"], "cam": result["cam_peak_lps"]}
        ids = nodes.add_result_nodes(self.scene, case, maps, peaks)
        self._retire_points(centre=False)  # the earlier result's peaks (the new ones are not referenced yet)
        p = self.parameter_node
        was = p.StartModify()
        self._set_ref("reference", reference)
        for key, role in MAP_ROLES.items():
            p.SetNodeReferenceID(role, ids[key])
        model = result["model"]
        values = {"case": case, "probability": result["probability"], "cosTheta": result["cos_theta"],
                  "prediction": result["prediction"], "labelFraction": result["label_fraction"],
                  "maskSource": result.get("mask_source", "t1"), "device": result["device"],
                  "precision": result["precision"], "modelName": model["name"], "modelSha256": model["sha256"],
                  "modelVersion": model.get("version") or "", "modelUntrained": model["untrained"],
                  "modelSynthetic": model["synthetic"],
                  "coamPeakRAS": " ".join(map(repr, nodes.lps_to_ras(peaks["coam"]))),
                  "camPeakRAS": " ".join(map(repr, nodes.lps_to_ras(peaks["cam"])))}
        for key, value in values.items():
            p.SetParameter(key, repr(value) if isinstance(value, float) else str(value))
        p.EndModify(was)
        return self.result

    @property
    def result(self) -> dict | None:
        """The current result from the parameter node (None before the first analysis): case, probability,
        cos_theta, prediction, model, label_fraction, mask_source, peaks in RAS mm, node IDs."""
        p = self.parameter_node
        if not p.GetParameter("probability"):
            return None
        get = p.GetParameter
        ids = {key: (self._ref(role).GetID() if self._ref(role) else None) for key, role in MAP_ROLES.items()}
        reference = self._ref("reference")
        return {
            "case": get("case"), "probability": float(get("probability")), "cos_theta": float(get("cosTheta")),
            "prediction": get("prediction"), "label_fraction": float(get("labelFraction")),
            "mask_source": get("maskSource"), "device": get("device"), "precision": get("precision"),
            "model": {"name": get("modelName"), "sha256": get("modelSha256"), "version": get("modelVersion") or None,
                      "untrained": get("modelUntrained") == "True", "synthetic": get("modelSynthetic") == "True"},
            "coam_peak_ras": [float(v) for v in get("coamPeakRAS").split()],
            "cam_peak_ras": [float(v) for v in get("camPeakRAS").split()],
            "node_ids": {**ids, "reference_id": reference.GetID() if reference else None},
        }

    # ---- display

    def _maps(self, which: str):
        if which not in ("coam", "cam"):
            raise ValueError(f"which must be 'coam' or 'cam', not {which!r}")
        if self.result is None:
            raise InputError("Analyze", "no result to show yet")
        return self._ref(f"{which}Volume"), self._ref(f"{which}Label")

    def show(self, slice_nodes, which: str | None = "coam", opacity: float = 0.5, outline: bool = True) -> None:
        """The reference volume with ``which`` map as heat overlay (``opacity``) and its labelmap (outline or
        filled) on the given slice views; ``which=None``: the reference alone (overlay off)."""
        heat, label = self._maps(which) if which else (None, None)
        display.show_layers(slice_nodes, self._ref("reference"), heat, label, opacity, outline)

    def set_window_level(self, window: float, level: float, volume=None) -> None:
        """Window and level (image units) of ``volume``'s display, by default the result's reference volume;
        the heat maps keep their fixed [0, 1] range."""
        display.set_window_level(volume or self._ref("reference"), window, level)

    def _retire_points(self, centre: bool = True) -> None:
        """Hide the current result's peaks (a new result replaces it, or a new case was loaded) and, with
        ``centre``, clear the lesion centre (it belongs to the case loaded before)."""
        peaks = self._ref("peaks")
        if peaks is not None and peaks.GetDisplayNode() is not None:
            peaks.GetDisplayNode().SetVisibility(False)
        if centre and self.lesion_centre is not None:
            self.lesion_centre.RemoveAllControlPoints()

    def peak_ras(self, which: str = "coam") -> list[float]:
        self._maps(which)
        return self.result[f"{which}_peak_ras"]

    def jump_to_peak(self, slice_nodes, which: str | None = "coam") -> None:
        """Centre the slice views on the peak of ``which`` map (None: COAM)."""
        display.jump_to(slice_nodes, self.peak_ras(which or "coam"))

    def compare(self, cam_slice_node, coam_slice_node, opacity: float = 0.5, outline: bool = True) -> None:
        """CAM | COAM side by side: each view shows its map over the reference, centred on its own peak, and
        the two move together (scroll, zoom, pan) while each stays on its peak."""
        self.stop_compare()
        views = []
        for slice_node, which in ((cam_slice_node, "cam"), (coam_slice_node, "coam")):
            self.show([slice_node], which, opacity, outline)
            slice_node.SetOrientation("Axial")
            self.jump_to_peak([slice_node], which)
            views.append((slice_node, self.peak_ras(which)))
        self.linked = display.LinkedViews(views)

    def stop_compare(self) -> None:
        if self.linked is not None:
            self.linked.unlink()
            self.linked = None

    # ---- lesion centre and evaluation

    @property
    def lesion_centre(self):
        return self._ref("lesionCentre")

    def centre_node(self):
        """The lesion-centre point list (created on first use), holding at most one point."""
        import slicer

        node = self.lesion_centre
        if node is None:
            node = slicer.vtkMRMLMarkupsFiducialNode()
            node.SetName("Lesion centre")
            self.scene.AddNode(node)
            node.CreateDefaultDisplayNodes()
            node.SetMaximumNumberOfControlPoints(1)
            self._set_ref("lesionCentre", node)
        return node

    def set_lesion_centre(self, ras) -> object:
        """Place the lesion centre at the RAS point (mm), replacing an earlier one."""
        import vtk

        node = self.centre_node()
        node.RemoveAllControlPoints()
        node.AddControlPoint(vtk.vtkVector3d(*map(float, ras)), "centre")
        return node

    @property
    def evaluation_table(self):
        return self._ref("evaluationTable")

    def evaluate(self) -> dict:
        """Distances from the lesion centre to the COAM and CAM peaks, appended to the evaluation table;
        returns the row and the summary over all rows (mean ± std, n)."""
        result = self.result
        if result is None:
            raise InputError("Evaluate", "analyze a case first")
        evaluation_ = centres.centre_distances(self.scene, result, self.lesion_centre, self.evaluation_table)
        self._set_ref("evaluationTable", self.scene.GetNodeByID(evaluation_["table_id"]))
        return evaluation_

    def evaluation_rows(self) -> list[dict]:
        table = self.evaluation_table
        return centres.table_records(table) if table is not None else []

    def evaluation_summary(self) -> dict | None:
        table = self.evaluation_table
        return centres.table_summary(table) if table is not None else None

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
        self._drop_worker(self.worker, graceful=True)
        for thread in self._removals:
            thread.join()
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None


def transfer_folder(min_free_bytes: int = 4 << 30) -> Path | None:
    """Where the session and its worker exchange volumes: RAM-backed ``/dev/shm`` where it exists with room
    (measured for the 7 inputs of a paper-size case: writing took 0.13 s there against 0.64 s on the disk's
    temporary folder), else None (the system's temporary folder)."""
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
