"""`volumetricsr predict --spacing`: output slices at the right world positions for 2.5, 3 and 5 mm
inputs, the slice axis found wherever it is stored, and volumes without a clear slice axis refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_tvsrn
from VolumetricSRLib.app.cli import main
from VolumetricSRLib.io.volume_io import read_volume, write_volume
from VolumetricSRLib.models.weights import save_model
from VolumetricSRLib.phantom import chest_phantom

THICK_SLICES = 8
SHAPE = (THICK_SLICES, 24, 20)
PIXEL_MM = 0.8


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny x5 model (thin spacing 1 mm on its card) whose head was nudged off zero."""
    network = tiny_tvsrn(ratio=5, output="residual")
    for parameter in network.head.parameters():
        parameter.data.add_(1e-3)
    return save_model(network, tmp_path_factory.mktemp("model"), id="tiny", name="Tiny", trained=True)


def thick_affine(slice_mm: float) -> np.ndarray:
    """An oblique, flipped thick grid: rotated about an oblique axis, k running against its normal."""
    angle = np.deg2rad(20.0)
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0.0], [s * 0.6, c * 0.6, 0.8], [-s * 0.8, -c * 0.8, 0.6]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([PIXEL_MM, -PIXEL_MM, -slice_mm])
    affine[:3, 3] = [-12.5, 30.25, 101.0]
    return affine


def write_thick(folder: Path, slice_mm: float, name: str = "thick.nrrd") -> Path:
    hu, _ = chest_phantom(SHAPE, slice_mm=slice_mm, pixel_mm=PIXEL_MM)
    return write_volume(folder / name, hu, thick_affine(slice_mm))


def predict(source: Path, output: Path, card: Path, *options: object) -> int:
    argv = ["predict", source, output, "--model", card, "--device", "cpu", "--progress", "none", *options]
    return main([str(arg) for arg in argv])


def world(affine: np.ndarray, i: float, j: float, k: np.ndarray) -> np.ndarray:
    return (affine @ np.stack(np.broadcast_arrays(i, j, k, 1.0)))[:3]


@pytest.mark.parametrize(
    ("slice_mm", "slices", "native_step"),
    [(2.5, 18, 2), (3.0, 22, None), (5.0, 36, 1)],  # (8 - 1) * slice_mm / 1 mm + 1 slices
)
def test_output_slices_are_1_mm_apart_from_the_first_input_slice(
    tmp_path, card, slice_mm, slices, native_step
):
    source = write_thick(tmp_path, slice_mm)
    assert predict(source, tmp_path / "thin.nrrd", card) == 0
    thick, thin = read_volume(source), read_volume(tmp_path / "thin.nrrd")
    assert thin.array.shape == (slices, *SHAPE[1:])

    expected = thick_affine(slice_mm)
    expected[:3, 2] /= slice_mm  # the same direction, 1 mm long
    np.testing.assert_allclose(thin.affine, expected, rtol=0, atol=1e-12)
    n = np.arange(slices, dtype=np.float64)  # output slice n sits at input slice n / slice_mm
    np.testing.assert_allclose(
        world(thin.affine, 3.0, 7.0, n), world(thick.affine, 3.0, 7.0, n / slice_mm), rtol=0, atol=1e-9
    )
    length = (THICK_SLICES - 1) * slice_mm  # first to last input slice
    assert (slices - 1) * 1.0 <= length + 1e-9 < slices * 1.0  # the last output slice is not beyond it

    if native_step is not None:  # 1 mm is a whole number of the model's slices: they are kept as made
        native_mm = slice_mm / 5
        assert predict(source, tmp_path / "native.nrrd", card, "--spacing", native_mm) == 0
        native = read_volume(tmp_path / "native.nrrd").array
        assert native.shape[0] == (THICK_SLICES - 1) * 5 + 1
        np.testing.assert_array_equal(thin.array, native[::native_step])


def test_3_mm_slices_are_resampled_with_a_cubic_b_spline(tmp_path, card):
    from scipy import ndimage

    source = write_thick(tmp_path, 3.0)
    assert predict(source, tmp_path / "native.nrrd", card, "--spacing", 0.6) == 0
    assert predict(source, tmp_path / "thin.nrrd", card, "--spacing", 1.0) == 0
    native = read_volume(tmp_path / "native.nrrd").array.astype(np.float64)
    thin = read_volume(tmp_path / "thin.nrrd").array
    positions = np.arange(thin.shape[0]) / 0.6
    coordinates = np.meshgrid(positions, np.arange(SHAPE[1]), np.arange(SHAPE[2]), indexing="ij")
    expected = ndimage.map_coordinates(native, coordinates, order=3, mode="mirror")
    assert np.abs(thin - expected).max() <= 1.0  # int16 rounding, float32 weights


def test_a_spacing_a_hair_under_a_whole_multiple_keeps_its_last_slice_without_a_crash(tmp_path, card):
    """9 slices of 2.5 (1 - 5e-7) mm: the slice count's relative slack keeps 21 output slices at 1 mm,
    the last 2e-5 thin slices beyond the model's last one; it is clipped, not refused."""
    slice_mm = 2.5 * (1 - 5e-7)
    hu, _ = chest_phantom((9, *SHAPE[1:]), slice_mm=slice_mm, pixel_mm=PIXEL_MM)
    source = write_volume(tmp_path / "thick.nrrd", hu, thick_affine(slice_mm))
    assert read_volume(source).spacing[2] == pytest.approx(slice_mm, rel=1e-12)
    assert predict(source, tmp_path / "thin.nrrd", card) == 0
    assert predict(source, tmp_path / "native.nrrd", card, "--spacing", slice_mm / 5) == 0
    thin, native = read_volume(tmp_path / "thin.nrrd").array, read_volume(tmp_path / "native.nrrd").array
    assert thin.shape == (21, *SHAPE[1:]) and native.shape == (41, *SHAPE[1:])
    assert np.abs(thin.astype(np.int32) - native[::2]).max() <= 1  # on the model's slices (int16 rounding)


@pytest.mark.parametrize("axis", [1, 2])
def test_a_slice_axis_stored_elsewhere_gives_the_world_output_of_its_axis_0_twin(tmp_path, card, axis):
    source = write_thick(tmp_path, 3.0)
    thick = read_volume(source)
    column = 2 - axis
    swapped_affine = thick.affine.copy()
    swapped_affine[:, [2, column]] = thick.affine[:, [column, 2]]
    twin = write_volume(tmp_path / "twin.nrrd", np.swapaxes(thick.array, 0, axis), swapped_affine)
    assert predict(source, tmp_path / "thin.nrrd", card) == 0
    assert predict(twin, tmp_path / "twin_thin.nrrd", card) == 0

    thin, twin_thin = read_volume(tmp_path / "thin.nrrd"), read_volume(tmp_path / "twin_thin.nrrd")
    assert twin_thin.array.shape[axis] == thin.array.shape[0] == 22  # laid out like its input
    np.testing.assert_array_equal(np.swapaxes(twin_thin.array, 0, axis), thin.array)
    expected = thin.affine.copy()
    expected[:, [2, column]] = thin.affine[:, [column, 2]]
    np.testing.assert_allclose(twin_thin.affine, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("spacing", "message"),
    [((1.5, 1.5, 1.5), "1.5 x 1.5 x 1.5 mm"), ((0.8, 5.0, 5.0), "0.8 x 5 x 5 mm")],
    ids=["isotropic", "two-coarse-axes"],
)
def test_a_volume_without_a_clear_slice_axis_is_refused(tmp_path, card, capsys, spacing, message):
    hu, _ = chest_phantom(SHAPE)
    source = write_volume(tmp_path / "in.nrrd", hu, np.diag([*spacing, 1.0]))
    assert predict(source, tmp_path / "thin.nrrd", card) == 2
    err = capsys.readouterr().err
    assert f"error: the volume has no clear slice axis: its voxels are {message} (i x j x k)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nrrd"]


def test_a_spacing_not_finer_than_the_input_is_refused_and_a_finer_one_than_the_models_is_reported(
    tmp_path, card, capsys
):
    source = write_thick(tmp_path, 3.0)
    assert predict(source, tmp_path / "thin.nrrd", card, "--spacing", 3.0) == 2
    assert "error: --spacing 3 mm is not finer than the input's 3 mm slices" in capsys.readouterr().err
    assert predict(source, tmp_path / "thin.nrrd", card, "--spacing", 0.3) == 0
    err = capsys.readouterr().err
    assert "warning: output slices 0.3 mm apart are finer than the model's 0.6 mm" in err
    assert read_volume(tmp_path / "thin.nrrd").array.shape[0] == 71


def test_the_slicer_module_puts_the_thin_node_on_the_requested_spacing(card):
    slicer = pytest.importorskip("slicer", reason="the MRML tests need the slicer-core wheel")
    import sys

    import vtk

    from VolumetricSRLib.checks import InputError
    from VolumetricSRLib.geometry import spaced_grid
    from VolumetricSRMRML.processing import RunSettings, super_resolve_volume
    from VolumetricSRMRML.volume_nodes import write_thin_volume

    hu, _ = chest_phantom(SHAPE, slice_mm=5.0, pixel_mm=PIXEL_MM)
    scene = slicer.vtkMRMLScene()
    node = write_thin_volume(scene, hu, thick_affine(5.0), name="thick")
    result = super_resolve_volume(
        node, RunSettings(model=str(card), device="cpu", spacing_mm=2.0), python=sys.executable
    )
    expected = spaced_grid(thick_affine(5.0), THICK_SLICES, 2.0)
    assert expected.slices == 18  # 7 x 5 mm from the first thick slice, every 2 mm
    assert result.output.GetImageData().GetDimensions() == (20, 24, 18)
    assert result.spacing_mm == pytest.approx((PIXEL_MM, PIXEL_MM, 2.0))
    matrix = vtk.vtkMatrix4x4()
    result.output.GetIJKToRASMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])
    np.testing.assert_allclose(ijk_to_ras, expected.affine, atol=1e-9)
    assert "18 slices of 2 mm" in result.summary() and "before resampling" in result.summary()

    both = RunSettings(model=str(card), device="cpu", spacing_mm=2.0, enforce_consistency=True)
    with pytest.raises(InputError, match=r"would be resampled to 2 mm, which undoes the correction"):
        super_resolve_volume(node, both, python=sys.executable)  # refused before the child starts
