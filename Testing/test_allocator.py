"""Freed memory kept for reuse during a prediction: fewer fresh pages, defaults restored after."""

from __future__ import annotations

import resource

import numpy as np
import pytest

from VolumetricSRLib.inference import allocator
from VolumetricSRLib.inference.allocator import peak_rss_bytes, reuse_freed_memory, reuse_supported

BLOCK_FLOATS = 16 * 2**20  # 64 MB, above glibc's largest mmap threshold


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_of_churn(blocks: int = 8) -> int:
    """Minor page faults of allocating, writing and freeing `blocks` 64 MB arrays in turn (numpy
    takes them from malloc like the tensors of a prediction)."""
    before = minor_faults()
    for _ in range(blocks):
        block = np.ones(BLOCK_FLOATS, dtype=np.float32)
        del block
    return minor_faults() - before


@pytest.fixture
def glibc():
    if not reuse_supported():
        pytest.skip("the allocator setting needs Linux with glibc")


@pytest.mark.usefixtures("glibc")
def test_reused_memory_spares_the_page_faults_of_fresh_blocks():
    default = faults_of_churn()
    with reuse_freed_memory() as active:
        assert active
        reused = faults_of_churn()
    after = faults_of_churn()
    assert reused * 4 <= default  # every block is mapped afresh, but with reuse only the first one
    assert after * 2 >= default  # the defaults are back


@pytest.mark.usefixtures("glibc")
def test_nested_uses_share_one_setting_until_the_last_leaves():
    with reuse_freed_memory(), reuse_freed_memory() as inner:
        assert inner and allocator._active == 2
    assert allocator._active == 0


def test_disabled_reuse_changes_nothing():
    with reuse_freed_memory(enabled=False) as active:
        assert not active
        assert allocator._active == 0


def test_peak_resident_size_covers_a_written_block():
    block = np.ones(BLOCK_FLOATS, dtype=np.float32)
    peak = peak_rss_bytes()
    assert peak is None or peak >= block.nbytes
