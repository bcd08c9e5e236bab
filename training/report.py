"""`volumetricsr-train report`: many methods scored on one dataset, the way the paper's Table 1,
Fig. 3a and Fig. 3b compare them.

A method is an interpolation (nearest, linear, cubic, lanczos), a training config (trained first,
resuming its run, unless `train=False`; its `best.pt`, else `last.pt`, is scored), a checkpoint or a
model file. Every method is scored on the same cases with the protocol of `evaluate` and kept in
`scores/<method>.json` under an identity (weights digest, data digest, device): a rerun skips what is
already scored and trains only what is unfinished. Every method is then timed again in this run, with
the share of the CPUs other processes used meanwhile (timing.py), so that Fig. 3b's times are one
run's and the report says whether the machine was quiet.
The report: `report.md` (table, provenance, scale), `methods.csv`, `cases.csv`, `tradeoff.png`
(PSNR against seconds per volume, marker area proportional to parameters) and `report.json`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from VolumetricSRLib.atomic import write_bytes_atomically, write_text_atomically
from VolumetricSRLib.inference.device import cpu_model, describe_device, resolve_device
from VolumetricSRLib.inference.interpolation import METHODS as INTERPOLATIONS
from VolumetricSRLib.inference.predictor import PredictOptions, super_resolve_hu
from VolumetricSRLib.intensity import HU_MAX, HU_MIN
from VolumetricSRLib.metrics import detailed_scores, score_volume
from VolumetricSRLib.models.thin_slice_network import count_parameters

from .checkpoints import read_checkpoint, state_digest
from .config import TrainConfig, learning_differences, load_config
from .evaluate import (
    DETAILED_SCORES,
    METHOD_LABELS,
    PROTOCOL,
    EvalCase,
    LoadedModel,
    interpolate_hu,
    load_for_evaluation,
    one_sided_wilcoxon,
)
from .methods import CONFIGS, METHODS
from .timing import QUIET_SHARE, describe_share, other_cpu_share, sample

DEFAULT_METHODS = (*INTERPOLATIONS, *(str(CONFIGS / name) for name in METHODS))
BOOTSTRAP_SAMPLES = 2000
METHOD_FIELDS = (
    "method", "label", "kind", "parameters", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std",
    "seconds_per_volume", "psnr_drop_vs_best", "psnr_p_vs_best", "ssim_p_vs_best",
    *(f"{key}_mean" for key in DETAILED_SCORES), "psnr_gain_vs_below", "psnr_gain_ci_low",
    "psnr_gain_ci_high", "psnr_p_vs_below", "source",
)  # fmt: skip
CASE_FIELDS = ("method", "case", "psnr", "ssim", *DETAILED_SCORES, "seconds")


@dataclass(frozen=True)
class MethodSpec:
    """One method of the report: its file-safe name, its kind and where it comes from."""

    name: str
    kind: str  # "interpolation" | "config" | "model"
    source: str
    overrides: tuple[str, ...] = ()  # KEY=VALUE settings applied on top of a config

    def config(self) -> TrainConfig:
        """The training config of a "config" method, with its overrides."""
        return load_config(self.source, list(self.overrides))


@dataclass
class Scored:
    """A method's per-case scores and what identifies them."""

    spec: MethodSpec
    label: str
    parameters: int
    rows: list[dict]
    identity: dict


def parse_method(text: str) -> MethodSpec:
    """An interpolation name, a training config (.toml), or a checkpoint / model file / bundled id."""
    if text in INTERPOLATIONS:
        return MethodSpec(text, "interpolation", text)
    path = Path(text)
    if path.suffix == ".toml":
        if not path.is_file():
            raise ValueError(f"training config not found: {path}")
        name = path.stem.removeprefix("baseline_").removeprefix("ablation_")
        return MethodSpec(name, "config", str(path))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.name.removesuffix(path.suffix)) or "model"
    return MethodSpec(name, "model", text)


def parse_methods(
    items: Iterable[str], settings: Iterable[str] = (), runs: str | None = None
) -> list[MethodSpec]:
    """Specs of every method, refusing two with the same name. Configs get the KEY=VALUE `settings`
    (e.g. rplhr_root=ROOT to train on RPLHR-CT), and with `runs` their run folders move into it."""
    specs = []
    for item in items:
        spec = parse_method(item)
        if spec.kind == "config":
            moved = (f"run_dir={Path(runs) / Path(load_config(spec.source).run_dir).name}",) if runs else ()
            spec = replace(spec, overrides=(*settings, *moved))
        specs.append(spec)
    names = [spec.name for spec in specs]
    doubles = sorted({name for name in names if names.count(name) > 1})
    if doubles:
        raise ValueError(f"two methods share the name {', '.join(doubles)}; rename one of the files")
    return specs


def data_identity(cases: list[EvalCase]) -> str:
    """SHA-256 over every case's name, source and voxels: equal digests mean the same data."""
    digest = hashlib.sha256()
    for case in cases:
        digest.update(f"{case.name}|{case.source}|{case.ratio}".encode())
        for array in (case.thick, case.truth):
            digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
    return digest.hexdigest()


def trained_checkpoint(spec: MethodSpec, train: bool, log: Callable[[str], None]) -> Path | None:
    """The checkpoint to score for a config: its run trained to the end first when `train`; None
    (with the reason logged) when the run is unfinished and training is off."""
    cfg = spec.config()
    run_dir = Path(cfg.run_dir)
    last = run_dir / "last.pt"
    step = 0
    if last.is_file():
        saved = read_checkpoint(last)
        differences = learning_differences(saved["config"], cfg.to_dict())
        if differences:
            raise ValueError(
                f"{spec.name}: {run_dir} holds a run of other settings ({'; '.join(differences)}); "
                "move that run away or give the config another run_dir"
            )
        step = int(saved["step"])
    if step < cfg.steps:
        if not train:
            log(f"{spec.name}: trained {step} of {cfg.steps} steps; left out (train it, or drop --no-train)")
            return None
        from .trainer import Trainer

        log(f"{spec.name}: training {cfg.run_dir} from step {step} to {cfg.steps}")
        trainer = Trainer(cfg)
        try:
            trainer.resume()
            trainer.run()
        finally:
            trainer.ctx.close()
        trainer.raise_if_stopped()  # nothing is scored from a run a stop signal cut short
    best = run_dir / "best.pt"
    return best if best.is_file() else last


def score_method(
    spec: MethodSpec,
    cases: list[EvalCase],
    options: PredictOptions,
    out_dir: Path,
    train: bool = True,
    log: Callable[[str], None] = print,
) -> Scored | None:
    """Score one method on every case, or reuse its stored scores when its identity is unchanged."""
    source = spec.source
    if spec.kind == "config":
        checkpoint = trained_checkpoint(spec, train, log)
        if checkpoint is None:
            return None
        source = str(checkpoint)
    model = None if spec.kind == "interpolation" else load_for_evaluation(source, device=options.device)
    identity = {
        "method": spec.source,
        "scored": source,
        "weights_digest": None if model is None else state_digest(model.network),
        "data_digest": data_identity(cases),
        "options": {key: value for key, value in asdict(options).items() if key != "reuse_memory"},
    }
    stored = out_dir / "scores" / f"{spec.name}.json"
    previous = _stored_scores(stored)
    if previous is not None and previous["identity"] == identity:
        log(f"{spec.name}: scores kept from {stored}")
        return Scored(spec, previous["label"], previous["parameters"], previous["rows"], identity)
    label = METHOD_LABELS[spec.name] if model is None else model.label
    parameters = 0 if model is None else count_parameters(model.network)
    rows = []
    for case in cases:
        start = time.perf_counter()
        thin = predict_case(spec, model, case, options)
        seconds = time.perf_counter() - start
        scores = {**score_volume(thin, case.truth), **detailed_scores(thin, case.truth, case.ratio)}
        rows.append({"method": spec.name, "case": case.name, **scores, "seconds": seconds})
        log(f"{spec.name} {case.name}: {scores['psnr']:.2f} dB / {scores['ssim']:.4f} in {seconds:.1f} s")
    record = {"identity": identity, "label": label, "parameters": parameters, "rows": rows}
    stored.parent.mkdir(exist_ok=True)
    write_text_atomically(stored, json.dumps(record, indent=2) + "\n")
    return Scored(spec, label, parameters, rows, identity)


def predict_case(
    spec: MethodSpec, model: LoadedModel | None, case: EvalCase, options: PredictOptions
) -> np.ndarray:
    """The thin volume (HU) a method predicts for one case: its interpolation, or its network's."""
    if model is None:
        return interpolate_hu(case.thick, case.ratio, spec.source, (HU_MIN, HU_MAX))
    thin, _ = super_resolve_hu(model.network, case.thick, case.thick_affine, options, window=model.window)
    return thin


def time_methods(
    results: list[Scored], cases: list[EvalCase], options: PredictOptions, log: Callable[[str], None] = print
) -> tuple[list[Scored], float | None]:
    """Every method timed again in this run, one after another (stored scores keep the times of the run
    that scored them, which may have been busy): one untimed warm-up on the first case, then each case.
    Returns the results with these seconds, and the share of the CPUs other processes used meanwhile."""
    timed = []
    start = sample()
    for result in results:
        spec = result.spec
        scored = result.identity["scored"]
        model = None if spec.kind == "interpolation" else load_for_evaluation(scored, options.device)
        predict_case(spec, model, cases[0], options)
        seconds = {}
        for case in cases:
            begin = time.perf_counter()
            predict_case(spec, model, case, options)
            seconds[case.name] = time.perf_counter() - begin
        log(f"{spec.name}: {np.mean(list(seconds.values())):.2f} s per volume")
        rows = [{**row, "seconds": seconds[row["case"]]} for row in result.rows]
        timed.append(replace(result, rows=rows))
    return timed, other_cpu_share(start, sample())


def _stored_scores(path: Path) -> dict | None:
    """The stored record of a method's scores, or None when there is none or it cannot be read
    (an unreadable record is scored again, not trusted)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    keys = {"identity", "label", "parameters", "rows"}
    return record if isinstance(record, dict) and keys <= set(record) else None


def _finite_mean(values: np.ndarray) -> float:
    """The mean of the values that are not NaN (NaN when none is: a region absent from every case)."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a - b over paired cases (cases resampled with
    replacement, BOOTSTRAP_SAMPLES times, a fixed seed: the same scores give the same interval)."""
    differences = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(differences), (BOOTSTRAP_SAMPLES, len(differences)))
    means = differences[picks].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summary_rows(results: list[Scored]) -> list[dict]:
    """Per method, best PSNR first: mean +- std of PSNR and SSIM, seconds per volume, its mean PSNR
    below the best method's and the one-sided Wilcoxon p-values of 'the best scores higher'; the means
    of the detailed scores; and, as the paper tests its table, its PSNR gain over the method in the row
    below with a paired bootstrap 95 % interval and the one-sided Wilcoxon p-value of 'it scores higher'."""

    def metric(result: Scored, key: str) -> np.ndarray:
        return np.array([row.get(key, math.nan) for row in result.rows], dtype=np.float64)

    best = max(results, key=lambda r: metric(r, "psnr").mean())
    best_psnr, best_ssim = metric(best, "psnr"), metric(best, "ssim")
    rows = []
    for result in results:
        psnr, ssim = metric(result, "psnr"), metric(result, "ssim")
        same = result is best
        rows.append(
            {
                "method": result.spec.name,
                "label": result.label,
                "kind": result.spec.kind,
                "parameters": result.parameters,
                "psnr_mean": float(psnr.mean()),
                "psnr_std": float(psnr.std()),
                "ssim_mean": float(ssim.mean()),
                "ssim_std": float(ssim.std()),
                "seconds_per_volume": float(metric(result, "seconds").mean()),
                "psnr_drop_vs_best": float(best_psnr.mean() - psnr.mean()),
                "psnr_p_vs_best": None if same else one_sided_wilcoxon(best_psnr, psnr),
                "ssim_p_vs_best": None if same else one_sided_wilcoxon(best_ssim, ssim),
                **{f"{key}_mean": _finite_mean(metric(result, key)) for key in DETAILED_SCORES},
                "source": result.identity["scored"],
            }
        )
    order = sorted(range(len(rows)), key=lambda n: -rows[n]["psnr_mean"])
    for above, below in zip(order, [*order[1:], None], strict=True):
        gain = {"psnr_gain_vs_below": None, "psnr_gain_ci_low": None, "psnr_gain_ci_high": None}
        gain["psnr_p_vs_below"] = None
        if below is not None:
            upper, lower = metric(results[above], "psnr"), metric(results[below], "psnr")
            low, high = paired_bootstrap_ci(upper, lower)
            gain = {
                "psnr_gain_vs_below": float(np.mean(upper - lower)),
                "psnr_gain_ci_low": low,
                "psnr_gain_ci_high": high,
                "psnr_p_vs_below": one_sided_wilcoxon(upper, lower),
            }
        rows[above].update(gain)
    return [rows[n] for n in order]


def markdown_report(rows: list[dict], provenance: dict) -> str:
    """The report: table, then data, protocol, scale and how it was made."""
    n = provenance["cases"]
    lines = [
        "# Method comparison",
        "",
        "| method | network | parameters | PSNR (dB) | SSIM | s / volume | PSNR below the best (dB) "
        "| p (best > it), PSNR / SSIM |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        params = "-" if row["parameters"] == 0 else f"{row['parameters'] / 1e6:.2f}M"
        best = row["psnr_p_vs_best"] is None
        drop = "-" if best else f"{row['psnr_drop_vs_best']:.2f}"
        p = "best" if best else f"{row['psnr_p_vs_best']:.3g} / {row['ssim_p_vs_best']:.3g}"
        lines.append(
            f"| {row['method']} | {row['label']} | {params} | "
            f"{row['psnr_mean']:.2f} ± {row['psnr_std']:.2f} | "
            f"{row['ssim_mean']:.4f} ± {row['ssim_std']:.4f} | {row['seconds_per_volume']:.2f} | "
            f"{drop} | {p} |"
        )
    lines += [
        "",
        "| method | PSNR between thick slices | coronal SSIM | sagittal SSIM | PSNR lung | PSNR soft tissue "
        "| PSNR bone | PSNR gain over the row below [95 % CI], p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        gain = (
            "-"
            if row["psnr_gain_vs_below"] is None
            else f"{row['psnr_gain_vs_below']:+.2f} [{row['psnr_gain_ci_low']:+.2f}, "
            f"{row['psnr_gain_ci_high']:+.2f}], {row['psnr_p_vs_below']:.3g}"
        )
        lines.append(
            f"| {row['method']} | {row['psnr_between_mean']:.2f} | {row['ssim_coronal_mean']:.4f} | "
            f"{row['ssim_sagittal_mean']:.4f} | {row['psnr_lung_mean']:.2f} | "
            f"{row['psnr_soft_tissue_mean']:.2f} | {row['psnr_bone_mean']:.2f} | {gain} |"
        )
    smallest = 0.5**n
    cases = f"{n} case{'' if n == 1 else 's'}"
    lines += [
        "",
        "- **Detailed scores** (same slices): PSNR of the thin slices between thick slices only (those on "
        "a thick slice nearly equal the input), SSIM of coronal and sagittal planes, PSNR within the "
        "truth's lung (< -500 HU), soft tissue (-500 to 300 HU) and bone (>= 300 HU); the gain over the "
        f"row below is paired per case, with a percentile bootstrap interval ({BOOTSTRAP_SAMPLES} resamples "
        "of the cases) and the one-sided Wilcoxon test of 'this row scores higher', as the paper tests "
        "its table.",
        f"- **Data**: {provenance['data']} ({cases}).",
        f"- **Protocol**: {PROTOCOL}.",
        f"- **p-values**: one-sided Wilcoxon signed-rank over the {cases} (paired), 'the best method "
        f"scores higher'. With n = {n} the smallest possible p-value is {smallest:.3g}: "
        + (
            "small enough for a test at p < 0.001."
            if smallest < 0.001
            else "no difference can be significant at p < 0.001, whatever the scores (at least 10 cases "
            "are needed); read the p-values as a statement of how few cases there are."
        ),
        f"- **Timing**: seconds per volume on {provenance['device']} (mean over the cases, prediction only), "
        "every method timed in this run after one untimed warm-up; "
        f"{describe_share(provenance['other_cpu_share'])}.",
        f"- **Training budget**: {provenance['budget']}.",
        *(
            [f"- **Not scored** (training unfinished): {', '.join(provenance['left_out'])}."]
            if provenance["left_out"]
            else []
        ),
        f"- **Command**: `{provenance['command']}` at commit {provenance['commit']}, {provenance['date']}.",
        "",
        "![PSNR against seconds per volume](tradeoff.png)",
    ]
    return "\n".join(lines) + "\n"


Box = tuple[float, float, float, float]  # left x, bottom y, right x, top y (display units, y upwards)
LABEL_SEARCH_STEPS = 24  # half label heights a label may move up or down from its marker


def _overlap(one: Box, other: Box) -> bool:
    return one[0] < other[2] and other[0] < one[2] and one[1] < other[3] and other[1] < one[3]


def place_labels(
    markers: list[tuple[float, float, float]], sizes: list[tuple[float, float]], bounds: Box, gap: float
) -> list[Box]:
    """A box for each marker's label (markers: centre x, centre y, radius; sizes: width, height),
    inside `bounds` and clear of every marker and of the labels placed before it (markers from the
    top down): beside the marker, right before left, else the nearest height above or below."""
    obstacles: list[Box] = [(x - r, y - r, x + r, y + r) for x, y, r in markers]
    boxes: dict[int, Box] = {}
    for index in sorted(range(len(markers)), key=lambda i: -markers[i][1]):
        (x, y, r), (width, height) = markers[index], sizes[index]
        candidates = [
            (left, y + shift - height / 2, left + width, y + shift + height / 2)
            for step in range(LABEL_SEARCH_STEPS + 1)
            for shift in ((0.0,) if step == 0 else (step * height / 2, -step * height / 2))
            for left in (x + r + gap, x - r - gap - width)
        ]
        inside = [
            c
            for c in candidates
            if bounds[0] <= c[0] and c[2] <= bounds[2] and bounds[1] <= c[1] and c[3] <= bounds[3]
        ]
        free = [c for c in inside if not any(_overlap(c, other) for other in obstacles)]
        boxes[index] = (free or inside or candidates)[0]
        obstacles.append(boxes[index])
    return [boxes[index] for index in range(len(markers))]


def tradeoff_png(rows: list[dict], quiet: bool) -> bytes:
    """Fig. 3b: PSNR against seconds per volume (log scale), marker area proportional to parameters;
    each method's name beside its marker (see _label_markers); the title says when the times were not
    taken on a quiet machine."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    largest = max((row["parameters"] for row in rows), default=0) or 1
    points, areas = [], []
    for row in rows:
        learned = row["parameters"] > 0
        points.append((max(row["seconds_per_volume"], 1e-3), row["psnr_mean"]))
        areas.append(40 + 1200 * row["parameters"] / largest if learned else 30)
        axes.scatter(
            *points[-1],
            s=areas[-1],
            alpha=0.6,
            marker="o" if learned else "s",
            color="tab:orange" if learned else "tab:grey",
            edgecolors="black",
        )
    axes.margins(x=0.25, y=0.1)
    axes.set_xscale("log")
    axes.set_xlabel("seconds per volume (log scale)")
    axes.set_ylabel("PSNR (dB)")
    title = "PSNR against inference time; marker area: parameters"
    axes.set_title(title if quiet else f"{title}\n(times NOT from a quiet machine)")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    _label_markers(figure, axes, [row["method"] for row in rows], points, areas)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


LABEL_POINTS = 8.0  # label font size


def _label_markers(
    figure, axes, names: list[str], points: list[tuple[float, float]], areas: list[float]
) -> None:
    """Each name beside its marker (area in points squared), or above or below it with a leader line
    where it would cover another name or marker."""
    renderer = figure.canvas.get_renderer()
    scale = figure.dpi / 72.0  # display pixels per point
    markers, sizes = [], []
    for name, point, area in zip(names, points, areas, strict=True):
        x, y = axes.transData.transform(point)
        markers.append((x, y, area**0.5 / 2 * scale))
        probe = axes.text(0, 0, name, fontsize=LABEL_POINTS)
        sizes.append((probe.get_window_extent(renderer).width, (LABEL_POINTS + 2) * scale))
        probe.remove()
    bounds = tuple(axes.get_window_extent(renderer).extents)
    boxes = place_labels(markers, sizes, bounds, gap=3 * scale)
    for name, point, area, (x, y, _), box in zip(names, points, areas, markers, boxes, strict=True):
        moved = abs((box[1] + box[3]) / 2 - y) > 1.0
        right = box[0] > x
        axes.annotate(
            name,
            point,
            xytext=(((box[0] if right else box[2]) - x) / scale, ((box[1] + box[3]) / 2 - y) / scale),
            textcoords="offset points",
            fontsize=LABEL_POINTS,
            ha="left" if right else "right",
            va="center",
            arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.6, "shrinkA": 1, "shrinkB": area**0.5 / 2}
            if moved
            else None,
        )


def budget_text(specs: list[MethodSpec]) -> str:
    """What the trained methods were given: steps, crop, batch and optimiser of their configs."""
    budgets = set()
    for spec in specs:
        if spec.kind == "config":
            cfg = spec.config()
            budgets.add(
                f"{cfg.steps} steps of batch {cfg.batch}, crops {'x'.join(map(str, cfg.crop))}, "
                f"{cfg.optimizer} lr {cfg.lr:g} ({cfg.schedule}), seed {cfg.seed}"
            )
    if not budgets:
        return "no method trained by this report"
    return "; ".join(sorted(budgets)) + (" (the same for every trained method)" if len(budgets) == 1 else "")


def hardware_text(device: str) -> str:
    """The device the timings come from, for people: its description, the CPU model and torch."""
    import torch

    return f"{describe_device(torch.device(device))}; CPU {cpu_model()}; torch {torch.__version__}"


HERE = Path(__file__).resolve().parent


def git_commit(here: Path = HERE) -> str:
    """The commit of the checkout holding `here` (with '+changes' when its code or configs differ
    from it; reports and other outputs in the tree do not count), or 'unknown' outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ":/*.py", ":/*.toml"],
            cwd=here,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty.strip() else "")


def write_report(results: list[Scored], provenance: dict, out_dir: Path) -> list[Path]:
    """report.md, methods.csv, cases.csv, tradeoff.png and report.json, each written atomically."""
    rows = summary_rows(results)
    methods_csv, cases_csv = io.StringIO(), io.StringIO()
    writer = csv.DictWriter(methods_csv, METHOD_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    writer = csv.DictWriter(cases_csv, CASE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerows(result.rows)
    written = [
        write_text_atomically(out_dir / "report.md", markdown_report(rows, provenance)),
        write_text_atomically(out_dir / "methods.csv", methods_csv.getvalue()),
        write_text_atomically(out_dir / "cases.csv", cases_csv.getvalue()),
        write_bytes_atomically(out_dir / "tradeoff.png", tradeoff_png(rows, provenance["quiet"])),
        write_text_atomically(
            out_dir / "report.json", json.dumps({"provenance": provenance, "methods": rows}, indent=2) + "\n"
        ),
    ]
    return written


def run_report(
    specs: list[MethodSpec],
    cases: list[EvalCase],
    data: str,
    options: PredictOptions,
    out_dir: str | Path,
    command: str,
    train: bool = True,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Train what is unfinished (when `train`), score every method, write the report; returns its files."""
    if not cases:
        raise ValueError("no cases to score")
    options = replace(options, device=str(resolve_device(options.device)))  # a missing GPU: DeviceError
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = [r for spec in specs if (r := score_method(spec, cases, options, out, train, log)) is not None]
    if not results:
        raise ValueError("no method could be scored (every config is unfinished and --no-train was given)")
    results, other_share = time_methods(results, cases, options, log)
    provenance = {
        "data": data,
        "cases": len(cases),
        "case_names": [case.name for case in cases],
        "device": hardware_text(options.device),
        "other_cpu_share": other_share,
        "quiet": other_share is not None and other_share <= QUIET_SHARE,
        "budget": budget_text([r.spec for r in results]),
        "command": command,
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "left_out": [spec.name for spec in specs if spec.name not in {r.spec.name for r in results}],
    }
    return write_report(results, provenance, out)
