"""TVSRN shapes, variants, trainable mask tokens and the residual formulation."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_tvsrn
from VolumetricSRLib.intensity import hu_to_unit
from VolumetricSRLib.models.network_config import PAPER_PARAMETERS
from VolumetricSRLib.models.thin_slice_network import count_parameters, depth_interpolation_matrix, l1_loss
from VolumetricSRLib.models.tvsrn import TVSRN, VARIANTS, TVSRNConfig
from VolumetricSRLib.phantom import chest_phantom

# TVSRNConfig.tiny with two layers and two heads per stage, and a ViT small enough for the vit variant
GROWN = {
    "encoder_layers": 2,
    "tab_layers": 2,
    "axial_layers": 2,
    "heads": 2,
    "vit_dim": 16,
    "vit_layers": 1,
    "vit_heads": 2,
    "vit_patch": 4,
}


def tiny(variant: str = "full", **overrides) -> TVSRN:
    return tiny_tvsrn(variant=variant, **{**GROWN, **overrides})


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("h", "w"), [(8, 8), (13, 21), (32, 17)])
def test_every_variant_maps_four_slices_to_sixteen_for_any_size(variant: str, h: int, w: int) -> None:
    out = tiny(variant)(torch.rand(2, 4, h, w))
    assert out.shape == (2, 16, h, w)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("ratio", "depth"), [(2, 4), (3, 4), (4, 4), (5, 4), (6, 3), (5, 5)])
def test_ratio_and_depth_set_the_thin_slice_count(ratio: int, depth: int) -> None:
    model = tiny(ratio=ratio, depth=depth)
    out = model(torch.rand(1, depth, 12, 10))
    assert out.shape == (1, (depth - 1) * ratio + 1, 12, 10)
    assert model.cfg.thin_depth == out.shape[1]


def test_sizes_off_the_window_grid_are_padded_by_replication_and_cropped_back() -> None:
    model = tiny().eval()
    assert model.spatial_multiple == 4
    x = torch.rand(1, 4, 13, 11)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 3), mode="replicate")
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[:, :, :13, :11], atol=1e-6)


def test_mask_tokens_receive_gradients_and_change_when_trained() -> None:
    model = tiny()
    before = model.mask_token.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.rand(1, 4, 8, 8), torch.rand(1, 16, 8, 8)
    loss = l1_loss(model(x), y)
    loss.backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(before, model.mask_token.detach())
    assert any(name == "mask_token" for name, _ in model.named_parameters())


def test_residual_output_starts_as_linear_interpolation() -> None:
    model = tiny(output="residual")
    x = torch.rand(2, 4, 9, 7)
    expected = torch.einsum("td,bdhw->bthw", depth_interpolation_matrix(4, 5), x)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_untrained_vit_tokens_carry_the_content_of_the_slices() -> None:
    """The paper-size ViT's final tokens must change with what the slices show, not only with where the
    patch is: on two windows of a chest phantom 2.7 % of their variance differs (0.06 % with raw [0, 1]
    patches and PyTorch's default initialisation, a ViT that never left linear interpolation)."""
    hu, _ = chest_phantom((12, 64, 64), slice_mm=5.0, pixel_mm=5.0)
    unit = torch.from_numpy(hu_to_unit(hu))
    torch.manual_seed(0)
    model = TVSRN(TVSRNConfig.variant_defaults("vit", output="residual"))
    tokens: list[torch.Tensor] = []
    model.vit_norm.register_forward_hook(lambda _module, _inputs, out: tokens.append(out))
    with torch.no_grad():
        model(unit[None, 0:4])
        model(unit[None, 6:10])
    first, second = tokens
    assert ((first - second).var() / 2 / first.var()).item() > 0.01


def test_thin_slice_r_times_i_interpolates_to_input_slice_i() -> None:
    matrix = depth_interpolation_matrix(4, 5)
    assert torch.equal(matrix[::5], torch.eye(4))
    assert torch.allclose(matrix.sum(dim=1), torch.ones(16))
    assert torch.allclose(matrix[7], torch.tensor([0.0, 0.6, 0.4, 0.0]))


def test_compact_configuration_parameter_counts() -> None:
    """The counts the README and the model card report (see the README's network summary)."""
    counts = {v: count_parameters(TVSRN(TVSRNConfig.variant_defaults(v))) for v in VARIANTS}
    assert counts == {"full": 1_061_633, "no_tab": 858_337, "encoder_only": 1_602_704, "vit": 17_480_464}


def test_paper_size_is_within_five_percent_of_the_papers_three_counts() -> None:
    counts = {
        v: count_parameters(TVSRN(TVSRNConfig.variant_defaults(v, "paper")))
        for v in ("full", "no_tab", "encoder_only")
    }
    assert counts == {"full": 1_719_865, "no_tab": 1_516_569, "encoder_only": 1_602_704}
    for variant, count in counts.items():
        assert abs(count / PAPER_PARAMETERS[variant] - 1) < 0.05, variant
    cfg = TVSRNConfig.variant_defaults("full", "paper")
    assert (cfg.encoder_layers, cfg.tab_layers, cfg.axial_layers) == (8, 4, 7)
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        TVSRNConfig.variant_defaults("full", "huge")


def test_tab_and_axial_depths_are_separate_and_old_cards_set_both() -> None:
    net = TVSRN(TVSRNConfig.tiny(tab_layers=1, axial_layers=3))
    assert len(net.fims[0].tab.stack.layers) == 1 and len(net.fims[0].axial.layers) == 3
    card = {key: value for key, value in TVSRNConfig().to_dict().items() if not key.endswith("_layers")}
    restored = TVSRNConfig.from_dict({**card, "encoder_layers": 4, "fim_layers": 3})
    assert (restored.tab_layers, restored.axial_layers) == (3, 3)


def test_bad_configs_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        TVSRNConfig(variant="unet")
    with pytest.raises(ValueError, match="divisible"):
        TVSRNConfig(heads=3)
    with pytest.raises(ValueError, match="unknown TVSRN config keys"):
        TVSRNConfig.from_dict({"chanels": 8})
    with pytest.raises(ValueError, match="expected 4 input slices"):
        tiny()(torch.rand(1, 3, 8, 8))


def test_tiny_config_is_a_small_working_network_and_takes_overrides() -> None:
    cfg = TVSRNConfig.tiny(output="residual", ratio=3)
    sizes = (cfg.channels, cfg.encoder_layers, cfg.tab_layers, cfg.axial_layers)
    sizes += (cfg.window, cfg.heads, cfg.tab_fold)
    assert sizes == (2, 1, 1, 1, 4, 1, 2) and cfg.tab_window == (4, 4)
    assert (cfg.variant, cfg.output, cfg.ratio, cfg.depth) == ("full", "residual", 3, 4)
    assert TVSRN(cfg)(torch.rand(1, 4, 8, 8)).shape == (1, 10, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        TVSRNConfig.tiny(heads=3)


def test_config_round_trips_through_a_dict() -> None:
    cfg = TVSRNConfig(ratio=3, tab_window=(2, 4), output="residual")
    assert TVSRNConfig.from_dict(cfg.to_dict()) == cfg
