"""The events `volumetricsr ... --progress json` (and `devices --json`) write, one JSON object per line on
stdout, and their parser: the command line writes them, the child runner and the Slicer adapter read
them. Each event is a small dataclass; its JSON form is {"event": NAME, **fields}. No torch here.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TextIO


@dataclass(frozen=True)
class Progress:
    """How far the prediction is (0 to 1) and what it is doing."""

    name: ClassVar[str] = "progress"
    fraction: float
    message: str


@dataclass(frozen=True)
class Warned:
    """A warning of the run (the same words as on stderr without --progress json)."""

    name: ClassVar[str] = "warning"
    message: str


@dataclass(frozen=True)
class Fallback:
    """A GPU out-of-memory step: smaller batch, smaller tiles or the CPU."""

    name: ClassVar[str] = "fallback"
    message: str


@dataclass(frozen=True)
class Done:
    """One study written: where, its grid and affine (RAS), how long, on what, with which model."""

    name: ClassVar[str] = "done"
    output: str
    shape: list[int]  # i, j, k
    spacing_mm: list[float]
    affine: list[list[float]]
    seconds: float
    device: str
    fallbacks: list[str]
    model: str
    model_sha256: str
    ratio: int
    peak_rss_bytes: int | None
    slice_axis: int
    resampling: str | None
    consistency: dict | None
    consistency_line: str | None
    adaptation: str | None = None  # the adaptation to the scan's line, when there was one


@dataclass(frozen=True)
class Failed:
    """The run failed: the one-line reason and the exit code."""

    name: ClassVar[str] = "error"
    message: str
    code: int


@dataclass(frozen=True)
class Study:
    """One study of many (--output-dir) is over: done, skipped or failed."""

    name: ClassVar[str] = "study"
    rank: int
    study: str
    status: str
    seconds: float
    detail: str


@dataclass(frozen=True)
class Summary:
    """Every study of a many-study run (rank 0), and the ones that failed."""

    name: ClassVar[str] = "summary"
    studies: list[dict]
    failed: list[str]


@dataclass(frozen=True)
class Devices:
    """What `devices --json` found: the GPU `--device auto` would use, or why there is none."""

    name: ClassVar[str] = "devices"
    line: str
    cpu_threads: int
    torch: str
    cuda: str | None
    gpu: str | None
    reason: str | None


Event = Progress | Warned | Fallback | Done | Failed | Study | Summary | Devices
EVENTS: dict[str, type] = {
    kind.name: kind for kind in (Progress, Warned, Fallback, Done, Failed, Study, Summary, Devices)
}


def to_json(event: Event) -> str:
    """The event's line (without the newline)."""
    return json.dumps({"event": event.name, **asdict(event)})


def emit(event: Event, stream: TextIO | None = None) -> None:
    """Write the event's line and flush it at once (stdout by default)."""
    print(to_json(event), file=stream or sys.stdout, flush=True)


def parse(line: str) -> Event | None:
    """The event a line holds, or None for a line that is not one (text, other JSON, an unknown
    event or missing fields). Fields a newer writer adds are ignored."""
    if not line.startswith("{"):
        return None
    try:
        data: Any = json.loads(line)
    except ValueError:
        return None
    kind = EVENTS.get(data.get("event")) if isinstance(data, dict) else None
    if kind is None:
        return None
    known = {field.name for field in fields(kind)}
    try:
        return kind(**{key: value for key, value in data.items() if key in known})
    except TypeError:
        return None
