"""BreastCMSL: malignancy probability of a breast DCE-MRI lesion with COAM and CAM localization maps.

The 3D Slicer module is a thin GUI over BreastCMSLLib: ``mrml.py`` moves volumes between nodes and the
Lib (RAS <-> LPS), ``background.py`` runs ``breastcmsl analyze`` in a cancellable background process.
"""

import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSequenceNode,
    vtkMRMLTableNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def libraryRoot() -> Path:
    """The folder holding the BreastCMSLLib package: beside this file when installed as an extension,
    the repository root when the module is added from a source checkout."""
    here = Path(__file__).resolve().parent
    return here if (here / "BreastCMSLLib").is_dir() else here.parent


if str(libraryRoot()) not in sys.path:
    sys.path.insert(0, str(libraryRoot()))

from BreastCMSLLib import background, mrml  # noqa: E402 (needs the path above)
from BreastCMSLLib.errors import InputError  # noqa: E402

PAPER = ("L. Luo, H. Chen, X. Wang, Q. Dou, H. Lin, J. Zhou, G. Li, P.-A. Heng: Deep Angular Embedding and "
         "Feature Correlation Attention for Breast MRI Cancer Analysis. MICCAI 2019 (arXiv:1906.02999).")
# import name -> requirement; PyTorch itself comes from the PyTorch extension (PyTorchUtils)
PYTHON_REQUIREMENTS = {"safetensors": "safetensors>=0.4", "matplotlib": "matplotlib>=3.7"}
TORCH_REQUIREMENT = ">=2.2"
DEFAULT_CHANNELS = 6
POLL_INTERVAL_MS = 250


#
# BreastCMSL
#


class BreastCMSL(ScriptedLoadableModule):
    """Module description (title, category, help with the method and its citation, contributors)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "BreastCMSL"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["BreastCMSL contributors"]
        self.parent.helpText = f"""
Estimates the malignancy probability of a breast DCE-MRI case with a 3D ResNet34 trained with the Cosine
Margin Sigmoid Loss (CMSL) and shows where the network looked: the COrrelation Attention Map (COAM, the
row sums of the feature Gram matrix) and, for comparison, the class activation map (CAM).
Inputs: the non-fat-suppressed T1 and the DCE series (subtractions, or pre + post-contrast phases, or one
volume Sequence). Place the lesion centre and press Evaluate to measure map-peak distances.
<br><b>Research software, not for diagnosis.</b> No pretrained clinical model exists; the synthetic demo
model is trained on phantoms only.<br>Method: {PAPER}
"""
        self.parent.acknowledgementText = f"Method and evaluation after {PAPER}"


#
# Parameter node
#


@parameterNodeWrapper
class BreastCMSLParameterNode:
    """GUI state, saved with the scene. Patterns left empty use the DICOM role rules' defaults."""

    inputMode: Annotated[str, Choice(["phases", "subtractions", "sequence"])] = "phases"
    t1Volume: vtkMRMLScalarVolumeNode
    seriesVolumes: list[Optional[vtkMRMLScalarVolumeNode]]  # noqa: UP045 (the wrapper knows typing.Optional)
    phaseSequence: vtkMRMLSequenceNode
    preFrameIndex: int = 0
    t1Pattern: str = ""
    prePattern: str = ""
    postPattern: str = ""
    subPattern: str = ""
    modelPath: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    labelFraction: Annotated[float, WithinRange(0.05, 1.0)] = 0.5
    heatOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showCam: bool = False
    showOutline: bool = True
    referenceVolume: vtkMRMLScalarVolumeNode
    lesionCentre: vtkMRMLMarkupsFiducialNode
    evaluationTable: vtkMRMLTableNode
    resultJson: str = ""


#
# BreastCMSLWidget
#


class BreastCMSLWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, model, Analyze/Cancel, results, lesion centre and evaluation."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.seriesSelectors = []
        self.job = None  # (BackgroundCommand, work folder, on-finished callback, start time)
        self.fileNames = {}  # exported file path -> node name, to name nodes in the CLI's messages
        self.pendingReference = None  # the reference node of the running analysis
        self.compareNodes = []  # (slice node, its map's peak RAS) of "Compare CAM vs COAM", kept in step
        self.compareSync = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BreastCMSL.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = BreastCMSLLogic()

        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.inputModeComboBox.connect("currentIndexChanged(int)", self.updateSeriesSelectors)
        self.ui.autoAssignButton.connect("clicked(bool)", self.onAutoAssign)
        self.ui.checkInputsButton.connect("clicked(bool)", self.onCheckInputs)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownloadModels)
        self.ui.buildDemoModelButton.connect("clicked(bool)", self.onBuildDemoModel)
        self.ui.openCacheButton.connect("clicked(bool)", self.onOpenModelFolder)
        self.ui.clearCacheButton.connect("clicked(bool)", self.onClearModelFolder)
        self.ui.analyzeButton.connect("clicked(bool)", self.onAnalyzeButton)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.updateOverlay)
        self.ui.showCamCheckBox.connect("toggled(bool)", self.updateOverlay)
        self.ui.showOutlineCheckBox.connect("toggled(bool)", self.updateOverlay)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.jumpToPeakButton.connect("clicked(bool)", self.onJumpToPeak)
        self.ui.placeCentreButton.connect("clicked(bool)", self.onPlaceCentre)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        self.ui.exportCsvButton.connect("clicked(bool)", self.onExportCsv)
        self.ui.tableSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.evaluationTableView.setMRMLTableNode)

        self.initializeParameterNode()
        self.refreshModelList()
        self.showResult()

    def cleanup(self) -> None:
        self.cancelJob()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateSeriesSelectors()
            self.updateButtons()

    # ---- inputs

    def channelCount(self) -> int:
        info = self.ui.modelComboBox.currentData
        return int(info["in_channels"]) if info else DEFAULT_CHANNELS

    def updateSeriesSelectors(self, *_) -> None:
        """One selector per input the model takes: N subtractions, or pre + N posts; none for a Sequence."""
        if not self._parameterNode:
            return
        mode = self._parameterNode.inputMode
        n = self.channelCount()
        labels = [] if mode == "sequence" else (
            ["Pre-contrast:"] + [f"Post-contrast {k}:" for k in range(1, n + 1)] if mode == "phases"
            else [f"Subtraction {k}:" for k in range(1, n + 1)])
        layout = self.ui.seriesSelectorsFrame.layout()
        while layout.count():
            item = layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.seriesSelectors = []
        stored = list(self._parameterNode.seriesVolumes)
        for index, text in enumerate(labels):
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.showChildNodeTypes = False
            selector.noneEnabled = True
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.setCurrentNode(stored[index] if index < len(stored) else None)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSeriesSelectorChanged)
            layout.addRow(text, selector)
            self.seriesSelectors.append(selector)
        self.onSeriesSelectorChanged()
        sequence = mode == "sequence"
        self.ui.sequenceSelector.enabled = sequence
        self.ui.preFrameSpinBox.enabled = sequence
        self.ui.seriesSelectorsFrame.visible = not sequence

    def onSeriesSelectorChanged(self, *_) -> None:
        if self._parameterNode:
            self._parameterNode.seriesVolumes = [selector.currentNode() for selector in self.seriesSelectors]

    @staticmethod
    def dicomFiles(node) -> list:
        """The DICOM files a volume was loaded from (Slicer keeps their instance UIDs on the node)."""
        uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
        return [slicer.dicomDatabase.fileForInstance(uid) for uid in uids] if uids and slicer.dicomDatabase else []

    def onAutoAssign(self) -> None:
        """Volumes loaded from DICOM: the command line's role rules on their headers; otherwise (or when the
        rules find the study ambiguous) the same patterns on node names."""
        if not self.ensureDependencies():
            return
        from BreastCMSLLib.roles import assign_by_name

        p = self._parameterNode
        nodes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                 if not n.IsA("vtkMRMLLabelMapVolumeNode") and not n.GetHideFromEditors()]
        try:
            patterns = self.logic.rolePatterns(p)
        except InputError as err:
            slicer.util.errorDisplay(str(err))
            return
        files = [self.dicomFiles(n) for n in nodes]
        assigned, notes = None, []
        if any(files):
            try:
                assigned = mrml.assign_by_dicom([f for f in files if f], self.channelCount(), patterns)
                nodes = [n for n, f in zip(nodes, files) if f]
            except InputError as err:
                notes.append(f"DICOM roles: {err}")
        if assigned is None:
            kind = "subtractions" if p.inputMode == "subtractions" else "phases"
            assigned = assign_by_name([n.GetName() for n in nodes], kind, self.channelCount(), patterns)
        p.inputMode = assigned["inputs"]
        self.updateSeriesSelectors()
        p.t1Volume = nodes[assigned["t1"]] if assigned["t1"] is not None else None
        for selector, index in zip(self.seriesSelectors, assigned["series"]):
            selector.setCurrentNode(nodes[index] if index is not None else None)
        notes += assigned["notes"]
        self.setInputStatus("\n".join(notes) or "All inputs assigned.", error=bool(notes))

    def setInputStatus(self, text: str, error: bool = False) -> None:
        self.ui.inputStatusLabel.text = text
        self.ui.inputStatusLabel.styleSheet = "color: #c0392b;" if error else ""

    def onCheckInputs(self) -> bool:
        if not self.ensureDependencies():
            return False
        try:
            notes = self.logic.checkInputs(self._parameterNode)
        except InputError as err:
            self.setInputStatus(str(err), error=True)
            return False
        self.setInputStatus("Inputs OK." + "".join(f"\n{note}" for note in notes))
        return True

    # ---- models

    def refreshModelList(self, select: Path | None = None) -> None:
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for info in self.logic.installedModels():
            combo.addItem(info["title"], info)
        combo.blockSignals(wasBlocked)
        current = select or (Path(self._parameterNode.modelPath) if self._parameterNode and
                             self._parameterNode.modelPath else None)
        for index in range(combo.count):
            if current and Path(combo.itemData(index)["path"]) == current:
                combo.setCurrentIndex(index)
        self.ui.downloadModelButton.enabled = any(e.get("url") for e in self.logic.registry()["models"])
        self.onModelSelected()

    def onModelSelected(self, *_) -> None:
        info = self.ui.modelComboBox.currentData
        if not info:
            self.ui.modelInfoLabel.text = (
                "No model installed. No pretrained clinical BreastCMSL model exists: import a model file, "
                "or build the synthetic demo model (trained on phantoms, not for diagnosis).")
            if self._parameterNode:
                self._parameterNode.modelPath = ""
        else:
            self.ui.modelInfoLabel.text = info["details"]
            if self._parameterNode:
                self._parameterNode.modelPath = info["path"]
        self.updateSeriesSelectors()
        self.updateButtons()

    def onImportModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Import BreastCMSL model", "",
                                              "BreastCMSL model (*.safetensors)")
        if not path or not self.ensureDependencies():
            return
        try:
            target = self.logic.importModel(path)
        except InputError as err:
            slicer.util.errorDisplay(f"Not imported: {err}")
            return
        self.refreshModelList(select=target)

    def onDownloadModels(self) -> None:
        if not self.ensureDependencies():
            return
        for entry in self.logic.registry()["models"]:
            if entry.get("url"):
                try:
                    with slicer.util.tryWithErrorDisplay(f"Download of {entry['title']} failed"):
                        self.refreshModelList(select=self.logic.downloadModel(entry))
                except Exception:  # already shown to the user by tryWithErrorDisplay
                    logging.exception("model download failed")

    def onBuildDemoModel(self) -> None:
        if self.job or not self.ensureDependencies():
            return
        entry = next(e for e in self.logic.registry()["models"] if e["source"] == "build")
        if importlib.util.find_spec("Training") is None:
            slicer.util.infoDisplay(
                "Building the synthetic demo model needs the BreastCMSL Training package, which is not in "
                "Slicer's Python. Run `breastcmsl-train demo --out DEMO_DIR` in the project's environment and "
                "import the model file it exports (Import model file...).")
            return
        if not slicer.util.confirmOkCancelDisplay(
                "Train the synthetic demo model now? It trains on synthetic phantoms only (several minutes on a "
                "CPU) and is NOT for diagnosis."):
            return
        work = Path(tempfile.mkdtemp(prefix="BreastCMSL-demo-", dir=slicer.app.temporaryPath))
        command = [self.logic.pythonExecutable(), *entry["command"], "--out", str(work / "demo")]
        self.startJob(command, work, self.onDemoFinished, "Building the synthetic demo model")

    def onDemoFinished(self, returnCode: int, work: Path) -> None:
        if returnCode != 0:
            slicer.util.errorDisplay("Building the demo model failed; see the log.")
            return
        try:
            target = self.logic.importDemoModel(work / "demo")
        except InputError as err:
            slicer.util.errorDisplay(str(err))
            return
        self.refreshModelList(select=target)

    def onOpenModelFolder(self) -> None:
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(self.logic.modelFolder())))

    def onClearModelFolder(self) -> None:
        if slicer.util.confirmOkCancelDisplay(f"Delete every model file in {self.logic.modelFolder()}?"):
            self.logic.clearModelFolder()
            self.refreshModelList()

    # ---- dependencies

    def ensureDependencies(self) -> bool:
        """PyTorch through the PyTorch extension, the other packages through pip; both ask first."""
        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                slicer.util.errorDisplay("BreastCMSL needs the PyTorch extension: install it from the "
                                         "Extensions Manager and restart Slicer.")
                return False
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                                  torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                return False
        missing = [req for name, req in PYTHON_REQUIREMENTS.items() if importlib.util.find_spec(name) is None]
        if not missing:
            return True
        if hasattr(slicer, "packaging"):
            slicer.packaging.pip_ensure(missing, requester="BreastCMSL")
        elif slicer.util.confirmOkCancelDisplay(f"BreastCMSL needs these Python packages: {', '.join(missing)}. "
                                                "Install them now?"):
            slicer.util.pip_install(" ".join(missing))
        return all(importlib.util.find_spec(name) is not None for name in PYTHON_REQUIREMENTS)

    # ---- analyze in the background

    def updateButtons(self, *_) -> None:
        p = self._parameterNode
        if self.job:
            self.ui.analyzeButton.text = "Cancel"
            self.ui.analyzeButton.enabled = True
            return
        self.ui.analyzeButton.text = "Analyze"
        ready = bool(p and p.modelPath and p.t1Volume and (
            p.phaseSequence if p.inputMode == "sequence" else all(s.currentNode() for s in self.seriesSelectors)))
        self.ui.analyzeButton.enabled = ready
        self.ui.analyzeButton.toolTip = ("Run the model in a background process." if ready else
                                         "Select a model, the T1 and every DCE input first.")
        hasResult = bool(p and p.resultJson)
        for button in (self.ui.compareButton, self.ui.jumpToPeakButton, self.ui.evaluateButton):
            button.enabled = hasResult
        self.ui.exportCsvButton.enabled = bool(p and p.evaluationTable)

    def log(self, text: str) -> None:
        for path, name in self.fileNames.items():
            text = text.replace(path, name)
        self.ui.logTextEdit.appendPlainText(text.rstrip("\n"))

    def startJob(self, command, work: Path, onFinished, title: str) -> None:
        env = slicer.util.startupEnvironment()
        env["PYTHONPATH"] = str(libraryRoot()) + (f"{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else "")
        process = background.BackgroundCommand(command, work / "job.log", env=env)
        process.start()
        self.job = (process, work, onFinished, time.monotonic())
        self.ui.logTextEdit.clear()
        self.log(f"{title}...")
        self.ui.progressBar.visible = True
        self.ui.progressBar.setRange(0, 0)  # busy until the command reports a first "progress" line
        self.ui.progressBar.format = "%p%"
        self.pollTimer.start()
        self.updateButtons()

    def onPollJob(self) -> None:
        process, work, onFinished, started = self.job
        returnCode = process.poll()  # before reading, so that a finished command's last line is read too
        text, progress = background.split_progress(process.read_output())
        if text:
            self.log(text)
        if progress:
            fraction, stage = progress
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.setValue(round(100 * fraction))
            self.ui.progressBar.format = f"{stage} %p%"
        if returnCode is None:
            return
        self.log(f"Finished in {time.monotonic() - started:.1f} s (exit code {returnCode}).")
        self.finishJob()
        try:
            onFinished(returnCode, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def finishJob(self) -> None:
        self.pollTimer.stop()
        self.job = None
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(100)
        self.ui.progressBar.visible = False
        self.updateButtons()

    def cancelJob(self) -> None:
        """Kill the background process tree; nothing was added to the scene yet, so it stays as it was."""
        if not self.job:
            return
        process, work, _, _ = self.job
        process.cancel()
        self.finishJob()
        shutil.rmtree(work, ignore_errors=True)
        self.log("Cancelled; the scene is unchanged.")

    def onAnalyzeButton(self) -> None:
        if self.job:
            self.cancelJob()
            return
        if not self.onCheckInputs():
            return
        p = self._parameterNode
        t1, series, kind = self.logic.inputNodes(p)
        work = Path(tempfile.mkdtemp(prefix="BreastCMSL-", dir=slicer.app.temporaryPath))
        t1Path, seriesPaths = mrml.export_input_nodes(t1, series, work / "inputs")
        self.fileNames = {str(path): node.GetName() for path, node in zip([t1Path, *seriesPaths], [t1, *series])}
        command = background.analyze_command(self.logic.pythonExecutable(), t1Path, seriesPaths, kind,
                                             p.modelPath, work / "out", p.device, p.labelFraction)
        self.pendingReference = series[1] if kind == "phases" else series[0]
        self.startJob(command, work, self.onAnalyzeFinished, "Analyzing")

    def onAnalyzeFinished(self, returnCode: int, work: Path) -> None:
        if returnCode != 0:
            prefix = "breastcmsl analyze: error: "  # the CLI's one-line message for a user mistake (exit 2)
            errors = [line for line in self.ui.logTextEdit.toPlainText().splitlines() if line.startswith(prefix)]
            self.setInputStatus(errors[-1][len(prefix):] if errors else
                                f"Analyze failed (exit code {returnCode}); see the log.", error=True)
            return
        p = self._parameterNode
        reference = self.pendingReference
        try:
            result = mrml.load_result_folder(slicer.mrmlScene, work / "out", reference.GetName())
        except InputError as err:
            self.setInputStatus(str(err), error=True)
            return
        p.referenceVolume = self.displayedReference(reference)
        p.resultJson = json.dumps(result)
        self.showResult()

    # ---- results

    def displayedReference(self, reference):
        """The node to show the maps over: the reference itself, or for a Sequence its browser's proxy node
        (the frames live in the Sequence, not in the scene)."""
        p = self._parameterNode
        if p.inputMode != "sequence":
            return reference
        for browser in slicer.util.getNodesByClass("vtkMRMLSequenceBrowserNode"):
            if browser.IsSynchronizedSequenceNode(p.phaseSequence, True):
                return browser.GetProxyNode(p.phaseSequence)
        return None

    def result(self) -> dict | None:
        p = self._parameterNode
        return json.loads(p.resultJson) if p and p.resultJson else None

    def showResult(self) -> None:
        result = self.result()
        if not result:
            self.ui.probabilityLabel.text = self.ui.predictionLabel.text = self.ui.resultModelLabel.text = "-"
            self.ui.disclaimerLabel.text = ""
            return
        model = result["model"]
        self.ui.probabilityLabel.text = f"{result['probability']:.3f} (cos θ = {result['cos_theta']:.3f})"
        self.ui.predictionLabel.text = result["prediction"]
        self.ui.resultModelLabel.text = (f"{model.get('name')} {model.get('version') or ''} "
                                         f"(sha256 {str(model.get('sha256'))[:12]}…)")
        self.ui.disclaimerLabel.text = BreastCMSLLogic.disclaimer(model)
        self.updateOverlay()
        self.updateButtons()

    def shownMaps(self, cam: bool):
        ids = self.result()["node_ids"]
        which = "cam" if cam else "coam"
        return slicer.mrmlScene.GetNodeByID(ids[f"{which}_volume"]), slicer.mrmlScene.GetNodeByID(ids[f"{which}_label"])

    def updateOverlay(self, *_) -> None:
        p = self._parameterNode
        if not self.result() or not p:
            return
        heat, label = self.shownMaps(p.showCam)
        slicer.util.setSliceViewerLayers(background=p.referenceVolume, foreground=heat, label=label,
                                         foregroundOpacity=p.heatOpacity)
        for sliceNode in slicer.util.getNodesByClass("vtkMRMLSliceNode"):
            sliceNode.SetUseLabelOutline(p.showOutline)

    def peakRas(self) -> list:
        return self.result()["cam_peak_ras" if self._parameterNode.showCam else "coam_peak_ras"]

    def onJumpToPeak(self) -> None:
        layoutManager = slicer.app.layoutManager()
        for name in layoutManager.sliceViewNames():
            layoutManager.sliceWidget(name).mrmlSliceNode().JumpSliceByCentering(*self.peakRas())

    def onCompare(self) -> None:
        """Side-by-side axial views, CAM left and COAM right, each centred on its own map's peak and kept in
        step by copying the slice geometry shifted by the difference of the peaks (composite-node linking
        would copy the volumes and centre both views on one point)."""
        p = self._parameterNode
        result = self.result()
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        self.compareNodes = []
        for viewName, cam in (("Red", True), ("Yellow", False)):
            heat, label = self.shownMaps(cam)
            peak = result["cam_peak_ras" if cam else "coam_peak_ras"]
            widget = layoutManager.sliceWidget(viewName)
            composite = widget.mrmlSliceCompositeNode()
            composite.SetLinkedControl(False)
            composite.SetBackgroundVolumeID(p.referenceVolume.GetID())
            composite.SetForegroundVolumeID(heat.GetID())
            composite.SetForegroundOpacity(p.heatOpacity)
            composite.SetLabelVolumeID(label.GetID())
            sliceNode = widget.mrmlSliceNode()
            sliceNode.SetOrientation("Axial")
            sliceNode.SetUseLabelOutline(p.showOutline)
            sliceNode.JumpSliceByCentering(*peak)
            self.compareNodes.append((sliceNode, peak))
            if not self.hasObserver(sliceNode, vtk.vtkCommand.ModifiedEvent, self.onCompareSliceModified):
                self.addObserver(sliceNode, vtk.vtkCommand.ModifiedEvent, self.onCompareSliceModified)

    def onCompareSliceModified(self, caller, event) -> None:
        """Move the other compare view with ``caller``, offset by (its peak - caller's peak) in RAS mm."""
        peaks = [peak for node, peak in self.compareNodes if node is caller]
        if self.compareSync or not peaks:
            return
        self.compareSync = True
        try:
            for other, peak in self.compareNodes:
                if other is not caller:
                    mrml.follow_slice(caller, other, [a - b for a, b in zip(peak, peaks[0])])
        finally:
            self.compareSync = False

    # ---- annotation and evaluation

    def onPlaceCentre(self) -> None:
        p = self._parameterNode
        if not p.lesionCentre:
            p.lesionCentre = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Lesion centre")
            p.lesionCentre.CreateDefaultDisplayNodes()
        centre = p.lesionCentre
        centre.RemoveAllControlPoints()
        centre.SetMaximumNumberOfControlPoints(1)
        selectionNode = slicer.app.applicationLogic().GetSelectionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
        selectionNode.SetActivePlaceNodeID(centre.GetID())
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        interactionNode.SetPlaceModePersistence(0)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    def onEvaluate(self) -> None:
        p = self._parameterNode
        try:
            evaluation = mrml.centre_distances(slicer.mrmlScene, self.result(), p.lesionCentre, p.evaluationTable)
        except InputError as err:
            slicer.util.errorDisplay(str(err))
            return
        p.evaluationTable = slicer.mrmlScene.GetNodeByID(evaluation["table_id"])
        self.ui.evaluationTableView.setMRMLTableNode(p.evaluationTable)
        s, row = evaluation["summary"], evaluation["row"]
        self.ui.summaryLabel.text = (
            f"This case: COAM {row['COAM mm']:.1f} mm, CAM {row['CAM mm']:.1f} mm.  Over {s['n']} case(s): "
            f"COAM {s['coam_mean_mm']:.1f} ± {s['coam_std_mm']:.1f} mm, CAM {s['cam_mean_mm']:.1f} ± "
            f"{s['cam_std_mm']:.1f} mm (mean ± std).")
        self.updateButtons()

    def onExportCsv(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export evaluation table",
                                              "breastcmsl_evaluation.csv", "CSV (*.csv)")
        if not path:
            return
        try:
            mrml.save_table_csv(self._parameterNode.evaluationTable, path)
        except InputError as err:
            slicer.util.errorDisplay(f"Not exported: {err}")


#
# BreastCMSLLogic
#


class BreastCMSLLogic(ScriptedLoadableModuleLogic):
    """Thin adapter over BreastCMSLLib: inputs from the parameter node, the model folder and registry."""

    def getParameterNode(self):
        return BreastCMSLParameterNode(super().getParameterNode())

    @staticmethod
    def pythonExecutable() -> str:
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def modelFolder() -> Path:
        folder = Path(slicer.app.cachePath) / "BreastCMSL" / "models"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @staticmethod
    def registry() -> dict:
        """Resources/Models.json: the model registry (name, version, source, url, sha256, ...)."""
        return json.loads((Path(__file__).resolve().parent / "Resources" / "Models.json").read_text())

    @staticmethod
    def disclaimer(model: dict) -> str:
        if model.get("untrained"):
            return "Untrained model (random weights): the output means nothing. Not for diagnosis."
        if model.get("synthetic"):
            return "Synthetic demo model, trained on phantoms only. Not for diagnosis."
        return "Research software. Not for diagnosis."

    def installedModels(self) -> list:
        """Model files in the model folder with what their metadata says (needs PyTorch to read)."""
        models = []
        for path in sorted(self.modelFolder().glob("*.safetensors")):
            try:
                from BreastCMSLLib.modelfile import file_sha256, model_name, read_model_metadata

                cfg, provenance = read_model_metadata(path)
            except ImportError:
                models.append({"path": str(path), "title": path.name, "in_channels": DEFAULT_CHANNELS,
                               "details": f"{path.name} (install PyTorch to read its details)"})
                continue
            except InputError as err:
                logging.warning(str(err))
                continue
            sha = file_sha256(path)
            name = model_name(path, provenance)
            flags = [flag for flag in ("untrained", "synthetic") if provenance.get(flag)]
            models.append({
                "path": str(path), "in_channels": cfg.in_channels,
                "title": " ".join(filter(None, [name, provenance.get("version"), ", ".join(flags)])),
                "details": (f"{name}: {cfg.loss.upper()}, {cfg.in_channels} channels, input "
                            f"{' x '.join(map(str, cfg.preprocess.input_size))}, width x{cfg.width_factor}\n"
                            f"sha256 {sha}\n{self.disclaimer(provenance)}"),
            })
        return models

    def importModel(self, path) -> Path:
        """Check that ``path`` is a BreastCMSL model (never unpickled) and copy it into the model folder."""
        from BreastCMSLLib.modelfile import file_sha256, read_model_metadata

        read_model_metadata(path)
        sha = file_sha256(path)
        target = self.modelFolder() / f"{Path(path).stem}-{sha[:12]}.safetensors"
        shutil.copyfile(path, target)
        return target

    def importDemoModel(self, demoDir: Path) -> Path:
        from BreastCMSLLib.modelfile import read_model_metadata

        exported = [(path, read_model_metadata(path)[1]) for path in sorted(demoDir.rglob("*.safetensors"))]
        trained = [(path, provenance) for path, provenance in exported if not provenance.get("untrained")]
        if not trained:
            raise InputError(demoDir, "the demo run exported no trained model file")
        trained.sort(key=lambda item: (not item[1].get("synthetic"), item[1].get("method") != "cmsl"))
        return self.importModel(trained[0][0])

    def downloadModel(self, entry: dict) -> Path:
        """Download a registry entry; refuse (and delete) a file whose sha256 differs from the registry's."""
        from BreastCMSLLib.modelfile import file_sha256, read_model_metadata

        partial = self.modelFolder() / f".{entry['id']}.download"
        urllib.request.urlretrieve(entry["url"], partial)
        sha = file_sha256(partial)
        if sha != entry["sha256"]:
            partial.unlink()
            raise InputError(entry["url"], f"sha256 {sha} differs from the registry's {entry['sha256']}")
        try:
            read_model_metadata(partial)
        except InputError:
            partial.unlink()
            raise
        return partial.replace(partial.with_name(f"{entry['id']}-{entry['version']}.safetensors"))

    @staticmethod
    def clearModelFolder() -> None:
        for path in BreastCMSLLogic.modelFolder().glob("*.safetensors"):
            path.unlink()

    @staticmethod
    def rolePatterns(p):
        """The DICOM role rules' patterns with the user's edits (empty fields keep the defaults), checked like
        PATTERNS.json; an invalid regular expression is an InputError naming the field."""
        from BreastCMSLLib.roles import RolePatterns

        edits = {"t1": p.t1Pattern, "pre": p.prePattern, "post": p.postPattern, "subtraction": p.subPattern}
        return RolePatterns.from_overrides({k: v for k, v in edits.items() if v}, "Name patterns")

    @staticmethod
    def inputNodes(p):
        """(t1 node, series nodes, kind) from the parameter node; a Sequence gives pre + posts."""
        if p.inputMode == "sequence":
            if not p.phaseSequence:
                raise InputError("Dynamic sequence", "no volume Sequence selected")
            return p.t1Volume, mrml.sequence_volume_nodes(p.phaseSequence, p.preFrameIndex), "phases"
        return p.t1Volume, list(p.seriesVolumes), p.inputMode

    def checkInputs(self, p) -> list:
        t1, series, kind = self.inputNodes(p)
        return mrml.check_inputs(t1, series, kind, p.modelPath or None)

    def analyze(self, p, scene=None) -> dict:
        """Analyze in-process (scripting, self-test); the GUI runs the same Lib in a background process."""
        t1, series, kind = self.inputNodes(p)
        return mrml.analyze_nodes(scene or slicer.mrmlScene, t1, series, p.modelPath, kind, p.device,
                                  p.labelFraction)


#
# BreastCMSLTest
#


class BreastCMSLTest(ScriptedLoadableModuleTest):
    """Self-test: Analyze a phantom case with an untrained small model, in-process and in the background."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_AnalyzePhantom()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def makeCase(self):
        """A small phantom case loaded as volume nodes, and an untrained small model."""
        from BreastCMSLLib.cli import main as cli

        self.work = Path(tempfile.mkdtemp(prefix="BreastCMSLTest-", dir=slicer.app.temporaryPath))
        case, model = self.work / "case", self.work / "model.safetensors"
        self.assertEqual(cli(["synth", "--out", str(case), "--seed", "3", "--malignant", "--shape", "96", "64", "40",
                              "--spacing", "3.5", "3.5", "3.5"]), 0)
        self.assertEqual(cli(["init-model", "--out", str(model), "--input-size", "64", "48", "32",
                              "--width-factor", "0.125"]), 0)
        load = lambda name: slicer.util.loadVolume(str(case / f"{name}.nrrd"))  # noqa: E731
        t1 = load("t1")
        series = [load("pre"), *[load(f"post_{k}") for k in range(1, 7)]]
        return t1, series, model

    def test_AnalyzePhantom(self):
        self.delayDisplay("Analyze a phantom case in-process and in a background process")
        import numpy as np

        t1, series, model = self.makeCase()
        logic = BreastCMSLLogic()
        p = logic.getParameterNode()
        p.inputMode, p.t1Volume, p.seriesVolumes, p.modelPath, p.device = "phases", t1, series, str(model), "cpu"
        before = slicer.mrmlScene.GetNumberOfNodes()
        result = logic.analyze(p)
        self.assertTrue(0.0 <= result["probability"] <= 1.0)
        reference = series[1]
        expected = vtk.vtkMatrix4x4()
        reference.GetIJKToRASMatrix(expected)
        for key in ("coam_volume", "cam_volume", "coam_label", "cam_label"):
            node = slicer.mrmlScene.GetNodeByID(result["node_ids"][key])
            self.assertEqual(node.IsA("vtkMRMLLabelMapVolumeNode"), key.endswith("label"))
            actual = vtk.vtkMatrix4x4()
            node.GetIJKToRASMatrix(actual)
            for r in range(4):
                for c in range(4):
                    self.assertAlmostEqual(actual.GetElement(r, c), expected.GetElement(r, c), places=6)
            values = slicer.util.arrayFromVolume(node)
            if key.endswith("label"):
                self.assertEqual(set(np.unique(values).tolist()), {0, 1})
            else:
                self.assertAlmostEqual(float(values.max()), 1.0, places=5)
        self.assertGreater(slicer.mrmlScene.GetNumberOfNodes(), before)

        out = self.work / "out"
        t1Path, seriesPaths = mrml.export_input_nodes(t1, series, self.work / "inputs")
        command = background.analyze_command(logic.pythonExecutable(), t1Path, seriesPaths, "phases", model, out,
                                             "cpu")
        env = slicer.util.startupEnvironment()
        env["PYTHONPATH"] = str(libraryRoot())
        process = background.BackgroundCommand(command, self.work / "job.log", env=env)
        process.start()
        self.assertEqual(process.wait(600), 0, process.read_output())
        loaded = mrml.load_result_folder(slicer.mrmlScene, out, "background")
        self.assertAlmostEqual(loaded["probability"], result["probability"], places=4)
        for key in ("coam_peak_ras", "cam_peak_ras"):
            for a, b in zip(loaded[key], result[key]):
                self.assertAlmostEqual(a, b, places=3)
        self.delayDisplay("Test passed")

    def test_CancelLeavesSceneUnchanged(self):
        self.delayDisplay("Cancel a background Analyze while it computes")
        t1, series, model = self.makeCase()
        before = slicer.mrmlScene.GetNumberOfNodes()
        t1Path, seriesPaths = mrml.export_input_nodes(t1, series, self.work / "inputs")
        command = background.analyze_command(BreastCMSLLogic.pythonExecutable(), t1Path, seriesPaths, "phases",
                                             model, self.work / "out", "cpu")
        env = slicer.util.startupEnvironment()
        env["PYTHONPATH"] = str(libraryRoot())
        process = background.BackgroundCommand(command, self.work / "job.log", env=env)
        process.start()
        stage, deadline = None, time.monotonic() + 300
        while stage not in ("preprocess", "inference"):  # past the imports and the reading of the model
            self.assertIsNone(process.poll(), process.read_output())
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
            progress = background.split_progress(process.read_output())[1]
            stage = progress[1] if progress else stage
        process.cancel()
        self.assertIsNotNone(process.poll())
        if sys.platform != "win32":
            with self.assertRaises(ProcessLookupError):  # the whole process group is gone
                os.killpg(process.process.pid, 0)
        self.assertEqual(sorted(p.name for p in self.work.iterdir() if p.name.startswith((".out", "out"))), [])
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.delayDisplay("Test passed")
