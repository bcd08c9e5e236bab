"""The default Swin layers (window order, fused attention, finite masks, chunks) against the layers as
first written, and where one token's change may reach in a shifted, padded layer."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import assert_float32_close, shared_ct, tiny_tvsrn
from VolumetricSRLib.inference.predictor import PredictOptions, super_resolve_hu
from VolumetricSRLib.intensity import HU_MAX, HU_MIN
from VolumetricSRLib.io.volume_io import read_volume
from VolumetricSRLib.models import tvsrn
from VolumetricSRLib.models.tvsrn import TVSRN, SwinLayer, TVSRNConfig, reference_layers
from VolumetricSRLib.models.weights import default_model_path, load_model
from VolumetricSRLib.phantom import chest_phantom, simulate_thick

LIDC = "LIDC-IDRI/LIDC-IDRI-0314_chest_1mm_slices100-274.nii.gz"


def both_paths(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        fast = net(x)
        with reference_layers():
            reference = net(x)
    return fast, reference


def in_float64(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The network's function evaluated in float64 (the default layers; the copy leaves `net` as it is)."""
    exact = copy.deepcopy(net).double()
    with torch.inference_mode():
        return exact(x.double())


@pytest.mark.parametrize("variant", ["full", "no_tab", "encoder_only"])
@pytest.mark.parametrize(("h", "w"), [(8, 8), (13, 21), (37, 45), (64, 40)])
def test_default_layers_equal_the_reference_layers(variant: str, h: int, w: int) -> None:
    torch.manual_seed(1)
    cfg = TVSRNConfig(variant=variant, channels=4, heads=4, encoder_layers=2, tab_layers=2, axial_layers=2)
    net = TVSRN(cfg).eval()
    x = torch.rand(2, 4, h, w)
    fast, reference = both_paths(net, x)
    assert_float32_close(fast, reference, in_float64(net, x))


def test_chunks_without_autograd_equal_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    net = tiny_tvsrn().eval()
    x = torch.rand(1, 4, 40, 48)
    exact = in_float64(net, x)
    with torch.inference_mode():
        whole = net(x)
        monkeypatch.setitem(tvsrn.CHUNK_ELEMENTS, "cpu", 64)  # a few windows / tokens per chunk
        chunked = net(x)
    assert_float32_close(chunked, whole, exact)


def test_gradients_of_the_default_layers_equal_the_reference() -> None:
    torch.manual_seed(2)
    net = TVSRN(TVSRNConfig(channels=4, heads=2, encoder_layers=2, tab_layers=2, axial_layers=2)).train()
    x = torch.rand(2, 4, 21, 27)
    exact_net = copy.deepcopy(net).double()
    exact_net(x.double()).square().mean().backward()
    grads = []
    for reference in (False, True):
        net.zero_grad()
        with reference_layers(reference):
            net(x).square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for fast, slow, exact in zip(*grads, [p.grad for p in exact_net.parameters()], strict=True):
        assert_float32_close(fast, slow, exact)


def sharing_windows(h: int, w: int, window: tuple[int, int], shift: tuple[int, int], i: int, j: int):
    """Real tokens that share a (shifted) window with token (i, j): the windows tile the plane from
    -shift, and what the cyclic roll brings together from opposite borders stays apart."""
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    same_row = (rows - shift[0]) // window[0] == (i - shift[0]) // window[0]
    same_col = (cols - shift[1]) // window[1] == (j - shift[1]) // window[1]
    return same_row & same_col


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize(("i", "j"), [(0, 0), (5, 9), (12, 20), (2, 19), (11, 1)])
def test_one_changed_token_changes_only_its_own_windows(shifted: bool, i: int, j: int) -> None:
    torch.manual_seed(3)
    layer = SwinLayer(8, 2, (4, 4), shifted=shifted, mlp_ratio=2.0).eval()
    with torch.no_grad():
        layer.attn.bias_table.normal_(0, 1)  # a bias that matters, as after training
    x = torch.rand(1, 13, 21, 8)  # padded to 16 x 24: padded and shifted windows at both borders
    changed = x.clone()
    changed[0, i, j] += torch.randn(8)  # not a constant: LayerNorm would cancel one
    with torch.inference_mode():
        difference = (layer(changed) - layer(x)).abs().amax(dim=-1)[0].numpy()
    shift = (2, 2) if shifted else (0, 0)
    np.testing.assert_array_equal(difference > 1e-6, sharing_windows(13, 21, (4, 4), shift, i, j))


@pytest.mark.parametrize("source", ["phantom", "LIDC-IDRI"])
def test_default_predictor_equals_the_reference_on_ct_within_half_a_hu(source: str) -> None:
    if source == "phantom":
        thin, affine = chest_phantom((40, 90, 72), pixel_mm=1.5, seed=4)
    else:
        volume = read_volume(shared_ct(LIDC))
        thin, affine = volume.array[60:100, 210:300, 190:262], volume.affine
    thick, thick_affine = simulate_thick(thin.astype(np.float32), affine, 5)  # 8 slices of 5 mm
    model, card = load_model(default_model_path())
    options = PredictOptions(device="cpu")
    fast, _ = super_resolve_hu(model, thick, thick_affine, options, window=card.window)
    with reference_layers():
        reference, _ = super_resolve_hu(model, thick, thick_affine, options, window=card.window)
    assert np.abs(fast - reference).max() <= 0.5
    assert fast.std() > 50  # real anatomy went through the network, not a flat image
    assert HU_MIN <= fast.min() <= fast.max() <= HU_MAX
