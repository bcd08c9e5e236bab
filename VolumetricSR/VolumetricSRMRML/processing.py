"""Super-resolve a volume node: checks, the worker thread, then the output node (main thread only).

Nothing in the scene changes until the worker has finished: a cancelled or failed run leaves
no new node and an existing output node untouched.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import slicer

from VolumetricSRLib.geometry import SpacingWarning, check_slice_spacing, voxel_spacing
from VolumetricSRLib.intensity import to_int16_hu

from .inference_worker import InferenceWorker
from .volume_nodes import (
    SOURCE_NODE_KEY,
    VolumeNodeError,
    check_input_volume,
    check_output_volume,
    copy_window_level,
    parent_transform_kind,
    place_beside,
    set_provenance,
    unique_output_name,
    volume_array,
    volume_geometry,
    write_thin_volume,
)


@dataclass(frozen=True)
class SuperResolutionResult:
    """The thin node and a record of how it was made."""

    output: slicer.vtkMRMLScalarVolumeNode
    created: bool
    slices: int
    spacing_mm: tuple[float, float, float]
    seconds: float
    device: str
    fallbacks: tuple[str, ...]
    warnings: tuple[str, ...]

    def summary(self) -> str:
        """One status line, e.g. '321 slices of 1 mm (0.78 x 0.78 mm in-plane) in 12.3 s on cpu'."""
        i, j, k = self.spacing_mm
        notes = "".join(f"; {note}" for note in (*self.fallbacks, *self.warnings))
        return (
            f"{self.output.GetName()}: {self.slices} slices of {k:.3g} mm ({i:.3g} x {j:.3g} mm in-plane) "
            f"in {self.seconds:.1f} s on {self.device}{notes}"
        )


def super_resolve_volume(
    input_node: slicer.vtkMRMLScalarVolumeNode,
    model: Any,
    card: Any,
    options: Any,
    *,
    output_node: slicer.vtkMRMLScalarVolumeNode | None = None,
    harden_transform: bool = False,
    on_progress: Callable[[float, str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    idle: Callable[[], None] | None = None,
) -> SuperResolutionResult:
    """Thick node -> thin node (new, named '<input> thin', unless `output_node` is given).

    `card` is the model's ModelCard (ratio, window, thick spacing, id, sha256). An input under a
    linear transform gives an output under the same transform, or with the transform folded into
    its geometry when `harden_transform`; the input itself is never modified.
    `idle()` runs on this thread while the worker computes (Slicer: process GUI events).
    """
    check_input_volume(input_node)
    check_output_volume(input_node, output_node)
    transform_kind = parent_transform_kind(input_node)
    affine = volume_geometry(input_node, harden_transform)
    spacing_notes = _spacing_warnings(affine, card)
    worker = InferenceWorker(model, volume_array(input_node), affine, options, window=card.window)
    outcome = worker.run_until_done(on_progress, should_cancel, idle)

    scene = input_node.GetScene()
    if scene is None:
        raise VolumeNodeError("the input volume left the scene while it was being super-resolved")
    if output_node is not None and output_node.GetScene() is None:
        raise VolumeNodeError("the output volume left the scene while the input was being super-resolved")
    created = output_node is None
    thin = to_int16_hu(outcome.thin_hu)
    output = write_thin_volume(
        scene,
        thin,
        outcome.thin_affine,
        name=unique_output_name(scene, input_node) if created else output_node.GetName(),
        node=output_node,
    )
    keeps_transform = transform_kind == "linear" and not harden_transform
    output.SetAndObserveTransformNodeID(input_node.GetTransformNodeID() if keeps_transform else None)
    copy_window_level(input_node, output)
    if created:
        place_beside(input_node, output)
    set_provenance(
        output,
        {
            SOURCE_NODE_KEY: input_node.GetID(),
            "SourceName": input_node.GetName(),
            "ModelId": card.id,
            "ModelSha256": card.sha256,
            "Ratio": card.ratio,
            "Device": outcome.device,
            "Seconds": f"{outcome.seconds:.2f}",
        },
    )
    spacing = voxel_spacing(outcome.thin_affine)
    return SuperResolutionResult(
        output=output,
        created=created,
        slices=int(thin.shape[0]),
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        seconds=outcome.seconds,
        device=outcome.device,
        fallbacks=outcome.fallbacks,
        warnings=spacing_notes,
    )


def _spacing_warnings(affine: np.ndarray, card: Any) -> tuple[str, ...]:
    """Check the slice spacing against the model's (GeometryError when unusable); return the warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SpacingWarning)
        check_slice_spacing(float(voxel_spacing(affine)[2]), card.thick_spacing_mm, card.ratio)
    return tuple(str(item.message) for item in caught if issubclass(item.category, SpacingWarning))
