"""The MRML adapter on a real MRML scene (slicer-core): output geometry, files, display, place, transforms."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

slicer = pytest.importorskip("slicer", reason="the MRML tests need the slicer-core wheel")
import vtk  # noqa: E402  (after the skip: vtk comes with slicer-core)

from conftest import GatedModel, tiny_tvsrn  # noqa: E402
from VolumetricSRLib.geometry import GeometryError, thin_grid  # noqa: E402
from VolumetricSRLib.network import TVSRNConfig, depth_interpolation_matrix  # noqa: E402
from VolumetricSRLib.predictor import PredictionCancelled, PredictOptions  # noqa: E402
from VolumetricSRLib.weights import ModelCard  # noqa: E402
from VolumetricSRMRML.processing import super_resolve_volume  # noqa: E402
from VolumetricSRMRML.volume_nodes import (  # noqa: E402
    TransformError,
    VolumeNodeError,
    check_input_volume,
    copy_window_level,
    parent_transform_kind,
    place_beside,
    provenance,
    thin_outputs_of,
    unique_output_name,
    volume_geometry,
    write_thin_volume,
)

RATIO = 5
CPU = PredictOptions(device="cpu")


class LinearStandIn(nn.Module):
    """Stands in for the network: thin slices by linear interpolation, so every voxel is known."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(depth=4, ratio=RATIO)
        self.register_buffer("matrix", depth_interpolation_matrix(4, RATIO))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("td,bdhw->bthw", self.matrix, x)


def card_for(model_id: str = "linear-stand-in", thick_spacing_mm: float | None = 5.0) -> ModelCard:
    config = TVSRNConfig(ratio=RATIO)
    return ModelCard(
        id=model_id,
        name="stand-in",
        description="",
        architecture=config.to_dict(),
        ratio=RATIO,
        thick_spacing_mm=thick_spacing_mm,
        thin_spacing_mm=None if thick_spacing_mm is None else thick_spacing_mm / RATIO,
        intensity_window=[-1024.0, 2048.0],
        trained=False,
        sha256="0" * 64,
    )


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    x = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(degrees)
    return np.eye(3) + np.sin(angle) * x + (1 - np.cos(angle)) * x @ x


def affine(directions: np.ndarray, spacing: tuple[float, float, float], origin: tuple[float, float, float]):
    matrix = np.eye(4)
    matrix[:3, :3] = directions @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


OBLIQUE = affine(rotation([1.0, 2.0, 0.5], 27.0), (0.7, 0.8, 5.0), (-41.5, 12.25, 103.0))
FLIPPED = affine(np.diag([-1.0, -1.0, -1.0]), (0.75, 0.75, 5.0), (96.0, 120.0, 80.0))  # LPS-like, k descends
AXIAL = affine(np.eye(3), (0.8, 0.8, 5.0), (0.0, 0.0, 0.0))


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLScene(scene)  # the Grey table that volume display nodes use
    return scene


def ct_voxels(shape: tuple[int, int, int] = (6, 10, 12)) -> np.ndarray:
    """Distinct HU values in [-1000, 1000]: any flip or shift of an axis changes them."""
    k, j, i = np.indices(shape)
    return (-1000 + 160 * k + 11 * j + 3 * i).astype(np.int16)


def add_volume(scene, voxels: np.ndarray, ijk_to_ras: np.ndarray, name: str = "thick CT"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(voxels.shape[2], voxels.shape[1], voxels.shape[0])
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    node.SetAndObserveImageData(image)
    slicer.util.arrayFromVolume(node)[:] = voxels  # arrays are (K, J, I)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_count(scene) -> int:
    return scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")


@pytest.mark.parametrize("geometry", [OBLIQUE, FLIPPED, AXIAL], ids=["oblique", "flipped", "axial"])
def test_output_node_geometry_follows_the_thin_grid_rule(scene, geometry):
    voxels = ct_voxels()
    thick = add_volume(scene, voxels, geometry)
    result = super_resolve_volume(thick, LinearStandIn(), card_for(), CPU)
    thin = result.output
    out = ijk_to_ras(thin)

    np.testing.assert_allclose(out, thin_grid(geometry, voxels.shape[0], RATIO).affine, atol=1e-9)
    np.testing.assert_allclose(out[:, 3], geometry[:, 3], atol=1e-9)  # same origin
    np.testing.assert_allclose(out[:3, :2], geometry[:3, :2], atol=1e-12)  # in-plane untouched
    np.testing.assert_allclose(out[:3, 2], geometry[:3, 2] / RATIO, atol=1e-12)
    thin_voxels = slicer.util.arrayFromVolume(thin)
    assert thin_voxels.shape == ((voxels.shape[0] - 1) * RATIO + 1, *voxels.shape[1:])
    for k in range(voxels.shape[0]):
        # thin voxel (i, j, r k) sits where thick voxel (i, j, k) sits and holds its value
        np.testing.assert_allclose(out @ [3, 4, RATIO * k, 1], geometry @ [3, 4, k, 1], atol=1e-9)
        np.testing.assert_array_equal(thin_voxels[RATIO * k], voxels[k])
    between = (3 * voxels[1].astype(float) + 2 * voxels[2]) / RATIO
    np.testing.assert_allclose(thin_voxels[RATIO + 2], between, atol=1)
    assert result.slices == thin_voxels.shape[0]
    assert result.spacing_mm[2] == pytest.approx(1.0)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(thick), voxels)  # input untouched
    np.testing.assert_allclose(ijk_to_ras(thick), geometry)


@pytest.mark.parametrize("extension", [".nrrd", ".nii.gz"])
def test_thin_node_round_trips_through_the_storage_node(scene, tmp_path, extension):
    thick = add_volume(scene, ct_voxels(), OBLIQUE)
    thin = super_resolve_volume(thick, LinearStandIn(), card_for(), CPU).output
    path = tmp_path / f"thin{extension}"
    writer = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    writer.SetFileName(str(path))
    assert writer.WriteData(thin) == 1

    reread = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "reread")
    reader = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    reader.SetFileName(str(path))
    assert reader.ReadData(reread) == 1
    np.testing.assert_allclose(ijk_to_ras(reread), ijk_to_ras(thin), atol=1e-5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(reread), slicer.util.arrayFromVolume(thin))


def test_window_level_colour_and_interpolation_are_copied(scene):
    thick = add_volume(scene, ct_voxels(), AXIAL)
    display = thick.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(1500.0, -600.0)
    display.SetInterpolate(0)
    thin = super_resolve_volume(thick, LinearStandIn(), card_for(), CPU).output
    copied = thin.GetDisplayNode()
    assert (copied.GetWindow(), copied.GetLevel()) == (1500.0, -600.0)
    assert not copied.GetAutoWindowLevel()
    assert copied.GetColorNodeID() == display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    assert copied.GetInterpolate() == 0


def test_copy_window_level_needs_display_nodes(scene):
    thick = add_volume(scene, ct_voxels(), AXIAL)
    bare = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "bare")
    assert copy_window_level(thick, bare) is False
    assert copy_window_level(bare, thick) is False


def test_new_output_sits_in_the_input_folder_with_provenance(scene):
    thick = add_volume(scene, ct_voxels(), AXIAL, name="chest")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "Patient 7 / CT study")
    hierarchy.CreateItem(study, thick)
    card = card_for("tvsrn-x5")
    result = super_resolve_volume(thick, LinearStandIn(), card, CPU)
    thin = result.output

    assert thin.GetName() == "chest thin"
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(thin)) == study
    record = provenance(thin)
    assert record["SourceNodeID"] == thick.GetID()
    assert record["SourceName"] == "chest"
    assert record["ModelId"] == "tvsrn-x5"
    assert record["ModelSha256"] == card.sha256
    assert record["Ratio"] == "5"
    assert record["Device"].startswith("cpu")
    assert float(record["Seconds"]) == pytest.approx(result.seconds, abs=0.01)
    assert thin_outputs_of(scene, thick) == [thin]
    assert "chest thin: 26 slices of 1 mm (0.8 x 0.8 mm in-plane)" in result.summary()


def test_input_outside_the_hierarchy_is_tolerated(scene):
    thick = add_volume(scene, ct_voxels(), AXIAL)
    thin = add_volume(scene, ct_voxels(), AXIAL, name="other")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert hierarchy.GetItemByDataNode(thick) == 0  # slicer-core creates no items by itself
    assert place_beside(thick, thin) == 0
    assert hierarchy.GetItemByDataNode(thin) == 0


def test_existing_output_item_is_moved_next_to_the_input(scene):
    thick = add_volume(scene, ct_voxels(), AXIAL)
    other = add_volume(scene, ct_voxels(), AXIAL, name="other")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "study")
    hierarchy.CreateItem(study, thick)
    elsewhere = hierarchy.CreateItem(hierarchy.GetSceneItemID(), other)
    assert place_beside(thick, other) == elsewhere
    assert hierarchy.GetItemParent(elsewhere) == study


def test_existing_output_node_is_updated_in_place(scene):
    thick = add_volume(scene, ct_voxels(), AXIAL)
    target = add_volume(scene, np.zeros((2, 3, 4), np.int16), FLIPPED, name="my output")
    before = volume_count(scene)
    result = super_resolve_volume(thick, LinearStandIn(), card_for(), CPU, output_node=target)
    assert result.output is target and not result.created
    assert volume_count(scene) == before
    assert target.GetName() == "my output"
    assert slicer.util.arrayFromVolume(target).shape == (26, 10, 12)
    np.testing.assert_allclose(ijk_to_ras(target), thin_grid(AXIAL, 6, RATIO).affine)


def test_unique_output_names(scene):
    thick = add_volume(scene, ct_voxels(), AXIAL, name="CT")
    assert unique_output_name(scene, thick) == "CT thin"
    first = super_resolve_volume(thick, LinearStandIn(), card_for(), CPU).output
    second = super_resolve_volume(thick, LinearStandIn(), card_for(), CPU).output
    assert first.GetName() == "CT thin"
    assert second.GetName() not in ("CT thin", "CT")
    assert second.GetName().startswith("CT thin")
    assert thin_outputs_of(scene, thick) == [first, second]


def test_non_linear_transforms_are_refused_and_nothing_is_added(scene):
    thick = add_volume(scene, ct_voxels(), AXIAL)
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    thin_plate = vtk.vtkThinPlateSplineTransform()
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    for point in [(0, 0, 0), (50, 0, 0), (0, 50, 0), (0, 0, 50)]:
        source.InsertNextPoint(point)
        target.InsertNextPoint(point[0] + 2.0, point[1], point[2] - 1.0)
    thin_plate.SetSourceLandmarks(source)
    thin_plate.SetTargetLandmarks(target)
    thin_plate.SetBasisToR()
    spline = scene.AddNewNodeByClass("vtkMRMLTransformNode", "spline")
    spline.SetAndObserveTransformToParent(thin_plate)
    linear_under_grid = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "linear under warp")
    linear_under_grid.SetAndObserveTransformNodeID(grid.GetID())
    before = volume_count(scene)
    for transform in (grid, spline, linear_under_grid):
        thick.SetAndObserveTransformNodeID(transform.GetID())
        with pytest.raises(TransformError, match=f"non-linear transform {transform.GetName()}.*Harden"):
            super_resolve_volume(thick, LinearStandIn(), card_for(), CPU)
        assert volume_count(scene) == before


def test_linear_transform_output_keeps_it_or_hardens_it(scene):
    thick = add_volume(scene, ct_voxels(), OBLIQUE)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    to_parent = affine(rotation([0.0, 0.0, 1.0], 10.0), (1.0, 1.0, 1.0), (5.0, -3.0, 12.0))
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    thick.SetAndObserveTransformNodeID(transform.GetID())
    assert parent_transform_kind(thick) == "linear"
    np.testing.assert_allclose(volume_geometry(thick, harden_transform=True), to_parent @ OBLIQUE, atol=1e-9)

    kept = super_resolve_volume(thick, LinearStandIn(), card_for(), CPU).output
    assert kept.GetTransformNodeID() == transform.GetID()
    np.testing.assert_allclose(ijk_to_ras(kept), thin_grid(OBLIQUE, 6, RATIO).affine, atol=1e-9)

    hardened = super_resolve_volume(thick, LinearStandIn(), card_for(), CPU, harden_transform=True).output
    assert hardened.GetTransformNodeID() is None
    np.testing.assert_allclose(
        ijk_to_ras(hardened), thin_grid(to_parent @ OBLIQUE, 6, RATIO).affine, atol=1e-9
    )

    assert thick.GetTransformNodeID() == transform.GetID()  # the input keeps its transform
    np.testing.assert_allclose(ijk_to_ras(thick), OBLIQUE)


def test_inputs_that_are_not_ct_volumes_are_refused(scene):
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    vectors = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    with pytest.raises(VolumeNodeError, match="no input volume"):
        check_input_volume(None)
    with pytest.raises(VolumeNodeError, match="labels is a vtkMRMLLabelMapVolumeNode"):
        check_input_volume(labels)
    with pytest.raises(VolumeNodeError, match="rgb is a vtkMRMLVectorVolumeNode"):
        check_input_volume(vectors)
    with pytest.raises(VolumeNodeError, match="empty has no image data"):
        check_input_volume(empty)
    thick = add_volume(scene, ct_voxels(), AXIAL)
    with pytest.raises(VolumeNodeError, match="output volume is the input volume"):
        super_resolve_volume(thick, LinearStandIn(), card_for(), CPU, output_node=thick)
    with pytest.raises(VolumeNodeError, match="output labels is not a scalar volume"):
        super_resolve_volume(thick, LinearStandIn(), card_for(), CPU, output_node=labels)


def test_slices_already_thin_are_refused_and_far_spacing_is_reported(scene):
    thin_input = add_volume(scene, ct_voxels(), affine(np.eye(3), (0.8, 0.8, 1.0), (0, 0, 0)))
    before = volume_count(scene)
    with pytest.raises(GeometryError, match="already as thin"):
        super_resolve_volume(thin_input, LinearStandIn(), card_for(), CPU)
    assert volume_count(scene) == before
    far = add_volume(scene, ct_voxels(), affine(np.eye(3), (0.8, 0.8, 12.0), (0, 0, 0)), name="far")
    result = super_resolve_volume(far, LinearStandIn(), card_for(), CPU)
    assert len(result.warnings) == 1 and "trained on 5 mm slices" in result.warnings[0]
    assert result.warnings[0] in result.summary()


class CancelDuringFirstBatch:
    """should_cancel / idle for the polling loop: ask to cancel while the first batch runs, then let
    that batch finish (idle runs after the cancel request has reached the worker)."""

    def __init__(self, model: GatedModel) -> None:
        self.model, self.asked = model, False

    def should_cancel(self) -> bool:
        self.asked = self.model.calls > 0
        return self.asked

    def idle(self) -> None:
        if self.asked:
            self.model.gate.set()


def test_cancel_leaves_the_scene_as_it_was(scene):
    thick = add_volume(scene, ct_voxels((12, 16, 16)), AXIAL)
    existing = add_volume(scene, np.full((2, 3, 4), 7, np.int16), FLIPPED, name="previous result")
    nodes_before = scene.GetNumberOfNodes()
    for output in (None, existing):
        model, progress = GatedModel(tiny_tvsrn(ratio=RATIO)), []
        canceller = CancelDuringFirstBatch(model)
        with pytest.raises(PredictionCancelled):
            super_resolve_volume(
                thick,
                model,
                card_for(),
                PredictOptions(device="cpu", batch=1),
                output_node=output,
                on_progress=lambda fraction, message, progress=progress: progress.append(fraction),
                should_cancel=canceller.should_cancel,
                idle=canceller.idle,
            )
        assert model.calls == 1  # stopped before the second of its four windows
        assert progress == [0.0, 0.25]
        assert scene.GetNumberOfNodes() == nodes_before
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(existing), np.full((2, 3, 4), 7))
        np.testing.assert_allclose(ijk_to_ras(existing), FLIPPED)
        assert provenance(existing) == {}


def test_write_thin_volume_creates_a_displayable_node(scene):
    voxels = ct_voxels()
    node = write_thin_volume(scene, voxels, OBLIQUE, name="made")
    assert node.GetScene() is not None and node.GetName() == "made"
    assert node.GetDisplayNode() is not None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)
    np.testing.assert_allclose(ijk_to_ras(node), OBLIQUE)
