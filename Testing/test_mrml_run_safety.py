"""A Slicer run fails loudly and cancels cleanly: settings refused before any process starts, the child's
stderr in the log, a removed node cancelling at once, space checked before files are written, a double
click on Apply not cancelling its own run (real MRML scene of slicer-core, real child processes)."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="the MRML tests need the slicer-core wheel")

from test_mrml_volume_nodes import AXIAL, add_volume, ct_voxels  # noqa: E402

from VolumetricSRLib.app.child_run import ChildError, ChildRun  # noqa: E402
from VolumetricSRLib.app.events import Progress  # noqa: E402
from VolumetricSRLib.checks import InputError  # noqa: E402
from VolumetricSRLib.geometry import GeometryError  # noqa: E402
from VolumetricSRMRML import processing  # noqa: E402
from VolumetricSRMRML.apply_guard import ARM_SECONDS, ApplyGuard  # noqa: E402
from VolumetricSRMRML.processing import (  # noqa: E402
    RunSettings,
    SuperResolutionCancelled,
    SuperResolutionJob,
)
from VolumetricSRMRML.volume_nodes import VolumeNodeError  # noqa: E402


@pytest.fixture
def scene():
    scene = slicer.vtkMRMLScene()
    slicer.vtkSlicerColorLogic().SetMRMLScene(scene)
    return scene


@pytest.fixture
def temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Slicer's temporary folder for these runs: a fresh one, so that leftovers can be counted."""
    folder = tmp_path / "slicer-temp"
    folder.mkdir()
    monkeypatch.setattr(processing, "temporary_parent", lambda: folder)
    return folder


def with_spacing(mm: float) -> np.ndarray:
    affine = AXIAL.copy()
    affine[2, 2] = mm
    return affine


@pytest.mark.parametrize(
    ("slice_mm", "settings", "error", "words"),
    [
        (
            5.0,
            RunSettings(spacing_mm=10.0),
            GeometryError,
            "--spacing 10 mm is not finer than the input's 5 mm",
        ),
        (5.0, RunSettings(spacing_mm=5.0), GeometryError, "choose a spacing below 5 mm"),
        (
            3.0,
            RunSettings(model="tvsrn-x5-publicct", enforce_consistency=True),
            InputError,
            "set the output spacing to 0.6 mm",
        ),
        (5.0, RunSettings(spacing_mm=2.0, enforce_consistency=True), InputError, "(--spacing 1)"),
    ],
)
def test_settings_the_child_would_refuse_are_refused_before_any_process_or_file(
    scene, temporary: Path, slice_mm: float, settings: RunSettings, error: type, words: str
) -> None:
    thick = add_volume(scene, ct_voxels(), with_spacing(slice_mm))
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(error) as refused:
        SuperResolutionJob(thick, settings, python="/no/such/python")  # a started child would fail otherwise
    assert words in str(refused.value)
    assert list(temporary.iterdir()) == [] and scene.GetNumberOfNodes() == nodes


def test_the_command_line_refuses_the_same_settings_with_the_same_words(tmp_path: Path) -> None:
    from VolumetricSRLib.app.cli import main
    from VolumetricSRLib.io.volume_io import write_volume

    thick = write_volume(tmp_path / "thick.nrrd", ct_voxels(), with_spacing(3.0))
    settings = RunSettings(model="tvsrn-x5-publicct", enforce_consistency=True)
    with pytest.raises(InputError) as panel:
        settings.check(with_spacing(3.0), ct_voxels().shape)
    assert main(["predict", str(thick), str(tmp_path / "thin.nrrd"), *settings.arguments()]) != 0
    assert not (tmp_path / "thin.nrrd").exists()
    assert str(panel.value).startswith("enforcing consistency (--enforce-consistency) corrects")


def test_too_little_free_space_is_refused_before_anything_is_written(
    scene, temporary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    thick = add_volume(scene, ct_voxels((8, 64, 64)), AXIAL)
    free = 100_000  # bytes: less than the 8 x 64 x 64 input and its 36 x 64 x 64 output
    monkeypatch.setattr(processing.shutil, "disk_usage", lambda path: type("Usage", (), {"free": free}))
    with pytest.raises(VolumeNodeError, match=f"the temporary folder {temporary} has 0.00 GiB free"):
        SuperResolutionJob(thick, RunSettings(), python=sys.executable)
    assert list(temporary.iterdir()) == []


def test_runs_write_into_the_configured_temporary_folder(scene, temporary: Path, linear_model_card) -> None:
    thick = add_volume(scene, ct_voxels(), AXIAL)
    settings = RunSettings(model=str(linear_model_card), device="cpu", allow_untrained=True)
    job = SuperResolutionJob(thick, settings, python=sys.executable)
    assert job.folder.parent == temporary and (job.folder / "thick.nrrd").is_file()
    job.cancel()
    assert list(temporary.iterdir()) == []


def started_job(scene, **options) -> tuple[SuperResolutionJob, object]:
    """A run of the bundled model on a volume long enough to be caught running, past its first progress."""
    thick = add_volume(scene, ct_voxels((40, 256, 256)), AXIAL)
    job, seen = SuperResolutionJob(thick, RunSettings(device="cpu"), python=sys.executable, **options), []
    while not seen:
        assert job.poll(lambda fraction, message: seen.append(fraction)) is None
        time.sleep(0.01)
    return job, thick


@pytest.mark.parametrize("removed", ["input", "output"])
def test_removing_the_input_or_output_node_cancels_the_run_at_once(
    scene, temporary: Path, removed: str
) -> None:
    output = add_volume(scene, np.full((2, 3, 4), 7, np.int16), AXIAL, name="previous result")
    job, thick = started_job(scene, output_node=output)
    started = time.perf_counter()
    scene.RemoveNode(thick if removed == "input" else output)
    assert time.perf_counter() - started < 1.5  # the child's whole tree killed in the scene's event
    assert job.child.returncode is not None and not job.folder.exists()
    with pytest.raises(SuperResolutionCancelled, match=f"the {removed} volume was removed from the scene"):
        job.poll()
    assert list(temporary.iterdir()) == []


def test_other_nodes_leaving_the_scene_do_not_stop_the_run(scene, temporary: Path, linear_model_card) -> None:
    thick = add_volume(scene, ct_voxels(), AXIAL)
    bystander = add_volume(scene, ct_voxels(), AXIAL, name="bystander")
    settings = RunSettings(model=str(linear_model_card), device="cpu", allow_untrained=True)
    job = SuperResolutionJob(thick, settings, python=sys.executable)
    scene.RemoveNode(bystander)
    while (result := job.poll()) is None:
        time.sleep(0.02)
    assert result.output.GetScene() is scene and list(temporary.iterdir()) == []


def test_every_stderr_line_of_the_child_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    script = (
        "import sys; print('warning: 3 voxels above 2048 HU', file=sys.stderr); "
        "print('Traceback (most recent call last):', file=sys.stderr); "
        "print('  File \"x.py\", line 1', file=sys.stderr); print('error: it broke', file=sys.stderr); "
        'print(\'{"event": "progress", "fraction": 0.5, "message": "m"}\'); sys.exit(3)'
    )
    logger = logging.getLogger("VolumetricSR.test")
    with caplog.at_level(logging.INFO, logger="VolumetricSR.test"):
        run = ChildRun([sys.executable, "-c", script], log=logger)
        assert run.wait(30) == 3
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [
        ("WARNING", "child: warning: 3 voxels above 2048 HU"),
        ("ERROR", "child: Traceback (most recent call last):"),
        ("INFO", 'child:   File "x.py", line 1'),
        ("ERROR", "child: error: it broke"),
    ]
    assert run.poll() == [Progress(0.5, "m")]  # stdout events stay events
    assert run.last_lines(2) == '  File "x.py", line 1\nerror: it broke'


def test_a_failed_run_carries_the_childs_last_lines_for_the_dialog(scene, temporary: Path, linear_model_card):
    three = add_volume(scene, ct_voxels((3, 10, 12)), AXIAL, name="three slices")
    settings = RunSettings(model=str(linear_model_card), device="cpu", allow_untrained=True)
    job = SuperResolutionJob(three, settings, python=sys.executable)
    with pytest.raises(ChildError, match="the model needs at least 4 slices, got 3") as failed:
        while job.poll() is None:
            time.sleep(0.02)
    assert "error: the model needs at least 4 slices, got 3" in failed.value.details
    assert list(temporary.iterdir()) == []


def test_a_double_click_on_apply_does_not_cancel_the_run_it_started() -> None:
    guard = ApplyGuard()
    assert guard.cancel_allowed(100.0)  # nothing started yet
    guard.started(100.0)
    assert not guard.cancel_allowed(100.3)  # the second click of a double click
    assert not guard.cancel_allowed(100.0 + ARM_SECONDS - 0.01)
    assert guard.cancel_allowed(100.0 + ARM_SECONDS)  # a deliberate Cancel
    assert ARM_SECONDS > 0.9  # longer than the longest double-click time Windows allows


def test_the_system_temporary_folder_is_used_outside_slicer() -> None:
    assert processing.temporary_parent() == Path(tempfile.gettempdir())


def test_the_panel_settings_become_one_object_with_one_not_set_value() -> None:
    from types import SimpleNamespace

    panel = SimpleNamespace(  # the parameter node's fields, as the panel leaves them by default
        device="GPU", tileSize=0, depthOverlap=2, batchSize=0, halfPrecision=False, outputSpacing=0.0,
        enforceConsistency=True, adaptToScan=False,
    )  # fmt: skip
    settings = RunSettings.from_panel(panel, "")
    assert settings == RunSettings(device="GPU", depth_overlap=2, amp=False, enforce_consistency=True)
    assert (settings.model, settings.tile, settings.batch, settings.spacing_mm) == (None, None, None, None)
    assert settings.arguments() == [
        "--device",
        "cuda",
        "--depth-overlap",
        "2",
        "--no-amp",
        "--enforce-consistency",
    ]
    chosen = RunSettings.from_panel(
        SimpleNamespace(**{**vars(panel), "tileSize": 256, "outputSpacing": 0.5, "adaptToScan": True}), "x3"
    )
    assert chosen.arguments()[2:] == ["--depth-overlap", "2", "--model", "x3", "--tile", "256", "--no-amp",
                                      "--spacing", "0.5", "--enforce-consistency", "--adapt"]  # fmt: skip
