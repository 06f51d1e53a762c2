"""BreastCMSL: malignancy probability of a breast DCE-MRI lesion with COAM, CAM and fine localization maps.

The 3D Slicer module binds widgets to :class:`BreastCMSLLib.panel.session.Session`, which holds every behaviour
of the panel Qt-free (and is tested on the slicer-core wheel); the module's Logic is that session.
"""

import contextlib
import importlib.util
import json
import math
import shutil
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Annotated

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLSequenceNode
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

from BreastCMSLLib.errors import InputError  # noqa: E402 (needs the path above)
from BreastCMSLLib.panel.cases import phantom_case, role_patterns, untrained_model  # noqa: E402
from BreastCMSLLib.panel.jobs import POLL_INTERVAL_S, check  # noqa: E402
from BreastCMSLLib.panel.kinetics import ftv_text, legend  # noqa: E402
from BreastCMSLLib.panel.models import downloadable  # noqa: E402
from BreastCMSLLib.panel.packages import install_packages  # noqa: E402
from BreastCMSLLib.panel.session import Session  # noqa: E402
from BreastCMSLLib.panel.state import MAP_NAMES  # noqa: E402
from BreastCMSLLib.panel.text import CANCELLED, NO_MODEL, evaluation_text, result_text  # noqa: E402

PAPER = ("L. Luo, H. Chen, X. Wang, Q. Dou, H. Lin, J. Zhou, G. Li, P.-A. Heng: Deep Angular Embedding and "
         "Feature Correlation Attention for Breast MRI Cancer Analysis. MICCAI 2019 (arXiv:1906.02999).")
# import name -> requirement; PyTorch itself comes from the PyTorch extension (PyTorchUtils)
PYTHON_REQUIREMENTS = {"safetensors": "safetensors>=0.4", "matplotlib": "matplotlib>=3.7"}
TORCH_REQUIREMENT = ">=2.2"
DEFAULT_CHANNELS = 6
PREPARE_DELAY_MS = 500  # after the last selector change (auto-assign sets them one by one), the inputs are prepared


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
row sums of the feature Gram matrix), for comparison the class activation map (CAM), and the fine map (the
correlation map of a shallower network stage, on a finer grid than COAM's). The probability is calibrated where
the model file holds a temperature; the line under it says what the model's threshold means on its validation
cases.
Inputs: the DCE series (subtractions, or pre + post-contrast phases, or one volume Sequence) and the
non-fat-suppressed T1 (optional: without it the breast mask comes from the pre-contrast phase).
Place the lesion centre and press Evaluate to measure map-peak distances. User guide: docs/panel.md.
<br><b>Research software, not for diagnosis.</b> No pretrained clinical model exists; the synthetic demo
model is trained on phantoms only.<br>Method: {PAPER}
"""
        self.parent.acknowledgementText = f"Method and evaluation after {PAPER}"
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """A synthetic DCE phantom (known lesion centre in case.json) under Sample Data: made, not downloaded."""
    import SampleData

    def makePhantom(source):
        folder = Path(tempfile.mkdtemp(prefix="BreastCMSL-phantom-", dir=slicer.app.temporaryPath))
        return list(BreastCMSLLogic().load_case_folder(phantom_case(folder / "phantom"))["series"])

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="BreastCMSL", sampleName="BreastCMSL DCE phantom", uris=[], fileNames=[], nodeNames=[],
        thumbnailFileName=str(Path(__file__).parent / "Resources" / "Icons" / "BreastCMSL.png"),
        customDownloader=makePhantom)


#
# Parameter node
#


@parameterNodeWrapper
class BreastCMSLParameterNode:
    """GUI settings only, saved with the scene: how inputs are chosen, the model, the analysis settings and the
    display. The session keeps the inputs and the result (``Result.*``) on the same node under its own names.
    Patterns left empty use the DICOM role rules' defaults."""

    inputMode: Annotated[str, Choice(["phases", "subtractions", "sequence"])] = "phases"
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
    overlayMap: Annotated[str, Choice(list(MAP_NAMES))] = "coam"
    compareLeft: Annotated[str, Choice(list(MAP_NAMES))] = "coam"
    compareRight: Annotated[str, Choice(list(MAP_NAMES))] = "fine"
    showOutline: bool = True


#
# BreastCMSLWidget
#


class BreastCMSLWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: binds widgets to the session (``self.logic``) and shows its state; no behaviour of its own."""

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.seriesSelectors = []
        self.job = None  # the running AnalysisJob or DemoBuild

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer); settings bound by SlicerParameterName.
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BreastCMSL.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.applicabilityLabel = qt.QLabel()  # above the probability: inside or outside the training domain
        self.applicabilityLabel.wordWrap = True
        self.ui.probabilityLabel.parentWidget().layout().insertRow(0, "Training domain:", self.applicabilityLabel)

        self.logic = BreastCMSLLogic()
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(round(1000 * POLL_INTERVAL_S))
        self.pollTimer.connect("timeout()", self.onPollJob)
        self.prepareTimer = qt.QTimer()  # the inputs are prepared once the selectors have settled
        self.prepareTimer.setSingleShot(True)
        self.prepareTimer.setInterval(PREPARE_DELAY_MS)
        self.prepareTimer.connect("timeout()", self.onPrepare)

        # Connections
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.inputModeComboBox.connect("currentIndexChanged(int)", self.updateSeriesSelectors)
        self.ui.t1Selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputSelectorChanged)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.opacitySliderWidget.connect("valueChanged(double)", self.updateOverlay)
        self.ui.mapComboBox.connect("currentIndexChanged(int)", self.updateOverlay)
        self.ui.showOutlineCheckBox.connect("toggled(bool)", self.updateOverlay)

        # Buttons
        self.ui.autoAssignButton.connect("clicked(bool)", self.onAutoAssign)
        self.ui.checkInputsButton.connect("clicked(bool)", self.onCheckInputs)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModel)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownloadModel)
        self.ui.buildDemoModelButton.connect("clicked(bool)", self.onBuildDemoModel)
        self.ui.openCacheButton.connect("clicked(bool)", self.onOpenCache)
        self.ui.clearCacheButton.connect("clicked(bool)", self.onClearCache)
        self.ui.analyzeButton.connect("clicked(bool)", self.onAnalyze)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.jumpToPeakButton.connect("clicked(bool)", self.onJumpToPeak)
        self.ui.placeCentreButton.connect("clicked(bool)", self.onPlaceCentre)
        self.ui.evaluateButton.connect("clicked(bool)", self.onEvaluate)
        self.ui.exportCsvButton.connect("clicked(bool)", self.onExportCsv)

        # Kinetics
        self.setupKinetics()
        self.kineticsCurvePointButton.connect("clicked(bool)", self.onCurveAtPoint)
        self.kineticsCurvePeakButton.connect("clicked(bool)", self.onCurveAtPeak)
        self.kineticsOverlayButton.connect("clicked(bool)", self.onKineticsOverlay)
        self.kineticsFtvButton.connect("clicked(bool)", self.onFtv)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()
        self.refreshModelList()
        self.showResult()

    def setupKinetics(self) -> None:
        """The Kinetics section under the panel's own: the curve at a point or a map's peak (plot and words),
        the PE/SER overlays with the legend and the FTV of a markups ROI box."""
        section = ctk.ctkCollapsibleButton()
        section.text = "Kinetics"
        section.collapsed = True
        self.layout.addWidget(section)
        form = qt.QFormLayout(section)
        self.kineticsPointSelector = slicer.qMRMLNodeComboBox()
        self.kineticsPointSelector.nodeTypes = ["vtkMRMLMarkupsFiducialNode"]
        self.kineticsPointSelector.noneEnabled = True
        self.kineticsPointSelector.noneDisplay = "crosshair"
        self.kineticsPointSelector.addEnabled = False
        self.kineticsPointSelector.setMRMLScene(slicer.mrmlScene)
        self.kineticsPointSelector.toolTip = "The point list whose first point is used; none: the crosshair"
        self.kineticsCurvePointButton = qt.QPushButton("Curve at point")
        form.addRow(self.kineticsPointSelector, self.kineticsCurvePointButton)
        self.kineticsPeakComboBox = qt.QComboBox()
        self.kineticsPeakComboBox.addItems(list(MAP_NAMES))
        self.kineticsCurvePeakButton = qt.QPushButton("Curve at peak")
        form.addRow(self.kineticsPeakComboBox, self.kineticsCurvePeakButton)
        self.kineticsClassLabel = qt.QLabel()
        self.kineticsClassLabel.wordWrap = True
        form.addRow("Curve:", self.kineticsClassLabel)
        self.kineticsOverlayComboBox = qt.QComboBox()
        for text, which in (("PE (early, %)", "pe_early"), ("SER label", "ser_label"), ("FTV label", "ftv_label")):
            self.kineticsOverlayComboBox.addItem(text, which)
        self.kineticsOverlayButton = qt.QPushButton("Show overlay")
        form.addRow(self.kineticsOverlayComboBox, self.kineticsOverlayButton)
        legendLabel = qt.QLabel("<br>".join(f'<span style="color:{entry["hex"]}">&#9632;</span> {entry["text"]}'
                                            for entry in legend()))
        legendLabel.wordWrap = True
        form.addRow("SER colours:", legendLabel)
        self.kineticsRoiSelector = slicer.qMRMLNodeComboBox()
        self.kineticsRoiSelector.nodeTypes = ["vtkMRMLMarkupsROINode"]
        self.kineticsRoiSelector.noneEnabled = True
        self.kineticsRoiSelector.addEnabled = True
        self.kineticsRoiSelector.setMRMLScene(slicer.mrmlScene)
        self.kineticsRoiSelector.toolTip = "A markups ROI box around the lesion (draw it with the Markups toolbar)"
        self.kineticsFtvButton = qt.QPushButton("FTV in box")
        form.addRow(self.kineticsRoiSelector, self.kineticsFtvButton)
        self.kineticsFtvLabel = qt.QLabel()
        self.kineticsFtvLabel.wordWrap = True
        form.addRow("FTV:", self.kineticsFtvLabel)

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.prepareTimer.stop()
        self.cancelJob()
        self.logic.close()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self.cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())
        self.showResult()

    def setParameterNode(self, parameterNode) -> None:
        """Set and observe the parameter node; the GUI settings are bound to their widgets."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = parameterNode
        if parameterNode:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)
            self.addObserver(parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateSeriesSelectors()

    def updateSeriesSelectors(self, *_) -> None:
        """One selector per input the model takes, showing the session's inputs: N subtractions, or pre + N
        posts; none for a Sequence."""
        p, n = self._parameterNode, self.logic.channelCount(self.ui.modelComboBox.currentData)
        if not p:
            return
        labels = {"phases": ["Pre-contrast:", *(f"Post-contrast {k}:" for k in range(1, n + 1))],
                  "subtractions": [f"Subtraction {k}:" for k in range(1, n + 1)], "sequence": []}[p.inputMode]
        layout = self.ui.seriesSelectorsFrame.layout()
        while layout.count():
            layout.takeAt(0).widget().deleteLater()
        t1, stored, _ = self.logic.inputs()
        wasBlocked = self.ui.t1Selector.blockSignals(True)
        self.ui.t1Selector.setCurrentNode(t1)
        self.ui.t1Selector.blockSignals(wasBlocked)
        self.seriesSelectors = []
        for index, text in enumerate(labels):
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes, selector.showChildNodeTypes = ["vtkMRMLScalarVolumeNode"], False
            selector.noneEnabled, selector.addEnabled, selector.removeEnabled = True, False, False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.setCurrentNode(stored[index] if index < len(stored) else None)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputSelectorChanged)
            layout.addRow(text, selector)
            self.seriesSelectors.append(selector)
        self.onInputSelectorChanged()
        for widget in (self.ui.sequenceSelector, self.ui.preFrameSpinBox):
            widget.enabled = p.inputMode == "sequence"
        self.ui.seriesSelectorsFrame.visible = p.inputMode != "sequence"

    def onInputSelectorChanged(self, *_) -> None:
        """The selectors' volumes become the session's inputs."""
        p = self._parameterNode
        if p and p.inputMode != "sequence":
            series = [selector.currentNode() for selector in self.seriesSelectors]
            subtractions = p.inputMode == "subtractions"
            self.logic.set_inputs(self.ui.t1Selector.currentNode(), phases=None if subtractions else series,
                                  subtractions=series if subtractions else None)
            self.updateButtons()
            self.prepareTimer.start()

    def onPrepare(self) -> None:
        """The settled inputs are read and preprocessed for the chosen model in the worker before Analyze is
        clicked (``Session.prepare``); a problem with them is Analyze's to report."""
        p = self._parameterNode
        if p and p.modelPath and p.inputMode != "sequence":
            with contextlib.suppress(InputError):
                self.logic.prepare(p.modelPath, p.device, p.labelFraction)

    def attempt(self, call, *args):
        """``call(*args)``'s value, or None after showing its :class:`InputError` (a user mistake) in the panel."""
        try:
            return call(*args)
        except InputError as err:
            self.setInputStatus(str(err), error=True)
            return None

    def setInputStatus(self, text: str, error: bool = False) -> None:
        self.ui.inputStatusLabel.text = text
        self.ui.inputStatusLabel.styleSheet = "color: #c0392b;" if error else ""

    def onAutoAssign(self) -> None:
        notes = self.attempt(self.logic.autoAssign, self._parameterNode, self.ui.modelComboBox.currentData)
        if notes is not None:
            self.updateSeriesSelectors()
            self.setInputStatus("\n".join(notes) or "All inputs assigned.", error=bool(notes))

    def onCheckInputs(self) -> bool:
        notes = self.attempt(self.logic.checkInputsFrom, self._parameterNode)
        if notes is not None:
            self.setInputStatus("Inputs OK." + "".join(f"\n{note}" for note in notes))
        return notes is not None

    def refreshModelList(self, select=None) -> None:
        combo, current = self.ui.modelComboBox, str(select or (self._parameterNode and self._parameterNode.modelPath))
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for info in self.logic.models():
            combo.addItem(info["title"], info)
            combo.setCurrentIndex(combo.count - 1 if info["path"] == current else combo.currentIndex)
        combo.blockSignals(wasBlocked)
        registry, wasBlocked = self.ui.registryComboBox, self.ui.registryComboBox.blockSignals(True)
        registry.clear()
        for entry in downloadable(self.logic.registry()):
            registry.addItem(entry["title"], entry)
        registry.blockSignals(wasBlocked)
        self.ui.downloadModelButton.enabled = registry.count > 0
        self.onModelSelected()

    def onModelSelected(self, *_) -> None:
        info = self.ui.modelComboBox.currentData
        self.ui.modelInfoLabel.text = info["details"] if info else NO_MODEL
        if self._parameterNode:
            self._parameterNode.modelPath = info["path"] if info else ""
            self.updateSeriesSelectors()

    def onImportModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Import BreastCMSL model", "",
                                              "BreastCMSL model (*.safetensors)")
        if path and self.logic.ensureDependencies():
            self.refreshModelList(select=self.attempt(self.logic.import_model, path))

    def onDownloadModel(self) -> None:
        entry = self.ui.registryComboBox.currentData
        if entry and self.logic.ensureDependencies():
            self.refreshModelList(select=self.attempt(self.logic.download_model, entry))

    def onBuildDemoModel(self) -> None:
        question = self.attempt(self.logic.demoQuestion)
        if question and not self.job and slicer.util.confirmOkCancelDisplay(question):
            self.setJob(self.logic.build_demo_model(self.logic.demoEntry()["command"], self.logic.demoFolder()))

    def onOpenCache(self) -> None:
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(self.logic.model_dir)))

    def onClearCache(self) -> None:
        if slicer.util.confirmOkCancelDisplay(f"Delete every model file in {self.logic.model_dir}?"):
            self.logic.clear_models()
            self.refreshModelList()

    def updateButtons(self, *_) -> None:
        p = self._parameterNode
        self.ui.analyzeButton.text = "Cancel" if self.job else "Analyze"
        ready = bool(p and p.modelPath and (p.phaseSequence if p.inputMode == "sequence" else
                                            all(s.currentNode() for s in self.seriesSelectors)))
        self.ui.analyzeButton.enabled = bool(self.job) or ready
        for button in (self.ui.compareButton, self.ui.jumpToPeakButton, self.ui.evaluateButton):
            button.enabled = self.logic.result is not None
        self.ui.exportCsvButton.enabled = self.logic.evaluation_table is not None

    def setJob(self, job) -> None:
        """Poll ``job`` (an AnalysisJob or DemoBuild) from the timer, or stop polling (None)."""
        self.job = job
        self.ui.progressBar.visible = job is not None
        self.pollTimer.start() if job else self.pollTimer.stop()
        self.updateButtons()

    def onPollJob(self) -> None:
        """Show the job's stage; once it has finished, its result (an analysis, or the demo model built)."""
        try:
            status = check(self.job)
        except Exception:  # a bug: stop polling, the traceback goes to the Python console
            self.setJob(None)
            raise
        self.ui.progressBar.setRange(0, 100 if status.fraction else 0)  # busy until the first stage
        self.ui.progressBar.setValue(round(100 * status.fraction))
        self.ui.progressBar.format = f"{status.stage} %p%"
        if status.log:
            self.ui.logTextEdit.appendPlainText(status.log.rstrip("\n"))
        if status.finished:
            self.setJob(None)
            self.ui.logTextEdit.appendPlainText(status.error or status.stage)
            if status.error:
                self.setInputStatus(status.error, error=True)
            elif isinstance(status.value, Path):
                self.refreshModelList(select=status.value)
            else:
                self.showResult()

    def cancelJob(self) -> None:
        if self.job:
            self.job.cancel()
            self.setJob(None)
            self.ui.logTextEdit.appendPlainText(CANCELLED)

    def onAnalyze(self) -> None:
        p = self._parameterNode
        if self.job:
            self.cancelJob()
        elif self.onCheckInputs():
            self.setJob(self.logic.analyze(p.modelPath, p.device, p.labelFraction))

    def showResult(self) -> None:
        result = self.logic.result
        text = result_text(result)
        self.ui.probabilityLabel.text = " ".join(filter(None, [text["probability"], text["calibration"],
                                                               text["cos_theta"]]))
        for label, key in ((self.ui.operatingLineLabel, "operating_line"), (self.ui.predictionLabel, "prediction"),
                           (self.ui.resultModelLabel, "model"), (self.ui.disclaimerLabel, "disclaimer"),
                           (self.applicabilityLabel, "applicability")):
            label.text = text[key]
        self.applicabilityLabel.styleSheet = "color: #c00; font-weight: bold" if text["outside"] else ""
        for label in (self.ui.probabilityLabel, self.ui.predictionLabel):  # greyed outside the training domain
            label.enabled = not text["outside"]
        self.offerMaps(result.maps if result else MAP_NAMES)
        self.updateOverlay()
        self.updateButtons()

    def offerMaps(self, maps) -> None:
        """Offer in the map choices only the maps the result has; the choices follow the session's
        :meth:`map_choices`."""
        for combo in (self.ui.mapComboBox, self.ui.compareLeftComboBox, self.ui.compareRightComboBox):
            for index in range(combo.count):
                combo.model().item(index).setEnabled(combo.itemText(index) in maps)
        p = self._parameterNode
        if p:
            p.overlayMap, (p.compareLeft, p.compareRight) = self.logic.map_choices(p.overlayMap,
                                                                                  (p.compareLeft, p.compareRight))

    def updateOverlay(self, *_) -> None:
        p = self._parameterNode
        if p and self.logic.result:
            self.attempt(self.logic.show, self.logic.sliceNodes(), p.overlayMap, p.heatOpacity, p.showOutline)

    def onJumpToPeak(self) -> None:
        self.attempt(self.logic.jump_to_peak, self.logic.sliceNodes(), self._parameterNode.overlayMap)

    def onCompare(self) -> None:
        p = self._parameterNode
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)  # left | right
        self.attempt(self.logic.compare, *self.logic.sliceNodes(["Red", "Yellow"]), p.heatOpacity, p.showOutline,
                     (p.compareLeft, p.compareRight))

    def onPlaceCentre(self) -> None:
        self.ui.centreSelector.setCurrentNode(self.logic.placeCentre())

    def onEvaluate(self) -> None:
        evaluation = self.attempt(self.logic.evaluate)
        if evaluation is not None:
            self.ui.tableSelector.setCurrentNode(self.logic.evaluation_table)
            self.ui.evaluationTableView.setMRMLTableNode(self.logic.evaluation_table)
            self.ui.summaryLabel.text = evaluation_text(evaluation["summary"])
            self.updateButtons()

    def showCurve(self, section, curve) -> None:
        """A curve's classes in words and its plot (the section's chart) in the view layout."""
        if curve is not None:
            self.kineticsClassLabel.text = curve["words"]
            self.logic.showChart(section.chart)

    def onCurveAtPoint(self) -> None:
        section = self.attempt(self.logic.kinetics)
        if section is not None:
            ras = self.attempt(self.logic.pointRas, self.kineticsPointSelector.currentNode())
            if ras is not None:
                self.showCurve(section, self.attempt(section.curve_at_ras, ras))

    def onCurveAtPeak(self) -> None:
        section = self.attempt(self.logic.kinetics)
        if section is not None:
            self.showCurve(section, self.attempt(section.curve_at_peak, self.kineticsPeakComboBox.currentText))

    def onKineticsOverlay(self) -> None:
        section = self.attempt(self.logic.kinetics)
        if section is not None:
            self.attempt(section.show, self.logic.sliceNodes(), self.kineticsOverlayComboBox.currentData)

    def onFtv(self) -> None:
        section, roi = self.attempt(self.logic.kinetics), self.kineticsRoiSelector.currentNode()
        if section is not None and roi is None:
            self.setInputStatus("FTV: choose or draw a markups ROI box first", error=True)
        elif section is not None:
            ftv = self.attempt(section.ftv_in_roi, roi)
            if ftv is not None:
                self.kineticsFtvLabel.text = ftv_text(ftv)
                self.attempt(section.show, self.logic.sliceNodes(), "ftv_label")

    def onExportCsv(self) -> None:
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), "Export evaluation table",
                                              "breastcmsl_evaluation.csv", "CSV (*.csv)")
        if path:
            self.attempt(self.logic.save_table_csv, path)


#
# BreastCMSLLogic
#


class BreastCMSLLogic(ScriptedLoadableModuleLogic, Session):
    """The session (BreastCMSLLib.panel.session) on Slicer's scene, plus what only Slicer has: its model folder, its
    Python launcher, its views, DICOM database and package installers."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        folder = Path(slicer.app.cachePath) / "BreastCMSL" / "models"
        folder.mkdir(parents=True, exist_ok=True)
        python = shutil.which("PythonSlicer") or sys.executable
        Session.__init__(self, slicer.mrmlScene, model_dir=folder, python=python, env=slicer.util.startupEnvironment())

    @staticmethod
    def channelCount(model: dict | None) -> int:
        return int(model["in_channels"]) if model else DEFAULT_CHANNELS

    def getParameterNode(self):
        return BreastCMSLParameterNode(super().getParameterNode())

    @staticmethod
    def registry() -> dict:
        """Resources/Models.json: the model registry (name, version, source, url, sha256, ...)."""
        return json.loads((Path(__file__).resolve().parent / "Resources" / "Models.json").read_text())

    def demoEntry(self) -> dict:
        return next(e for e in self.registry()["models"] if e["source"] == "build")

    @staticmethod
    def demoQuestion() -> str:
        if importlib.util.find_spec("Training") is None:
            raise InputError("Training", "building the synthetic demo model needs the BreastCMSL Training package, "
                             "which is not in Slicer's Python: run `breastcmsl-train demo --out DEMO_DIR` in the "
                             "project's environment and import the model file it exports")
        return ("Train the synthetic demo model now? It trains on synthetic phantoms only (several minutes on a CPU) "
                "and is NOT for diagnosis.")

    @staticmethod
    def dicomFiles(node) -> list:
        """The DICOM files a volume was loaded from (Slicer keeps their instance UIDs on the node)."""
        uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
        return [slicer.dicomDatabase.fileForInstance(uid) for uid in uids] if uids and slicer.dicomDatabase else []

    @staticmethod
    def rolePatterns(p):
        """The role rules' patterns with the user's edits (empty fields keep the defaults); an invalid regular
        expression is an InputError naming the field."""
        edits = {"t1": p.t1Pattern, "pre": p.prePattern, "post": p.postPattern, "subtraction": p.subPattern}
        return role_patterns(edits, "Name patterns")

    def autoAssign(self, p, model: dict | None) -> list:
        """Role assignment over the visible volumes (DICOM headers where they came from DICOM, else names),
        written back to the panel's selectors; returns notes on what could not be assigned."""
        volumes = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                   if not n.IsA("vtkMRMLLabelMapVolumeNode") and not n.GetHideFromEditors()]
        notes = self.auto_assign(volumes, [self.dicomFiles(n) for n in volumes], self.channelCount(model),
                                 "subtractions" if p.inputMode == "subtractions" else "phases", self.rolePatterns(p))
        p.inputMode = self.inputs()[2]
        return notes

    def checkInputsFrom(self, p) -> list:
        """Check inputs (a Sequence's frames become the session's inputs first), then :meth:`check_inputs`."""
        if p.inputMode == "sequence":
            if not p.phaseSequence:
                raise InputError("Dynamic sequence", "no volume Sequence selected")
            self.set_inputs_from_sequence(self.inputs()[0], p.phaseSequence, p.preFrameIndex)
        return self.check_inputs(p.modelPath or None)

    @staticmethod
    def demoFolder() -> str:
        return tempfile.mkdtemp(prefix="BreastCMSL-demo-", dir=slicer.app.temporaryPath)

    def placeCentre(self):
        """Start placing the lesion centre (one point, replacing an earlier one) with the mouse."""
        centre = self.centre_to_place()
        slicer.modules.markups.logic().SetActiveList(centre)
        slicer.modules.markups.logic().StartPlaceMode(False)
        return centre

    @staticmethod
    def pointRas(pointList) -> list:
        """The first point of ``pointList`` (RAS mm), or the crosshair's position where it is None."""
        ras = [0.0, 0.0, 0.0]
        if pointList is None:
            slicer.util.getNode("Crosshair").GetCursorPositionRAS(ras)
        elif pointList.GetNumberOfControlPoints() < 1:
            raise InputError(pointList.GetName(), "has no point; place one first")
        else:
            pointList.GetNthControlPointPositionWorld(0, ras)
        return ras

    @staticmethod
    def showChart(chart) -> None:
        """Show a plot chart node in the view layout (a plot view is added to it)."""
        slicer.modules.plots.logic().ShowChartInLayout(chart)

    @staticmethod
    def sliceNodes(names=None) -> list:
        layoutManager = slicer.app.layoutManager()
        return [layoutManager.sliceWidget(name).mrmlSliceNode() for name in names or layoutManager.sliceViewNames()]

    @staticmethod
    def ensureDependencies() -> bool:
        """PyTorch through the PyTorch extension, the other packages through pip; both ask first."""
        if importlib.util.find_spec("torch") is None:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                slicer.util.errorDisplay("BreastCMSL needs the PyTorch extension: install it from the Extensions "
                                         "Manager and restart Slicer.")
                return False
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                             torchVersionRequirement=TORCH_REQUIREMENT) is None:
                return False
        missing = [req for name, req in PYTHON_REQUIREMENTS.items() if importlib.util.find_spec(name) is None]
        if missing and not install_packages(slicer, missing, requester="BreastCMSL"):
            return False
        return all(importlib.util.find_spec(name) is not None for name in PYTHON_REQUIREMENTS)


#
# BreastCMSLTest
#


class BreastCMSLTest(ScriptedLoadableModuleTest):
    """Self-test: the calls the panel's buttons make, on a phantom case with an untrained small model."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_AnalyzeEvaluateCompare()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def makeCase(self):
        """A small phantom case loaded as volume nodes (the panel's inputs) and an untrained small model."""
        self.work = Path(tempfile.mkdtemp(prefix="BreastCMSLTest-", dir=slicer.app.temporaryPath))
        case = phantom_case(self.work / "case", seed=3, shape=(96, 64, 40), spacing=(3.5, 3.5, 3.5))
        model = untrained_model(self.work / "model.safetensors", (64, 48, 32), width_factor=0.125)
        logic = BreastCMSLLogic()
        p = logic.getParameterNode()
        p.inputMode, p.modelPath, p.device = "phases", str(model), "cpu"
        logic.set_inputs(slicer.util.loadVolume(str(case / "t1.nrrd")),
                         phases=[slicer.util.loadVolume(str(case / f"{name}.nrrd"))
                                 for name in ["pre", *(f"post_{k}" for k in range(1, 7))]])
        return logic, p

    def test_AnalyzeEvaluateCompare(self):
        self.delayDisplay("Analyze (Check inputs, Analyze), show, compare, place a centre, evaluate, export")
        logic, p = self.makeCase()
        self.assertEqual(logic.check_inputs(p.modelPath), [])
        result = logic.analyze(p.modelPath, p.device, p.labelFraction).wait(600)
        self.assertTrue(0.0 <= result.probability <= 1.0)
        expected = vtk.vtkMatrix4x4()
        logic.inputs()[1][1].GetIJKToRASMatrix(expected)
        self.assertEqual(result.maps, MAP_NAMES)
        for key in [f"{name}_{part}" for name in MAP_NAMES for part in ("volume", "label")]:
            actual = vtk.vtkMatrix4x4()
            slicer.mrmlScene.GetNodeByID(result.nodes[key]).GetIJKToRASMatrix(actual)
            for r in range(4):
                for c in range(4):
                    self.assertAlmostEqual(actual.GetElement(r, c), expected.GetElement(r, c), places=6)
        logic.show(logic.sliceNodes(), "coam", p.heatOpacity, p.showOutline)
        logic.show(logic.sliceNodes(), "fine", p.heatOpacity, p.showOutline)
        logic.compare(*logic.sliceNodes(["Red", "Yellow"]))  # CAM | COAM
        logic.compare(*logic.sliceNodes(["Red", "Yellow"]), pair=logic.compare_pair())  # COAM | fine
        self.assertEqual(logic.compare_pair(), ("coam", "fine"))
        logic.stop_compare()
        logic.jump_to_peak(logic.sliceNodes(), "cam")
        logic.jump_to_peak(logic.sliceNodes(), "fine")
        logic.set_lesion_centre(result.peaks_ras["fine"])
        evaluation = logic.evaluate()
        self.assertAlmostEqual(evaluation["row"]["fine mm"], 0.0, places=6)
        self.assertAlmostEqual(evaluation["row"]["COAM mm"], math.dist(result.peaks_ras["coam"],
                                                                       result.peaks_ras["fine"]), places=4)
        self.assertTrue(result_text(result)["operating_line"].startswith("uncalibrated"))
        logic.save_table_csv(self.work / "evaluation.csv")
        self.assertTrue((self.work / "evaluation.csv").is_file())
        again = logic.analyze(p.modelPath, p.device, p.labelFraction)
        self.assertEqual(again.worker_pid, logic.job.worker_pid)
        self.assertAlmostEqual(again.wait(600).probability, result.probability, places=6)
        logic.close()
        self.delayDisplay("Test passed")

    @unittest.skipIf(sys.platform == "win32", "checks the POSIX process group")
    def test_CancelLeavesSceneUnchanged(self):
        self.delayDisplay("Cancel a background Analyze while it computes")
        import os
        import time

        logic, p = self.makeCase()
        before = slicer.mrmlScene.GetNumberOfNodes()
        job = logic.analyze(p.modelPath, p.device)
        while job.progress[1] == "queued":
            self.assertFalse(job.done)
            time.sleep(0.01)
        job.cancel()
        with self.assertRaises(ProcessLookupError):  # the whole process group is gone
            os.killpg(job.worker_pid, 0)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)
        self.assertIsNone(logic.result)
        logic.close()
        self.delayDisplay("Test passed")
