"""The review layout on a real MRML scene, and the six views rendered by Slicer's own slice logic."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_ct, tiny_tvsrn

slicer = pytest.importorskip("slicer", reason="the MRML tests need the slicer-core wheel")
import vtk  # noqa: E402  (after the skip: vtk comes with slicer-core)
from scipy import ndimage  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from VolumetricSRLib.inference.predictor import PredictOptions, super_resolve_hu  # noqa: E402
from VolumetricSRMRML.review_layout import (  # noqa: E402
    REVIEW_VIEWS,
    THICK_ROW,
    THIN_ROW,
    THREE_OVER_THREE,
    WINDOW_PRESETS,
    ReviewError,
    apply_window_preset,
    composite_node,
    show_review,
    slice_node,
)
from VolumetricSRMRML.review_render import GAP_PIXELS, HeadlessViews, render_review, review_grid  # noqa: E402
from VolumetricSRMRML.volume_nodes import (  # noqa: E402
    copy_window_level,
    volume_array,
    volume_geometry,
    write_thin_volume,
)

ORIENTATION = {"Red": "Axial", "Green": "Coronal", "Yellow": "Sagittal"}


@pytest.fixture
def views() -> HeadlessViews:
    return HeadlessViews(slicer.vtkMRMLScene())


def add_volume(scene, voxels: np.ndarray, ijk_to_ras: np.ndarray, name: str):
    node = write_thin_volume(scene, voxels, ijk_to_ras, name=name)
    node.GetDisplayNode().SetAutoWindowLevel(False)
    node.GetDisplayNode().SetWindowLevel(400.0, 40.0)
    return node


def volume_pair(scene):
    k, j, i = np.indices((6, 20, 24))
    thick = add_volume(scene, (10 * k + j - i).astype(np.int16), np.diag([0.9, 0.9, 5.0, 1.0]), "thick")
    thin = add_volume(scene, np.zeros((26, 20, 24), np.int16), np.diag([0.9, 0.9, 1.0, 1.0]), "thin")
    return thick, thin


def test_review_puts_thick_on_top_and_thin_below(views):
    scene = views.scene
    thick, thin = volume_pair(scene)
    show_review(scene, thick, thin)

    assert (
        scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode").GetViewArrangement()
        == THREE_OVER_THREE
    )
    assert THREE_OVER_THREE == 21
    for name in REVIEW_VIEWS:
        composite = composite_node(scene, name)
        expected = thick if name in THICK_ROW else thin
        assert composite.GetBackgroundVolumeID() == expected.GetID(), name
        assert composite.GetForegroundVolumeID() is None
        assert composite.GetLinkedControl()
        node = slice_node(scene, name)
        assert node.GetOrientation() == ORIENTATION[name.rstrip("+")]
        assert node.GetViewGroup() == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == 6


def test_slice_logics_adopt_the_review_composite_nodes(views):
    scene = views.scene
    thick, thin = volume_pair(scene)
    show_review(scene, thick, thin)
    views.attach_slice_logics()
    assert scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode") == 6
    for name in THIN_ROW:
        assert views.slice_logics[name].GetSliceCompositeNode().GetBackgroundVolumeID() == thin.GetID()


def test_all_six_views_pass_through_one_world_point(views):
    scene = views.scene
    thick, thin = volume_pair(scene)
    scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode").SetViewArrangement(THREE_OVER_THREE)
    views.attach_slice_logics()
    views.resize(120, 90)
    point = np.array([3.5, 7.25, 11.0])
    returned = show_review(
        scene, thick, thin, world_position=point, application_logic=views.application_logic
    )
    np.testing.assert_array_equal(returned, point)
    for name in REVIEW_VIEWS:
        node = slice_node(scene, name)
        slice_to_ras = slicer.util.arrayFromVTKMatrix(node.GetSliceToRAS())
        normal, origin = slice_to_ras[:3, 2], slice_to_ras[:3, 3]
        assert abs(normal @ (point - origin)) < 1e-9, name
        centre = slicer.util.arrayFromVTKMatrix(node.GetXYToRAS()) @ [60, 45, 0, 1]
        np.testing.assert_allclose(centre[:3], point, atol=1e-9, err_msg=name)


def test_default_point_is_the_centre_of_the_thick_volume(views):
    thick, thin = volume_pair(views.scene)
    point = show_review(views.scene, thick, thin)
    np.testing.assert_allclose(point, [0.9 * 23 / 2, 0.9 * 19 / 2, 5.0 * 5 / 2], atol=1e-9)


def test_navigation_in_one_row_moves_the_other_row(views):
    scene = views.scene
    thick, thin = volume_pair(scene)
    scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode").SetViewArrangement(THREE_OVER_THREE)
    views.attach_slice_logics()
    show_review(scene, thick, thin, application_logic=views.application_logic)
    green_plus = slice_node(scene, "Green+").GetSliceOffset()
    for moved, partner, offset in (("Red", "Red+", 17.0), ("Yellow+", "Yellow", -4.5)):
        logic = views.slice_logics[moved]
        logic.StartSliceOffsetInteraction()
        logic.SetSliceOffset(offset)
        logic.EndSliceOffsetInteraction()
        assert slice_node(scene, partner).GetSliceOffset() == pytest.approx(offset)
    assert slice_node(scene, "Green+").GetSliceOffset() == pytest.approx(green_plus)  # other orientation


def test_window_presets_change_both_volumes(views):
    thick, thin = volume_pair(views.scene)
    for preset, (window, level) in WINDOW_PRESETS.items():
        apply_window_preset([thick, thin], preset)
        for volume in (thick, thin):
            display = volume.GetDisplayNode()
            assert (display.GetWindow(), display.GetLevel(), display.GetAutoWindowLevel()) == (
                window,
                level,
                0,
            )
    assert WINDOW_PRESETS == {"lung": (1500.0, -600.0), "mediastinum": (350.0, 50.0), "bone": (1800.0, 400.0)}
    with pytest.raises(ValueError, match="unknown window preset 'liver'"):
        apply_window_preset([thick], "liver")
    bare = views.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "bare")
    with pytest.raises(ReviewError, match="bare has no display node"):
        apply_window_preset([bare], "lung")


def test_review_needs_a_layout():
    scene = slicer.vtkMRMLScene()
    thick = add_volume(scene, np.zeros((4, 5, 6), np.int16), np.eye(4), "thick")
    with pytest.raises(ReviewError, match="no layout node"):
        show_review(scene, thick, thick)


def reference_grey(name: str, scene, volume) -> np.ndarray:
    """What a view must show: the volume resampled (trilinear) at every pixel's world point, windowed."""
    node = slice_node(scene, name)
    width, height, _ = node.GetDimensions()
    ras_to_ijk = vtk.vtkMatrix4x4()
    volume.GetRASToIJKMatrix(ras_to_ijk)
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size), np.ones(xs.size)])
    ijk = (
        slicer.util.arrayFromVTKMatrix(ras_to_ijk)
        @ slicer.util.arrayFromVTKMatrix(node.GetXYToRAS())
        @ pixels
    )[:3]
    values = ndimage.map_coordinates(volume_array(volume).astype(float), ijk[::-1], order=1, mode="nearest")
    display = volume.GetDisplayNode()
    low = display.GetLevel() - display.GetWindow() / 2
    grey = np.clip((values - low) / display.GetWindow(), 0.0, 1.0) * 255
    return grey.reshape(height, width)[::-1]  # top row first, like the rendered image


def test_render_of_a_real_ct_shows_each_volume_at_one_world_point(views, tmp_path):
    path = shared_ct("ChestImagingPlatform/ct-64.nrrd")
    scene = views.scene
    full = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct-64")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(full) == 1
    # slices 30-49: the heart and lungs; a tiny untrained TVSRN keeps the test fast and its output distinct
    ijk_to_ras = volume_geometry(full) @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 30], [0, 0, 0, 1.0]])
    thick = write_thin_volume(scene, volume_array(full)[30:50], ijk_to_ras, name="thick chest")
    thick.GetDisplayNode().SetAutoWindowLevel(False)
    thick.GetDisplayNode().SetWindowLevel(1500.0, -600.0)
    network = tiny_tvsrn()
    thin_hu, thin_affine = super_resolve_hu(
        network, volume_array(thick), ijk_to_ras, PredictOptions(device="cpu", batch=4)
    )
    thin = write_thin_volume(scene, np.rint(thin_hu).astype(np.int16), thin_affine, name="thin chest")
    copy_window_level(thick, thin)

    png = tmp_path / "review.png"
    point, images = render_review(views, thick, thin, png, size=(128, 112))

    for name in REVIEW_VIEWS:
        image = images[name]
        assert image.shape == (112, 128, 4)
        inside = image[..., 3] > 0
        assert inside.mean() > 0.3, name
        shown, other = (thick, thin) if name in THICK_ROW else (thin, thick)
        error = np.abs(image[..., 0].astype(float) - reference_grey(name, scene, shown))[inside]
        wrong = np.abs(image[..., 0].astype(float) - reference_grey(name, scene, other))[inside]
        assert error.mean() < 1.0 and np.percentile(error, 99) <= 2.0, (name, error.mean())
        assert wrong.mean() > 20.0, (name, wrong.mean())
        centre = slicer.util.arrayFromVTKMatrix(slice_node(scene, name).GetXYToRAS()) @ [64, 56, 0, 1]
        np.testing.assert_allclose(centre[:3], point, atol=1e-6, err_msg=name)

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(png))
    reader.Update()
    width, height, _ = reader.GetOutput().GetDimensions()
    assert (width, height) == (3 * 128 + 2 * GAP_PIXELS, 2 * 112 + GAP_PIXELS)
    saved = numpy_support.vtk_to_numpy(reader.GetOutput().GetPointData().GetScalars())
    saved = saved.reshape(height, width, -1)[::-1]
    np.testing.assert_array_equal(saved[..., :3], review_grid([images[name] for name in REVIEW_VIEWS]))


def test_review_grid_blacks_out_what_lies_outside_the_volume():
    inside = np.full((2, 3, 4), 200, np.uint8)
    inside[..., 3] = 255
    outside = inside.copy()
    outside[..., 3] = 0
    grid = review_grid([inside, outside], columns=2, gap=1)
    assert grid.shape == (2, 7, 3)
    assert (grid[:, :3] == 200).all() and (grid[:, 3] == 0).all() and (grid[:, 4:] == 0).all()


def test_leaving_the_review_layout_gives_back_the_users_view_groups_and_links(views):
    scene = views.scene
    thick, thin = volume_pair(scene)
    layout = scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode")
    layout.SetViewArrangement(THREE_OVER_THREE)
    before = {name: slice_node(scene, name).GetViewGroup() for name in REVIEW_VIEWS}
    composite_node(scene, "Green").SetLinkedControl(True)  # the user's own choice, kept
    show_review(scene, thick, thin)
    show_review(scene, thick, thin)  # a second review must not take the review's state as the user's
    assert {slice_node(scene, name).GetViewGroup() for name in REVIEW_VIEWS} == {0}

    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutConventionalView)
    assert {name: slice_node(scene, name).GetViewGroup() for name in REVIEW_VIEWS} == before
    assert before != {name: 0 for name in REVIEW_VIEWS}, "the layout's own groups differ from the review's"
    linked = {name: bool(composite_node(scene, name).GetLinkedControl()) for name in REVIEW_VIEWS}
    assert linked == {name: name == "Green" for name in REVIEW_VIEWS}

    show_review(scene, thick, thin)  # and a later review works as before
    assert all(composite_node(scene, name).GetLinkedControl() for name in REVIEW_VIEWS)


def test_scene_closes_leave_one_restoring_observer_on_the_layout(views):
    from VolumetricSRMRML import review_layout

    scene = views.scene
    layout = scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode")
    tags = []
    for _close in range(3):
        layout.SetViewArrangement(THREE_OVER_THREE)
        show_review(scene, *volume_pair(scene))
        tags.append(review_layout._watched_layouts[layout.__this__])
        scene.Clear(0)  # a scene close: the saved views go with the scene's contents
        layout = scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode")
    assert [layout.GetCommand(tag) is not None for tag in tags] == [False, False, True]
