"""The wheel built from a clean copy of the tracked files, installed into a new virtual environment,
runs `volumetricsr demo` with its bundled model from outside the source tree.

The new environment takes its third-party packages (torch, numpy, ...) from the test's own
environment through a .pth line, so the test needs no network; the wheel itself is installed with
`--no-deps --no-index`, and nothing of the checkout is on the new environment's path.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

LEFT_OUT = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "runs")


def clean_copy(destination: Path) -> Path:
    """The files git tracks (or, without git, the tree less build outputs) copied to `destination`."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=False)
    if listed.returncode != 0:
        shutil.copytree(REPO, destination, ignore=LEFT_OUT)
        return destination
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def demo_scores(printed: str) -> dict[str, tuple[float, float]]:
    """{method: (PSNR, SSIM)} from the table `volumetricsr demo` prints."""
    rows = {}
    for line in printed.splitlines():
        *name, psnr, ssim = ["", "", *line.split()]
        try:
            rows[" ".join(name).strip()] = (float(psnr), float(ssim))
        except ValueError:
            continue
    return rows


def run(command: list[str | Path], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a new virtual environment holding the wheel built from a clean copy."""
    root = tmp_path_factory.mktemp("wheel")
    source = clean_copy(root / "checkout")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                 "-w", root / "dist", source], cwd=root)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("volumetricsr-*.whl")
    venv = root / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root).returncode == 0
    (new_site,) = venv.glob("lib/python*/site-packages")
    (new_site / "project_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = venv / "bin" / "python"
    done = run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
                wheel], cwd=root)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return venv / "bin"


def test_the_wheel_carries_the_model_and_both_packages_under_their_own_names(installed: Path) -> None:
    probe = (
        "import importlib.util, VolumetricSRLib, volumetricsr_training;"
        "from VolumetricSRLib.models.model_cards import bundled_models_dir, default_model_path;"
        "print(VolumetricSRLib.__file__); print(bundled_models_dir()); print(default_model_path().stem);"
        "print(importlib.util.find_spec('training'))"
    )
    result = run([installed / "python", "-c", probe], cwd=installed)
    assert result.returncode == 0, result.stderr
    library, models, default, training = result.stdout.split()
    venv = installed.parent.resolve()
    assert Path(library).resolve().is_relative_to(venv)
    assert Path(models) == Path(library).parent / "bundled_models"
    assert default == (REPO / "Resources" / "Models" / "default.txt").read_text().strip()
    assert training == "None"  # no generic 'training' package lands in site-packages


def test_the_installed_commands_run_the_demo_with_the_bundled_model(installed: Path, tmp_path: Path) -> None:
    result = run([installed / "volumetricsr", "demo", "--out", tmp_path / "demo"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scores = demo_scores(result.stdout)
    # the bundled model re-scored on the demo's phantom where no ../shared is at hand: it must keep
    # the README's figures (39.304 dB / 0.9672; cubic 37.560 dB) and its margin over cubic
    assert scores["TVSRN (tvsrn-x5-publicct-v2)"] == pytest.approx((39.304, 0.9672), abs=0.002)
    assert scores["cubic B-spline"] == pytest.approx((37.560, 0.9601), abs=0.002)
    written = sorted(path.name for path in (tmp_path / "demo").iterdir())
    assert written == ["cubic.nii.gz", "predicted.nii.gz", "review.png", "thick.nii.gz", "truth.nii.gz"]
    helped = run([installed / "volumetricsr-train", "--help"], cwd=tmp_path)
    assert helped.returncode == 0 and "analyse-dataset" in helped.stdout
