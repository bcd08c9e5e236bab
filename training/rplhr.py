"""Real thick/thin pairs in the RPLHR-CT layout: `ROOT/{train,val,test}/{1mm,5mm}/CASE.nii.gz`.

Every pair is checked before use: the same in-plane grid, a thick slice axis that is a whole
multiple r of the thin one, and every thick slice lying on a thin slice in world space. The checks
collect every case that does not fit into one report, so a bad dataset stops a run before it
starts, never in the middle. Matched pairs are cut to the thick slices that lie inside the thin
series; thin slice r * i of a stored pair then lies on its thick slice i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from VolumetricSRLib.geometry import thin_grid, voxel_spacing
from VolumetricSRLib.intensity import HU_MAX, HU_MIN, hu_to_unit
from VolumetricSRLib.io import volume_io
from VolumetricSRLib.io.volume_io import read_volume

from .data import CROP_TRIES, PairSampler, downsample_inplane

SPLITS = ("train", "val", "test")
THIN_FOLDER, THICK_FOLDER = "1mm", "5mm"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
POSITION_TOLERANCE = 0.1  # of a voxel: how far a thick slice may sit from its thin slice


class DatasetError(ValueError):
    """The dataset does not fit the layout; the message is the full report."""


class PairMismatch(ValueError):
    """A thick and a thin series that do not form a pair; the message says why."""


@dataclass(frozen=True)
class Match:
    """How a thick series lies on a thin one: thick slice k is thin slice offset + ratio * k."""

    ratio: int
    offset: int
    first: int
    stop: int

    @property
    def count(self) -> int:
        """Thick slices that lie inside the thin series (thick slices first ... stop - 1)."""
        return self.stop - self.first

    @property
    def thin_first(self) -> int:
        """Thin slice under the first usable thick slice."""
        return self.offset + self.ratio * self.first


@dataclass(frozen=True)
class CasePair:
    """One checked case: its files and how they match."""

    split: str
    case: str
    thin_path: Path
    thick_path: Path
    match: Match
    thick_slices: int
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaseProblem:
    """A case (or a whole split, case "*") that does not fit, and why."""

    split: str
    case: str
    reason: str


@dataclass
class DatasetReport:
    """The outcome of checking a dataset folder."""

    root: Path
    pairs: list[CasePair] = field(default_factory=list)
    problems: list[CaseProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def split_pairs(self, split: str) -> list[CasePair]:
        return [pair for pair in self.pairs if pair.split == split]

    def text(self) -> str:
        """A report for people: pairs per split, then every problem and note."""
        lines = [f"RPLHR-CT dataset {self.root}: {len(self.pairs)} pairs fit, {len(self.problems)} problems"]
        for split in dict.fromkeys(p.split for p in self.pairs):
            pairs = self.split_pairs(split)
            ratios = sorted({p.match.ratio for p in pairs})
            low, high = min(p.match.count for p in pairs), max(p.match.count for p in pairs)
            lines.append(
                f"  {split}: {len(pairs)} pairs, ratio {'/'.join(map(str, ratios))}, "
                f"{low if low == high else f'{low}-{high}'} thick slices each"
            )
        if self.problems:
            lines.append("cases that do not fit (fix or remove them):")
            lines += [f"  {p.split}/{p.case}: {p.reason}" for p in self.problems]
        notes = [(p, note) for p in self.pairs for note in p.notes]
        if notes:
            lines.append("notes:")
            lines += [f"  {p.split}/{p.case}: {note}" for p, note in notes]
        return "\n".join(lines)


def case_name(path: Path) -> str | None:
    """CASE of CASE.nii.gz or CASE.nii; None for other files."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def read_geometry(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (K, J, I) and voxel-to-world affine of a NIfTI file, from its header only."""
    try:
        return volume_io.read_geometry(path)
    except volume_io.VolumeFileError as exc:
        raise PairMismatch(str(exc)) from exc


def match_pair(
    thin_shape: tuple[int, int, int],
    thin_affine: np.ndarray,
    thick_shape: tuple[int, int, int],
    thick_affine: np.ndarray,
    min_slices: int = 2,
) -> Match:
    """Where the thick slices lie on the thin series, through the affines; PairMismatch if nowhere."""
    if tuple(thin_shape[1:]) != tuple(thick_shape[1:]):
        raise PairMismatch(
            f"different in-plane grids: thin {thin_shape[2]} x {thin_shape[1]}, "
            f"thick {thick_shape[2]} x {thick_shape[1]} pixels"
        )
    thin_axes, thick_axes = thin_affine[:3, :3], thick_affine[:3, :3]
    thin_spacing, thick_spacing = voxel_spacing(thin_affine), voxel_spacing(thick_affine)
    for axis, name in ((0, "column"), (1, "row")):
        if np.linalg.norm(thin_axes[:, axis] - thick_axes[:, axis]) > 1e-3 * thin_spacing[axis]:
            raise PairMismatch(
                f"different in-plane grids: the {name} axes differ "
                f"(thin {_vector(thin_axes[:, axis])}, thick {_vector(thick_axes[:, axis])})"
            )
    along = float(thick_axes[:, 2] @ thin_axes[:, 2]) / thin_spacing[2] ** 2
    if along <= 0 or np.linalg.norm(thick_axes[:, 2] - along * thin_axes[:, 2]) > 1e-3 * thick_spacing[2]:
        raise PairMismatch(
            "misaligned: the thick slice axis does not run along the thin one "
            f"(thin {_vector(thin_axes[:, 2])}, thick {_vector(thick_axes[:, 2])}); "
            "store both series with the same slice direction"
        )
    ratio = round(along)
    if ratio < 2 or (thick_shape[0] - 1) * abs(along - ratio) > POSITION_TOLERANCE:
        raise PairMismatch(
            f"non-integer ratio: thick slices {thick_spacing[2]:.4g} mm apart are {along:.4g} x the thin "
            f"spacing {thin_spacing[2]:.4g} mm; the ratio must be a whole number of at least 2"
        )
    shift = np.linalg.solve(thin_axes, thick_affine[:3, 3] - thin_affine[:3, 3])
    if np.abs(shift[:2]).max() > POSITION_TOLERANCE:
        raise PairMismatch(
            f"misaligned: the in-plane origins differ by {shift[0] + 0.0:.3g} columns "
            f"and {shift[1] + 0.0:.3g} rows"
        )
    offset = round(shift[2])
    if abs(shift[2] - offset) > POSITION_TOLERANCE:
        raise PairMismatch(
            f"misaligned: thick slice 0 lies at thin slice {shift[2]:.3f}, between two thin slices; "
            "every thick slice must lie on a thin slice"
        )
    first = max(0, math.ceil(-offset / ratio))
    stop = min(thick_shape[0], (thin_shape[0] - 1 - offset) // ratio + 1)
    if stop - first < min_slices:
        raise PairMismatch(
            f"only {max(0, stop - first)} thick slices lie inside the thin series; "
            f"at least {min_slices} are needed"
        )
    return Match(ratio, offset, first, stop)


def _vector(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def check_split(root: str | Path, split: str, ratio: int | None = None, min_slices: int = 2) -> DatasetReport:
    """Check every case of one split; `ratio` (if given) is the ratio the pairs must have."""
    root = Path(root)
    report = DatasetReport(root)
    folders = {kind: root / split / kind for kind in (THIN_FOLDER, THICK_FOLDER)}
    missing = [str(folder) for folder in folders.values() if not folder.is_dir()]
    if missing:
        report.problems.append(CaseProblem(split, "*", f"missing folder {', '.join(missing)}"))
        return report
    found: dict[str, dict[str, list[Path]]] = {THIN_FOLDER: {}, THICK_FOLDER: {}}
    for kind, folder in folders.items():
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            name = case_name(path)
            if name is None:
                report.problems.append(
                    CaseProblem(split, path.name, f"{kind}/{path.name} is not a NIfTI file (.nii.gz or .nii)")
                )
                continue
            found[kind].setdefault(name, []).append(path)
    cases = sorted(set(found[THIN_FOLDER]) | set(found[THICK_FOLDER]))
    if not cases:
        report.problems.append(CaseProblem(split, "*", f"no cases in {folders[THIN_FOLDER]}"))
    for case in cases:
        try:
            report.pairs.append(_check_case(split, case, found, ratio, min_slices))
        except PairMismatch as exc:
            report.problems.append(CaseProblem(split, case, str(exc)))
    return report


def _check_case(
    split: str, case: str, found: dict[str, dict[str, list[Path]]], ratio: int | None, min_slices: int
) -> CasePair:
    paths = {}
    for kind, partner in ((THIN_FOLDER, THICK_FOLDER), (THICK_FOLDER, THIN_FOLDER)):
        files = found[kind].get(case, [])
        if not files:
            raise PairMismatch(f"missing partner: {partner}/{case} has no {kind}/{case}.nii.gz")
        if len(files) > 1:
            raise PairMismatch(f"several {kind} files: {', '.join(p.name for p in files)}; keep one")
        paths[kind] = files[0]
    thin_shape, thin_affine = read_geometry(paths[THIN_FOLDER])
    thick_shape, thick_affine = read_geometry(paths[THICK_FOLDER])
    match = match_pair(thin_shape, thin_affine, thick_shape, thick_affine, min_slices)
    if ratio is not None and match.ratio != ratio:
        raise PairMismatch(f"ratio {match.ratio}, but the model needs ratio {ratio}")
    notes = []
    if match.count < thick_shape[0]:
        notes.append(
            f"{thick_shape[0] - match.count} of {thick_shape[0]} thick slices lie outside the thin series "
            f"and are not used (using thick slices {match.first}-{match.stop - 1})"
        )
    return CasePair(split, case, paths[THIN_FOLDER], paths[THICK_FOLDER], match, thick_shape[0], tuple(notes))


def check_dataset(
    root: str | Path, splits: tuple[str, ...] = SPLITS, ratio: int | None = None, min_slices: int = 2
) -> DatasetReport:
    """Check every split of an RPLHR-CT folder into one report."""
    root = Path(root)
    report = DatasetReport(root)
    if not root.is_dir():
        report.problems.append(CaseProblem("*", "*", f"the dataset folder {root} does not exist"))
        return report
    for split in splits:
        part = check_split(root, split, ratio, min_slices)
        report.pairs += part.pairs
        report.problems += part.problems
    return report


@dataclass
class RealPair:
    """A loaded pair cut to its matched slices: thin[r * i] lies on thick[i] (HU)."""

    case: str
    thick: np.ndarray
    thick_affine: np.ndarray
    thin: np.ndarray
    thin_affine: np.ndarray
    ratio: int


UNIT_SCALE = (-0.5, 1.5)
"""Voxel values all within this range are not HU but a [0, 1] scale (HU would span about -1000 to 1000+)."""


def check_hu(array: np.ndarray, path: Path) -> None:
    """ValueError when a CT file's values are not HU: all within UNIT_SCALE (e.g. arrays already mapped
    to [0, 1], which int16 HU storage would round to 0 and 1)."""
    low, high = float(np.min(array)), float(np.max(array))
    if UNIT_SCALE[0] <= low and high <= UNIT_SCALE[1]:
        raise ValueError(
            f"{path.name} holds values from {low:.3g} to {high:.3g}, not HU: it looks scaled to [0, 1]; give "
            "the files in HU (the paper's window maps HU = value x 3072 - 1024 back), e.g. convert them with "
            "nibabel before training"
        )


def check_values(report: DatasetReport) -> DatasetReport:
    """Read every pair of a checked dataset and move those whose values are not HU to its problems."""
    fitting = []
    for pair in report.pairs:
        try:
            for path in (pair.thin_path, pair.thick_path):
                check_hu(read_volume(path).array, path)
            fitting.append(pair)
        except ValueError as exc:
            report.problems.append(CaseProblem(pair.split, pair.case, str(exc)))
    report.pairs = fitting
    return report


def load_pair(pair: CasePair, dtype: type = np.float32) -> RealPair:
    """Read both files of a checked pair and cut them to the slices that match; ValueError for values
    that are not HU."""
    m = pair.match
    thick = read_volume(pair.thick_path)
    thin = read_volume(pair.thin_path)
    check_hu(thick.array, pair.thick_path)
    check_hu(thin.array, pair.thin_path)
    thin_stop = m.thin_first + (m.count - 1) * m.ratio + 1
    thick_affine = thick.affine.copy()
    thick_affine[:3, 3] = thick.affine[:3, :3] @ np.array([0.0, 0.0, m.first]) + thick.affine[:3, 3]
    return RealPair(
        case=pair.case,
        thick=_stored(thick.array[m.first : m.stop], dtype),
        thick_affine=thick_affine,
        thin=_stored(thin.array[m.thin_first : thin_stop], dtype),
        thin_affine=thin_grid(thick_affine, m.count, m.ratio).affine,
        ratio=m.ratio,
    )


def _stored(hu: np.ndarray, dtype: type) -> np.ndarray:
    """HU in the window, as float32 (evaluation) or rounded int16 (half the memory, for training)."""
    clipped = np.clip(hu, HU_MIN, HU_MAX)
    if np.dtype(dtype) == np.int16:
        clipped = np.rint(clipped)
    return np.ascontiguousarray(clipped.astype(dtype))


def load_split(
    root: str | Path, split: str, ratio: int, min_slices: int, skip_invalid: bool = False
) -> tuple[list[RealPair], DatasetReport]:
    """Check and load one split for training (int16 HU in memory).

    Raises DatasetError with the full report when any case does not fit, unless `skip_invalid`,
    which trains on the pairs that fit (the report still lists the others).
    """
    report = check_split(root, split, ratio, min_slices)
    if not report.pairs or (report.problems and not skip_invalid):
        advice = (
            "" if not report.pairs else "\n(set rplhr_skip_invalid = true to train on the pairs that fit)"
        )
        raise DatasetError(report.text() + advice)
    pairs = []
    for pair in report.pairs:
        try:
            pairs.append(load_pair(pair, np.int16))
        except ValueError as exc:
            report.problems.append(CaseProblem(split, pair.case, str(exc)))
    if (report.problems and not skip_invalid) or not pairs:
        raise DatasetError(report.text())
    return pairs, report


class RealPairSampler(PairSampler):
    """Random crops of real pairs, matched by world position; same interface as PseudoPairSampler."""

    def __init__(
        self,
        pairs: list[RealPair],
        crop: tuple[int, int, int],
        inplane_scales: list[int] | tuple[int, ...] = (1,),
        flip: bool = True,
        min_body_fraction: float = 0.2,
    ) -> None:
        if not pairs:
            raise ValueError("no real pairs to sample from")
        self.pairs = pairs
        self.depth, self.height, self.width = crop
        self.scales = list(inplane_scales)
        self.flip = flip
        self.min_body = min_body_fraction
        largest = max(self.scales)
        small = [
            f"{p.case} ({p.thick.shape[0]} thick slices, {p.thick.shape[1]} x {p.thick.shape[2]})"
            for p in pairs
            if p.thick.shape[0] < self.depth
            or p.thick.shape[1] < self.height * largest
            or p.thick.shape[2] < self.width * largest
        ]
        if small:
            raise ValueError(
                f"smaller than one crop of {self.depth} x {self.height * largest} x {self.width * largest}: "
                f"{', '.join(small)}; use a smaller crop or in-plane scale"
            )

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[rng.integers(len(self.pairs))]
        scale = self.scales[rng.integers(len(self.scales))]
        r, d, h, w = pair.ratio, self.depth, self.height * scale, self.width * scale
        for _ in range(CROP_TRIES):
            k = rng.integers(0, pair.thick.shape[0] - d + 1)
            y = rng.integers(0, pair.thick.shape[1] - h + 1)
            x = rng.integers(0, pair.thick.shape[2] - w + 1)
            thin = hu_to_unit(pair.thin[r * k : r * (k + d - 1) + 1, y : y + h, x : x + w])
            if self.has_body(thin):
                break
        thick = hu_to_unit(pair.thick[k : k + d, y : y + h, x : x + w])
        return self.finish(rng, downsample_inplane(thick, scale), downsample_inplane(thin, scale))
