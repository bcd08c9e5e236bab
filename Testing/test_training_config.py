"""Training configs: the data source (pseudo pairs or an RPLHR-CT root) is one choice through bases and
overrides, and the RPLHR-CT configs load as the README gives them."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO
from volumetricsr_training.config import load_config

CONFIGS = REPO / "training" / "configs"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_an_rplhr_root_on_top_of_pseudo_pairs_replaces_them_and_their_validation(tmp_path: Path) -> None:
    write(
        tmp_path / "base.toml",
        'train_volumes = ["a.nii.gz"]\ntrain_weights = [1.0]\nval_volumes = ["v.nii.gz"]\n',
    )
    child = write(tmp_path / "child.toml", 'base = "base.toml"\nrplhr_root = "/data/RPLHR-CT"\n')
    cfg = load_config(child)
    assert (cfg.rplhr_root, cfg.train_volumes, cfg.train_weights, cfg.val_volumes) == (
        "/data/RPLHR-CT",
        [],
        [],
        [],
    )
    cfg = load_config(tmp_path / "base.toml", ["rplhr_root=/data/RPLHR-CT"])
    assert (cfg.rplhr_root, cfg.train_volumes, cfg.val_volumes) == ("/data/RPLHR-CT", [], [])


def test_pseudo_pairs_on_top_of_an_rplhr_root_replace_it(tmp_path: Path) -> None:
    write(tmp_path / "base.toml", 'rplhr_root = "/data/RPLHR-CT"\n')
    child = write(tmp_path / "child.toml", 'base = "base.toml"\ntrain_volumes = ["a.nii.gz"]\n')
    assert (load_config(child).rplhr_root, load_config(child).train_volumes) == ("", ["a.nii.gz"])


def test_both_sources_in_one_file_are_still_refused(tmp_path: Path) -> None:
    both = write(tmp_path / "both.toml", 'train_volumes = ["a.nii.gz"]\nrplhr_root = "/data"\n')
    with pytest.raises(ValueError, match="give either train_volumes"):
        load_config(both)


@pytest.mark.parametrize("name", ["compare_budget.toml", "baseline_saint.toml", "ablation_tvsrn_full.toml"])
def test_the_comparison_configs_take_an_rplhr_root_as_the_readme_says(name: str) -> None:
    cfg = load_config(CONFIGS / name, ["rplhr_root=/data/RPLHR-CT"])
    assert cfg.rplhr_root == "/data/RPLHR-CT" and cfg.train_volumes == [] and cfg.val_volumes == []
    assert cfg.steps == 2000  # the shared budget is kept


def test_the_paper_budget_config() -> None:
    cfg = load_config(CONFIGS / "paper_rplhr.toml", ["rplhr_root=/data/RPLHR-CT"])
    assert (cfg.crop, cfg.batch, cfg.optimizer, cfg.lr, cfg.schedule, cfg.flip) == (
        [4, 256, 256], 1, "adam", 1e-4, "constant", True,
    )  # fmt: skip
    net = cfg.network
    assert (net.encoder_layers, net.tab_layers, net.axial_layers, net.ratio) == (8, 4, 7, 5)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda path: path.name)
def test_every_committed_config_loads_and_names_weights_that_exist(path: Path) -> None:
    from VolumetricSRLib.models.model_cards import resolve_card_path

    cfg = load_config(path)
    assert cfg.steps > 0 and cfg.crop[0] == cfg.network.depth
    if cfg.init_from and not cfg.init_from.endswith(".pt"):  # a bundled model id: it must be bundled
        assert resolve_card_path(cfg.init_from).is_file(), cfg.init_from
