"""Fine-tune a model on a site's own thin CT: pseudo pairs from the site's thin series, starting from a
bundled (or any) model, a held-out part scored before and after with the paper's protocol, and a new
model whose card names its parent and its data. A fine-tuned model that scores lower than its parent
on the held-out scans is reported as such and never made the default."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from VolumetricSRLib.inference.predictor import PredictOptions
from VolumetricSRLib.models.model_cards import read_card, resolve_card_path
from VolumetricSRLib.models.weights import DEFAULT_MARKER

from .config import TrainConfig
from .evaluate import evaluate, load_for_evaluation, pseudo_cases, thin_volume_paths
from .export import export_checkpoint
from .trainer import Trainer


@dataclass(frozen=True)
class FinetuneResult:
    """The new model's card, and the held-out PSNR of the parent, of the new model and of cubic."""

    card: Path
    parent_psnr: float
    psnr: float
    cubic_psnr: float

    @property
    def gain(self) -> float:
        return self.psnr - self.parent_psnr

    def line(self, parent: str) -> str:
        """The outcome in the model card's units (dB of PSNR on the held-out scans)."""
        verdict = (
            "better than its parent"
            if self.gain > 0
            else "WORSE than its parent: keep using the parent (it was not made the default)"
        )
        return (
            f"held-out PSNR: {parent} {self.parent_psnr:.2f} dB, fine-tuned {self.psnr:.2f} dB "
            f"({self.gain:+.2f} dB, {verdict}); cubic {self.cubic_psnr:.2f} dB"
        )


def split_volumes(paths: list[Path], held_out: int) -> tuple[list[Path], list[Path]]:
    """(training volumes, held-out volumes): the last `held_out` of the sorted paths are held out."""
    paths = sorted(paths)
    if held_out < 1 or len(paths) <= held_out:
        raise ValueError(
            f"fine-tuning needs at least one volume to train on and {max(held_out, 1)} to hold out for "
            f"scoring; {len(paths)} thin volume(s) were given"
        )
    return paths[:-held_out], paths[-held_out:]


def finetune(
    parent: str,
    thin: list[str],
    run_dir: str,
    out_dir: str,
    *,
    model_id: str,
    name: str,
    held_out: int = 1,
    steps: int = 500,
    lr: float = 1e-4,
    crop: int = 64,
    device: str = "auto",
    threads: int = 2,
    set_default: bool = False,
    log=print,
) -> FinetuneResult:
    """Fine-tune `parent` on pseudo pairs of the `thin` volumes (files or folders) but the held-out
    ones, score both models on those, export the new one into `out_dir`."""
    card_path = resolve_card_path(parent)
    card = read_card(card_path)
    train, held = split_volumes(thin_volume_paths(thin), held_out)
    cfg = TrainConfig(
        run_dir=run_dir,
        model=dict(card.architecture),
        train_volumes=[str(path) for path in train],
        val_volumes=[str(path) for path in held],
        init_from=str(card_path),
        crop=[card.config.depth, crop, crop],
        steps=steps,
        lr=lr,
        warmup=min(50, steps // 10),
        device=device,
        threads=threads,
        progress=False,
        tensorboard=False,
    )
    cases = list(pseudo_cases(held, card.ratio))
    options = PredictOptions(device="cpu" if device == "auto" else device)
    _, before = evaluate(load_for_evaluation(card_path), cases, options)
    log(f"parent {card.id} on the held-out scans: {before['methods']['model']['psnr_mean']:.2f} dB")
    trainer = Trainer(cfg)
    if not trainer.resume():
        trainer.start_from(str(card_path))
    try:
        trainer.run()
    finally:
        trainer.ctx.close()
    trainer.raise_if_stopped()
    checkpoint = Path(run_dir) / "last.pt"
    _, after = evaluate(load_for_evaluation(checkpoint), cases, options)
    result = FinetuneResult(
        Path(out_dir) / f"{model_id}.json",
        before["methods"]["model"]["psnr_mean"],
        after["methods"]["model"]["psnr_mean"],
        after["methods"]["cubic"]["psnr_mean"],
    )
    held_names = ", ".join(path.name for path in held)
    description = (
        f"{name}: {card.id} fine-tuned for {steps} steps on pseudo pairs of {len(train)} site volume(s) "
        f"({', '.join(path.name for path in train)}); {result.line(card.id)} on {held_names}."
    )
    export_checkpoint(
        checkpoint,
        out_dir,
        id=model_id,
        name=name,
        description=description,
        metrics={"held_out": {**after, "parent": {"model": card.id, **before["methods"]["model"]}}},
        thick_spacing_mm=card.thick_spacing_mm or 5.0,
        set_default=set_default and result.gain > 0 and math.isfinite(result.gain),
    )
    if set_default and result.gain <= 0:
        log(f"not made the default ({Path(out_dir) / DEFAULT_MARKER} unchanged): it is worse than {card.id}")
    log(result.line(card.id))
    return result
