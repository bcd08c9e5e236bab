"""Slicer's own DICOM export of the thin output says SYNTHETIC: the subject-hierarchy attributes its
export dialog reads (slicer-core scene, no Qt)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the MRML tests need the slicer-core wheel")
import vtk  # noqa: E402  (after the skip: vtk comes with slicer-core)

from VolumetricSRMRML.processing import RunSettings, super_resolve_volume  # noqa: E402
from VolumetricSRMRML.volume_nodes import mark_synthetic_for_dicom_export  # noqa: E402

# The series tags DICOMScalarVolumePlugin.examineForExport offers, with its defaults. The export
# dialog (qSlicerDICOMTagEditorWidget::setExportables) replaces each default by the series item's
# attribute 'DICOM.<tag>' when the item has it.
EXPORTER_DEFAULTS = {
    "SeriesDescription": "No series description",
    "Modality": "CT",
    "Manufacturer": "Unknown manufacturer",
    "Model": "Unknown model",
    "SeriesNumber": "1",
}


def exported_series_tags(hierarchy, item: int) -> dict[str, str]:
    """What the export dialog would write for the series item: its attribute, else the default."""
    prefix = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMAttributePrefix()
    return {
        tag: hierarchy.GetItemAttribute(item, prefix + tag)
        if hierarchy.HasItemAttribute(item, prefix + tag)
        else value
        for tag, value in EXPORTER_DEFAULTS.items()
    }


def volume(scene, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(12, 10, 6)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    node.SetAndObserveImageData(image)
    k, j, i = np.indices((6, 10, 12))
    slicer.util.arrayFromVolume(node)[:] = -1000 + 160 * k + 11 * j + 3 * i
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.diag([0.8, 0.8, 5.0, 1.0])))
    node.CreateDefaultDisplayNodes()
    return node


def test_the_output_item_carries_synthetic_series_tags_for_the_export_dialog() -> None:
    scene = slicer.vtkMRMLScene()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 7")
    study = hierarchy.CreateStudyItem(patient, "CT study")
    node = volume(scene, "chest thin (synthetic)")
    item = hierarchy.CreateItem(study, node)

    assert mark_synthetic_for_dicom_export(node, "tvsrn-x5-publicct") == item
    assert exported_series_tags(hierarchy, item) == {
        "SeriesDescription": "SYNTHETIC thin CT VolumetricSR tvsrn-x5-publicct",
        "Modality": "CT",
        "Manufacturer": "VolumetricSR",
        "Model": "tvsrn-x5-publicct",
        "SeriesNumber": "1",
    }
    assert hierarchy.GetItemAttributeNames(study) == ("Level",)  # no tag lands on the study
    assert hierarchy.GetItemParent(item) == study


def test_a_node_outside_the_hierarchy_gets_an_item_with_the_tags() -> None:
    scene = slicer.vtkMRMLScene()
    node = volume(scene, "loose")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert hierarchy.GetItemByDataNode(node) == 0  # slicer-core creates no items by itself
    item = mark_synthetic_for_dicom_export(node, "m")
    assert item == hierarchy.GetItemByDataNode(node) != 0
    assert exported_series_tags(hierarchy, item)["SeriesDescription"] == "SYNTHETIC thin CT VolumetricSR m"


def test_super_resolved_output_is_marked_for_dicom_export(linear_model_card: Path) -> None:
    scene = slicer.vtkMRMLScene()
    slicer.vtkSlicerColorLogic().SetMRMLScene(scene)
    thick = volume(scene, "chest")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "P"), "S")
    hierarchy.CreateItem(study, thick)
    settings = RunSettings(model=str(linear_model_card), device="cpu", allow_untrained=True)
    thin = super_resolve_volume(thick, settings, python=sys.executable).output
    item = hierarchy.GetItemByDataNode(thin)
    assert hierarchy.GetItemParent(item) == study
    tags = exported_series_tags(hierarchy, item)
    assert tags["SeriesDescription"] == "SYNTHETIC thin CT VolumetricSR linear-stand-in"
    assert tags["Model"] == "linear-stand-in"
