"""Scalar volume nodes <-> (array (K, J, I), IJKToRAS), and the thin output node's data, display,
subject-hierarchy place, parent transform and provenance. MRML and VTK only, never Qt.

Slicer's IJKToRAS maps (i, j, k, 1) to RAS like the core's affines, and voxel arrays are (K, J, I),
so geometry passes between the two without any reordering.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import slicer
import vtk

from VolumetricSRLib.io.volume_io import synthetic_series_description

PROVENANCE_PREFIX = "VolumetricSR."
SOURCE_NODE_KEY = "SourceNodeID"


class VolumeNodeError(ValueError):
    """The node cannot be used as it is; the message says why and what to do."""


class TransformError(VolumeNodeError):
    """The input lies under a transform that the output geometry cannot follow."""


def check_input_volume(node: slicer.vtkMRMLNode | None) -> None:
    """Refuse anything but a single-component scalar volume with image data."""
    if node is None:
        raise VolumeNodeError("no input volume is selected; select a CT volume")
    if not isinstance(node, slicer.vtkMRMLScalarVolumeNode) or isinstance(
        node, (slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLVectorVolumeNode)
    ):
        raise VolumeNodeError(
            f"{node.GetName()} is a {node.GetClassName()}, not a CT volume; select a scalar volume"
        )
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise VolumeNodeError(f"{node.GetName()} has no image data; load the volume again")
    if image.GetNumberOfScalarComponents() != 1:
        raise VolumeNodeError(
            f"{node.GetName()} has {image.GetNumberOfScalarComponents()} values per voxel; "
            "a CT volume has one (convert colour images to a scalar volume first)"
        )


def check_output_volume(input_node: slicer.vtkMRMLNode, output_node: slicer.vtkMRMLNode | None) -> None:
    """The output must be a scalar volume other than the input (None: a new node will be made)."""
    if output_node is None:
        return
    if output_node is input_node or output_node.GetID() == input_node.GetID():
        raise VolumeNodeError("the output volume is the input volume; choose 'Create new volume' as output")
    if not isinstance(output_node, slicer.vtkMRMLScalarVolumeNode) or isinstance(
        output_node, (slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLVectorVolumeNode)
    ):
        raise VolumeNodeError(
            f"the output {output_node.GetName()} is not a scalar volume; create a new volume"
        )


def parent_transform_kind(node: slicer.vtkMRMLTransformableNode) -> str:
    """'none' or 'linear'; a non-linear transform (anywhere up the chain) raises TransformError."""
    transform = node.GetParentTransformNode()
    if transform is None:
        return "none"
    if not transform.IsTransformToWorldLinear():
        raise TransformError(
            f"{node.GetName()} is under the non-linear transform {transform.GetName()}; the thin slices "
            "could not follow it. (Slicer adds such a transform to a DICOM series with uneven slice "
            "spacing or gantry tilt.) Harden the transform first (Data module: right-click the volume, "
            "'Harden transform'), which resamples the volume onto a regular grid, then apply again"
        )
    return "linear"


def volume_geometry(node: slicer.vtkMRMLVolumeNode, harden_transform: bool = False) -> np.ndarray:
    """IJKToRAS of the node; with `harden_transform`, its linear parent transform folded in (IJK -> world)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix)
    if harden_transform and parent_transform_kind(node) == "linear":
        to_world = vtk.vtkMatrix4x4()
        node.GetParentTransformNode().GetMatrixTransformToWorld(to_world)
        ijk_to_ras = slicer.util.arrayFromVTKMatrix(to_world) @ ijk_to_ras
    return ijk_to_ras


def volume_array(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """A copy of the voxels, (K, J, I): what is written for the child never shares memory with the scene."""
    return np.array(slicer.util.arrayFromVolume(node), copy=True)


def write_thin_volume(
    scene: slicer.vtkMRMLScene,
    array: np.ndarray,
    ijk_to_ras: np.ndarray,
    *,
    name: str,
    node: slicer.vtkMRMLScalarVolumeNode | None = None,
) -> slicer.vtkMRMLScalarVolumeNode:
    """Put the (K, J, I) voxels and geometry into `node`, or into a new node called `name`."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijk_to_ras, dtype=float)))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


SYNTHETIC_SUFFIX = " (synthetic)"


def unique_output_name(scene: slicer.vtkMRMLScene, input_node: slicer.vtkMRMLNode) -> str:
    """'<input> thin (synthetic)', made unique in the scene."""
    name = f"{input_node.GetName()} thin{SYNTHETIC_SUFFIX}"
    return name if scene.GetFirstNodeByName(name) is None else scene.GenerateUniqueName(name)


def synthetic_name(name: str) -> str:
    """`name` with ' (synthetic)' added unless it already says synthetic."""
    return name if "synthetic" in name.lower() else f"{name}{SYNTHETIC_SUFFIX}"


def copy_window_level(source: slicer.vtkMRMLVolumeNode, target: slicer.vtkMRMLVolumeNode) -> bool:
    """Show `target` like `source`: same window/level (fixed), colour table and interpolation."""
    source_display, target_display = source.GetDisplayNode(), target.GetDisplayNode()
    if source_display is None or target_display is None:
        return False
    target_display.SetAutoWindowLevel(False)
    target_display.SetWindowLevel(source_display.GetWindow(), source_display.GetLevel())
    if source_display.GetColorNodeID():
        target_display.SetAndObserveColorNodeID(source_display.GetColorNodeID())
    target_display.SetInterpolate(source_display.GetInterpolate())
    return True


def place_beside(source: slicer.vtkMRMLNode, target: slicer.vtkMRMLNode) -> int:
    """Put `target` in the subject-hierarchy folder of `source`; returns its item id (0: no place).

    An input outside the hierarchy (item id 0, e.g. no subject-hierarchy plugins loaded) leaves
    the output where it is.
    """
    scene = source.GetScene()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return 0
    source_item = hierarchy.GetItemByDataNode(source)
    if not source_item:
        return 0
    parent = hierarchy.GetItemParent(source_item)
    target_item = hierarchy.GetItemByDataNode(target)
    if target_item:
        hierarchy.SetItemParent(target_item, parent)
    else:
        target_item = hierarchy.CreateItem(parent, target)
    return target_item


def mark_synthetic_for_dicom_export(node: slicer.vtkMRMLNode, model_id: str) -> int:
    """Make Slicer's DICOM export of `node` say SYNTHETIC; returns its subject-hierarchy item id.

    The export dialog (qSlicerDICOMTagEditorWidget) takes a series tag from the item attribute
    'DICOM.<tag>' before the scalar-volume exporter's default ('No series description', 'Unknown
    manufacturer', ...): the item gets SeriesDescription, Manufacturer and Model (the model id).
    A node without an item (no subject-hierarchy plugins, as in slicer-core) gets one at the top.
    """
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)
    prefix = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMAttributePrefix()
    tags = {
        "SeriesDescription": synthetic_series_description(model_id),
        "Modality": "CT",
        "Manufacturer": "VolumetricSR",
        "Model": model_id,
    }
    for tag, value in tags.items():
        hierarchy.SetItemAttribute(item, prefix + tag, value)
    return item


def set_provenance(node: slicer.vtkMRMLNode, values: Mapping[str, object]) -> None:
    """Store `values` as node attributes 'VolumetricSR.<key>' (saved with the scene)."""
    for key, value in values.items():
        node.SetAttribute(PROVENANCE_PREFIX + key, str(value))


def provenance(node: slicer.vtkMRMLNode) -> dict[str, str]:
    """The 'VolumetricSR.*' attributes of a node, without the prefix."""
    return {
        name[len(PROVENANCE_PREFIX) :]: node.GetAttribute(name)
        for name in node.GetAttributeNames() or ()
        if name.startswith(PROVENANCE_PREFIX)
    }


def thin_outputs_of(
    scene: slicer.vtkMRMLScene, source: slicer.vtkMRMLNode
) -> list[slicer.vtkMRMLScalarVolumeNode]:
    """Volumes made from `source` by this module, oldest first."""
    key = PROVENANCE_PREFIX + SOURCE_NODE_KEY
    nodes = [
        scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))
    ]
    return [node for node in nodes if node.GetAttribute(key) == source.GetID()]
