"""How busy the rest of the machine was while something was timed: the share of all CPUs that other
processes used, from the kernel's CPU counters (/proc/stat) minus this process's own CPU time. A
timing taken while that share is small is a quiet one; reports say which they have."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

QUIET_SHARE = 0.05
"""Timings count as quiet when other processes used at most this share of the machine's CPUs."""

PROC_STAT = Path("/proc/stat")


def busy_cpu_seconds(stat: Path = PROC_STAT) -> float | None:
    """CPU seconds every process has spent busy since boot (all CPUs), or None where the kernel does not
    publish them (not Linux)."""
    try:
        fields = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal; guests are in user
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """The counters at one moment: wall clock, this process's CPU time, the machine's busy CPU time."""

    wall: float
    own: float
    busy: float | None


def sample(stat: Path = PROC_STAT) -> Sample:
    return Sample(time.perf_counter(), time.process_time(), busy_cpu_seconds(stat))


def other_cpu_share(start: Sample, end: Sample, cpus: int | None = None) -> float | None:
    """The share (0-1) of all CPUs that processes other than this one used between two samples; None
    where the machine's counters are unknown or no time passed."""
    wall = end.wall - start.wall
    if start.busy is None or end.busy is None or wall <= 0:
        return None
    others = (end.busy - start.busy) - (end.own - start.own)
    return min(1.0, max(0.0, others / (wall * (cpus or os.cpu_count() or 1))))


def describe_share(share: float | None) -> str:
    """One sentence for a report: how busy the rest of the machine was, and whether that is quiet."""
    if share is None:
        return "how busy other processes kept the CPU could not be measured on this system"
    verdict = (
        "a quiet machine"
        if share <= QUIET_SHARE
        else "NOT a quiet machine: rerun the report when nothing else runs before reading the times"
    )
    return f"other processes used {100 * share:.1f} % of the CPUs meanwhile: {verdict}"
