"""The MRML adapter on a real MRML scene (slicer-core): output geometry, files, display, place, transforms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the MRML tests need the slicer-core wheel")
import vtk  # noqa: E402  (after the skip: vtk comes with slicer-core)

from conftest import shared_ct  # noqa: E402
from VolumetricSRLib.app.child_run import ChildError  # noqa: E402
from VolumetricSRLib.app.cli import main as cli_main  # noqa: E402
from VolumetricSRLib.geometry import spaced_grid, thin_grid  # noqa: E402
from VolumetricSRLib.io.volume_io import read_volume, write_volume  # noqa: E402
from VolumetricSRLib.phantom import chest_phantom, simulate_thick  # noqa: E402
from VolumetricSRMRML.processing import (  # noqa: E402
    RunSettings,
    SuperResolutionCancelled,
    SuperResolutionJob,
    super_resolve_volume,
)
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


@pytest.fixture(scope="module")
def linear(linear_model_card: Path) -> RunSettings:
    """Settings for a child process whose model is linear interpolation: every voxel is known."""
    return RunSettings(model=str(linear_model_card), device="cpu", allow_untrained=True)


def run(node, settings: RunSettings, **options):
    """super_resolve_volume with this test's Python as the child's interpreter."""
    return super_resolve_volume(node, settings, python=sys.executable, **options)


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
def test_output_node_geometry_follows_the_thin_grid_rule(scene, geometry, linear):
    voxels = ct_voxels()
    thick = add_volume(scene, voxels, geometry)
    result = run(thick, linear)
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
def test_thin_node_round_trips_through_the_storage_node(scene, tmp_path, extension, linear):
    thick = add_volume(scene, ct_voxels(), OBLIQUE)
    thin = run(thick, linear).output
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


def test_window_level_colour_and_interpolation_are_copied(scene, linear):
    thick = add_volume(scene, ct_voxels(), AXIAL)
    display = thick.GetDisplayNode()
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(1500.0, -600.0)
    display.SetInterpolate(0)
    thin = run(thick, linear).output
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


def test_new_output_sits_in_the_input_folder_with_provenance(scene, linear):
    thick = add_volume(scene, ct_voxels(), AXIAL, name="chest")
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "Patient 7 / CT study")
    hierarchy.CreateItem(study, thick)
    result = run(thick, linear)
    thin = result.output
    card = json.loads(Path(linear.model).read_text())

    assert thin.GetName() == "chest thin (synthetic)"
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(thin)) == study
    record = provenance(thin)
    assert record["SourceNodeID"] == thick.GetID()
    assert record["SourceName"] == "chest"
    assert record["Synthetic"] == "true"
    assert record["ModelId"] == "linear-stand-in"
    assert record["ModelSha256"] == card["sha256"]
    assert record["Ratio"] == "5"
    assert record["Device"].startswith("cpu")
    assert float(record["Seconds"]) == pytest.approx(result.seconds, abs=0.01)
    assert thin_outputs_of(scene, thick) == [thin]
    assert "chest thin (synthetic): 26 slices of 1 mm (0.8 x 0.8 mm in-plane)" in result.summary()


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


def test_existing_output_node_is_updated_in_place(scene, linear):
    thick = add_volume(scene, ct_voxels(), AXIAL)
    target = add_volume(scene, np.zeros((2, 3, 4), np.int16), FLIPPED, name="my output")
    before = volume_count(scene)
    result = run(thick, linear, output_node=target)
    assert result.output is target and not result.created
    assert volume_count(scene) == before
    assert target.GetName() == "my output (synthetic)"
    assert provenance(target)["Synthetic"] == "true"
    assert slicer.util.arrayFromVolume(target).shape == (26, 10, 12)
    np.testing.assert_allclose(ijk_to_ras(target), thin_grid(AXIAL, 6, RATIO).affine)


def test_unique_output_names(scene, linear):
    thick = add_volume(scene, ct_voxels(), AXIAL, name="CT")
    assert unique_output_name(scene, thick) == "CT thin (synthetic)"
    first = run(thick, linear).output
    second = run(thick, linear).output
    assert first.GetName() == "CT thin (synthetic)"
    assert second.GetName() not in ("CT thin (synthetic)", "CT")
    assert second.GetName().startswith("CT thin (synthetic)")
    assert thin_outputs_of(scene, thick) == [first, second]


def test_non_linear_transforms_are_refused_and_nothing_is_added(scene, linear):
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
            run(thick, linear)
        assert volume_count(scene) == before


def test_linear_transform_output_keeps_it_or_hardens_it(scene, linear):
    thick = add_volume(scene, ct_voxels(), OBLIQUE)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    to_parent = affine(rotation([0.0, 0.0, 1.0], 10.0), (1.0, 1.0, 1.0), (5.0, -3.0, 12.0))
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(to_parent))
    thick.SetAndObserveTransformNodeID(transform.GetID())
    assert parent_transform_kind(thick) == "linear"
    np.testing.assert_allclose(volume_geometry(thick, harden_transform=True), to_parent @ OBLIQUE, atol=1e-9)

    kept = run(thick, linear).output
    assert kept.GetTransformNodeID() == transform.GetID()
    np.testing.assert_allclose(ijk_to_ras(kept), thin_grid(OBLIQUE, 6, RATIO).affine, atol=1e-9)

    hardened = run(thick, linear, harden_transform=True).output
    assert hardened.GetTransformNodeID() is None
    np.testing.assert_allclose(
        ijk_to_ras(hardened), thin_grid(to_parent @ OBLIQUE, 6, RATIO).affine, atol=1e-9
    )

    assert thick.GetTransformNodeID() == transform.GetID()  # the input keeps its transform
    np.testing.assert_allclose(ijk_to_ras(thick), OBLIQUE)


def test_inputs_that_are_not_ct_volumes_are_refused(scene, linear):
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
        run(thick, linear, output_node=thick)
    with pytest.raises(VolumeNodeError, match="output labels is not a scalar volume"):
        run(thick, linear, output_node=labels)


def test_slices_already_thin_are_refused_and_far_spacing_is_reported(scene, linear):
    thin_input = add_volume(scene, ct_voxels(), affine(np.eye(3), (0.8, 0.8, 1.0), (0, 0, 0)))
    before = volume_count(scene)
    with pytest.raises(ChildError, match="already as thin"):
        run(thin_input, linear)
    assert volume_count(scene) == before
    far = add_volume(scene, ct_voxels(), affine(np.eye(3), (0.8, 0.8, 12.0), (0, 0, 0)), name="far")
    result = run(far, linear)
    spacing = [note for note in result.warnings if "trained on 5 mm slices" in note]
    assert len(spacing) == 1 and spacing[0] in result.summary()
    assert any("untrained weights" in note for note in result.warnings)  # the child's warnings all arrive


def test_cancel_kills_the_child_within_a_second_and_leaves_the_scene_as_it_was(scene, linear):
    thick = add_volume(scene, ct_voxels((40, 256, 256)), AXIAL)  # long enough to be caught running
    existing = add_volume(scene, np.full((2, 3, 4), 7, np.int16), FLIPPED, name="previous result")
    nodes_before = scene.GetNumberOfNodes()
    for output in (None, existing):
        progress: list[float] = []
        with pytest.raises(SuperResolutionCancelled):
            run(
                thick,
                RunSettings(device="cpu"),  # the bundled model: seconds per window on this CPU
                output_node=output,
                on_progress=lambda fraction, message, progress=progress: progress.append(fraction),
                should_cancel=lambda progress=progress: bool(progress),
            )
        assert progress and progress[-1] < 1.0
        assert scene.GetNumberOfNodes() == nodes_before
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(existing), np.full((2, 3, 4), 7))
        np.testing.assert_allclose(ijk_to_ras(existing), FLIPPED)
        assert provenance(existing) == {}

    job, seen = SuperResolutionJob(thick, RunSettings(device="cpu"), python=sys.executable), []
    while not seen:
        assert job.poll(lambda fraction, message: seen.append(fraction)) is None
        time.sleep(0.01)
    started = time.perf_counter()
    job.cancel()
    assert time.perf_counter() - started < 1.0
    assert job.child.returncode is not None  # killed, not finished: it had 13 windows to go
    assert not job.folder.exists()
    assert scene.GetNumberOfNodes() == nodes_before


def test_write_thin_volume_creates_a_displayable_node(scene):
    voxels = ct_voxels()
    node = write_thin_volume(scene, voxels, OBLIQUE, name="made")
    assert node.GetScene() is not None and node.GetName() == "made"
    assert node.GetDisplayNode() is not None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), voxels)
    np.testing.assert_allclose(ijk_to_ras(node), OBLIQUE)


@pytest.mark.parametrize("source", ["phantom", "ChestImagingPlatform/TestInput.nrrd"])
def test_a_run_in_the_child_equals_the_command_line_on_the_same_ct(scene, tmp_path, source):
    """The node that Apply makes holds exactly what `volumetricsr predict` writes, voxels and geometry."""
    if source == "phantom":
        thin, thin_affine = chest_phantom((40, 70, 60), pixel_mm=1.5, seed=6)
        thick, affine_ = simulate_thick(thin.astype(np.float32), thin_affine, RATIO)
        path = write_volume(tmp_path / "thick.nrrd", np.rint(thick).astype(np.int16), affine_)
    else:
        path = shared_ct(source)
    volume = read_volume(path)
    node = add_volume(scene, volume.array, volume.affine, name="real CT")
    result = run(node, RunSettings(device="cpu"))  # the bundled model

    expected = tmp_path / "thin.nrrd"
    assert cli_main(["predict", str(path), str(expected), "--device", "cpu", "--progress", "none"]) == 0
    by_cli = read_volume(expected)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(result.output), by_cli.array)
    np.testing.assert_allclose(ijk_to_ras(result.output), by_cli.affine, rtol=0, atol=1e-9)
    np.testing.assert_allclose(  # the card's 1 mm slices from the first input slice on
        ijk_to_ras(result.output), spaced_grid(volume.affine, len(volume.array), 1.0).affine
    )
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), volume.array)  # the input is untouched
    assert provenance(result.output)["ModelId"] == "tvsrn-x5-publicct-v2"


def test_the_temporary_folder_goes_on_success_and_on_error(scene, linear):
    thick = add_volume(scene, ct_voxels(), AXIAL)
    job = SuperResolutionJob(thick, linear, python=sys.executable)
    assert (job.folder / "thick.nrrd").is_file()  # the input, written before the child starts
    while (result := job.poll()) is None:
        time.sleep(0.02)
    assert result.output.GetScene() is scene and not job.folder.exists()

    three = add_volume(scene, ct_voxels((3, 10, 12)), AXIAL, name="three slices")
    nodes = scene.GetNumberOfNodes()
    job = SuperResolutionJob(three, linear, python=sys.executable)
    with pytest.raises(ChildError, match="the model needs at least 4 slices, got 3") as error:
        while job.poll() is None:
            time.sleep(0.02)
    assert "Traceback" not in str(error.value)
    assert not job.folder.exists() and scene.GetNumberOfNodes() == nodes


def test_the_device_line_is_built_without_torch_in_this_process():
    """What the panel shows about the GPU comes from a child; the parent never loads torch."""
    check = (
        "import json, sys; from VolumetricSRMRML.processing import query_devices; "
        f"answer = query_devices({sys.executable!r}); "
        "print(json.dumps([answer.line, 'torch' in sys.modules]))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "VolumetricSR")}
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, check=True)
    line, torch_loaded = json.loads(done.stdout)
    assert line.startswith(("GPU: ", "CPU only (")) and torch_loaded is False
