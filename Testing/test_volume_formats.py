"""The format table: one registration (reader, writer, endings) is all a new format needs, and the table
refuses entries that would make a file's format ambiguous."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from VolumetricSRLib.app.batch import plan_studies
from VolumetricSRLib.io import formats
from VolumetricSRLib.io.formats import VolumeFormat, WriteOptions
from VolumetricSRLib.io.volume import Volume, VolumeFileError
from VolumetricSRLib.io.volume_io import (
    FORMATS,
    output_format,
    read_geometry,
    read_volume,
    volume_stem,
    write_volume,
)


def read_npz(path: Path, series: str | None = None) -> Volume:
    with np.load(path) as stored:
        return Volume(stored["array"], stored["affine"], path)


def write_npz(path: Path, array: np.ndarray, affine: np.ndarray, options: WriteOptions) -> Path:
    with path.open("wb") as stream:
        np.savez(stream, array=array, affine=affine, model=str((options.synthetic or {}).get("model", "")))
    return path


@pytest.fixture
def npz_format():
    entry = VolumeFormat("npz", (".vol.npz",), read_npz, write_npz, output_ending=".vol.npz")
    formats.register(entry)
    yield entry
    del formats.TABLE[entry.name]


def test_a_registered_format_is_read_written_named_and_planned_through_the_table(npz_format, tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    affine = np.diag([0.7, 0.7, 5.0, 1.0])
    written = write_volume(tmp_path / "ct.vol.npz", array, affine, synthetic={"model": "m1"})
    assert output_format(written) == "npz" and volume_stem(written) == "ct"
    volume = read_volume(written)
    assert np.array_equal(volume.array, array) and np.array_equal(volume.affine, affine)
    assert np.load(written)["model"] == "m1"
    shape, geometry = read_geometry(written)  # no geometry reader: read whole
    assert shape == (2, 3, 4) and np.array_equal(geometry, affine)
    plan = plan_studies([tmp_path / "in.nii.gz"], tmp_path / "out", "npz")
    assert plan[0].output == tmp_path / "out" / "in_thin.vol.npz"
    with pytest.raises(VolumeFileError, match="already exists"):
        write_volume(written, array, affine)
    with pytest.raises(VolumeFileError, match="burned-in SYNTHETIC marker"):
        write_volume(tmp_path / "other.vol.npz", array, affine, burn_in_marker=True)


def test_the_built_in_table():
    assert sorted(formats.TABLE) == ["dicom", "metaimage", "nifti", "nrrd"]
    assert FORMATS == ("auto", "dicom")
    assert formats.TABLE["metaimage"].write is None  # read only
    assert [entry.name for entry in formats.TABLE.values() if entry.folder] == ["dicom"]


def test_the_table_refuses_ambiguous_entries(npz_format):
    with pytest.raises(ValueError, match="registered already"):
        formats.register(VolumeFormat("npz", (".other",), read_npz))
    with pytest.raises(ValueError, match=r"another format owns the endings \['.nrrd'\]"):
        formats.register(VolumeFormat("nrrd2", (".nrrd",), read_npz))
    with pytest.raises(ValueError, match="one folder format"):
        formats.register(VolumeFormat("folders", (), read_npz))
    assert "nrrd2" not in formats.TABLE and "folders" not in formats.TABLE
