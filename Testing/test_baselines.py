"""The CNN baselines (ResVox, MPU-Net, SAINT, DA-VSR) and TVSRN's ablation variants through the same
pipeline: the network contract, training on phantom and real CT crops, the whole-volume predictor,
checkpoints and model files, parameter counts and the shared comparison budget."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, shared_ct
from volumetricsr_training.adversarial import trained_label
from volumetricsr_training.checkpoints import network_from_checkpoint, state_digest
from volumetricsr_training.config import TrainConfig, learning_differences, load_config
from volumetricsr_training.data import PseudoPairSampler, ThinVolume
from volumetricsr_training.evaluate import load_for_evaluation
from volumetricsr_training.export import export_checkpoint
from volumetricsr_training.methods import (
    BUDGET_EXCEPTIONS,
    CONFIGS,
    METHODS,
    SHARED_BUDGET,
    method_config,
    parameter_rows,
    parameter_table,
)
from volumetricsr_training.trainer import Trainer
from VolumetricSRLib import geometry
from VolumetricSRLib.app.cli import main as core_main
from VolumetricSRLib.inference.predictor import PredictOptions, super_resolve_hu
from VolumetricSRLib.intensity import hu_to_unit, to_int16_hu
from VolumetricSRLib.io.volume_io import read_volume, write_volume
from VolumetricSRLib.models.architectures import REGISTRY, config_from_dict, label_of
from VolumetricSRLib.models.cnn_parts import depth_shuffle, planes, unplanes
from VolumetricSRLib.models.networks import build_network
from VolumetricSRLib.models.thin_slice_network import depth_interpolation_matrix
from VolumetricSRLib.models.tvsrn import TVSRNConfig
from VolumetricSRLib.models.weights import load_model, save_model
from VolumetricSRLib.phantom import chest_phantom

BASELINES = [name for name in REGISTRY if name != "tvsrn"]
CT = "TotalSegmentator/example_ct_sm.nii.gz"  # a training fixture; never the held-out test scans
TINY_VIT = {"vit_patch": 4, "vit_dim": 16, "vit_layers": 1, "vit_heads": 2}
METHOD_NAMES = [*BASELINES, "tvsrn_full", "tvsrn_no_tab", "tvsrn_encoder_only", "tvsrn_vit"]
# parameters of each comparison config (training/README.md); the papers' own counts are in methods.METHODS
DOCUMENTED_PARAMETERS = {
    "ablation_tvsrn_full.toml": 1_719_865,
    "ablation_tvsrn_no_tab.toml": 1_516_569,
    "ablation_tvsrn_encoder_only.toml": 1_602_704,
    "ablation_tvsrn_vit.toml": 17_480_464,
    "baseline_resvox.toml": 500_001,
    "baseline_resvox_gan.toml": 500_001,  # the generator; its discriminator is training-only
    "baseline_mpunet.toml": 770_369,
    "baseline_saint.toml": 207_106,
    "baseline_davsr.toml": 195_682,
}


def tiny_model(method: str, **overrides) -> dict:
    """The model table of a tiny configuration of a method (direct output unless overridden)."""
    settings = {"output": "direct", **overrides}
    if method in BASELINES:
        return REGISTRY[method].config.tiny(**settings).to_dict()
    variant = method.removeprefix("tvsrn_")
    extra = TINY_VIT if variant == "vit" else {}
    return TVSRNConfig.tiny(variant=variant, **extra, **settings).to_dict()


def tiny_network(method: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(tiny_model(method, **overrides))


@pytest.fixture(scope="module")
def phantom_volumes() -> list[list[ThinVolume]]:
    """A synthetic 1 mm chest in memory, as the trainer's sampler holds its volumes."""
    hu, _ = chest_phantom((30, 40, 40), slice_mm=1.0, pixel_mm=6.0)
    return [[ThinVolume("phantom", hu_to_unit(hu.astype(np.float32)), 1)]]


def tiny_train_config(run_dir, method: str, **overrides) -> TrainConfig:
    settings = {
        "run_dir": str(run_dir), "model": tiny_model(method), "crop": [4, 16, 16], "batch": 2, "steps": 30,
        "lr": 3e-3, "warmup": 2, "log_every": 1, "device": "cpu", "threads": 1, "progress": False,
        "snapshot_every": 0, "tensorboard": False, "plot": False,
    }  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


def phantom_trainer(cfg: TrainConfig, volumes: list[list[ThinVolume]]) -> Trainer:
    trainer = Trainer(cfg)
    trainer.sampler = PseudoPairSampler(volumes, [], cfg.network.ratio, tuple(cfg.crop))
    return trainer


def logged_losses(run_dir) -> list[float]:
    with open(run_dir / "log.csv", newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle) if row["loss"]]


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize(("ratio", "depth", "size"), [(5, 4, (13, 22)), (3, 3, (16, 9))])
def test_every_method_maps_thick_windows_to_the_thin_slices_they_span(method, ratio, depth, size):
    if method == "tvsrn_vit" and size[1] % 4:
        size = (size[0], size[1] + 3)  # any size works; keep the ViT's padded grid small
    network = tiny_network(method, ratio=ratio, depth=depth)
    out = network(torch.rand(2, depth, *size))
    assert out.shape == (2, (depth - 1) * ratio + 1, *size)
    assert network.cfg.depth == depth and network.cfg.ratio == ratio


def test_plane_views_and_the_depth_shuffle_put_every_voxel_where_it_belongs():
    x = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).view(2, 4, 5, 6)
    sagittal = planes(x, "sagittal", 3)  # plane (b, column i), channel k: column i + k - 1, edges repeated
    assert sagittal.shape == (12, 3, 4, 5)
    torch.testing.assert_close(sagittal[1 * 6 + 0, 0], x[1, :, :, 0])
    torch.testing.assert_close(sagittal[1 * 6 + 2, 2], x[1, :, :, 3])
    coronal = planes(x, "coronal", 3)
    torch.testing.assert_close(coronal[0 * 5 + 4, 1], x[0, :, 4, :])
    torch.testing.assert_close(coronal[0 * 5 + 4, 2], x[0, :, 4, :])
    for view in ("sagittal", "coronal"):
        torch.testing.assert_close(unplanes(planes(x, view), 2, view), x)
    groups = torch.arange(3.0).view(1, 3, 1, 1).expand(1, 3, 4, 1) + 10 * torch.arange(4.0).view(1, 1, 4, 1)
    assert depth_shuffle(groups, 3, 10).flatten().tolist() == [0, 1, 2, 10, 11, 12, 20, 21, 22, 30]


@pytest.mark.parametrize("method", list(BASELINES))
def test_a_residual_baseline_starts_as_linear_interpolation(method):
    network = tiny_network(method, output="residual")
    x = torch.rand(1, 4, 12, 10)
    linear = torch.einsum("td,bdhw->bthw", depth_interpolation_matrix(4, 5), x)
    torch.testing.assert_close(network(x), linear)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_a_few_steps_lower_the_loss_on_a_phantom_crop(method, phantom_volumes, tmp_path):
    trainer = phantom_trainer(tiny_train_config(tmp_path, method), phantom_volumes)
    trainer.run()
    values = logged_losses(tmp_path)
    assert len(values) == 30
    assert np.mean(values[-5:]) < 0.6 * np.mean(values[:5])


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_a_few_steps_lower_the_loss_on_a_real_ct_crop(method, tmp_path):
    cfg = tiny_train_config(tmp_path, method, train_volumes=[str(shared_ct(CT))])
    Trainer(cfg).run()
    values = logged_losses(tmp_path)
    assert np.mean(values[-5:]) < 0.6 * np.mean(values[:5])


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_the_predictor_fills_the_thin_grid_with_any_method(method):
    hu, _ = chest_phantom((7, 21, 26), slice_mm=5.0, pixel_mm=8.0)
    affine = np.array([[0.0, -0.7, 0.1, 10.0], [-0.8, 0.0, 0.0, -3.0], [0.0, 0.05, 5.0, 40.0], [0, 0, 0, 1]])
    network = tiny_network(method)
    expected = geometry.thin_grid(affine, 7, 5)
    for options in (PredictOptions(device="cpu"), PredictOptions(device="cpu", tile=16, tile_overlap=4)):
        thin, thin_affine = super_resolve_hu(network, hu, affine, options)
        assert thin.shape == (expected.slices, 21, 26) == (31, 21, 26)
        np.testing.assert_allclose(thin_affine, expected.affine)
        assert np.isfinite(thin).all()


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_checkpoints_and_model_files_rebuild_the_same_network(method, phantom_volumes, tmp_path):
    trainer = phantom_trainer(tiny_train_config(tmp_path / "run", method, steps=2), phantom_volumes)
    trainer.run()
    network, state = network_from_checkpoint(tmp_path / "run" / "last.pt")
    assert type(network) is type(trainer.model) and network.cfg == trainer.model.cfg
    assert state_digest(network) == state_digest(trainer.model) and state["step"] == 2
    card = save_model(network, tmp_path, id=method, name=method, trained=True)
    loaded, read = load_model(card)
    assert type(loaded) is type(network) and read.config == network.cfg
    assert state_digest(loaded) == state_digest(network)
    x = torch.rand(1, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network.eval()(x))
    assert load_for_evaluation(tmp_path / "run" / "last.pt").label.startswith(label_of(network.cfg) + " (")


@pytest.mark.parametrize("method", list(BASELINES))
def test_the_core_command_line_runs_an_exported_baseline(method, phantom_volumes, tmp_path, capsys):
    phantom_trainer(tiny_train_config(tmp_path / "run", method, steps=1), phantom_volumes).run()
    card = export_checkpoint(tmp_path / "run" / "last.pt", tmp_path, id=f"{method}-x5", name=method)
    hu, affine = chest_phantom((6, 20, 18), slice_mm=5.0, pixel_mm=1.0)
    thick = write_volume(tmp_path / "thick.nii.gz", to_int16_hu(hu), affine)
    assert core_main(["summary", "--model", str(card)]) == 0
    assert f"{method}-x5: {method} (trained, x5" in capsys.readouterr().out
    assert core_main(["predict", str(thick), str(tmp_path / "thin.nii.gz"), "--model", str(card),
                      "--device", "cpu"]) == 0  # fmt: skip
    thin = read_volume(tmp_path / "thin.nii.gz")
    assert thin.array.shape == (26, 20, 18)
    np.testing.assert_allclose(thin.affine, geometry.thin_grid(affine, 6, 5).affine, atol=1e-4)


def test_parameter_counts_are_the_documented_ones():
    rows = {row["config"]: row for row in parameter_rows()}
    assert {name: row["parameters"] for name, row in rows.items()} == DOCUMENTED_PARAMETERS
    assert {name: row["paper"] for name, row in rows.items()} == METHODS
    bounds = {name: row["paper_at_least"] for name, row in rows.items() if row["paper_at_least"]}
    assert bounds == {name: 1.73e6 for name in METHODS if name.startswith("baseline_")}
    table = parameter_table()
    assert "| SAINT-lite | baseline_saint.toml | 0.21M | > 1.73M (more than TVSRN) |" in table
    assert "| TVSRN | ablation_tvsrn_full.toml | 1.72M | 1.73M |" in table


def test_every_method_is_near_its_papers_size_or_carries_a_variant_name():
    """A count below the paper's figure (or its lower bound) by more than 5 %: the label must say variant."""
    variant_words = ("-lite", "without", "only")
    for row in parameter_rows():
        reference = row["paper"] or row["paper_at_least"]
        if row["parameters"] < 0.95 * reference:
            assert any(word in row["method"] for word in variant_words), row


def test_every_method_trains_under_the_shared_budget():
    shared = load_config(CONFIGS / SHARED_BUDGET).to_dict()
    architectures = set()
    for name in METHODS:
        cfg = method_config(name)
        differences = {d.split(":")[0] for d in learning_differences(shared, cfg.to_dict())}
        assert differences - {"model"} == set(BUDGET_EXCEPTIONS.get(name, {}))
        assert cfg.model["output"] == "residual" and cfg.val_every > 0
        architectures.add(trained_label(cfg.network, cfg.to_dict()))
    assert len(architectures) == len(METHODS)


@pytest.mark.parametrize(
    ("source", "box_source"),
    [("domain_gap_mpunet", "baseline_mpunet.toml"), ("domain_gap_tvsrn", "ablation_tvsrn_full.toml")],
)
@pytest.mark.parametrize("slab", ["gaussian", "sparse"])
def test_each_domain_gap_source_differs_from_its_box_source_only_in_its_slab(source, box_source, slab):
    box = load_config(CONFIGS / box_source)
    other = load_config(CONFIGS / f"{source}_{slab}.toml")
    assert box.slab == "box" and other.slab == slab and other.model == box.model
    assert learning_differences(box.to_dict(), other.to_dict()) == [f"slab: 'box' -> '{slab}'"]
    assert other.run_dir == f"runs/compare/{source}_{slab}"


def test_the_model_table_selects_the_architecture():
    saint = REGISTRY["saint"].config.tiny().to_dict()
    assert type(build_network({"arch": "saint", **saint})).__name__ == "SAINT"
    assert "arch" not in TVSRNConfig().to_dict()  # TVSRN cards and checkpoints stay as they were
    assert config_from_dict({"arch": "tvsrn", "variant": "no_tab"}) == TVSRNConfig(variant="no_tab")
    assert config_from_dict(REGISTRY["davsr"].config().to_dict()) == REGISTRY["davsr"].config()
    with pytest.raises(ValueError, match=r"unknown architecture 'unet'; choose one of .*'resvox'"):
        config_from_dict({"arch": "unet"})
    with pytest.raises(ValueError, match=r"unknown MPU-Net, L1 only config keys: \['window'\]"):
        config_from_dict({"arch": "mpunet", "window": 8})
    with pytest.raises(ValueError, match="levels must be at least 1"):
        config_from_dict({"arch": "mpunet", "levels": 0})
    assert set(REGISTRY) == {"tvsrn", "resvox", "mpunet", "saint", "davsr"}


def test_a_config_takes_the_settings_of_its_base(tmp_path):
    (tmp_path / "base.toml").write_text('steps = 7\nlr = 0.5\nmodel = { output = "direct" }\n')
    (tmp_path / "child.toml").write_text('base = "base.toml"\nlr = 0.25\nmodel = { arch = "resvox" }\n')
    cfg = load_config(tmp_path / "child.toml")
    assert (cfg.steps, cfg.lr, cfg.model) == (7, 0.25, {"arch": "resvox"})
    (tmp_path / "base.toml").write_text('base = "child.toml"\n')
    with pytest.raises(ValueError, match=r"config base cycle: child.toml -> base.toml -> child.toml"):
        load_config(tmp_path / "child.toml")


def test_a_gan_trained_network_says_so_in_its_label():
    resvox, mpunet = REGISTRY["resvox"].config(), REGISTRY["mpunet"].config()
    assert trained_label(resvox, {"adversarial_weight": 0.0}) == "ResVox without GAN"
    assert trained_label(resvox, {"adversarial_weight": 1e-3}) == "ResVox-lite (GAN)"
    assert trained_label(mpunet, {"adversarial_weight": 1e-3}) == f"{label_of(mpunet)} + adversarial loss"
    assert trained_label(resvox, None) == "ResVox without GAN"  # a card without its training config
    rows = {row["config"]: row["method"] for row in parameter_rows()}
    assert rows["baseline_resvox_gan.toml"] == "ResVox-lite (GAN)"
    assert rows["baseline_resvox.toml"] == "ResVox without GAN"


def test_model_cards_still_name_every_architecture_without_torch():
    """Slicer's GUI process reads cards of any architecture and never imports torch."""
    code = (
        "import sys; from VolumetricSRLib.models import model_cards; "
        "from VolumetricSRLib.models.architectures import config_from_dict; "
        "config_from_dict({'arch': 'saint'}); assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO / "VolumetricSR", check=True)
