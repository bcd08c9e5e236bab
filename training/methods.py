"""The methods of the comparison (the RPLHR-CT paper's ablations and CNN baselines): one config each in
training/configs under the shared budget of compare_budget.toml, and their parameter counts beside the
papers' (`python -m volumetricsr_training.methods` prints the table)."""

from __future__ import annotations

from pathlib import Path

import torch

from VolumetricSRLib.models.network_config import PAPER_PARAMETERS
from VolumetricSRLib.models.networks import build_network
from VolumetricSRLib.models.thin_slice_network import count_parameters

from .adversarial import trained_label
from .config import TrainConfig, load_config

CONFIGS = Path(__file__).resolve().parent / "configs"
SHARED_BUDGET = "compare_budget.toml"

# config file -> parameters the papers report (None: no count in the RPLHR-CT paper nor in the sources we had)
METHODS: dict[str, float | None] = {
    "ablation_tvsrn_full.toml": PAPER_PARAMETERS["full"],
    "ablation_tvsrn_no_tab.toml": PAPER_PARAMETERS["no_tab"],
    "ablation_tvsrn_encoder_only.toml": PAPER_PARAMETERS["encoder_only"],
    "ablation_tvsrn_vit.toml": PAPER_PARAMETERS["vit"],
    "baseline_resvox.toml": None,
    "baseline_resvox_gan.toml": None,
    "baseline_mpunet.toml": None,
    "baseline_saint.toml": None,
    "baseline_davsr.toml": None,
}

# the RPLHR-CT paper says TVSRN has the fewest parameters: each published CNN baseline has more than this
CNN_LOWER_BOUND = PAPER_PARAMETERS["full"]

# settings besides the model where a method leaves the shared budget, and why (its config says more)
BUDGET_EXCEPTIONS: dict[str, dict[str, str]] = {
    "ablation_tvsrn_vit.toml": {"lr": "the 17M-parameter ViT collapsed to linear interpolation at 1e-3"},
    "baseline_resvox_gan.toml": {"adversarial_weight": "ResVoxGAN's adversarial loss"},
}


def method_config(name: str) -> TrainConfig:
    """The training config of one method (a file name of METHODS)."""
    if name not in METHODS:
        raise ValueError(f"unknown method config {name!r}; choose one of {sorted(METHODS)}")
    return load_config(CONFIGS / name)


def parameter_rows() -> list[dict]:
    """Per method: its label, config file, our parameter count, the paper's (or None) and, for the CNN
    baselines, the lower bound the paper implies ("paper_at_least", else None)."""
    rows = []
    for name, paper in METHODS.items():
        net = method_config(name).network
        with torch.device("meta"):  # shapes only: nothing is allocated
            ours = count_parameters(build_network(net))
        label = trained_label(net, method_config(name).to_dict())
        at_least = CNN_LOWER_BOUND if name.startswith("baseline_") else None
        rows.append(
            {"method": label, "config": name, "parameters": ours, "paper": paper, "paper_at_least": at_least}
        )
    return rows


def parameter_table() -> str:
    """Markdown table of parameter counts, ours beside the papers'."""
    lines = ["| method | config | parameters | paper |", "| --- | --- | --- | --- |"]
    for row in parameter_rows():
        if row["paper"] is not None:
            paper = f"{row['paper'] / 1e6:.2f}M"
        elif row["paper_at_least"] is not None:
            paper = f"> {row['paper_at_least'] / 1e6:.2f}M (more than TVSRN)"
        else:
            paper = "not reported"
        lines.append(f"| {row['method']} | {row['config']} | {row['parameters'] / 1e6:.2f}M | {paper} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(parameter_table())
