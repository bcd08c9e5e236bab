"""Dataset analysis (paper Fig. 1): how close each thick slice is to the thin slices around it.

Every thick slice is compared with the thin slice at its world position ("Match"), the thin slices
one thin slice away on both sides ("Near", 1 mm in RPLHR-CT) and two away ("Far", 2 mm). The thin
slice under a thick slice comes from the affines (world coordinates), never from index arithmetic;
thick slices outside the thin series are left out, and a case with a thick slice that lies between
two thin slices is refused. PSNR (peak 1) and SSIM per slice pair are the project's metrics on the
paper's scale: HU clipped to [-1024, 2048] and scaled to [0, 1]. Results are summarised per split
and overall as mean +- population std over slice pairs.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import shlex
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from VolumetricSRLib.atomic import atomic_path, write_text_atomically
from VolumetricSRLib.geometry import validate_affine, voxel_spacing
from VolumetricSRLib.intensity import HU_MAX, HU_MIN, hu_to_unit
from VolumetricSRLib.io.volume_io import read_volume, volume_stem
from VolumetricSRLib.metrics import psnr, ssim_2d

from .evaluate import thin_volume_paths
from .pseudo_pairs import make_pseudo_pair
from .rplhr import POSITION_TOLERANCE, SPLITS, DatasetError, PairMismatch, check_dataset

CATEGORY_STEPS = {"Match": (0,), "Near": (-1, 1), "Far": (-2, 2)}  # thin slices away from the Match
ALL = "all"
SLICE_FIELDS = ("split", "case", "category", "thick_slice", "thin_slice", "offset_mm", "psnr", "ssim")
SUMMARY_FIELDS = (
    "split",
    "category",
    "cases",
    "pairs",
    "psnr_mean",
    "psnr_std",
    "ssim_mean",
    "ssim_std",
    "identical",
)
FILES = {
    "slices": "slice_pairs.csv",
    "summary": "summary.csv",
    "markdown": "summary.md",
    "plot": "summary.png",
}
METRICS_TEXT = (
    f"HU clipped to [{HU_MIN:g}, {HU_MAX:g}] and scaled to [0, 1]; PSNR (peak 1) and SSIM (11 x 11 Gaussian "
    "window, sigma 1.5, K1 0.01, K2 0.03) of each thick slice against each thin slice"
)


@dataclass
class AnalysisCase:
    """A thick and a thin series of one case (HU, (K, J, I)) with their voxel-to-world affines."""

    split: str
    name: str
    thick: np.ndarray
    thick_affine: np.ndarray
    thin: np.ndarray
    thin_affine: np.ndarray
    source: str


@dataclass(frozen=True)
class CaseInfo:
    """What the report says about one analysed case."""

    split: str
    name: str
    thin_spacing_mm: float
    thick_spacing_mm: float
    thick_used: int
    thick_total: int
    source: str
    means: dict[str, tuple[float, float]]  # category -> (mean PSNR of finite values, mean SSIM)


# matching by world position --------------------------------------------------------------------
def match_slices(
    thick_shape: tuple[int, ...],
    thick_affine: np.ndarray,
    thin_shape: tuple[int, ...],
    thin_affine: np.ndarray,
    tolerance: float = POSITION_TOLERANCE,
) -> list[tuple[int, int]]:
    """(thick slice, thin slice at its world position) for every thick slice inside the thin series.

    Works for any slice direction and offset of either grid. `tolerance` is a fraction of a thin
    voxel. PairMismatch when the in-plane grids differ or a thick slice lies between thin slices.
    """
    thick_affine = np.asarray(thick_affine, dtype=np.float64)
    thin_affine = np.asarray(thin_affine, dtype=np.float64)
    validate_affine(thick_affine)
    validate_affine(thin_affine)
    if tuple(thick_shape[1:]) != tuple(thin_shape[1:]):
        raise PairMismatch(
            f"different in-plane grids: thick {thick_shape[2]} x {thick_shape[1]}, "
            f"thin {thin_shape[2]} x {thin_shape[1]} pixels"
        )
    to_thin = np.linalg.inv(thin_affine) @ thick_affine  # thick voxel (i, j, k, 1) -> thin voxel
    if not np.allclose(to_thin[:3, :2], np.eye(3)[:, :2], atol=1e-3):
        raise PairMismatch("different in-plane grids: the thick column and row axes are not the thin ones")
    ends = to_thin[:2, 3:4] + to_thin[:2, 2:3] * np.array([0.0, thick_shape[0] - 1])
    if np.abs(ends).max() > tolerance:
        raise PairMismatch(
            f"misaligned: thick slices lie up to {np.abs(ends).max():.3g} pixels off the thin grid in-plane"
        )
    thin_mm = float(voxel_spacing(thin_affine)[2])
    pairs = []
    for k in range(thick_shape[0]):
        position = float(to_thin[2, 2] * k + to_thin[2, 3])
        nearest = round(position)
        if not -tolerance <= position <= thin_shape[0] - 1 + tolerance:
            continue
        if abs(position - nearest) > tolerance:
            raise PairMismatch(
                f"thick slice {k} lies at thin slice {position:.3f}, "
                f"{abs(position - nearest) * thin_mm:.3g} mm from the nearest thin slice; no thin slice "
                f"lies within {tolerance * thin_mm:.3g} mm ({tolerance:g} of a thin slice) of it"
            )
        pairs.append((k, nearest))
    if not pairs:
        raise PairMismatch(f"none of the {thick_shape[0]} thick slices lies inside the thin series")
    return pairs


def neighbours(match: int, thin_slices: int) -> Iterator[tuple[str, int]]:
    """(category, thin slice) of the Match, Near and Far thin slices that exist."""
    for category, steps in CATEGORY_STEPS.items():
        for step in steps:
            if 0 <= match + step < thin_slices:
                yield category, match + step


def offset_mm(thick_affine: np.ndarray, thick_slice: int, thin_affine: np.ndarray, thin_slice: int) -> float:
    """Signed world distance (mm) from a thick slice to a thin slice, along the thick slice axis."""
    axis = np.asarray(thick_affine, dtype=np.float64)[:3, 2]
    thick_point = np.asarray(thick_affine, dtype=np.float64) @ [0.0, 0.0, thick_slice, 1.0]
    thin_point = np.asarray(thin_affine, dtype=np.float64) @ [0.0, 0.0, thin_slice, 1.0]
    return float((thin_point - thick_point)[:3] @ axis / np.linalg.norm(axis))


# scoring ---------------------------------------------------------------------------------------
def compare_slices(thick_hu: np.ndarray, thin_hu: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM of two axial HU slices on the paper's [0, 1] scale."""
    a, b = hu_to_unit(thick_hu), hu_to_unit(thin_hu)
    return psnr(a, b), ssim_2d(a, b)


def analyse_case(case: AnalysisCase) -> tuple[list[dict], CaseInfo]:
    """One row per (thick slice, Match / Near / Far thin slice) pair, and the case's summary line."""
    matches = match_slices(case.thick.shape, case.thick_affine, case.thin.shape, case.thin_affine)
    rows = []
    for k, match in matches:
        for category, n in neighbours(match, case.thin.shape[0]):
            value_psnr, value_ssim = compare_slices(case.thick[k], case.thin[n])
            rows.append(
                {
                    "split": case.split,
                    "case": case.name,
                    "category": category,
                    "thick_slice": k,
                    "thin_slice": n,
                    "offset_mm": round(offset_mm(case.thick_affine, k, case.thin_affine, n), 4),
                    "psnr": value_psnr,
                    "ssim": value_ssim,
                }
            )
    info = CaseInfo(
        case.split,
        case.name,
        float(voxel_spacing(case.thin_affine)[2]),
        float(voxel_spacing(case.thick_affine)[2]),
        len(matches),
        case.thick.shape[0],
        case.source,
        {s["category"]: (s["psnr_mean"], s["ssim_mean"]) for s in summarize(rows) if s["split"] == ALL},
    )
    return rows, info


def summarize(rows: list[dict]) -> list[dict]:
    """Mean +- population std per (split, category), then over all splits; infinite PSNRs
    (identical slices) are counted in `identical` and left out of the PSNR mean."""
    splits = list(dict.fromkeys(row["split"] for row in rows))
    groups = [(split, category) for split in [*splits, ALL] for category in CATEGORY_STEPS]
    summary = []
    for split, category in groups:
        chosen = [r for r in rows if r["category"] == category and split in (ALL, r["split"])]
        if not chosen:
            continue
        psnrs = np.array([r["psnr"] for r in chosen])
        finite = psnrs[np.isfinite(psnrs)]
        ssims = np.array([r["ssim"] for r in chosen])
        summary.append(
            {
                "split": split,
                "category": category,
                "cases": len({(r["split"], r["case"]) for r in chosen}),
                "pairs": len(chosen),
                "psnr_mean": float(finite.mean()) if finite.size else math.nan,
                "psnr_std": float(finite.std()) if finite.size else math.nan,
                "ssim_mean": float(ssims.mean()),
                "ssim_std": float(ssims.std()),
                "identical": int(psnrs.size - finite.size),
            }
        )
    return summary


# data ------------------------------------------------------------------------------------------
def pseudo_case(
    split: str, name: str, thin: np.ndarray, thin_affine: np.ndarray, ratio: int, slab: str = "box"
) -> AnalysisCase:
    """A thin volume (whole) and its simulated thick scan (`pseudo_pairs.make_pseudo_pair`)."""
    thin = np.asarray(thin, dtype=np.float32)
    pair = make_pseudo_pair(thin, thin_affine, ratio, slab)
    source = f"pseudo pair ({slab} slab of {ratio} thin slices)"
    return AnalysisCase(split, name, pair.thick, pair.thick_affine, thin, np.asarray(thin_affine), source)


def pseudo_cases(volumes: dict[str, list[Path]], ratio: int, slab: str = "box") -> Iterator[AnalysisCase]:
    """Pseudo pairs of thin volume files, split by split ({split: [paths]})."""
    for split, paths in volumes.items():
        for path in paths:
            volume = read_volume(path)
            yield pseudo_case(split, volume_stem(path), volume.array, volume.affine, ratio, slab)


def real_cases(root: str | Path, splits: Iterable[str]) -> Iterator[AnalysisCase]:
    """Real pairs of an RPLHR-CT folder; DatasetError (the full report) if any case does not fit."""
    report = check_dataset(root, tuple(splits), ratio=None, min_slices=1)
    if not report.ok:
        raise DatasetError(report.text())
    for pair in report.pairs:
        thick, thin = read_volume(pair.thick_path), read_volume(pair.thin_path)
        yield AnalysisCase(
            pair.split,
            pair.case,
            thick.array.astype(np.float32),
            thick.affine,
            thin.array.astype(np.float32),
            thin.affine,
            "real pair",
        )


# reports ---------------------------------------------------------------------------------------
def _number(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _mean_std(mean: float, std: float, digits: int) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary_table(summary: list[dict]) -> str:
    """Markdown: split | category | thin slices away | cases | slice pairs | PSNR | SSIM."""
    lines = [
        "| split | category | thin slices away | cases | slice pairs | PSNR (dB) | SSIM |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary:
        away = " / ".join(f"{step:+d}" if step else "0" for step in CATEGORY_STEPS[s["category"]])
        lines.append(
            f"| {s['split']} | {s['category']} | {away} | {s['cases']} | {s['pairs']} | "
            f"{_mean_std(s['psnr_mean'], s['psnr_std'], 2)} | {_mean_std(s['ssim_mean'], s['ssim_std'], 4)} |"
        )
    identical = sum(s["identical"] for s in summary if s["split"] == ALL)
    if identical:
        lines += [
            "",
            f"{identical} slice pairs are identical (infinite PSNR) and left out of the PSNR means.",
        ]
    return "\n".join(lines)


def markdown_report(summary: list[dict], cases: list[CaseInfo], command: str, data: str) -> str:
    """The command that made it, the data, the summary table and the per-case list."""
    lines = [
        "# Dataset analysis: thick slices against their Match, Near and Far thin slices (paper Fig. 1)",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Data: {data}.",
        "",
        f"{METRICS_TEXT}: the thin slice at the thick slice's world position (Match), the thin slices one "
        "thin slice away on both sides (Near; 1 mm in RPLHR-CT) and two away (Far; 2 mm). "
        "Mean ± population std over slice pairs.",
        "",
        summary_table(summary),
        "",
        "Per case (means over its slice pairs):",
        "",
        "| split | case | thin / thick spacing (mm) | thick slices used | "
        "PSNR Match / Near / Far (dB) | SSIM Match / Near / Far | source |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in cases:
        means = [c.means.get(category, (math.nan, math.nan)) for category in CATEGORY_STEPS]
        psnrs = " / ".join(_number(psnr_mean, 2) for psnr_mean, _ in means)
        ssims = " / ".join(_number(ssim_mean, 4) for _, ssim_mean in means)
        lines.append(
            f"| {c.split} | {c.name} | {c.thin_spacing_mm:.3g} / {c.thick_spacing_mm:.3g} | "
            f"{c.thick_used} of {c.thick_total} | {psnrs} | {ssims} | {c.source} |"
        )
    other = sorted({f"{c.thin_spacing_mm:.3g}" for c in cases if abs(c.thin_spacing_mm - 1.0) > 1e-3})
    if other:
        lines += [
            "",
            f"Thin spacings other than RPLHR-CT's 1 mm ({', '.join(other)} mm): there Near and Far lie one "
            "and two of those spacings away, so their figures do not compare with the paper's 1 mm and 2 mm.",
        ]
    if any(c.source.startswith("pseudo pair") for c in cases):
        lines += [
            "",
            "Pseudo pairs: a thick slice simulated as the mean of the thin slices centred on its Match slice "
            "is built to resemble Match most and Far least, so Match > Near > Far here follows from the "
            "simulation; only real thick / thin pairs (`--rplhr`) test the paper's finding.",
        ]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict], fields: tuple[str, ...]) -> str:
    """CSV of rows (floats with up to 6 significant decimals)."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    return table.getvalue()


def plot_summary(rows: list[dict], path: Path) -> Path:
    """Box plots of PSNR and SSIM per split (and all together) and category, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(row["split"] for row in rows))
    groups = [*splits, ALL] if len(splits) > 1 else splits
    width = 0.8 / len(CATEGORY_STEPS)
    figure, axes = plt.subplots(1, 2, figsize=(5 + 2.2 * len(groups), 4.2), constrained_layout=True)
    for axis, metric, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
        for c, category in enumerate(CATEGORY_STEPS):
            values = [
                [
                    r[metric]
                    for r in rows
                    if r["category"] == category and group in (ALL, r["split"]) and math.isfinite(r[metric])
                ]
                for group in groups
            ]
            positions = [g + (c - (len(CATEGORY_STEPS) - 1) / 2) * width for g in range(len(groups))]
            boxes = axis.boxplot(
                values, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=False
            )
            for box in boxes["boxes"]:
                box.set(facecolor=f"C{c}", alpha=0.7)
            boxes["boxes"][0].set_label(category)
        axis.set_xticks(range(len(groups)), groups)
        axis.set(ylabel=label, title=f"thick slice vs thin slice: {label.split()[0]}")
    axes[0].legend(title="thin slice")
    try:
        with atomic_path(path, suffix=".png") as temporary:
            figure.savefig(temporary, format="png", dpi=100)
    finally:
        plt.close(figure)
    return path


def analyse(
    cases: Iterable[AnalysisCase],
    out_dir: str | Path,
    command: str,
    data: str,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], list[Path]]:
    """Analyse every case and write the CSVs, the Markdown report and the plot: (summary, files)."""
    rows: list[dict] = []
    infos = []
    for case in cases:
        try:
            case_rows, info = analyse_case(case)
        except PairMismatch as exc:
            raise PairMismatch(f"{case.split}/{case.name}: {exc}") from exc
        rows += case_rows
        infos.append(info)
        log(f"{case.split}/{case.name}: {info.thick_used} of {info.thick_total} thick slices matched")
    if not rows:
        raise ValueError("no cases to analyse")
    summary = summarize(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [
        write_text_atomically(out / FILES["slices"], csv_text(rows, SLICE_FIELDS)),
        write_text_atomically(out / FILES["summary"], csv_text(summary, SUMMARY_FIELDS)),
        write_text_atomically(out / FILES["markdown"], markdown_report(summary, infos, command, data)),
        plot_summary(rows, out / FILES["plot"]),
    ]
    return summary, written


def run_cli(args: argparse.Namespace) -> int:
    """The `analyse-dataset` command: real pairs (--rplhr) or pseudo pairs (--train/--val/--test)."""
    volumes = {split: getattr(args, split) for split in SPLITS if getattr(args, split)}
    if bool(args.rplhr) == bool(volumes):
        raise ValueError("give either --rplhr ROOT (real pairs) or thin volumes with --train/--val/--test")
    if args.rplhr:
        cases = real_cases(args.rplhr, args.splits)
        data = f"real pairs of RPLHR-CT splits {', '.join(args.splits)} in {args.rplhr}"
    else:
        paths = {split: thin_volume_paths(items) for split, items in volumes.items()}
        cases = pseudo_cases(paths, args.ratio, args.slab)
        data = (
            f"pseudo pairs (thick simulated: {args.slab} slab of {args.ratio} thin slices) from "
            + "; ".join(f"{split}: {', '.join(p.name for p in found)}" for split, found in paths.items())
        )
    command = "volumetricsr-train " + shlex.join(args.argv)
    summary, written = analyse(cases, args.out, command, data)
    print()
    print(summary_table(summary))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
