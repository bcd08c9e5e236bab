"""The training loop: random crops, L1 loss (plus an adversarial loss where a config asks for one),
checkpoints with exact resume, DDP through torchrun.

Checkpoints (`last.pt`, `best.pt`, `step_NNNNNN.pt` in the run folder) hold the model and optimizer
state (and the discriminator's, with an adversarial loss), the step, the best validation PSNR, the
config (JSON) and, since they were added, the training seconds so far and the hardware used; they are
written atomically and read with `weights_only=True`. Batches depend only on (seed, rank, step), so a
resumed run continues exactly.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from VolumetricSRLib.atomic import atomic_path
from VolumetricSRLib.inference.device import describe_device, resolve_device
from VolumetricSRLib.models.networks import build_network
from VolumetricSRLib.models.thin_slice_network import depth_interpolation_matrix, l1_loss

from .adversarial import PatchDiscriminator3d, discriminator_loss, generator_loss
from .checkpoints import read_checkpoint, state_digest
from .config import SCHEDULE_KEYS, TrainConfig, learning_differences
from .curves import LOG_FIELDS, logged_seconds, plot_curves, read_log
from .data import PairSampler, PseudoPairSampler, load_thin_volumes
from .run_lock import run_folder_lock

STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)


class TrainingStopped(Exception):
    """A stop signal ended a run before its last step; its `last.pt` holds the step it reached."""

    def __init__(self, number: int, step: int, run_dir: Path) -> None:
        self.number = number
        super().__init__(
            f"{signal.Signals(number).name} received: {run_dir / 'last.pt'} holds step {step}; run the "
            "same command to resume exactly"
        )


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to zero at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


class DistributedContext:
    """Rank and world size from torchrun's environment (a single process without it)."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = device
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, value: object) -> list:
        """Every rank's value, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values: list = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank (so all ranks stop at the same step)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


class Trainer:
    """Runs or resumes one training run in cfg.run_dir."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and "LOCAL_RANK" in os.environ:
            self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(self.device)
        self.ctx = DistributedContext(self.device)
        self.run_dir = Path(cfg.run_dir)
        torch.manual_seed(cfg.seed)
        self.model = build_network(cfg.network).to(self.device)
        net = cfg.network
        self.interp = depth_interpolation_matrix(net.depth, net.ratio).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model)
        self.discriminator, self.d_optimizer = None, None
        if cfg.adversarial_weight > 0:
            if self.ctx.enabled:
                raise ValueError("adversarial training runs in one process: start it without torchrun")
            self.discriminator = PatchDiscriminator3d().to(self.device)
            parameters = self.discriminator.parameters()
            self.d_optimizer = torch.optim.Adam(parameters, lr=cfg.lr, betas=(0.5, 0.999))
        self.step = 0
        self.best_psnr = -math.inf
        self.train_seconds = 0.0
        here = (
            f"{self.ctx.world} x {describe_device(self.device)}"
            if self.ctx.enabled
            else describe_device(self.device)
        )
        self.hardware = [here]
        # earlier runs whose weights this one continues (init_from), oldest first
        self.lineage: list[dict] = []
        # (loss, linear loss) of the steps since the last log row: kept in checkpoints for exact logs
        self.unlogged: list[tuple[float, float]] = []
        self.autocast = cfg.amp and self.device.type == "cuda"
        self.sampler: PairSampler | None = None
        self.ddp: DistributedDataParallel | None = None
        self.tensorboard = None
        # the signal that asked this run to stop after its current step (None: none came)
        self.stop_signal: int | None = None

    def raise_if_stopped(self) -> None:
        """TrainingStopped when a stop signal ended the last run() before the run's last step."""
        if self.stop_signal is not None and self.step < self.cfg.steps:
            raise TrainingStopped(self.stop_signal, self.step, self.run_dir)

    # checkpoints -------------------------------------------------------------------------------
    def checkpoint_path(self, name: str = "last") -> Path:
        return self.run_dir / f"{name}.pt"

    def save(self, name: str = "last") -> None:
        """Write a checkpoint atomically (rank 0 only); refresh the curves next to `last`."""
        if not self.ctx.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "best_psnr": self.best_psnr,
            "config": json.dumps(self.cfg.to_dict()),
            "train_seconds": self.train_seconds,
            "hardware": list(self.hardware),
            "lineage": json.dumps(self.lineage),
            "unlogged_losses": torch.tensor(self.unlogged, dtype=torch.float64).reshape(-1, 2),
        }
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            state["discriminator_optimizer"] = self.d_optimizer.state_dict()
        with atomic_path(self.checkpoint_path(name)) as temporary:
            torch.save(state, temporary)
        if name == "last":
            self.plot()

    def resume(self, path: Path | None = None) -> bool:
        """Load the run's last checkpoint (or `path`); False when there is none."""
        path = path or self.checkpoint_path("last")
        if not path.exists():
            return False
        state = read_checkpoint(path, self.device)
        saved = state["config"]
        self._check_model(saved, path)
        changed = learning_differences(saved, self.cfg.to_dict())
        if changed:
            raise ValueError(
                f"{path} was trained with other settings ({'; '.join(changed)}): resume it with the "
                "settings it started with, or continue from its weights under the new settings in a new "
                f'run (another run_dir, with init_from = "{path}")'
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["discriminator_optimizer"])
        self.step = int(state["step"])
        self.best_psnr = float(state["best_psnr"])
        if "train_seconds" in state:
            self.train_seconds = float(state["train_seconds"])
        elif (self.run_dir / "log.csv").exists():  # checkpoints from before the clock was saved
            rows = [r for r in read_log(self.run_dir / "log.csv") if r["step"] <= self.step]
            self.train_seconds = logged_seconds(rows)
        earlier = [h for h in state.get("hardware", []) if h not in self.hardware]
        self.hardware = earlier + self.hardware
        self.lineage = json.loads(state.get("lineage", "[]"))
        if "unlogged_losses" in state:
            self.unlogged = [tuple(pair) for pair in state["unlogged_losses"].tolist()]
        return True

    def start_from(self, path: str | Path) -> int:
        """Begin this run with another run's weights (fresh optimizer and schedule); returns its step.

        That run (and any it continued) is recorded in the lineage, which the model card reports.
        """
        path = Path(path)
        if path.suffix.lower() != ".pt":
            return self._start_from_model(str(path))
        if not path.is_file():
            raise FileNotFoundError(f"init_from checkpoint not found: {path}")
        state = read_checkpoint(path, self.device)
        saved = state["config"]
        if self.cfg.init_partial:
            partial = self._load_matching(state["model"], saved["model"], str(path))
        else:
            self._check_model(saved, path)
            self.model.load_state_dict(state["model"])
            partial = None
        this_run = {
            "checkpoint": str(path),
            "steps": int(state["step"]),
            "minutes": round(float(state.get("train_seconds", 0.0)) / 60, 1),
            "hardware": list(state.get("hardware", [])),
            "schedule": {key: saved[key] for key in SCHEDULE_KEYS if key in saved},
            **({"partial": partial} if partial else {}),
        }
        self.lineage = [*json.loads(state.get("lineage", "[]")), this_run]
        return int(state["step"])

    def _load_matching(self, tensors: dict, their_model: dict, source: str) -> dict:
        """Load the tensors of `source` whose names and shapes this network shares (same architecture,
        any depth or ratio); returns what was taken and what starts fresh, for the lineage."""
        from VolumetricSRLib.models.architectures import ARCH_KEY, TVSRN_ARCH

        ours, theirs = self.cfg.model.get(ARCH_KEY, TVSRN_ARCH), their_model.get(ARCH_KEY, TVSRN_ARCH)
        if ours != theirs:
            raise ValueError(f"{source} is a {theirs} network; init_partial needs a {ours} one")
        own = self.model.state_dict()
        shared = [name for name, value in tensors.items() if name in own and own[name].shape == value.shape]
        taken = {name: tensors[name] for name in shared}
        if not taken:
            raise ValueError(f"{source} shares no tensor of matching name and shape with this network")
        self.model.load_state_dict(taken, strict=False)
        fresh = sorted(set(own) - set(taken))
        parameters = {name: value.numel() for name, value in self.model.named_parameters()}
        return {
            "parameters_taken": sum(parameters.get(name, 0) for name in taken),
            "parameters_fresh": sum(parameters.get(name, 0) for name in fresh),
            "fresh": fresh,
        }

    def _start_from_model(self, model: str) -> int:
        """Begin with the weights of a model file or bundled model (its card is the lineage's record)."""
        from VolumetricSRLib.models.architectures import config_from_dict
        from VolumetricSRLib.models.weights import load_model

        network, card = load_model(model, device="cpu")
        if self.cfg.init_partial:
            partial = self._load_matching(network.state_dict(), card.architecture, card.id)
        elif config_from_dict(card.architecture) != config_from_dict(self.cfg.model):
            raise ValueError(f"{card.id} is a {card.architecture} network, not the config's {self.cfg.model}")
        else:
            self.model.load_state_dict(network.state_dict())
            partial = None
        training = card.training or {}
        this_run = {
            "model": card.id,
            "model_sha256": card.sha256,
            "steps": int(training.get("steps") or 0),
            "minutes": float(training.get("minutes") or 0.0),
            "hardware": [str(training.get("hardware", "not recorded"))],
            "schedule": dict(training.get("schedule", {})),
            **({"partial": partial} if partial else {}),
        }
        self.lineage = [this_run]
        return this_run["steps"]

    def _check_model(self, saved: dict, path: Path) -> None:
        if saved["model"] != self.cfg.model:
            raise ValueError(f"{path} was trained with model config {saved['model']}, not {self.cfg.model}")

    # data --------------------------------------------------------------------------------------
    def build_sampler(self) -> PairSampler:
        cfg = self.cfg
        crop = tuple(cfg.crop)
        if cfg.rplhr_root:
            from .rplhr import RealPairSampler, load_split

            pairs, report = load_split(
                cfg.rplhr_root, "train", cfg.network.ratio, cfg.network.depth, cfg.rplhr_skip_invalid
            )
            if self.ctx.main and (report.problems or any(p.notes for p in report.pairs)):
                print(report.text(), file=sys.stderr)
            return RealPairSampler(pairs, crop, cfg.inplane_scales, cfg.flip, cfg.min_body_fraction)
        if not cfg.train_volumes:
            raise ValueError(
                "no training data: set train_volumes (thin CT files) or rplhr_root in the config"
            )
        volumes = load_thin_volumes(cfg.train_volumes, cfg.inplane_scales)
        return PseudoPairSampler(
            volumes,
            cfg.train_weights,
            cfg.network.ratio,
            crop,
            cfg.slab,
            cfg.noise_hu,
            cfg.flip,
            cfg.min_body_fraction,
            cfg.inplane_pairs,
            cfg.augmentation(),
        )

    # loop --------------------------------------------------------------------------------------
    def train_step(self, thick: np.ndarray, thin: np.ndarray) -> tuple[float, float]:
        """One optimiser step (after one of the discriminator's, with an adversarial loss); returns the L1
        loss and linear interpolation's on the same batch."""
        cfg = self.cfg
        x = torch.from_numpy(thick).to(self.device)
        y = torch.from_numpy(thin).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.step)
        self.model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            pred = self.model_for_training(x)
        loss = l1_loss(pred.float(), y)
        total = loss
        if self.discriminator is not None:
            for group in self.d_optimizer.param_groups:
                group["lr"] = learning_rate(cfg, self.step)
            self.d_optimizer.zero_grad(set_to_none=True)
            discriminator_loss(self.discriminator, pred.float(), y).backward()
            self.d_optimizer.step()
            total = loss + cfg.adversarial_weight * generator_loss(self.discriminator, pred.float())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        with torch.no_grad():
            linear = torch.einsum("td,bdhw->bthw", self.interp, x)
            linear_loss = l1_loss(linear, y)
        return loss.item(), linear_loss.item()

    def model_for_training(self, x: torch.Tensor) -> torch.Tensor:
        return self.ddp(x) if self.ddp is not None else self.model(x)

    def run(self, max_steps: int | None = None, max_minutes: float | None = None) -> None:
        """Train until cfg.steps (or max_steps more steps / max_minutes) with periodic checkpoints."""
        from .evaluate import has_validation_data

        cfg = self.cfg
        self.sampler = self.sampler or self.build_sampler()
        if self.ctx.enabled and self.ddp is None:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        validating = bool(cfg.val_every) and has_validation_data(cfg)
        stop = cfg.steps if max_steps is None else min(cfg.steps, self.step + max_steps)
        self.stop_signal = None
        with run_folder_lock(self.run_dir) if self.ctx.main else nullcontext():
            log = self._open_log()
            self._open_tensorboard()
            with self._stop_on_signals():
                self._loop(stop, log, validating, max_minutes)
            if log is not None:
                log.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.tensorboard = None
        self.check_replicas()
        self.ctx.barrier()

    def _loop(self, stop: int, log, validating: bool, max_minutes: float | None) -> None:
        """The steps up to `stop`, ending early on max_minutes or a stop signal with `last.pt` written."""
        cfg = self.cfg
        started = last_save = time.monotonic()
        clock = self.train_seconds
        bar = tqdm(
            total=stop,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.ctx.main and cfg.progress),
        )
        while self.step < stop:
            thick, thin = self.sampler.batch(cfg.seed, self.ctx.rank, self.step, cfg.batch)
            self.unlogged.append(self.train_step(thick, thin))
            self.step += 1
            bar.update(1)
            now = time.monotonic()
            self.train_seconds = clock + now - started
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                if self.ctx.main:
                    self._log_losses(log, bar)
                self.unlogged.clear()
            if validating and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                self.validate_and_log(log, self.train_seconds)
            if cfg.snapshot_every and self.step % cfg.snapshot_every == 0:
                self.save(f"step_{self.step:06d}")
            timed_out = max_minutes is not None and now - started > max_minutes * 60
            if self.ctx.agree(timed_out or self.stop_signal is not None):
                self.save("last")
                break
            if now - last_save > cfg.checkpoint_minutes * 60 or self.step == stop:
                self.save("last")
                last_save = now
        bar.close()

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """While training, the first stop signal only sets `stop_signal` (and puts the previous
        handlers back, so that a second one acts as it did before). Signals that are ignored (SIGHUP
        under nohup) stay ignored; outside the main thread nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handlers = {number: signal.getsignal(number) for number in STOP_SIGNALS}
        previous = {number: handler for number, handler in handlers.items() if handler != signal.SIG_IGN}

        def restore() -> None:
            for number, handler in previous.items():
                signal.signal(number, handler)

        def request_stop(number: int, _frame) -> None:
            self.stop_signal = number
            restore()

        for number in previous:
            signal.signal(number, request_stop)
        try:
            yield
        finally:
            restore()

    def _log_losses(self, log, bar: tqdm) -> None:
        """One log row: the mean losses of the steps since the previous row."""
        mean = np.mean(self.unlogged, axis=0)
        row = {
            "step": self.step,
            "loss": mean[0],
            "linear_loss": mean[1],
            "lr": learning_rate(self.cfg, self.step - 1),
            "seconds": self.train_seconds,
        }
        self._write_log(log, row)
        bar.set_postfix(loss=f"{mean[0]:.5f}", linear=f"{mean[1]:.5f}")

    def validate_and_log(self, log, seconds: float) -> None:
        """Score the validation cases with the full predictor (shared out over the ranks); keep the best."""
        from .evaluate import mean_scores, validation_scores

        shares = self.ctx.gather(validation_scores(self.model, self.cfg, (self.ctx.rank, self.ctx.world)))
        scores = mean_scores([score for share in shares for score in share])
        if self.ctx.main:
            self._write_log(
                log,
                {
                    "step": self.step,
                    "seconds": seconds,
                    "val_psnr": scores["psnr"],
                    "val_ssim": scores["ssim"],
                },
            )
        if scores["psnr"] > self.best_psnr:
            self.best_psnr = scores["psnr"]
            self.save("best")

    def check_replicas(self) -> None:
        """Under DDP, fail loudly unless every rank holds the same weights; optionally write digests."""
        digest = state_digest(self.model)
        if self.cfg.write_digests:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / f"replica_digest_rank{self.ctx.rank}.txt").write_text(digest + "\n")
        digests = self.ctx.gather(digest)
        if len(set(digests)) > 1:
            raise RuntimeError(f"DDP replicas diverged at step {self.step}: weight digests {digests}")

    def plot(self) -> None:
        """Redraw training_curves.png from log.csv (rank 0; skipped without matplotlib or rows)."""
        log = self.run_dir / "log.csv"
        if self.cfg.plot and self.ctx.main and log.exists():
            plot_curves(log, self.run_dir / "training_curves.png")

    # logs --------------------------------------------------------------------------------------
    def _open_log(self):
        if not self.ctx.main:
            return None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "log.csv"
        rows = []
        if path.exists():  # keep the rows up to the resumed step, drop those of a lost segment
            with open(path, newline="") as old:
                rows = [row for row in csv.DictReader(old) if int(row["step"]) <= self.step]
        with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        return open(path, "a", newline="")

    def _open_tensorboard(self) -> None:
        if not (self.cfg.tensorboard and self.ctx.main):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print(
                "TensorBoard logging is off: the tensorboard package is not installed "
                "(pip install tensorboard); the CSV log and the PNG curves are still written",
                file=sys.stderr,
            )
            return
        self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.step + 1)

    def _write_log(self, handle, row: dict) -> None:
        csv.writer(handle).writerow([row.get(k, "") for k in LOG_FIELDS])
        handle.flush()
        if self.tensorboard is not None:
            for key in ("loss", "linear_loss", "lr", "val_psnr", "val_ssim"):
                if key in row:
                    self.tensorboard.add_scalar(
                        f"train/{key}" if "val" not in key else f"val/{key[4:]}",
                        float(row[key]),
                        int(row["step"]),
                    )
            self.tensorboard.flush()
