"""Many studies in one run: output names, the share of each torchrun rank, and the summary table.

Inputs are made unique (by resolved path) and sorted; each gets an output name in the output folder:
`<name>_thin.nii.gz` (or a `<name>_thin` DICOM folder), where <name> is the file name without its
extension or the DICOM folder's name; inputs that share a name get their parent folders' names in
front (a/ct.nii.gz, b/ct.nii.gz -> a_ct_thin.nii.gz, b_ct_thin.nii.gz), then their extension behind.
Under torchrun (RANK, WORLD_SIZE) rank r takes studies r, r + W, r + 2 W, ... of that sorted list,
so every study is done exactly once without any communication. At the end the ranks meet once in
torchrun's key-value store (no process group) so that rank 0 can print the table of every study and
no rank exits (which would make torchrun stop the others) before all are finished.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..io.volume_io import output_ending, volume_stem

OUTPUT_SUFFIX = "_thin"
STATUSES = ("done", "skipped", "failed")
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Study:
    """One input and the output it gets."""

    input: Path
    output: Path


@dataclass(frozen=True)
class Outcome:
    """What became of a study: status "done", "skipped" or "failed"; detail: output or error."""

    study: str
    status: str
    seconds: float
    detail: str


@dataclass(frozen=True)
class Ranks:
    """This process's place under torchrun: rank, world size and local rank (0, 1, 0 without torchrun)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_environment(cls) -> Ranks:
        """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them; ValueError when they make no sense."""
        try:
            rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError as error:
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers ({error})") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise ValueError(f"RANK {rank} and WORLD_SIZE {world} do not fit (0 <= RANK < WORLD_SIZE)")
        return cls(rank, world, local)


def plan_studies(inputs: Sequence[Path], output_dir: Path, out_format: str = "nifti") -> list[Study]:
    """Unique inputs, sorted by resolved path, each with its output in `output_dir` (see module), in
    `out_format` (a format table name; its output ending ends the name)."""
    given: dict[Path, Path] = {}
    for path in inputs:
        given.setdefault(Path(path).resolve(), Path(path))
    unique = sorted(given.items(), key=lambda item: str(item[0]))
    names = output_names([resolved for resolved, _ in unique])
    ending = output_ending(out_format)
    return [
        Study(given, output_dir / f"{name}{OUTPUT_SUFFIX}{ending}")
        for (_, given), name in zip(unique, names, strict=True)
    ]


def output_names(paths: Sequence[Path]) -> list[str]:
    """A distinct name per (resolved, distinct) path: its stem; with as many parent folder names in
    front as tell it from paths of the same stem in other folders; with its extension behind when
    one of the same stem shares its folder; numbered (_2, _3, ...) if still not unique."""
    names = []
    for path in paths:
        same_stem = [other for other in paths if other != path and volume_stem(other) == volume_stem(path)]
        others = {other.parent.parts for other in same_stem if other.parent != path.parent}
        depth = 0
        while any(_tail(parts, depth) == _tail(path.parent.parts, depth) for parts in others):
            depth += 1
        name = _name(path, depth)
        if any(other.parent == path.parent for other in same_stem):
            name = f"{name}_{_extension(path)}"
        names.append(name)
    return [
        f"{name}_{names[:n].count(name) + 1}" if name in names[:n] else name for n, name in enumerate(names)
    ]


def _tail(parts: tuple[str, ...], depth: int) -> tuple[str, ...]:
    """The last `depth` folder names (all of them when there are fewer)."""
    return parts[max(0, len(parts) - depth) :] if depth else ()


def _name(path: Path, parents: int) -> str:
    """The path's stem with `parents` parent folder names in front, joined by '_'."""
    folders = _tail(path.parent.parts, parents)
    return "_".join(part.strip("/\\") for part in (*folders, volume_stem(path)) if part.strip("/\\"))


def _extension(path: Path) -> str:
    return path.name[len(volume_stem(path)) :].lstrip(".").replace(".", "_") or "folder"


def rank_share(studies: Sequence[Study], ranks: Ranks) -> list[Study]:
    """The studies of this rank: every WORLD_SIZE-th of the sorted list, from RANK."""
    return list(studies[ranks.rank :: ranks.world])


def summary_table(outcomes: Sequence[Outcome]) -> str:
    """A plain text table: study, status, seconds, output or error."""
    rows = [("study", "status", "seconds", "output or error")]
    rows += [(o.study, o.status, f"{o.seconds:.1f}", o.detail) for o in outcomes]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "\n".join(
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}" for row in rows
    )


def gather_outcomes(outcomes: Sequence[Outcome], ranks: Ranks) -> list[Outcome] | None:
    """Every rank's outcomes, in study order, on rank 0 once all ranks have finished; None on the
    other ranks (rank 0 reports them). Uses torchrun's key-value store (MASTER_ADDR, MASTER_PORT);
    alone, or without a store, a process keeps its own outcomes.
    """
    if ranks.world == 1 or not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        return list(outcomes)
    store = _run_store()
    store.set(f"outcomes/{ranks.rank}", json.dumps([asdict(outcome) for outcome in outcomes]))
    _wait_for(store, "finished", ranks.world)
    if ranks.rank != 0:
        store.add("departed", 1)  # the last use of the store: rank 0 (maybe its host) waits for it
        return None
    shares = [json.loads(store.get(f"outcomes/{rank}")) for rank in range(ranks.world)]
    while store.add("departed", 0) < ranks.world - 1:
        time.sleep(POLL_SECONDS)
    total = sum(len(share) for share in shares)  # rank r did studies r, r + W, ...: interleave them back
    return [Outcome(**shares[n % ranks.world][n // ranks.world]) for n in range(total)]


def _run_store():
    """torchrun's key-value store, under a prefix of this run and restart."""
    import torch.distributed as dist

    store, _, _ = next(dist.rendezvous("env://"))
    run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"volumetricsr/{run}/{restart}/", store)


def _wait_for(store, key: str, count: int) -> None:
    """Add one to `key`, then wait until it reaches `count` (a barrier of `count` processes)."""
    store.add(key, 1)
    while store.add(key, 0) < count:
        time.sleep(POLL_SECONDS)
