"""VolumetricSR: thick-slice CT (5 mm) to thin-slice CT (1 mm) with TVSRN, inside 3D Slicer.

The module, its parameter node, a thin Qt widget, the logic (no dialogs: usable from the Python
console and `Slicer --no-main-window --python-script`) and the self-test. The work lives in
VolumetricSRLib (the core) and VolumetricSRMRML (the MRML adapter). The network runs in a child
process (Slicer's own Python running the core's command line): this process never imports torch.
"""

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from VolumetricSRLib.app.child_run import ChildError, ChildRun
from VolumetricSRLib.models.model_cards import (
    ModelFileError,
    NoModelError,
    bundled_models,
    default_model_path,
    read_card,
    resolve_card_path,
)
from VolumetricSRMRML.apply_guard import ARM_SECONDS, ApplyGuard
from VolumetricSRMRML.processing import (
    DEVICE_QUERY_SECONDS,
    RunSettings,
    SuperResolutionJob,
    SuperResolutionResult,
    device_answer,
    query_devices,
    run_to_end,
    start_device_query,
)
from VolumetricSRMRML.python_packages import (
    TORCH_REQUIREMENT,
    DependencyError,
    install_packages,
    missing_packages,
    restart_needed_for,
)
from VolumetricSRMRML.resources import find_resource
from VolumetricSRMRML.review_layout import (
    REVIEW_VIEWS,
    THICK_ROW,
    THREE_OVER_THREE,
    ReviewError,
    apply_window_preset,
    composite_node,
    show_review,
)
from VolumetricSRMRML.volume_nodes import (
    parent_transform_kind,
    provenance,
    thin_outputs_of,
)

MODULE_DIR = Path(__file__).resolve().parent
MODEL_FILE_CHOICE = "file"
DEVICE_CHOICES = ["auto", "GPU", "CPU"]
POLL_MILLISECONDS = 100


#
# VolumetricSR
#


class VolumetricSR(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Volumetric Super-Resolution")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Filtering")]
        self.parent.dependencies = []
        self.parent.contributors = ["VolumetricSR developers"]
        self.parent.helpText = _(
            "Super-resolves thick-slice CT (5, 3 or 2.5 mm slices) to thin slices (1 mm, or the output "
            "spacing you choose) along the slice axis with TVSRN, then shows thick and thin side by side in "
            "the three-over-three layout. The output covers the input's first to last slice in the input's "
            "orientation: the network makes slices input spacing / ratio apart (the model chosen for the "
            "input's slice thickness), resampled with a cubic B-spline when the output spacing differs. "
            "The output is labelled synthetic."
        )
        self.parent.acknowledgementText = _(
            "TVSRN: Yu et al., 'RPLHR-CT Dataset and Transformer Baseline for Volumetric "
            "Super-Resolution from CT Scans', MICCAI 2022."
        )
        try:
            self.parent.icon = qt.QIcon(str(find_resource("Icons/VolumetricSR.png", MODULE_DIR)))
        except FileNotFoundError as error:
            logging.warning(str(error))


#
# VolumetricSRParameterNode
#


@parameterNodeWrapper
class VolumetricSRParameterNode:
    """
    inputVolume - the thick CT.
    outputVolume - where the thin CT goes; none creates a new volume '<input> thin (synthetic)'.
    modelId - bundled model id, "" for the default bundled model, MODEL_FILE_CHOICE for modelFile.
    modelFile - a model file (.safetensors or .json) on disk, "" for none (the path field is
        synchronised by the widget: a Path parameter would show "." when empty).
    device - "auto" (the GPU when it works, else the CPU), "GPU" or "CPU".
    tileSize - in-plane tile in pixels, 0 for whole slices.
    depthOverlap - thick slices shared by neighbouring depth windows.
    batchSize - pieces per network call, 0 to choose (1 on the CPU, from free memory on a GPU).
    halfPrecision - half precision (bfloat16, else float16) on the GPU.
    outputSpacing - thin slice spacing in mm, 0 for the model card's (1 mm for the bundled model).
    enforceConsistency - correct the thin slices so that each full slab re-thickens to its measured slice.
    adaptToScan - fine-tune a copy of the model on pairs from the scan's in-plane axes before predicting.
    showReview - show the three-over-three review after Apply.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    modelId: str = ""
    modelFile: str = ""
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    tileSize: Annotated[int, WithinRange(0, 4096)] = 0
    depthOverlap: Annotated[int, WithinRange(1, 3)] = 1
    batchSize: Annotated[int, WithinRange(0, 64)] = 0
    halfPrecision: bool = True
    outputSpacing: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    enforceConsistency: bool = False
    adaptToScan: bool = False
    showReview: bool = True


#
# VolumetricSRWidget
#


class VolumetricSRWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job: SuperResolutionJob | None = None
        self._installing = False
        self._deviceQuery: ChildRun | None = None
        self._deviceQueryStarted = 0.0
        self._applyGuard = ApplyGuard()
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MILLISECONDS)
        self._timer.connect("timeout()", self._onTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(str(find_resource("UI/VolumetricSR.ui", MODULE_DIR)))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = VolumetricSRLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.modelFileSelector.connect("currentPathChanged(QString)", self.onModelFileChanged)
        self.ui.reviewButton.connect("clicked(bool)", self.onReviewButton)
        self.ui.lungPresetButton.connect("clicked(bool)", self._presetHandler("lung"))
        self.ui.mediastinumPresetButton.connect("clicked(bool)", self._presetHandler("mediastinum"))
        self.ui.bonePresetButton.connect("clicked(bool)", self._presetHandler("bone"))

        self.refreshModelsAndDevice()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        if self._job is not None:
            self._job.cancel()
            self._job = None
        if self._deviceQuery is not None:
            self._deviceQuery.kill()
            self._deviceQuery = None
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:  # its input is going away: stop it, nothing is added
            self._job.cancel()
            self._job = None
            self._setRunning(False)
            self.ui.statusLabel.text = _("Cancelled: the scene was closed.")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = firstPlainScalarVolume(slicer.mrmlScene)
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: "VolumetricSRParameterNode | None") -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._selectModelItem(self._parameterNode.modelId)
            self._updateButtons()

    def refreshModelsAndDevice(self) -> None:
        """Fill the model list (read from the cards) and start the device check in a child process."""
        self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for label, modelId in self.logic.modelChoices():
            self.ui.modelSelector.addItem(label, modelId)
        self.ui.modelSelector.addItem(_("Model file on disk"), MODEL_FILE_CHOICE)
        self.ui.modelSelector.blockSignals(False)
        if self._parameterNode:
            self._selectModelItem(self._parameterNode.modelId)
        self._startDeviceQuery()

    def _startDeviceQuery(self) -> None:
        """Ask a child process which device 'auto' would use (once; the logic caches the answer)."""
        cached = self.logic.cachedDeviceDescription()
        if cached is not None:
            self.ui.deviceInfoLabel.text = cached
            return
        if missing_packages():
            self.ui.deviceInfoLabel.text = _("PyTorch is not installed yet: it will be offered on Apply.")
            return
        if self._deviceQuery is not None:
            return
        try:
            self._deviceQuery = self.logic.startDeviceQuery()
            self._deviceQueryStarted = time.monotonic()
        except ChildError as error:
            self.ui.deviceInfoLabel.text = str(error)
            return
        self.ui.deviceInfoLabel.text = _("Checking for a GPU...")
        self._timer.start()

    def _selectModelItem(self, modelId: str) -> None:
        index = self.ui.modelSelector.findData(modelId)
        if index < 0 and modelId:  # a bundled model not listed (yet): keep the choice
            self.ui.modelSelector.addItem(modelId, modelId)
            index = self.ui.modelSelector.findData(modelId)
        self.ui.modelSelector.setCurrentIndex(max(index, 0))

    def onModelSelected(self, index: int) -> None:
        if index < 0 or self._parameterNode is None:
            return
        modelId = self.ui.modelSelector.itemData(index) or ""
        if self._parameterNode.modelId != modelId:
            self._parameterNode.modelId = modelId
        self._updateButtons()

    def onModelFileChanged(self, path: str) -> None:
        if self._parameterNode is not None and self._parameterNode.modelFile != path:
            self._parameterNode.modelFile = path

    def _updateButtons(self, caller=None, event=None) -> None:
        params = self._parameterNode
        if params is None or self._job is not None or self._installing:
            return
        if self.ui.modelFileSelector.currentPath != params.modelFile:
            self.ui.modelFileSelector.currentPath = params.modelFile
        model = self._selectedModel()
        self.ui.modelFileSelector.enabled = params.modelId == MODEL_FILE_CHOICE
        self.ui.modelInfoLabel.text = "" if model is None else self.logic.describeModel(model)
        ready = bool(params.inputVolume) and model is not None
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = (
            _("Super-resolve the input volume") if ready else _("Select an input volume and a model")
        )
        self.ui.reviewButton.enabled = bool(params.inputVolume)

    def _selectedModel(self) -> str | None:
        """The model reference for the logic: "" (default bundled), a bundled id or a file; None if unset."""
        params = self._parameterNode
        if params.modelId != MODEL_FILE_CHOICE:
            return params.modelId
        return params.modelFile or None

    def _setRunning(self, running: bool) -> None:
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.advancedCollapsibleButton.enabled = not running
        self.ui.reviewCollapsibleButton.enabled = not running
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        if running:  # Cancel is armed a moment later: a double click on Apply must not cancel the run
            self._applyGuard.started(time.monotonic())
            self.ui.applyButton.enabled = False
            qt.QTimer.singleShot(round(1000 * ARM_SECONDS), self._armCancel)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = ""
        else:
            self.ui.applyButton.enabled = True
            self._updateButtons()

    def _armCancel(self) -> None:
        if self._job is not None:
            self.ui.applyButton.enabled = True

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.progressBar.format = f"{message} (%p%)"

    def onApplyButton(self) -> None:
        """Apply: start the child process; Cancel while it runs: kill it at once."""
        if self._job is not None:  # the timer stops by itself once nothing is pending
            if not self._applyGuard.cancel_allowed(time.monotonic()):
                return  # the second click of a double click on Apply
            self._job.cancel()
            self._job = None
            self._setRunning(False)
            self.ui.statusLabel.text = _("Cancelled: nothing was added to the scene.")
            return
        if self._installing or not self._ensurePythonPackages():
            return
        params = self._parameterNode
        try:
            hardenTransform = self._askHardenTransform(params.inputVolume)
            self._job = self.logic.start(
                params.inputVolume,
                RunSettings.from_panel(params, self._selectedModel()),
                outputVolume=params.outputVolume,
                hardenTransform=hardenTransform,
            )
        except Exception as error:
            self._showFailure(error)
            return
        self._setRunning(True)
        self._timer.start()

    def _onTimer(self) -> None:
        """On the main thread, every POLL_MILLISECONDS: the device check and the running job."""
        if self._deviceQuery is not None and self._deviceQuery.finished:
            self.ui.deviceInfoLabel.text = self.logic.rememberDeviceQuery(self._deviceQuery)
            self._deviceQuery = None
        elif self._deviceQuery is not None and self._deviceQueryOverdue():
            self._deviceQuery.kill()
            self._deviceQuery = None
            self.ui.deviceInfoLabel.text = _(
                "The GPU check did not answer in {seconds:.0f} s; 'auto' still uses a GPU if it finds one."
            ).format(seconds=DEVICE_QUERY_SECONDS)
        if self._job is not None:
            try:
                result = self._job.poll(self._onProgress)
            except Exception as error:
                self._job = None
                self._setRunning(False)
                self._showFailure(error)
                result = None
            if result is not None:
                self._job = None
                self._setRunning(False)
                self.ui.progressBar.value = 100
                self.ui.statusLabel.text = result.summary()
                logging.info(f"VolumetricSR: {result.summary()}")
                if self._parameterNode is not None and self._parameterNode.showReview:
                    if self.parent.isEntered:
                        with slicer.util.tryWithErrorDisplay(_("The review cannot be shown.")):
                            self.logic.showReview(self._parameterNode.inputVolume, result.output)
                    else:  # the user is in another module now: leave the layout alone
                        self.ui.statusLabel.text += _(" (Show thick / thin review brings up the review.)")
        if self._job is None and self._deviceQuery is None:
            self._timer.stop()

    def _deviceQueryOverdue(self) -> bool:
        return time.monotonic() - self._deviceQueryStarted > DEVICE_QUERY_SECONDS

    def _showFailure(self, error: Exception) -> None:
        """The one-line reason in the status line and a dialog whose details hold the child's last lines
        (every line of the child is in the application log already)."""
        self.ui.statusLabel.text = _("Failed: {error}").format(error=error)
        details = getattr(error, "details", "") or None
        slicer.util.errorDisplay(
            _("Super-resolution failed.\n\n{error}").format(error=error), detailedText=details
        )
        logging.error(f"VolumetricSR failed: {error}")

    def _askHardenTransform(self, inputVolume) -> bool:
        """For an input under a linear transform: harden it into the output? (raises for non-linear)."""
        if inputVolume is None or parent_transform_kind(inputVolume) != "linear":
            return False
        return slicer.util.confirmYesNoDisplay(
            _(
                "{name} is under a linear transform.\n\nYes: fold the transform into the output's "
                "geometry (the output is not transformed).\nNo: put the output under the same transform.\n\n"
                "The input volume is not changed either way."
            ).format(name=inputVolume.GetName())
        )

    def _ensurePythonPackages(self) -> bool:
        """Ask once, then install what is missing (PyTorch through the PyTorch extension)."""
        missing = missing_packages()
        if not missing:
            return True
        restart = restart_needed_for(missing)
        if restart:
            slicer.util.errorDisplay(restart)
            return False
        if not slicer.util.confirmOkCancelDisplay(
            _(
                "VolumetricSR needs these Python packages, which will now be downloaded and installed "
                "(PyTorch is large: this can take several minutes):\n\n{packages}"
            ).format(packages="\n".join(missing))
        ):
            return False
        # installers pump GUI events: keep Apply and the panel disabled until they are done
        self._installing = True
        self.ui.applyButton.enabled = False
        self.ui.inputsCollapsibleButton.enabled = False
        self.ui.statusLabel.text = _("Installing {packages}: this can take several minutes...").format(
            packages=", ".join(missing)
        )
        slicer.app.processEvents()
        try:
            with slicer.util.tryWithErrorDisplay(
                _("Installing the Python packages failed."), waitCursor=True
            ):
                self.logic.installPythonPackages()
        except Exception:
            return False
        finally:
            self._installing = False
            self.ui.inputsCollapsibleButton.enabled = True
            self._updateButtons()
        self.refreshModelsAndDevice()
        return True

    def onReviewButton(self) -> None:
        params = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("The review cannot be shown."), waitCursor=True):
            thin = params.outputVolume or self.logic.latestOutputOf(params.inputVolume)
            if thin is None:
                raise ReviewError(
                    _("{name} has no super-resolved volume yet: click Apply first").format(
                        name=params.inputVolume.GetName()
                    )
                )
            self.logic.showReview(params.inputVolume, thin)

    def _presetHandler(self, preset: str) -> Callable[[], None]:
        def onPreset() -> None:
            params = self._parameterNode
            volumes = [
                params.inputVolume,
                params.outputVolume or self.logic.latestOutputOf(params.inputVolume),
            ]
            with slicer.util.tryWithErrorDisplay(_("The window preset cannot be applied.")):
                self.logic.applyWindowPreset(preset, [volume for volume in volumes if volume])

        return onPreset


def firstPlainScalarVolume(scene):
    """The first scalar volume that is not a label map, vector or other specialised volume, or None."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node.GetClassName() == "vtkMRMLScalarVolumeNode":
            return node
    return None


#
# VolumetricSRLogic
#


class VolumetricSRLogic(ScriptedLoadableModuleLogic):
    """Super-resolution of volume nodes and the thick / thin review, without any dialog.

    The network runs in a child process under Slicer's Python. From the Python console or a
    batch script:
        logic = VolumetricSR.VolumetricSRLogic()
        result = logic.process(slicer.util.getNode("CT"))
        slicer.util.saveNode(result.output, "/data/CT_thin.nrrd")
    """

    _deviceLine: str | None = None  # shared by every logic of this Slicer session

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return VolumetricSRParameterNode(super().getParameterNode())

    def installPythonPackages(self) -> None:
        """Install the missing packages (python_packages.install_packages); the device line is asked anew."""
        install_packages()
        VolumetricSRLogic._deviceLine = None

    def cachedDeviceDescription(self) -> str | None:
        """The device line found earlier in this session, or None."""
        return VolumetricSRLogic._deviceLine

    def startDeviceQuery(self) -> ChildRun:
        """Start `volumetricsr devices --json` in a child process (see rememberDeviceQuery)."""
        return start_device_query()

    def rememberDeviceQuery(self, run: ChildRun) -> str:
        """The device line from a finished query, cached for the session."""
        try:
            answer = device_answer(run)
        except ChildError as error:
            return _("The device check failed: {reason}").format(reason=error)
        VolumetricSRLogic._deviceLine = self._deviceLineOf(answer)
        return VolumetricSRLogic._deviceLine

    def deviceDescription(self) -> str:
        """Which GPU 'auto' would use (or why none can be), asked once from a child process."""
        if VolumetricSRLogic._deviceLine is None:
            if TORCH_REQUIREMENT in missing_packages():
                return _("PyTorch is not installed yet: it will be offered on Apply.")
            VolumetricSRLogic._deviceLine = self._deviceLineOf(query_devices())
        return VolumetricSRLogic._deviceLine

    @staticmethod
    def _deviceLineOf(answer) -> str:
        return _("{line} (PyTorch {version})").format(line=answer.line, version=answer.torch)

    def modelChoices(self) -> list:
        """(label, model id) of the bundled models, the default first ("" stands for it)."""
        choices = [(_("Default bundled model"), "")]
        for card in bundled_models():
            label = card.name if card.trained else _("{name} (untrained)").format(name=card.name)
            choices.append((label, card.id))
        return choices

    def describeModel(self, model: str) -> str:
        """A line about the model (what it is, how it was trained), or why it cannot be used."""
        try:
            path = resolve_card_path(model) if model else default_model_path()
            if path is None:
                return str(NoModelError())
            card = read_card(path)
        except ModelFileError as error:
            return str(error)
        trained = _("trained") if card.trained else _("untrained: its output is noise")
        return (
            f"{card.name} ({trained}; x{card.ratio}, {card.thick_spacing_mm} mm slices). {card.description}"
        )

    def start(
        self,
        inputVolume,
        settings: RunSettings | None = None,
        outputVolume=None,
        hardenTransform: bool = False,
    ) -> SuperResolutionJob:
        """Start super-resolving `inputVolume` in a child process; poll() the job from the main thread.

        settings: the run's options (RunSettings: model, device "auto" / "GPU" / "CPU", tile, depth
        overlap, batch, half precision, output spacing in mm, enforced consistency; None for "not set");
        checked against the input before any process starts, with the command line's messages.
        outputVolume: the node to fill (None: a new '<input> thin (synthetic)').
        hardenTransform: fold the input's linear transform into the output's geometry.
        """
        missing = missing_packages()
        if missing:
            raise DependencyError(
                _(
                    "Missing Python packages: {packages}. Install them from the module panel (Apply asks) or "
                    "with VolumetricSRLogic().installPythonPackages()."
                ).format(packages=", ".join(missing))
            )
        return SuperResolutionJob(
            inputVolume, settings or RunSettings(), output_node=outputVolume, harden_transform=hardenTransform
        )

    def process(
        self,
        inputVolume,
        settings: RunSettings | None = None,
        outputVolume=None,
        hardenTransform: bool = False,
        showReview: bool = False,
        progressCallback: Callable[[float, str], None] | None = None,
        cancelRequested: Callable[[], bool] | None = None,
    ) -> SuperResolutionResult:
        """Super-resolve `inputVolume` as start() does, and wait for the result.

        An input under a linear transform gives an output under the same transform, or hardened into
        its geometry with hardenTransform; a non-linear transform is refused. Raises
        SuperResolutionCancelled when cancelRequested() turns true (the child is killed, the scene
        unchanged) and ChildError with the child's message when it fails.
        """
        job = self.start(inputVolume, settings, outputVolume, hardenTransform)
        result = run_to_end(job, progressCallback, cancelRequested, idle=slicer.app.processEvents)
        logging.info(f"VolumetricSR: {result.summary()}")
        if showReview:
            self.showReview(inputVolume, result.output)
        return result

    @staticmethod
    def latestOutputOf(inputVolume):
        """The most recent thin volume made from `inputVolume`, or None."""
        outputs = thin_outputs_of(slicer.mrmlScene, inputVolume) if inputVolume else []
        return outputs[-1] if outputs else None

    @staticmethod
    def showReview(thickVolume, thinVolume) -> None:
        """Three-over-three layout: thick on top, thin below, all six views through one point."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            raise ReviewError(_("This Slicer session has no views (batch mode); the review needs them."))
        layoutManager.setLayout(THREE_OVER_THREE)
        slicer.app.processEvents()  # let the new views take their size before they are fitted
        show_review(
            slicer.mrmlScene, thickVolume, thinVolume, application_logic=slicer.app.applicationLogic()
        )

    @staticmethod
    def applyWindowPreset(preset: str, volumes) -> None:
        """'lung', 'mediastinum' or 'bone' window on every volume."""
        apply_window_preset(volumes, preset)


#
# VolumetricSRTest
#


class VolumetricSRTest(ScriptedLoadableModuleTest):
    """Runs in Slicer: a small synthetic oblique volume through the bundled model in a child process,
    its geometry and the review. Without PyTorch only the scene side runs (and says so)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_VolumetricSR_syntheticVolume()
        self.setUp()
        self.test_VolumetricSR_outputSpacingAndConsistency()

    def _thickVolume(self):
        angle = np.deg2rad(20.0)
        ijkToRas = np.array(
            [
                [-0.8 * np.cos(angle), 0.0, 5.0 * np.sin(angle), 40.0],
                [0.0, -0.8, 0.0, 10.0],
                [0.8 * np.sin(angle), 0.0, 5.0 * np.cos(angle), -30.0],
                [0.0, 0.0, 0.0, 1.0],
            ]
        )
        k, j, i = np.mgrid[0:9, 0:24, 0:20]
        voxels = (40 * k + 3 * j - 2 * i - 600).astype(np.int16)
        thick = slicer.util.addVolumeFromArray(voxels, ijkToRAS=ijkToRas, name="VolumetricSR thick")
        thick.CreateDefaultDisplayNodes()
        thick.GetDisplayNode().SetAutoWindowLevel(False)
        thick.GetDisplayNode().SetWindowLevel(400.0, 40.0)
        return thick, ijkToRas, voxels

    def test_VolumetricSR_syntheticVolume(self) -> None:
        from VolumetricSRLib.geometry import thin_grid

        logic = VolumetricSRLogic()
        self.delayDisplay("Making a synthetic thick volume")
        thick, ijkToRas, voxels = self._thickVolume()
        self.assertIs(firstPlainScalarVolume(slicer.mrmlScene), thick)
        missing = missing_packages()
        if missing:
            self.delayDisplay(
                f"VolumetricSR needs {', '.join(missing)} to super-resolve (Apply offers to install them); "
                "only the scene side was tested"
            )
            return
        self.delayDisplay("Super-resolving in a child process")
        torchBefore = "torch" in sys.modules
        result = logic.process(
            thick, RunSettings(device="cpu"), showReview=slicer.app.layoutManager() is not None
        )

        thin = result.output
        self.assertEqual(thin.GetImageData().GetDimensions(), (20, 24, 41))
        matrix = vtk.vtkMatrix4x4()
        thin.GetIJKToRASMatrix(matrix)
        np.testing.assert_allclose(
            slicer.util.arrayFromVTKMatrix(matrix), thin_grid(ijkToRas, 9, 5).affine, atol=1e-9
        )
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(thick), voxels)
        # the run itself loads no torch here (installing PyTorch through PyTorch Utils may have)
        self.assertEqual("torch" in sys.modules, torchBefore)
        self.assertEqual(thin.GetDisplayNode().GetWindow(), 400.0)
        self.assertEqual(thin.GetDisplayNode().GetLevel(), 40.0)
        self.assertEqual(provenance(thin)["SourceNodeID"], thick.GetID())
        if slicer.app.layoutManager() is not None:
            layoutNode = slicer.app.layoutManager().layoutLogic().GetLayoutNode()
            self.assertEqual(layoutNode.GetViewArrangement(), THREE_OVER_THREE)
            for name in REVIEW_VIEWS:
                expected = thick if name in THICK_ROW else thin
                self.assertEqual(
                    composite_node(slicer.mrmlScene, name).GetBackgroundVolumeID(), expected.GetID()
                )
        self.delayDisplay("Test passed")

    def test_VolumetricSR_outputSpacingAndConsistency(self) -> None:
        from VolumetricSRLib.geometry import spaced_grid

        logic = VolumetricSRLogic()
        thick, ijkToRas, _voxels = self._thickVolume()
        if missing_packages():
            self.delayDisplay("VolumetricSR's Python packages are missing: output spacing not tested")
            return
        self.delayDisplay("Thin slices every 2 mm")
        spaced = logic.process(thick, RunSettings(device="cpu", spacing_mm=2.0)).output
        self.assertEqual(spaced.GetImageData().GetDimensions(), (20, 24, 21))
        matrix = vtk.vtkMatrix4x4()
        spaced.GetIJKToRASMatrix(matrix)
        np.testing.assert_allclose(
            slicer.util.arrayFromVTKMatrix(matrix), spaced_grid(ijkToRas, 9, 2.0).affine, atol=1e-9
        )
        self.delayDisplay("Consistency with the measured slices enforced")
        result = logic.process(thick, RunSettings(device="cpu", enforce_consistency=True))
        self.assertEqual(result.output.GetImageData().GetDimensions(), (20, 24, 41))
        self.assertIn("enforced (corrected from", result.consistency)
        self.delayDisplay("Test passed")
