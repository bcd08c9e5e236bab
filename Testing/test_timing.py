"""The report's quiet-machine check: other processes' share of the CPUs while methods are timed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from volumetricsr_training.timing import (
    PROC_STAT,
    QUIET_SHARE,
    Sample,
    busy_cpu_seconds,
    describe_share,
    other_cpu_share,
    sample,
)


def test_busy_seconds_are_the_non_idle_ticks_of_the_cpu_line(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 20 30 400 50 5 5 10 7 0\ncpu0 50 10 15 200 25 2 3 5 0 0\n")
    assert busy_cpu_seconds(stat) == pytest.approx(170 / os.sysconf("SC_CLK_TCK"))
    stat.write_text("intr 1 2 3\n")
    assert busy_cpu_seconds(stat) is None
    assert busy_cpu_seconds(tmp_path / "missing") is None  # not Linux: unknown, not zero


def test_the_share_is_other_processes_busy_time_over_all_cpus():
    start = Sample(wall=10.0, own=1.0, busy=100.0)
    assert other_cpu_share(start, Sample(wall=12.0, own=2.0, busy=103.0), cpus=2) == pytest.approx(0.5)
    assert other_cpu_share(start, Sample(wall=12.0, own=4.0, busy=103.0), cpus=2) == 0.0  # only ours
    assert other_cpu_share(start, Sample(wall=12.0, own=1.0, busy=200.0), cpus=2) == 1.0  # clamped
    assert other_cpu_share(start, Sample(wall=12.0, own=2.0, busy=None), cpus=2) is None
    assert other_cpu_share(start, start, cpus=2) is None  # no time passed


def test_the_sentence_says_quiet_or_not_and_unknown():
    assert describe_share(QUIET_SHARE).endswith("a quiet machine")
    assert "NOT a quiet machine" in describe_share(0.5) and "50.0 %" in describe_share(0.5)
    assert "could not be measured" in describe_share(None)


@pytest.mark.skipif(busy_cpu_seconds(PROC_STAT) is None, reason="needs Linux's /proc/stat")
def test_a_busy_child_process_is_seen_while_this_one_sleeps():
    spin = "import time\nend = time.perf_counter() + 1.5\nwhile time.perf_counter() < end: pass\n"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)  # the child is running
        start = sample()
        time.sleep(1.0)
        share = other_cpu_share(start, sample())
    finally:
        child.wait()
    assert share is not None and share * (os.cpu_count() or 1) >= 0.5  # at least half a CPU of others
