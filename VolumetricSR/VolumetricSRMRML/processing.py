"""Super-resolve a volume node in a child process, then make the output node (main thread only).

The input's voxels and exact IJK-to-RAS go to a private temporary folder; the core's command line
(`volumetricsr predict ... --progress json`) runs under Slicer's own Python and reports progress;
its thin volume comes back as a node whose geometry is the one its "done" event gives (the thin
grid of the input's, at the output spacing), with the consistency check's line. Nothing in
the scene changes until the child has finished: a cancelled or failed run leaves no new node, an
existing output node untouched, and no temporary files. This module never imports torch.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk

from VolumetricSRLib.app.child_run import ChildError, ChildRun, core_command, slicer_python
from VolumetricSRLib.app.events import Devices, Done, Event, Fallback, Progress, Warned
from VolumetricSRLib.geometry import SpacingWarning, slice_spacing, thick_axis, voxel_spacing
from VolumetricSRLib.inference.output_plan import plan_output
from VolumetricSRLib.io.volume_io import read_volume, write_volume
from VolumetricSRLib.models.model_cards import model_for_slices, read_card, resolve_card_path

from .volume_nodes import (
    SOURCE_NODE_KEY,
    VolumeNodeError,
    check_input_volume,
    check_output_volume,
    copy_window_level,
    mark_synthetic_for_dicom_export,
    parent_transform_kind,
    place_beside,
    set_provenance,
    synthetic_name,
    unique_output_name,
    volume_array,
    volume_geometry,
    write_thin_volume,
)

POLL_SECONDS = 0.02
DEVICE_QUERY_SECONDS = 120.0
REMOVE_SECONDS = 3.0
"""Seconds the temporary folder's removal is retried (Windows: a killed child's files stay locked)."""
SPACE_MARGIN = 1.2
"""Free space the temporary folder needs, as a multiple of the input and output files' expected size."""

log = logging.getLogger("VolumetricSR")


class SuperResolutionCancelled(Exception):
    """The run was cancelled: the child is gone, its files removed, the scene unchanged."""


@dataclass(frozen=True)
class RunSettings:
    """What the child is asked to do: the `volumetricsr predict` options. None is "not set" (the
    command line's default) for the model, tile, batch and spacing; `check` validates the settings for
    an input before any process starts, `arguments` turns them into the child's command line."""

    model: str | None = None
    device: str = "auto"
    tile: int | None = None
    depth_overlap: int = 1
    batch: int | None = None
    amp: bool = True
    allow_untrained: bool = False
    spacing_mm: float | None = None
    enforce_consistency: bool = False
    adapt: bool = False

    @classmethod
    def from_panel(cls, panel: object, model: str | None) -> RunSettings:
        """The settings of the module's parameter node (its 0 means "not set"; `model` "" or None is
        the bundled model for the input's slice thickness)."""
        return cls(
            model=model or None,
            device=panel.device,
            tile=panel.tileSize or None,
            depth_overlap=panel.depthOverlap,
            batch=panel.batchSize or None,
            amp=panel.halfPrecision,
            spacing_mm=panel.outputSpacing or None,
            enforce_consistency=panel.enforceConsistency,
            adapt=panel.adaptToScan,
        )

    def arguments(self) -> list[str]:
        """The predict options on the command line."""
        arguments = ["--device", {"gpu": "cuda"}.get(self.device.lower(), self.device.lower())]
        arguments += ["--depth-overlap", str(self.depth_overlap)]
        if self.model:
            arguments += ["--model", str(self.model)]
        if self.tile:
            arguments += ["--tile", str(self.tile)]
        if self.batch:
            arguments += ["--batch", str(self.batch)]
        if not self.amp:
            arguments.append("--no-amp")
        if self.allow_untrained:
            arguments.append("--allow-untrained")
        if self.spacing_mm:
            arguments += ["--spacing", repr(float(self.spacing_mm))]
        if self.enforce_consistency:
            arguments.append("--enforce-consistency")
        if self.adapt:
            arguments.append("--adapt")
        return arguments

    def check(self, affine: np.ndarray, shape: tuple[int, int, int]) -> int:
        """Refuse, before any process starts, what the child would refuse about the output (a spacing
        not finer than the input's, consistency that cannot be enforced), in the command line's words;
        the number of output voxels to expect. GeometryError, InputError or ModelFileError."""
        axis, input_mm = thick_axis(affine), slice_spacing(affine)
        if self.model:
            card_path = resolve_card_path(self.model)
        else:
            card_path = model_for_slices(input_mm, self.spacing_mm)
        if card_path is None:  # no model at all: the child says so
            return int(np.prod(shape))
        card = read_card(card_path)
        with warnings.catch_warnings():  # the child reports interpolated slices itself
            warnings.simplefilter("ignore", SpacingWarning)
            target = plan_output(shape[axis], input_mm, card, self.spacing_mm, self.enforce_consistency)
        out_mm = target or input_mm / card.ratio
        return int(np.prod(shape) // shape[axis] * (round((shape[axis] - 1) * input_mm / out_mm) + 1))


@dataclass(frozen=True)
class SuperResolutionResult:
    """The thin node and a record of how it was made."""

    output: slicer.vtkMRMLScalarVolumeNode
    created: bool
    slices: int
    spacing_mm: tuple[float, float, float]  # in-plane, in-plane, between slices
    seconds: float
    device: str
    fallbacks: tuple[str, ...]
    warnings: tuple[str, ...]
    consistency: str | None = None

    def summary(self) -> str:
        """One status line, e.g. '321 slices of 1 mm (0.78 x 0.78 mm in-plane) in 12.3 s on cpu;
        consistency with the measured slices: ...'."""
        i, j, k = self.spacing_mm
        notes = "".join(f"; {note}" for note in (*self.fallbacks, *self.warnings, self.consistency) if note)
        return (
            f"{self.output.GetName()}: {self.slices} slices of {k:.3g} mm ({i:.3g} x {j:.3g} mm in-plane) "
            f"in {self.seconds:.1f} s on {self.device}{notes}"
        )


class SuperResolutionJob:
    """One run: started by the constructor, advanced by `poll()`, stopped at once by `cancel()`.

    `python` is the interpreter of the child (default: Slicer's PythonSlicer). An input under a
    linear transform gives an output under the same transform, or with the transform folded into
    its geometry when `harden_transform`; the input itself is never modified.
    """

    def __init__(
        self,
        input_node: slicer.vtkMRMLScalarVolumeNode,
        settings: RunSettings,
        *,
        output_node: slicer.vtkMRMLScalarVolumeNode | None = None,
        harden_transform: bool = False,
        python: str | None = None,
    ) -> None:
        check_input_volume(input_node)
        if input_node.GetScene() is None:
            raise VolumeNodeError(f"{input_node.GetName()} is not in a scene: add it to the scene first")
        check_output_volume(input_node, output_node)
        self._input, self._output = input_node, output_node
        self._transform_kind = parent_transform_kind(input_node)
        self._harden = harden_transform
        self._affine = volume_geometry(input_node, harden_transform)
        voxels = volume_array(input_node)
        output_voxels = settings.check(self._affine, voxels.shape)
        self.warnings: list[str] = []
        self.fallbacks: list[str] = []
        self._done: Done | None = None
        self._run: ChildRun | None = None
        self._removed: str | None = None
        interpreter = child_python(python)
        parent = temporary_parent()
        check_free_space(parent, SPACE_MARGIN * (voxels.nbytes + 2 * output_voxels))
        self.folder = Path(tempfile.mkdtemp(prefix="VolumetricSR-", dir=parent))
        self._scene = input_node.GetScene()
        self._observer = self._scene.AddObserver(slicer.vtkMRMLScene.NodeRemovedEvent, self._on_node_removed)
        try:
            thick, self._thin_path = self.folder / "thick.nrrd", self.folder / "thin.nrrd"
            write_volume(thick, voxels, self._affine, compress=False)
            del voxels
            arguments = ["predict", thick, self._thin_path, "--progress", "json", "--no-compress"]
            arguments += settings.arguments()
            self._run = ChildRun(core_command(interpreter, arguments), log=log)
        except BaseException:
            self._stop_observing()
            self._remove_folder()
            raise

    @property
    def child(self) -> ChildRun:
        """The child process of this job."""
        return self._run

    def poll(self, on_progress: Callable[[float, str], None] | None = None) -> SuperResolutionResult | None:
        """Forward the child's progress; the result once it has finished, else None.

        Raises ChildError with the child's one-line message when it failed (out of memory, a
        missing model, bad input), SuperResolutionCancelled when the input or output node left the
        scene (the child was killed at once); the temporary folder is gone by then.
        """
        if self._removed is not None:
            raise SuperResolutionCancelled(
                f"the {self._removed} volume was removed from the scene, so super-resolution was cancelled; "
                "nothing was added"
            )
        finished = self._run.finished
        for event in self._run.poll():
            self._take(event, on_progress)
        if not finished:
            return None
        try:
            if self._run.returncode != 0 or self._done is None:
                raise ChildError(self._run.failure(), details=self._run.last_lines())
            return self._finish()
        finally:
            self._stop_observing()
            self._remove_folder()

    def cancel(self) -> None:
        """Kill the child's whole process tree and remove the temporary folder."""
        self._stop_observing()
        if self._run is not None:
            self._run.kill()
        self._remove_folder()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _on_node_removed(self, _scene, _event, node) -> None:
        """The input or the output node left the scene: its result has nowhere to go, stop now."""
        for which, watched in (("input", self._input), ("output", self._output)):
            if watched is not None and node is watched and self._removed is None:
                self._removed = which
                self.cancel()

    def _stop_observing(self) -> None:
        if self._observer is not None:
            self._scene.RemoveObserver(self._observer)
            self._observer = None

    def _take(self, event: Event, on_progress: Callable[[float, str], None] | None) -> None:
        if isinstance(event, Progress) and on_progress is not None:
            on_progress(float(event.fraction), event.message)
        elif isinstance(event, Warned):
            self.warnings.append(event.message)
            log.warning(event.message)
        elif isinstance(event, Fallback):
            self.fallbacks.append(event.message)
            log.warning(event.message)
            if on_progress is not None:
                on_progress(0.0, event.message)
        elif isinstance(event, Done):
            self._done = event

    def _finish(self) -> SuperResolutionResult:
        done = self._done
        scene = self._input.GetScene()
        if scene is None:
            raise VolumeNodeError("the input volume left the scene while it was being super-resolved")
        if self._output is not None and self._output.GetScene() is None:
            raise VolumeNodeError("the output volume left the scene while the input was being super-resolved")
        thin = read_volume(self._thin_path).array
        affine = np.array(done.affine, dtype=np.float64)
        if list(thin.shape[::-1]) != list(done.shape):
            raise ChildError(f"the child wrote {thin.shape[::-1]} voxels where it reported {done.shape}")
        created = self._output is None
        output = write_thin_volume(
            scene,
            thin,
            affine,
            name=unique_output_name(scene, self._input) if created else self._output.GetName(),
            node=self._output,
        )
        if not created:  # the user's node says what it now holds
            output.SetName(synthetic_name(output.GetName()))
        keeps_transform = self._transform_kind == "linear" and not self._harden
        output.SetAndObserveTransformNodeID(self._input.GetTransformNodeID() if keeps_transform else None)
        copy_window_level(self._input, output)
        if created:
            place_beside(self._input, output)
        mark_synthetic_for_dicom_export(output, done.model)
        set_provenance(
            output,
            {
                SOURCE_NODE_KEY: self._input.GetID(),
                "Synthetic": "true",
                "SourceName": self._input.GetName(),
                "ModelId": done.model,
                "ModelSha256": done.model_sha256,
                "Ratio": done.ratio,
                "Device": done.device,
                "Seconds": f"{done.seconds:.2f}",
            },
        )
        axis = int(done.slice_axis)
        spacing = voxel_spacing(affine)
        in_plane = [float(spacing[column]) for column in range(3) if column != 2 - axis]
        return SuperResolutionResult(
            output=output,
            created=created,
            slices=int(thin.shape[axis]),
            spacing_mm=(*in_plane, float(spacing[2 - axis])),
            seconds=float(done.seconds),
            device=str(done.device),
            fallbacks=tuple(self.fallbacks),
            warnings=tuple(self.warnings),
            consistency=done.consistency_line,
        )

    def _remove_folder(self) -> None:
        remove_folder(self.folder)


def temporary_parent() -> Path:
    """Slicer's temporary folder (Application Settings), else the system's."""
    app = getattr(slicer, "app", None)
    configured = getattr(app, "temporaryPath", None) if app is not None else None
    return Path(configured) if configured else Path(tempfile.gettempdir())


def check_free_space(folder: Path, needed_bytes: float) -> None:
    """VolumeNodeError naming the folder when it has less free space than a run's files need."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise VolumeNodeError(
            f"the temporary folder {folder} has {free / 2**30:.2f} GiB free, but this run's files need about "
            f"{needed_bytes / 2**30:.2f} GiB; free some space or choose another temporary folder "
            "(Edit > Application Settings > General > Temporary directory)"
        )


def remove_folder(folder: Path, seconds: float = REMOVE_SECONDS) -> None:
    """Remove a run's temporary folder, retrying while a killed child's files are still locked
    (Windows); what cannot be removed is logged by name, never left silently."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            shutil.rmtree(folder)
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if time.monotonic() >= deadline:
                left = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
                log.warning(f"could not remove the temporary folder {folder} ({error}); left there: {left}")
                return
            time.sleep(0.1)


def super_resolve_volume(
    input_node: slicer.vtkMRMLScalarVolumeNode,
    settings: RunSettings,
    *,
    output_node: slicer.vtkMRMLScalarVolumeNode | None = None,
    harden_transform: bool = False,
    on_progress: Callable[[float, str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    idle: Callable[[], None] | None = None,
    python: str | None = None,
) -> SuperResolutionResult:
    """Run a SuperResolutionJob to its end on this thread (for scripts and tests).

    `idle()` runs between polls (Slicer: process GUI events); when `should_cancel()` turns true
    the child is killed and SuperResolutionCancelled is raised.
    """
    job = SuperResolutionJob(
        input_node, settings, output_node=output_node, harden_transform=harden_transform, python=python
    )
    return run_to_end(job, on_progress, should_cancel, idle)


def run_to_end(
    job: SuperResolutionJob,
    on_progress: Callable[[float, str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    idle: Callable[[], None] | None = None,
) -> SuperResolutionResult:
    """Poll a started job on this thread until it has its result; any error or a cancel kills it."""
    try:
        while True:
            result = job.poll(on_progress)
            if result is not None:
                return result
            if should_cancel is not None and should_cancel():
                raise SuperResolutionCancelled("super-resolution was cancelled; the scene is unchanged")
            if idle is not None:
                idle()
            time.sleep(POLL_SECONDS)
    except BaseException:
        job.cancel()
        raise


def child_python(python: str | None = None) -> str:
    """`python`, else Slicer's PythonSlicer; ChildError when there is none."""
    interpreter = python or slicer_python()
    if interpreter is None:
        raise ChildError("Slicer's Python (PythonSlicer) was not found beside Slicer; reinstall Slicer")
    return interpreter


def start_device_query(python: str | None = None) -> ChildRun:
    """Start `volumetricsr devices --json` in a child process; read it with device_answer."""
    return ChildRun(core_command(child_python(python), ["devices", "--json"]))


def device_answer(run: ChildRun) -> Devices:
    """The answer of a finished device query; ChildError if there is none."""
    events = [event for event in run.poll() if isinstance(event, Devices)]
    if run.returncode != 0 or not events:
        raise ChildError(run.failure())
    return events[-1]


def query_devices(python: str | None = None, timeout: float = DEVICE_QUERY_SECONDS) -> Devices:
    """What `volumetricsr devices --json` says in a child process, waited for here."""
    run = start_device_query(python)
    try:
        run.wait(timeout)
    except Exception:
        run.kill()
        raise ChildError("the device check did not answer in time") from None
    return device_answer(run)
