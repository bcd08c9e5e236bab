"""`volumetricsr-train`: train, evaluate, export TVSRN models and check or make datasets.

Runs the same under torchrun for DDP: `torchrun --nproc_per_node N -m volumetricsr_training.cli train ...`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from VolumetricSRLib.inference.consistency import SLABS
from VolumetricSRLib.inference.device import DeviceError

from .config import load_config
from .trainer import TrainingStopped

EXIT_PROBLEMS = 1


def _train(args: argparse.Namespace) -> int:
    from .trainer import Trainer

    cfg = load_config(args.config, args.set)
    trainer = Trainer(cfg)
    if trainer.resume():
        if trainer.ctx.main:
            print(f"resumed {cfg.run_dir} at step {trainer.step}")
    elif cfg.init_from:
        step = trainer.start_from(cfg.init_from)
        if trainer.ctx.main:
            print(f"started {cfg.run_dir} from the weights of {cfg.init_from} (step {step})")
            partial = trainer.lineage[-1].get("partial")
            if partial:
                print(
                    f"  took {partial['parameters_taken']:,} parameters of matching name and shape; "
                    f"{partial['parameters_fresh']:,} start fresh, in: "
                    + ", ".join(sorted({name.split(".")[0] for name in partial["fresh"]}))
                )
    trainer.run(max_steps=args.max_steps, max_minutes=args.max_minutes)
    if trainer.ctx.main:
        print(f"stopped at step {trainer.step} of {cfg.steps}; checkpoints in {cfg.run_dir}")
    trainer.ctx.close()
    trainer.raise_if_stopped()
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .finetune import finetune

    run_dir = args.run_dir or f"runs/finetune_{args.id}"
    finetune(
        args.model,
        args.thin,
        run_dir,
        args.out,
        model_id=args.id,
        name=args.name,
        held_out=args.held_out,
        steps=args.steps,
        lr=args.lr,
        crop=args.crop,
        device=args.device,
        threads=args.threads,
        set_default=args.set_default,
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from VolumetricSRLib.inference.predictor import PredictOptions

    from .evaluate import (
        evaluate,
        load_for_evaluation,
        markdown_table,
        pseudo_cases,
        real_cases,
        thin_volume_paths,
        write_results,
    )

    # scores in float32 on every device
    options = PredictOptions(device=args.device, tile=args.tile, batch=args.batch, amp=False)
    model = load_for_evaluation(args.model, device="cpu")
    ratio, depth = model.network.cfg.ratio, model.network.cfg.depth
    if args.rplhr:
        cases = real_cases(args.rplhr, args.split, ratio, depth)
        data = f"real pairs of RPLHR-CT split {args.split} in {args.rplhr} (matched by world position)"
    else:
        paths = thin_volume_paths(args.volumes)
        cases = pseudo_cases(paths, ratio, args.slab)
        data = f"pseudo pairs ({args.slab} slab of {ratio} thin slices, simulated thick) from " + ", ".join(
            p.name for p in paths
        )
    rows, summary = evaluate(model, cases, options, log=print)
    summary["data"] = data
    summary["command"] = "volumetricsr-train " + shlex.join(args.argv)
    written = write_results(rows, summary, args.out, model.label)
    print()
    print(markdown_table(summary, model.label))
    print()
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint, read_metrics

    card = export_checkpoint(
        args.checkpoint,
        args.out,
        id=args.id,
        name=args.name,
        description=args.description,
        metrics=read_metrics(args.metrics),
        hardware=args.hardware,
        minutes=args.minutes,
        thick_spacing_mm=args.thick_spacing,
        overwrite=args.overwrite,
        set_default=args.set_default,
    )
    print(f"wrote {card} and {card.with_suffix('.safetensors')} (loaded back: OK)")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from .rplhr import check_dataset, check_values

    report = check_values(check_dataset(args.root, tuple(args.splits), args.ratio, args.min_slices))
    print(report.text())
    return 0 if report.ok else EXIT_PROBLEMS


def _make_pairs(args: argparse.Namespace) -> int:
    from VolumetricSRLib.intensity import to_int16_hu
    from VolumetricSRLib.io.volume_io import read_volume, volume_stem, write_volume

    from .evaluate import thin_volume_paths
    from .pseudo_pairs import make_pseudo_pair
    from .rplhr import THICK_FOLDER, THIN_FOLDER

    rng = np.random.default_rng(args.seed)
    folders = {kind: Path(args.out) / args.split / kind for kind in (THIN_FOLDER, THICK_FOLDER)}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for path in thin_volume_paths(args.volumes):
        volume = read_volume(path)
        pair = make_pseudo_pair(volume.array.astype(np.float32), volume.affine, args.ratio, args.slab)
        thick = pair.thick + rng.normal(0.0, args.noise_hu, pair.thick.shape) if args.noise_hu else pair.thick
        case = volume_stem(path)
        thin_out = write_volume(
            folders[THIN_FOLDER] / f"{case}.nii.gz",
            volume.array,
            volume.affine,
            overwrite=args.overwrite,
            input_path=path,
        )
        thick_out = write_volume(
            folders[THICK_FOLDER] / f"{case}.nii.gz",
            to_int16_hu(thick),
            pair.thick_affine,
            overwrite=args.overwrite,
            input_path=path,
        )
        print(
            f"{case}: {thin_out} ({volume.array.shape[0]} thin slices), {thick_out} ({thick.shape[0]} thick)"
        )
    return 0


def _report(args: argparse.Namespace) -> int:
    from VolumetricSRLib.inference.predictor import PredictOptions

    from .evaluate import pseudo_cases, real_cases, thin_volume_paths
    from .report import DEFAULT_METHODS, parse_methods, run_report

    specs = parse_methods(args.methods or DEFAULT_METHODS, args.set, args.runs)
    if args.rplhr:
        cases = list(real_cases(args.rplhr, args.split, args.ratio, args.min_slices))
        data = f"real pairs of RPLHR-CT split {args.split} in {args.rplhr} (matched by world position)"
    elif args.test:
        paths = thin_volume_paths(args.test)
        cases = list(pseudo_cases(paths, args.ratio, args.slab, args.noise_hu))
        names = ", ".join(p.name for p in paths)
        noise = f", Gaussian noise of {args.noise_hu:g} HU" if args.noise_hu else ""
        slab = f"{args.slab} slab of {args.ratio} thin slices{noise}"
        data = f"pseudo pairs ({slab}, simulated thick) from {names}"
    else:
        raise ValueError("give the data: --test THIN_VOLUMES (pseudo pairs) or --rplhr ROOT (real pairs)")
    options = PredictOptions(device=args.device, tile=args.tile, batch=args.batch, amp=False)
    command = "volumetricsr-train " + shlex.join(args.argv)
    written = run_report(specs, cases, data, options, args.out, command, train=not args.no_train)
    print((Path(args.out) / "report.md").read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _analyse_dataset(args: argparse.Namespace) -> int:
    from .dataset_analysis import run_cli

    return run_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="volumetricsr-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train or resume a run (also under torchrun for DDP)")
    train.add_argument("--config", help="TOML config file (defaults when omitted)")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    train.add_argument("--max-steps", type=int, help="stop after this many more steps")
    train.add_argument("--max-minutes", type=float, help="stop (with a checkpoint) after this many minutes")
    train.set_defaults(func=_train)

    evaluate = sub.add_parser(
        "evaluate", help="PSNR/SSIM (paper protocol) of a model, linear and cubic interpolation"
    )
    evaluate.add_argument(
        "--model",
        required=True,
        help="model file (.safetensors/.json), bundled model id, or checkpoint (.pt)",
    )
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--volumes", nargs="+", metavar="PATH", help="thin volumes or folders (pseudo pairs)")
    source.add_argument("--rplhr", metavar="ROOT", help="RPLHR-CT folder (real pairs)")
    evaluate.add_argument("--split", default="test", help="RPLHR-CT split (default test)")
    evaluate.add_argument("--slab", default="box", choices=SLABS, help="pseudo thick slab")
    evaluate.add_argument("--out", required=True, help="folder for cases.csv, summary.json, summary.md")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda")
    evaluate.add_argument("--tile", type=int, help="in-plane tile size (default: whole slices)")
    evaluate.add_argument("--batch", type=int, default=1, help="pieces per network call")
    evaluate.set_defaults(func=_evaluate)

    tune = sub.add_parser(
        "finetune",
        help="fine-tune a model on a site's thin CT (pseudo pairs), scored on held-out scans before, after",
    )
    tune.add_argument("--model", required=True, help="the parent: a bundled model id or a model file")
    tune.add_argument(
        "--thin", nargs="+", required=True, metavar="PATH", help="the site's thin volumes or folders"
    )
    tune.add_argument("--held-out", type=int, default=1, help="volumes held out for scoring (default 1)")
    tune.add_argument("--id", required=True, help="the new model's id (file name)")
    tune.add_argument("--name", required=True, help="the new model's name")
    tune.add_argument(
        "--out", default="Resources/Models", help="where the new model goes (default Resources/Models)"
    )
    tune.add_argument("--run-dir", help="the training run's folder (default runs/finetune_ID); rerun resumes")
    tune.add_argument("--steps", type=int, default=500, help="training steps (default 500)")
    tune.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    tune.add_argument("--crop", type=int, default=64, help="in-plane crop size (default 64)")
    tune.add_argument("--device", default="auto", help="auto, cpu or cuda")
    tune.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    tune.add_argument(
        "--set-default", action="store_true", help="make it the default model, only if it beats its parent"
    )
    tune.set_defaults(func=_finetune)

    export = sub.add_parser("export", help="checkpoint -> <id>.safetensors + <id>.json model card")
    export.add_argument("checkpoint", help="last.pt, best.pt or step_N.pt of a run")
    export.add_argument("--id", required=True, help="model id (file name)")
    export.add_argument("--name", required=True, help="human-readable model name")
    export.add_argument("--description", default="", help="card description (default: written from the run)")
    export.add_argument("--out", default="Resources/Models", help="output folder (default Resources/Models)")
    export.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="LABEL=SUMMARY.json",
        help="evaluation summary to put on the card, e.g. test=eval/test/summary.json",
    )
    export.add_argument("--hardware", help="what it was trained on (default: recorded in the checkpoint)")
    export.add_argument("--minutes", type=float, help="training minutes (default: from the checkpoint/log)")
    export.add_argument(
        "--thick-spacing", type=float, default=5.0, help="thick spacing the model is for (mm)"
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing model of this id")
    export.add_argument("--set-default", action="store_true", help="make it the default model (default.txt)")
    export.set_defaults(func=_export)

    check = sub.add_parser(
        "check-data", help="check an RPLHR-CT folder and report every case that does not fit"
    )
    check.add_argument("root", help="ROOT of ROOT/{train,val,test}/{1mm,5mm}/CASE.nii.gz")
    check.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="splits to check")
    check.add_argument("--ratio", type=int, help="the ratio every pair must have (e.g. 5)")
    check.add_argument("--min-slices", type=int, default=4, help="thick slices a pair needs (default 4)")
    check.set_defaults(func=_check_data)

    pairs = sub.add_parser(
        "make-pairs", help="write pseudo thick files beside thin ones in the RPLHR-CT layout"
    )
    pairs.add_argument("--volumes", nargs="+", required=True, metavar="PATH", help="thin volumes or folders")
    pairs.add_argument("--out", required=True, help="dataset ROOT")
    pairs.add_argument("--split", default="train", help="split folder (default train)")
    pairs.add_argument("--ratio", type=int, default=5, help="thin slices per thick slice (odd, default 5)")
    pairs.add_argument("--slab", default="box", choices=SLABS, help="slab profile")
    pairs.add_argument("--noise-hu", type=float, default=0.0, help="Gaussian noise added to the thick slices")
    pairs.add_argument("--seed", type=int, default=0, help="noise seed")
    pairs.add_argument("--overwrite", action="store_true", help="replace existing files")
    pairs.set_defaults(func=_make_pairs)

    report = sub.add_parser(
        "report", help="train (resuming) and score many methods on one dataset: table, CSV, trade-off plot"
    )
    report.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help="interpolations (nearest linear cubic lanczos), training configs (.toml), checkpoints or "
        "model files (default: the four interpolations and every config of methods.py)",
    )
    report.add_argument(
        "--test", nargs="+", metavar="PATH", help="thin test volumes or folders (pseudo pairs)"
    )
    report.add_argument("--rplhr", metavar="ROOT", help="RPLHR-CT folder (real pairs)")
    report.add_argument("--split", default="test", help="RPLHR-CT split (default test)")
    report.add_argument("--ratio", type=int, default=5, help="thin slices per thick slice (default 5)")
    report.add_argument("--min-slices", type=int, default=4, help="real pairs: thick slices a case needs")
    report.add_argument("--slab", default="box", choices=SLABS, help="pseudo thick slab")
    report.add_argument(
        "--noise-hu", type=float, default=0.0, help="Gaussian noise added to pseudo thick slices (seed 0)"
    )
    report.add_argument("--out", required=True, help="report folder (scores kept there for resuming)")
    report.add_argument("--device", default="cpu", help="prediction device (default cpu)")
    report.add_argument("--tile", type=int, help="in-plane tile size (default whole slices)")
    report.add_argument("--batch", type=int, help="windows per batch (default: automatic)")
    report.add_argument("--no-train", action="store_true", help="score only finished runs; train nothing")
    report.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every training config (e.g. rplhr_root=/data/RPLHR-CT to train on RPLHR-CT)",
    )
    report.add_argument("--runs", metavar="DIR", help="put every config's run folder into DIR")
    report.set_defaults(func=_report)

    analyse = sub.add_parser(
        "analyse-dataset", help="PSNR/SSIM of thick slices vs their Match/Near/Far thin slices (paper Fig. 1)"
    )
    analyse.add_argument("--rplhr", metavar="ROOT", help="RPLHR-CT folder (real pairs)")
    analyse.add_argument("--splits", nargs="+", default=["train", "val", "test"], help="RPLHR-CT splits")
    for split in ("train", "val", "test"):
        analyse.add_argument(
            f"--{split}", nargs="+", metavar="PATH", help=f"{split} thin volumes (pseudo pairs)"
        )
    analyse.add_argument("--ratio", type=int, default=5, help="pseudo pairs: thin slices per thick slice")
    analyse.add_argument("--slab", default="box", choices=SLABS, help="pseudo thick slab")
    analyse.add_argument("--out", required=True, help="folder for summary.md/.csv/.png and slice_pairs.csv")
    analyse.set_defaults(func=_analyse_dataset)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (ValueError, OSError, DeviceError) as exc:
        print(f"volumetricsr-train {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as stop:
        print(f"volumetricsr-train {args.command}: {stop}", file=sys.stderr)
        return 128 + stop.number


if __name__ == "__main__":
    sys.exit(main())
