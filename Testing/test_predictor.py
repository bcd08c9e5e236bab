"""The sliding-window predictor (placement, blending, averaging, checks) and the device choice."""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import tiny_tvsrn, training_ct
from VolumetricSRLib import geometry
from VolumetricSRLib.inference import predictor
from VolumetricSRLib.inference.device import (
    DeviceError,
    cpu_model,
    describe_device,
    physical_cpu_cores,
    resolve_device,
)
from VolumetricSRLib.inference.predictor import (
    InputError,
    PredictionCancelled,
    PredictOptions,
    WindowWarning,
    bf16_cpu_supported,
    super_resolve_hu,
    super_resolve_unit,
)
from VolumetricSRLib.intensity import HU_MAX, HU_MIN
from VolumetricSRLib.models.thin_slice_network import depth_interpolation_matrix

CPU = "cpu"


class LinearStandIn(nn.Module):
    """Predicts the thin slices of a window by linear interpolation between its thick slices."""

    def __init__(self, ratio: int, depth: int = 4) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(depth=depth, ratio=ratio)
        self.register_buffer("matrix", depth_interpolation_matrix(depth, ratio))
        self.input_shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_shapes.append(tuple(x.shape))
        return torch.einsum("td,bdhw->bthw", self.matrix, x)


class WindowValueStandIn(nn.Module):
    """Fills a window's whole output with the value of its first thick slice's corner voxel."""

    def __init__(self, ratio: int, depth: int = 4) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(depth=depth, ratio=ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w = x.shape
        thin = (d - 1) * self.cfg.ratio + 1
        return x[:, 0, 0, 0].view(b, 1, 1, 1).expand(b, thin, h, w).clone()


def linear_interpolation(volume: np.ndarray, ratio: int) -> np.ndarray:
    """Reference: the whole volume linearly interpolated along k, in float64."""
    volume = volume.astype(np.float64)
    thin = np.empty(((volume.shape[0] - 1) * ratio + 1, *volume.shape[1:]))
    for z in range(thin.shape[0]):
        lo, rest = divmod(z, ratio)
        t = rest / ratio
        thin[z] = volume[lo] if rest == 0 else (1 - t) * volume[lo] + t * volume[lo + 1]
    return thin


def check_stitching(slices, rows, cols, ratio, tile, tile_overlap, depth_overlap, batch, seed):
    volume = np.random.default_rng(seed).random((slices, rows, cols), dtype=np.float32)
    model = LinearStandIn(ratio)
    options = PredictOptions(CPU, tile, tile_overlap, depth_overlap, batch)
    thin = super_resolve_unit(model, volume, options)
    assert thin.dtype == np.float32
    assert thin.shape == ((slices - 1) * ratio + 1, rows, cols)
    np.testing.assert_allclose(thin, linear_interpolation(volume, ratio), rtol=0, atol=1e-6)
    tile_shape = (rows, cols) if tile is None else (min(tile, rows), min(tile, cols))
    assert {shape[1:] for shape in model.input_shapes} == {(4, *tile_shape)}
    assert all(shape[0] <= batch for shape in model.input_shapes)


@pytest.mark.parametrize(
    ("slices", "rows", "cols", "ratio", "tile", "tile_overlap", "depth_overlap", "batch"),
    [
        (4, 20, 24, 2, None, 32, 1, 1),  # one window, whole slices
        (5, 20, 24, 3, None, 32, 1, 2),  # last window anchored at K - D, overlapping by 3
        (7, 30, 26, 5, 16, 4, 1, 3),  # tiles that do not divide the image
        (13, 33, 21, 2, 12, 6, 3, 4),  # tile = 2 * overlap, stride-1 depth windows
        (13, 40, 40, 3, 64, 8, 2, 5),  # tile larger than the image
        (7, 25, 50, 5, 8, 0, 3, 1),  # smallest tile, no in-plane overlap
        (13, 17, 19, 5, 10, 3, 2, 7),  # batches that mix windows
        (5, 9, 64, 2, 32, 16, 2, 64),  # tile larger than one side only, one batch
    ],
)
def test_predictor_equals_global_linear_interpolation(
    slices, rows, cols, ratio, tile, tile_overlap, depth_overlap, batch
):
    check_stitching(slices, rows, cols, ratio, tile, tile_overlap, depth_overlap, batch, seed=slices * rows)


@settings(max_examples=60, deadline=None)
@given(
    slices=st.sampled_from((4, 5, 7, 13)),
    rows=st.integers(8, 40),
    cols=st.integers(8, 40),
    ratio=st.sampled_from((2, 3, 5)),
    tile=st.one_of(st.none(), st.integers(8, 48)),
    overlap_fraction=st.floats(0.0, 0.5),
    depth_overlap=st.integers(1, 3),
    batch=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_predictor_equals_global_linear_interpolation_for_any_tiling(
    slices, rows, cols, ratio, tile, overlap_fraction, depth_overlap, batch, seed
):
    tile_overlap = 0 if tile is None else int(tile * overlap_fraction)
    check_stitching(slices, rows, cols, ratio, tile, tile_overlap, depth_overlap, batch, seed)


@pytest.mark.parametrize(
    ("slices", "ratio", "depth_overlap", "tile", "expected"),
    [
        # windows at thick 0 and 2 (the last one anchored at K - D): thin 10..15 shared
        (6, 5, 1, None, [0.0] * 10 + [0.05] * 6 + [0.1] * 10),
        # windows at thick 0 and 3: only thin 15 shared
        (7, 5, 1, 8, [0.0] * 15 + [0.075] + [0.15] * 15),
        # stride-1 windows at thick 0, 1, 2, 3: up to four predictions per thin slice
        (7, 2, 3, 8, [0, 0, 0.025, 0.025, 0.05, 0.05, 0.075, 0.1, 0.1, 0.125, 0.125, 0.15, 0.15]),
    ],
)
def test_overlapping_depth_windows_are_averaged(slices, ratio, depth_overlap, tile, expected):
    volume = np.repeat(np.arange(slices, dtype=np.float32)[:, None, None] / 20, 12, axis=1).repeat(12, axis=2)
    options = PredictOptions(CPU, tile=tile, tile_overlap=2, depth_overlap=depth_overlap, batch=3)
    thin = super_resolve_unit(WindowValueStandIn(ratio), volume, options)
    want = np.broadcast_to(np.asarray(expected, dtype=np.float32)[:, None, None], thin.shape)
    np.testing.assert_allclose(thin, want, rtol=0, atol=1e-6)


def test_inplane_tiles_blend_with_a_raised_cosine_ramp():
    # two column tiles (starts 0 and 8) overlapping by exactly 8 pixels; each predicts one constant
    columns = np.arange(24, dtype=np.float32) / 100
    volume = np.broadcast_to(columns, (4, 16, 24)).copy()
    thin = super_resolve_unit(WindowValueStandIn(2), volume, PredictOptions(CPU, tile=16, tile_overlap=8))
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(8) + 0.5) / 8)
    expected = np.concatenate([np.zeros(8), 0.08 * ramp, np.full(8, 0.08)])
    np.testing.assert_allclose(thin, np.broadcast_to(expected, thin.shape), rtol=0, atol=1e-7)


def test_tiles_and_windows_are_the_expected_ones():
    model = LinearStandIn(5)
    volume = np.zeros((7, 70, 70), dtype=np.float32)
    super_resolve_unit(model, volume, PredictOptions(CPU, tile=64, tile_overlap=32))
    # depth windows at thick 0 and 3, tiles at rows/columns 0 and 6: 2 x 4 calls of one piece
    assert model.input_shapes == [(1, 4, 64, 64)] * 8


def test_tiny_tvsrn_with_tiles_gives_thin_unit_volume():
    model = tiny_tvsrn(ratio=3).train()
    volume = np.random.default_rng(1).random((6, 20, 28), dtype=np.float32)
    options = PredictOptions(CPU, tile=16, tile_overlap=4, batch=2)
    thin = super_resolve_unit(model, volume, options)
    assert thin.shape == (16, 20, 28)
    assert thin.dtype == np.float32
    assert np.all(np.isfinite(thin))
    assert thin.min() >= 0.0
    assert thin.max() <= 1.0
    assert thin.std() > 0
    assert model.training, "the model's train mode must be restored"
    amp_on_cpu = super_resolve_unit(
        model, volume, PredictOptions(CPU, tile=16, tile_overlap=4, batch=2, amp=True)
    )
    np.testing.assert_array_equal(amp_on_cpu, thin)


@pytest.mark.parametrize("ct", ["phantom", "real"])
def test_ct_through_hu_predictor_keeps_world_positions(ct):
    nibabel = pytest.importorskip("nibabel")
    image = nibabel.load(training_ct(ct))
    hu = np.asarray(image.dataobj).transpose(2, 1, 0)
    affine = image.affine
    thin, thin_affine = super_resolve_hu(
        LinearStandIn(3),
        hu,
        affine,
        PredictOptions(CPU, tile=64, tile_overlap=16, batch=4),
        trained_spacing_mm=3.0,
    )
    expected = linear_interpolation(np.clip(hu.astype(np.float64), HU_MIN, HU_MAX), 3)
    assert thin.dtype == np.float32
    np.testing.assert_allclose(thin, expected, rtol=0, atol=0.01)
    k = np.arange(hu.shape[0])
    thick_world = affine @ np.stack([np.full_like(k, 5), np.full_like(k, 7), k, np.ones_like(k)])
    thin_world = thin_affine @ np.stack([np.full_like(k, 5), np.full_like(k, 7), 3 * k, np.ones_like(k)])
    np.testing.assert_allclose(thin_world, thick_world, atol=1e-6)
    tvsrn_thin, _ = super_resolve_hu(tiny_tvsrn(ratio=3), hu, affine, PredictOptions(CPU, batch=2))
    assert tvsrn_thin.shape == thin.shape
    assert HU_MIN <= tvsrn_thin.min() <= tvsrn_thin.max() <= HU_MAX


def test_hu_predictor_clips_to_window_and_returns_thin_affine():
    hu = np.array([-3000, -1024, 0, 1000, 4000], dtype=np.int16)[:, None, None] * np.ones(
        (1, 9, 10), np.int16
    )
    affine = np.diag([0.7, 0.7, 5.0, 1.0])
    affine[:3, 3] = (-100.0, 20.0, 33.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thin, thin_affine = super_resolve_hu(
            LinearStandIn(5), hu, affine, PredictOptions(CPU), trained_spacing_mm=5.0
        )
    assert [str(w.message) for w in caught] == [
        "90 input voxels are above 2048 HU (metal or dense contrast): the model sees them as 2048 HU and "
        "the output holds at most 2048 HU there",
        "90 input voxels are below -1024 HU (outside the scanned field of view, or air): the model sees "
        "them as -1024 HU and the output holds -1024 HU or more there",
    ]
    assert {w.category for w in caught} == {WindowWarning}
    assert thin.shape == (21, 9, 10)
    np.testing.assert_allclose(thin[::5, 0, 0], [-1024, -1024, 0, 1000, 2048], atol=1e-3)
    np.testing.assert_allclose(thin[12, 4, 4], 400.0, atol=1e-3)
    np.testing.assert_array_equal(thin_affine, geometry.thin_grid(affine, 5, 5).affine)


def test_progress_rises_to_one_after_every_batch():
    calls: list[tuple[float, str]] = []
    volume = np.random.default_rng(2).random((13, 12, 12), dtype=np.float32)
    options = PredictOptions(CPU, tile=8, tile_overlap=2, batch=3)  # 4 windows x 4 tiles = 16 pieces
    super_resolve_unit(LinearStandIn(2), volume, options, progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert fractions == pytest.approx([0.0, 3 / 16, 6 / 16, 9 / 16, 12 / 16, 15 / 16, 1.0, 1.0])
    assert calls[1][1] == "window 1/4, tile 3/4"
    assert calls[-2][1] == "window 4/4, tile 4/4"
    assert "cpu" in calls[0][1]


def test_cancel_after_first_batch_stops_promptly():
    model = LinearStandIn(2)
    calls: list[float] = []
    volume = np.random.default_rng(3).random((13, 12, 12), dtype=np.float32)
    with pytest.raises(PredictionCancelled):
        super_resolve_unit(
            model,
            volume,
            PredictOptions(CPU, tile=8, tile_overlap=2, batch=3),
            progress=lambda f, m: calls.append(f),
            cancel=lambda: len(calls) > 1,
        )
    assert len(model.input_shapes) == 1
    assert calls == [0.0, 3 / 16]


def test_cancel_before_start_runs_nothing():
    model = LinearStandIn(2)
    with pytest.raises(PredictionCancelled):
        super_resolve_unit(model, np.zeros((4, 8, 8), np.float32), PredictOptions(CPU), cancel=lambda: True)
    assert model.input_shapes == []


GOOD = np.full((5, 16, 16), 0.5, dtype=np.float32)


def with_value(index, value):
    volume = GOOD.copy()
    volume[index] = value
    return volume


@pytest.mark.parametrize(
    ("thick", "options", "fragment"),
    [
        (np.zeros((16, 16), np.float32), PredictOptions(CPU), "expected a 3D volume"),
        (np.zeros((2, 16, 16), np.float32), PredictOptions(CPU), "needs at least 4 slices, got 2"),
        (np.zeros((0, 16, 16), np.float32), PredictOptions(CPU), "empty"),
        (with_value((1, 2, 3), np.nan), PredictOptions(CPU), "1 NaN or infinite values"),
        (with_value((4, 0, 0), np.inf), PredictOptions(CPU), "NaN or infinite"),
        (GOOD * 1000, PredictOptions(CPU), "outside [0, 1]"),
        (np.full((5, 4, 4), "a"), PredictOptions(CPU), "must hold numbers"),
        (GOOD, PredictOptions(CPU, tile=40, tile_overlap=32), "smaller than twice the tile overlap"),
        (GOOD, PredictOptions(CPU, tile=6, tile_overlap=0), "too small"),
        (GOOD, PredictOptions(CPU, tile=16, tile_overlap=-1), "tile_overlap must be"),
        (GOOD, PredictOptions(CPU, depth_overlap=0), "depth_overlap must be between 1 and 3"),
        (GOOD, PredictOptions(CPU, depth_overlap=4), "depth_overlap must be between 1 and 3"),
        (GOOD, PredictOptions(CPU, batch=0), "batch must be at least 1"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(thick, options, fragment):
    model = LinearStandIn(5)
    with pytest.raises(InputError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        super_resolve_unit(model, thick, options)
    assert model.input_shapes == []


def test_unknown_device_in_options_is_refused():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        super_resolve_unit(LinearStandIn(5), GOOD, PredictOptions(device="tpu"))


def test_model_without_depth_and_ratio_is_refused():
    with pytest.raises(TypeError, match="cfg with integer depth"):
        super_resolve_unit(nn.Identity(), GOOD, PredictOptions(CPU))


HU = np.zeros((5, 16, 16), dtype=np.int16)


def hu_affine(slice_mm: float) -> np.ndarray:
    return np.diag([0.8, 0.8, slice_mm, 1.0])


@pytest.mark.parametrize(
    ("affine", "fragment"),
    [
        (hu_affine(0.0), "slice spacing is missing or zero"),
        (np.full((4, 4), np.nan), "no valid 4 x 4"),
        (np.eye(3), "no valid 4 x 4"),
        (hu_affine(1.0), "already as thin as this model's output"),
        (hu_affine(0.5), "already as thin as this model's output"),
    ],
)
def test_bad_geometry_is_refused_before_prediction(affine, fragment):
    model = LinearStandIn(5)
    with pytest.raises(geometry.GeometryError, match=fragment):
        super_resolve_hu(model, HU, affine, PredictOptions(CPU), trained_spacing_mm=5.0)
    assert model.input_shapes == []


def test_unusual_spacing_warns_but_predicts():
    with pytest.warns(geometry.SpacingWarning, match="1.25 mm apart"):
        thin, _ = super_resolve_hu(
            LinearStandIn(5), HU, hu_affine(1.25), PredictOptions(CPU), trained_spacing_mm=5.0
        )
    assert thin.shape == (21, 16, 16)


@pytest.mark.parametrize(
    ("hu", "window", "fragment"),
    [
        (np.where(np.arange(5)[:, None, None] == 2, np.nan, np.zeros((5, 4, 4))), (HU_MIN, HU_MAX), "NaN"),
        (np.zeros((4, 4)), (HU_MIN, HU_MAX), "expected a 3D volume"),
        (HU, (100.0, 100.0), "low < high"),
        (HU, (0.0, np.inf), "low < high"),
        (HU, (0.0,), "two numbers"),
    ],
)
def test_bad_hu_input_is_refused(hu, window, fragment):
    with pytest.raises(InputError, match=fragment):
        super_resolve_hu(LinearStandIn(5), hu, hu_affine(5.0), PredictOptions(CPU), window=window)


def test_hu_window_is_used_both_ways():
    hu = np.linspace(-1500, 1500, 5, dtype=np.float32)[:, None, None] * np.ones((1, 8, 8), np.float32)
    thin, _ = super_resolve_hu(
        LinearStandIn(2), hu, hu_affine(2.0), PredictOptions(CPU), window=(-1000, 1000)
    )
    np.testing.assert_allclose(thin[::2, 0, 0], [-1000, -750, 0, 750, 1000], atol=1e-3)
    np.testing.assert_allclose(thin[1, 0, 0], -875, atol=1e-3)


# ---- device choice ----


def test_cpu_is_resolved_and_described():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert describe_device(torch.device("cpu")) == f"cpu ({torch.get_num_threads()} threads)"


def test_cpu_model_is_the_first_model_name_of_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\n"
        "model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\n"
        "flags\t\t: fpu avx512f\n\nprocessor\t: 1\nmodel name\t: Other CPU\n"
    )
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"


def test_cpu_model_without_cpuinfo_falls_back_to_the_platform(tmp_path):
    import platform

    assert cpu_model(tmp_path / "absent") == (platform.processor() or "unknown CPU")
    (tmp_path / "arm").write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")
    assert cpu_model(tmp_path / "arm") == (platform.processor() or "unknown CPU")


@pytest.mark.parametrize("name", ["tpu", "", "cuda:x", "mps0"])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
def test_auto_falls_back_to_cpu_without_gpu():
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(torch.version.cuda is not None, reason="this PyTorch build has CUDA support")
@pytest.mark.parametrize("name", ["cuda", "gpu", "cuda:0"])
def test_gpu_request_on_cpu_only_build_explains(name):
    with pytest.raises(DeviceError, match="no CUDA support"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
def test_gpu_request_without_visible_gpu_explains(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="found no usable NVIDIA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
def test_gpu_failing_its_test_computation_is_refused_and_auto_uses_cpu(monkeypatch):
    # CUDA claims to be there, but this build cannot compute on it: the probe must catch that
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(DeviceError, match="failed a test computation"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="there is no GPU cuda:3; this machine has 1"):
        resolve_device("cuda:3")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_prediction_with_amp_matches_cpu():
    device = resolve_device("cuda")
    assert device.type == "cuda"
    assert "GiB" in describe_device(device)
    volume = np.random.default_rng(4).random((6, 24, 24), dtype=np.float32)
    on_cpu = super_resolve_unit(tiny_tvsrn(ratio=2), volume, PredictOptions(CPU, tile=16, tile_overlap=4))
    on_gpu = super_resolve_unit(
        tiny_tvsrn(ratio=2), volume, PredictOptions("cuda", tile=16, tile_overlap=4, amp=True)
    )
    np.testing.assert_allclose(on_gpu, on_cpu, atol=2e-2)


@pytest.mark.parametrize("tile", [None, 8])
def test_center_blend_keeps_the_central_slices_and_later_windows_overwrite(tile):
    volume = (np.arange(13, dtype=np.float32) / 100)[:, None, None] * np.ones((1, 12, 14), np.float32)
    options = PredictOptions(CPU, tile=tile, tile_overlap=2, depth_overlap=2, depth_blend="center")
    thin = super_resolve_unit(WindowValueStandIn(5), volume, options)
    # windows start at thick 0, 2, 4, 6, 8 and 9 (anchored); each keeps its central 10 of 16 slices,
    # the first its head and the last its tail, which overwrites thin slices 48-52 of the window at 8
    bounds = [0, 13, 23, 33, 43, 48, 61]
    starts = [0, 2, 4, 6, 8, 9]
    expected = np.concatenate(
        [np.full(hi - lo, k / 100) for lo, hi, k in zip(bounds[:-1], bounds[1:], starts, strict=True)]
    )
    np.testing.assert_allclose(thin[:, 5, 6], expected, atol=1e-7)
    np.testing.assert_allclose(thin, np.broadcast_to(expected[:, None, None], thin.shape), atol=1e-7)


def test_center_blend_equals_linear_interpolation_for_a_linear_model():
    check_volume = np.random.default_rng(9).random((11, 20, 18), dtype=np.float32)
    options = PredictOptions(CPU, tile=12, tile_overlap=4, depth_overlap=2, depth_blend="center")
    thin = super_resolve_unit(LinearStandIn(5), check_volume, options)
    np.testing.assert_allclose(thin, linear_interpolation(check_volume, 5), rtol=0, atol=1e-6)


def test_unknown_depth_blend_and_batch_are_refused():
    volume = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(InputError, match="depth_blend must be one of"):
        super_resolve_unit(LinearStandIn(2), volume, PredictOptions(CPU, depth_blend="max"))
    with pytest.raises(InputError, match="batch must be at least 1"):
        super_resolve_unit(LinearStandIn(2), volume, PredictOptions(CPU, batch=0))


def test_chosen_batch_on_the_cpu_is_one_window():
    model = LinearStandIn(2)
    super_resolve_unit(model, np.zeros((10, 8, 8), np.float32), PredictOptions(CPU, batch=None))
    assert model.input_shapes == [(1, 4, 8, 8)] * 3


def test_cpu_bfloat16_is_close_to_float32_or_refused_with_a_reason(monkeypatch):
    model = tiny_tvsrn(ratio=3)
    volume = np.random.default_rng(4).random((6, 24, 24), dtype=np.float32)
    exact = super_resolve_unit(model, volume, PredictOptions(CPU))
    if bf16_cpu_supported():
        fast = super_resolve_unit(model, volume, PredictOptions(CPU, cpu_bf16=True))
        assert 0 < np.abs(fast - exact).mean() < 0.01
    monkeypatch.setattr(predictor, "bf16_cpu_supported", lambda: False)
    with pytest.raises(InputError, match="no native bfloat16"):
        super_resolve_unit(model, volume, PredictOptions(CPU, cpu_bf16=True))


def test_physical_cores_are_at_most_the_usable_cpus():
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= physical_cpu_cores() <= usable
