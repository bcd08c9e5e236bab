"""Freed memory kept for reuse during a prediction: fewer fresh pages, defaults restored after."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
import torch

from VolumetricSRLib import allocator
from VolumetricSRLib.allocator import peak_rss_bytes, reuse_freed_memory, reuse_supported

BLOCK_FLOATS = 16 * 2**20  # 64 MB, above glibc's largest mmap threshold
PAGES = BLOCK_FLOATS * 4 // 4096


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def faults_of_churn(blocks: int = 8) -> int:
    """Minor page faults of allocating, writing and freeing `blocks` 64 MB tensors in turn."""
    before = minor_faults()
    for _ in range(blocks):
        block = torch.empty(BLOCK_FLOATS)
        block.fill_(1.0)
        del block
    return minor_faults() - before


@pytest.fixture
def glibc_with_small_pages():
    if not reuse_supported():
        pytest.skip("the allocator setting needs Linux with glibc")
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[always]" in thp.read_text():
        pytest.skip("transparent huge pages are always on: page faults do not count 4 kB pages")


@pytest.mark.usefixtures("glibc_with_small_pages")
def test_reused_memory_spares_the_page_faults_of_fresh_blocks():
    default = faults_of_churn()
    with reuse_freed_memory() as active:
        assert active
        reused = faults_of_churn()
    after = faults_of_churn()
    assert default >= 7 * PAGES  # every block is mapped afresh ...
    assert reused <= 2 * PAGES  # ... but with reuse only the first one
    assert after >= 7 * PAGES  # the defaults are back


@pytest.mark.usefixtures("glibc_with_small_pages")
def test_nested_uses_restore_the_defaults_once_when_the_last_leaves():
    with reuse_freed_memory(), reuse_freed_memory() as inner:
        assert inner and allocator._active == 2
    assert allocator._active == 0
    assert faults_of_churn() >= 7 * PAGES


def test_disabled_reuse_changes_nothing():
    with reuse_freed_memory(enabled=False) as active:
        assert not active
        assert allocator._active == 0


def test_peak_resident_size_covers_a_written_block():
    block = torch.ones(BLOCK_FLOATS)
    peak = peak_rss_bytes()
    assert peak is None or peak >= block.numel() * 4
