"""VolumetricSR: thick-slice CT (5 mm) to thin-slice CT (1 mm) with TVSRN, inside 3D Slicer.

The module, its parameter node, a thin Qt widget, the logic (no dialogs: usable from the Python
console and `Slicer --no-main-window --python-script`) and the self-test. The work lives in
VolumetricSRLib (the core) and VolumetricSRMRML (the MRML adapter); torch is imported on first
use, after the widget has asked to install it.
"""

import importlib.metadata
import logging
import tempfile
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

from VolumetricSRMRML.processing import SuperResolutionResult, super_resolve_volume
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
    check_input_volume,
    parent_transform_kind,
    provenance,
    thin_outputs_of,
)

MODULE_DIR = Path(__file__).resolve().parent
MODEL_FILE_CHOICE = "file"
DEVICE_CHOICES = ["auto", "GPU", "CPU"]
TORCH_REQUIREMENT = "torch>=2.1"
PYTHON_REQUIREMENTS = ("safetensors>=0.4",)


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
            "Super-resolves thick-slice CT (e.g. 5 mm slices) to thin slices (1 mm) along the slice axis "
            "with TVSRN, then shows thick and thin side by side in the three-over-three layout. "
            "The output keeps the input's geometry: thin slice j lies at thick slice j / 5."
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
    outputVolume - where the thin CT goes; none creates a new volume '<input> thin'.
    modelId - bundled model id, "" for the default bundled model, MODEL_FILE_CHOICE for modelFile.
    modelFile - a model file (.safetensors or .json) on disk.
    device - "auto" (the GPU when it works, else the CPU), "GPU" or "CPU".
    tileSize - in-plane tile in pixels, 0 for whole slices.
    depthOverlap - thick slices shared by neighbouring depth windows.
    batchSize - pieces per network call.
    halfPrecision - half precision (bfloat16, else float16) on the GPU.
    showReview - show the three-over-three review after Apply.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    modelId: str = ""
    modelFile: Path
    device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
    tileSize: Annotated[int, WithinRange(0, 4096)] = 0
    depthOverlap: Annotated[int, WithinRange(1, 3)] = 1
    batchSize: Annotated[int, WithinRange(1, 64)] = 1
    halfPrecision: bool = True
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
        self._running = False
        self._cancelRequested = False

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
        self.ui.reviewButton.connect("clicked(bool)", self.onReviewButton)
        self.ui.lungPresetButton.connect("clicked(bool)", self._presetHandler("lung"))
        self.ui.mediastinumPresetButton.connect("clicked(bool)", self._presetHandler("mediastinum"))
        self.ui.bonePresetButton.connect("clicked(bool)", self._presetHandler("bone"))

        self.refreshModelsAndDevice()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
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
        """Fill the model list and the device line (both need PyTorch; until then, say so)."""
        self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for label, modelId in self.logic.modelChoices():
            self.ui.modelSelector.addItem(label, modelId)
        self.ui.modelSelector.addItem(_("Model file on disk"), MODEL_FILE_CHOICE)
        self.ui.modelSelector.blockSignals(False)
        if self._parameterNode:
            self._selectModelItem(self._parameterNode.modelId)
        self.ui.deviceInfoLabel.text = self.logic.deviceDescription()

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

    def _updateButtons(self, caller=None, event=None) -> None:
        params = self._parameterNode
        if params is None or self._running:
            return
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
        path = str(params.modelFile) if params.modelFile else ""
        return path if path not in ("", ".") else None

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self._cancelRequested = False
        self.ui.inputsCollapsibleButton.enabled = not running
        self.ui.advancedCollapsibleButton.enabled = not running
        self.ui.reviewCollapsibleButton.enabled = not running
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.enabled = True
        if running:
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = ""
        else:
            self._updateButtons()

    def _onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.progressBar.format = f"{message} (%p%)"

    def onApplyButton(self) -> None:
        """Apply, or Cancel while running (processing keeps the GUI alive, so this is re-entered)."""
        if self._running:
            self._cancelRequested = True
            self.ui.applyButton.text = _("Cancelling...")
            self.ui.applyButton.enabled = False
            return
        if not self._ensurePythonPackages():
            return
        params = self._parameterNode
        try:
            hardenTransform = self._askHardenTransform(params.inputVolume)
            self._setRunning(True)
            result = self.logic.process(
                params.inputVolume,
                outputVolume=params.outputVolume,
                model=self._selectedModel(),
                device=params.device,
                tileSize=params.tileSize,
                depthOverlap=params.depthOverlap,
                batchSize=params.batchSize,
                halfPrecision=params.halfPrecision,
                hardenTransform=hardenTransform,
                showReview=params.showReview,
                progressCallback=self._onProgress,
                cancelRequested=lambda: self._cancelRequested,
            )
        except Exception as error:
            self._setRunning(False)
            if isCancellation(error):
                self.ui.statusLabel.text = _("Cancelled: nothing was added to the scene.")
            else:
                self.ui.statusLabel.text = _("Failed: {error}").format(error=error)
                slicer.util.errorDisplay(_("Super-resolution failed.\n\n{error}").format(error=error))
                logging.exception("VolumetricSR failed")
            return
        self._setRunning(False)
        self.ui.progressBar.value = 100
        self.ui.statusLabel.text = result.summary()
        self.ui.deviceInfoLabel.text = self.logic.deviceDescription()

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
        missing = self.logic.missingPythonPackages()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
            _(
                "VolumetricSR needs these Python packages, which will now be downloaded and installed "
                "(PyTorch is large: this can take several minutes):\n\n{packages}"
            ).format(packages="\n".join(missing))
        ):
            return False
        try:
            with slicer.util.tryWithErrorDisplay(
                _("Installing the Python packages failed."), waitCursor=True
            ):
                self.logic.installPythonPackages()
        except Exception:
            return False
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


def isCancellation(error: BaseException) -> bool:
    """True for the core's PredictionCancelled (matched by name: importing the predictor imports torch)."""
    return any(
        cls.__name__ == "PredictionCancelled" and cls.__module__ == "VolumetricSRLib.predictor"
        for cls in type(error).__mro__
    )


#
# VolumetricSRLogic
#


class DependencyError(RuntimeError):
    """A Python package the module needs is missing and could not be installed."""


class VolumetricSRLogic(ScriptedLoadableModuleLogic):
    """Super-resolution of volume nodes and the thick / thin review, without any dialog.

    From the Python console or a batch script:
        logic = VolumetricSR.VolumetricSRLogic()
        result = logic.process(slicer.util.getNode("CT"))
        slicer.util.saveNode(result.output, "/data/CT_thin.nrrd")
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._loadedModel = None

    def getParameterNode(self):
        return VolumetricSRParameterNode(super().getParameterNode())

    @staticmethod
    def missingPythonPackages() -> list:
        """Requirements (torch and the rest) that are not installed at a suitable version."""
        from packaging.requirements import Requirement

        missing = []
        for text in (TORCH_REQUIREMENT, *PYTHON_REQUIREMENTS):
            requirement = Requirement(text)
            try:
                installed = importlib.metadata.version(requirement.name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(text)
                continue
            if not requirement.specifier.contains(installed, prereleases=True):
                missing.append(text)
        return missing

    def installPythonPackages(self) -> None:
        """Install the missing packages: torch with the PyTorch extension, the others with pip. Ask first."""
        missing = self.missingPythonPackages()
        if TORCH_REQUIREMENT in missing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError as error:
                raise DependencyError(
                    _(
                        "The PyTorch extension is not installed: install 'PyTorch' with the Extensions "
                        "Manager, restart Slicer, then apply again."
                    )
                ) from error
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT[len("torch") :]
            )
            if torch is None:
                raise DependencyError(_("PyTorch was not installed."))
        others = [text for text in missing if text != TORCH_REQUIREMENT]
        if others:
            try:
                from slicer.packaging import pip_ensure  # Slicer 5.11 and later
            except ImportError:
                slicer.util.pip_install(" ".join(others))
            else:
                pip_ensure(others, prompt_install=False, requester="VolumetricSR")
        still = self.missingPythonPackages()
        if still:
            raise DependencyError(
                _("These packages are still missing: {packages}").format(packages=", ".join(still))
            )

    def deviceDescription(self) -> str:
        """Which GPU was found (or why none can be used), or that PyTorch is not installed yet."""
        if TORCH_REQUIREMENT in self.missingPythonPackages():
            return _("PyTorch is not installed yet: it will be offered on Apply.")
        import torch

        from VolumetricSRLib.device import DeviceError, describe_device, resolve_device

        try:
            gpu = describe_device(resolve_device("GPU"))
        except DeviceError as error:
            return _("No usable GPU, 'auto' runs on the CPU: {reason} (PyTorch {version})").format(
                reason=error, version=torch.__version__
            )
        return _("GPU found: {gpu} (PyTorch {version})").format(gpu=gpu, version=torch.__version__)

    def modelChoices(self) -> list:
        """(label, model id) of the bundled models, the default first ("" stands for it)."""
        choices = [(_("Default bundled model"), "")]
        if self.missingPythonPackages():
            return choices
        from VolumetricSRLib.weights import bundled_models

        for card in bundled_models():
            label = card.name if card.trained else _("{name} (untrained)").format(name=card.name)
            choices.append((label, card.id))
        return choices

    def describeModel(self, model: str) -> str:
        """A line about the model (what it is, how it was trained), or why it cannot be used."""
        if self.missingPythonPackages():
            return _("The bundled models are listed once PyTorch is installed.")
        from VolumetricSRLib.weights import ModelFileError, default_model_path, read_card, resolve_card_path

        try:
            path = resolve_card_path(model) if model else default_model_path()
            if path is None:
                return _("No trained model is bundled yet: choose a model file on disk.")
            card = read_card(path)
        except ModelFileError as error:
            return str(error)
        trained = _("trained") if card.trained else _("untrained: its output is noise")
        return (
            f"{card.name} ({trained}; x{card.ratio}, {card.thick_spacing_mm} mm slices). {card.description}"
        )

    def loadModel(self, model: str | None = None, allowUntrained: bool = False):
        """(network, card) of a model file, a bundled id, or the default bundled model (None / "")."""
        from VolumetricSRLib.weights import NoModelError, default_model_path, load_model, resolve_card_path

        reference = model or default_model_path()
        if reference is None:
            raise NoModelError()
        cardPath = resolve_card_path(reference)
        key = (str(cardPath.resolve()), cardPath.stat().st_mtime_ns, allowUntrained)
        if self._loadedModel is None or self._loadedModel[0] != key:
            self._loadedModel = (key, load_model(cardPath, device="cpu", allow_untrained=allowUntrained))
        return self._loadedModel[1]

    def process(
        self,
        inputVolume,
        outputVolume=None,
        model: str | None = None,
        device: str = "auto",
        tileSize: int = 0,
        depthOverlap: int = 1,
        batchSize: int = 1,
        halfPrecision: bool = True,
        hardenTransform: bool = False,
        showReview: bool = False,
        allowUntrainedModel: bool = False,
        progressCallback: Callable[[float, str], None] | None = None,
        cancelRequested: Callable[[], bool] | None = None,
    ) -> SuperResolutionResult:
        """Super-resolve `inputVolume` into `outputVolume` (None: a new node '<input> thin').

        model: a model file (.safetensors / .json), a bundled model id, or None for the default.
        device: "auto", "GPU" or "CPU"; tileSize 0 means whole slices. An input under a linear
        transform gives an output under the same transform, or hardened into its geometry with
        hardenTransform; a non-linear transform is refused. Raises PredictionCancelled when
        cancelRequested() turns true; the scene is then unchanged.
        """
        check_input_volume(inputVolume)
        missing = self.missingPythonPackages()
        if missing:
            raise DependencyError(
                _(
                    "Missing Python packages: {packages}. Install them from the module panel (Apply asks) or "
                    "with VolumetricSRLogic().installPythonPackages()."
                ).format(packages=", ".join(missing))
            )
        from VolumetricSRLib.predictor import PredictOptions

        network, card = self.loadModel(model, allowUntrained=allowUntrainedModel)
        options = PredictOptions(
            device=device,
            tile=tileSize or None,
            depth_overlap=depthOverlap,
            batch=batchSize,
            amp=halfPrecision,
        )
        result = super_resolve_volume(
            inputVolume,
            network,
            card,
            options,
            output_node=outputVolume,
            harden_transform=hardenTransform,
            on_progress=progressCallback,
            should_cancel=cancelRequested,
            idle=slicer.app.processEvents,
        )
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
    """Runs in Slicer: a small synthetic oblique volume, a tiny untrained model, geometry and review."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_VolumetricSR_syntheticVolume()

    def test_VolumetricSR_syntheticVolume(self) -> None:
        logic = VolumetricSRLogic()
        missing = logic.missingPythonPackages()
        if missing:
            self.skipTest(f"VolumetricSR needs {', '.join(missing)}; install them from the module panel")
        self.delayDisplay("Making a synthetic thick volume and a tiny model")
        from VolumetricSRLib.geometry import thin_grid
        from VolumetricSRLib.network import TVSRN, TVSRNConfig
        from VolumetricSRLib.weights import save_model

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
        config = TVSRNConfig.tiny(ratio=5)

        self.delayDisplay("Super-resolving")
        with tempfile.TemporaryDirectory() as folder:
            card = save_model(TVSRN(config), folder, id="selftest-tiny", name="Self-test", trained=False)
            result = logic.process(
                thick,
                model=str(card),
                device="CPU",
                allowUntrainedModel=True,
                showReview=slicer.app.layoutManager() is not None,
            )

        thin = result.output
        self.assertEqual(thin.GetImageData().GetDimensions(), (20, 24, 41))
        matrix = vtk.vtkMatrix4x4()
        thin.GetIJKToRASMatrix(matrix)
        np.testing.assert_allclose(
            slicer.util.arrayFromVTKMatrix(matrix), thin_grid(ijkToRas, 9, 5).affine, atol=1e-9
        )
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(thick), voxels)
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
