"""The derived series against DICOM's reference IOD validator (dciodvfy, Debian package dicom3tools):
it reports no error or warning that the input series does not have already.

Derived from Slicer's real head CT series (its 1.5 mm slices are no thick-slice input for `predict`,
so the writer gets them on a twice finer grid), and from a generated contrast study of a paired organ
(Laterality, the Contrast/Bolus module) end to end through `volumetricsr predict FOLDER OUT/`.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_series import thick_positions, write_series

from conftest import shared_ct
from VolumetricSRLib.app.cli import main
from VolumetricSRLib.io.dicom_io import write_dicom_series
from VolumetricSRLib.io.volume_io import read_volume

pytestmark = pytest.mark.skipif(
    shutil.which("dciodvfy") is None,
    reason="dciodvfy is not installed (Debian/Ubuntu: apt-get install dicom3tools)",
)
SYNTHETIC = {"model": "tvsrn-x5-test", "architecture": "TVSRN", "model_sha256": "cd" * 32, "source": "thick"}


def findings(path: Path) -> set[str]:
    """dciodvfy's errors and warnings about one file, one line each."""
    report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (report.stdout + report.stderr).splitlines()
    return {line.strip() for line in lines if line.startswith(("Error", "Warning"))}


def middle_file(folder: Path) -> Path:
    files = sorted(folder.iterdir(), key=lambda path: int(pydicom.dcmread(path).InstanceNumber))
    return files[len(files) // 2]


def finer(volume, ratio: int) -> tuple[np.ndarray, np.ndarray]:
    """The volume's slices repeated onto a `ratio` times finer grid that starts on its first slice."""
    affine = volume.affine.copy()
    affine[:3, 2] /= ratio
    slices = (volume.array.shape[0] - 1) * ratio + 1
    return np.repeat(volume.array, ratio, axis=0)[:slices].astype(np.int16), affine


def test_a_series_derived_from_the_real_head_ct_adds_no_finding(tmp_path: Path) -> None:
    source = shared_ct("Slicer/CTHeadAxialDicom")
    volume = read_volume(source)
    out = write_dicom_series(tmp_path / "thin", *finer(volume, 2), SYNTHETIC, volume.dicom)
    written = middle_file(out)
    assert pydicom.dcmread(written).SeriesDescription.startswith("SYNTHETIC")
    assert findings(written) - findings(middle_file(source)) == set()


def test_a_contrast_study_of_a_paired_organ_made_thin_adds_no_finding(tmp_path: Path, capsys) -> None:
    shape = (6, 12, 10)
    stored = (24 + np.arange(np.prod(shape)) % 900).reshape(shape).astype(np.uint16)
    paths = write_series(tmp_path / "in", stored, thick_positions(shape[0], np.array([0.0, 0.0, 5.0])))
    for path in paths:  # as a GE scanner writes a contrast study of the abdomen
        header = pydicom.dcmread(path)
        header.Laterality = ""  # type 2C: present and empty
        header.ContrastBolusAgent, header.ContrastBolusRoute = "Oral & IV", "IV"
        header.ContrastBolusVolume, header.ContrastBolusStartTime = 100, "101530"
        header.LongitudinalTemporalInformationModified = "UNMODIFIED"
        header.save_as(path)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in"), f"{out}/", "--device", "cpu", "--progress", "none"]) == 0
    capsys.readouterr()
    written = pydicom.dcmread(middle_file(out))
    assert written.ContrastBolusAgent == "Oral & IV" and "Laterality" in written
    assert findings(middle_file(out)) - findings(paths[len(paths) // 2]) == set()
