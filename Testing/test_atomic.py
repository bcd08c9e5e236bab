"""The one atomic-write helper: complete files or none, never a leftover temporary."""

from __future__ import annotations

from pathlib import Path

import pytest

from VolumetricSRLib.atomic import atomic_path, write_bytes_atomically, write_text_atomically


def test_a_finished_block_replaces_the_target_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "card.json"
    target.write_text("old")
    with atomic_path(target, ".json") as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".card.json.")
        assert temporary.suffix == ".json" and not temporary.exists()
        temporary.write_text("new")
        assert target.read_text() == "old"  # nothing changes until the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]


def test_a_failing_block_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]


def test_bytes_and_text_helpers(tmp_path: Path) -> None:
    assert write_bytes_atomically(tmp_path / "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert write_text_atomically(tmp_path / "b.txt", "model ä\n").read_bytes() == "model ä\n".encode()
    with pytest.raises(FileNotFoundError):
        write_text_atomically(tmp_path / "missing" / "c.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt"]
