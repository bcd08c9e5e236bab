"""The core's command line as a child process: JSON progress, the device line, errors as one line,
and a kill that takes the whole process tree within a second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import REPO
from VolumetricSRLib.app.child_run import ChildRun, core_command, group_running
from VolumetricSRLib.app.events import Devices, Done, Event, Failed, Progress
from VolumetricSRLib.io.volume_io import read_volume, write_volume
from VolumetricSRLib.phantom import chest_phantom, simulate_thick

PYTHON = sys.executable


def thick_phantom(folder: Path, shape: tuple[int, int, int] = (40, 64, 72)) -> Path:
    """A 5 mm scan simulated from the synthetic chest, as NRRD."""
    thin, affine = chest_phantom(shape, pixel_mm=1.5, seed=2)
    thick, thick_affine = simulate_thick(thin, affine, 5)
    return write_volume(folder / "thick.nrrd", np.rint(thick).astype(np.int16), thick_affine)


def run_to_end(run: ChildRun, timeout: float = 120) -> list[Event]:
    run.wait(timeout)
    return run.poll()


def test_predict_reports_json_progress_and_a_done_event(tmp_path: Path) -> None:
    source, output = thick_phantom(tmp_path), tmp_path / "thin.nrrd"
    arguments = ["predict", source, output, "--progress", "json", "--device", "cpu", "--no-compress"]
    run = ChildRun(core_command(PYTHON, arguments))
    events = run_to_end(run)
    assert run.returncode == 0, list(run.log)

    progress = [event for event in events if isinstance(event, Progress)]
    fractions = [event.fraction for event in progress]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert "windows x 1 tiles on cpu" in progress[0].message
    done = events[-1]
    assert isinstance(done, Done) and done.output == str(output)
    assert done.shape == [72, 64, 36] and done.ratio == 5 and done.fallbacks == []
    assert done.model == "tvsrn-x5-publicct-v2" and len(done.model_sha256) == 64
    assert done.device.startswith("cpu") and done.seconds > 0 and done.peak_rss_bytes > 0
    assert read_volume(output).array.shape == (36, 64, 72)
    header = output.read_bytes()[:2000]
    assert b"\nencoding: raw\n" in header  # --no-compress: no gzip for temporary files
    assert b"\nVolumetricSR_synthetic:=true\n" in header and b"\nVolumetricSR_source:=thick.nrrd\n" in header


def test_a_failing_child_gives_its_one_line_reason(tmp_path: Path) -> None:
    source = write_volume(tmp_path / "three.nrrd", np.zeros((3, 16, 16), np.int16), np.diag([1, 1, 5.0, 1]))
    run = ChildRun(core_command(PYTHON, ["predict", source, tmp_path / "out.nrrd", "--progress", "json"]))
    events = run_to_end(run)
    assert run.returncode == 2
    assert isinstance(events[-1], Failed) and events[-1].code == 2
    assert "the model needs at least 4 slices, got 3" in run.failure()
    assert run.failure() == events[-1].message
    assert "Traceback" not in run.failure()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["three.nrrd"]


def test_unexpected_failures_are_one_line_too(tmp_path: Path) -> None:
    """A crash inside the core still ends as an error event; the traceback goes to the log only."""
    script = (
        "import sys; from VolumetricSRLib.app import cli, run\n"
        "def broken(path, series=None): raise RuntimeError('disk on fire')\n"
        "run.read_volume = broken\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    source = thick_phantom(tmp_path)
    command = [PYTHON, "-c", script, "predict", str(source), str(tmp_path / "o.nrrd"), "--progress", "json"]
    run = ChildRun(command)
    events = run_to_end(run)
    assert run.returncode == 1
    assert events[-1] == Failed("RuntimeError: disk on fire", 1)
    assert any("Traceback" in line for line in run.log)


def test_the_device_line_comes_from_the_child() -> None:
    run = ChildRun(core_command(PYTHON, ["devices", "--json"]))
    events = run_to_end(run)
    assert run.returncode == 0
    (answer,) = events
    assert isinstance(answer, Devices) and answer.torch
    if answer.gpu is None:
        assert answer.line.startswith("CPU only (") and answer.reason
    else:
        assert answer.line == f"GPU: {answer.gpu}"


def test_kill_takes_the_whole_tree_within_a_second(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        'print(\'{"event": "progress", "fraction": 0.0, "message": "started"}\', flush=True)\n'
        "time.sleep(120)\n"
    )
    run = ChildRun([PYTHON, "-c", script])
    deadline = time.monotonic() + 30
    events: list[Event] = []
    while not events and time.monotonic() < deadline:
        events = run.poll()
        time.sleep(0.01)
    assert events == [Progress(0.0, "started")]
    grandchild = int(pid_file.read_text())
    started = time.perf_counter()
    run.kill()
    assert time.perf_counter() - started < 1.0
    assert run.returncode is not None
    assert not alive(grandchild)


def test_a_group_runs_while_a_member_is_not_a_zombie(tmp_path: Path) -> None:
    def process(pid: int, state: str, group: int) -> None:
        (tmp_path / str(pid)).mkdir()
        stat = f"{pid} (python (x)) {state} 1 {group} {group} 0 -1 4194560\n"  # a name with brackets
        (tmp_path / str(pid) / "stat").write_text(stat)

    process(10, "S", 7)
    process(11, "Z", 9)
    (tmp_path / "self").mkdir()
    assert group_running(7, tmp_path) and not group_running(9, tmp_path)  # 11 has exited: a zombie
    assert not group_running(8, tmp_path)
    process(12, "R", 9)
    assert group_running(9, tmp_path)


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting for its parent."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        return "\nState:\tZ" not in status.read_text()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_parent_side_imports_no_torch() -> None:
    """What Slicer's GUI process imports of ours must not pull in torch."""
    modules = [
        "VolumetricSRLib.app.child_run",
        "VolumetricSRLib.models.model_cards",
        "VolumetricSRLib.io.volume_io",
        "VolumetricSRLib.geometry",
    ]
    loaded = "sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'safetensors'))"
    check = f"import sys, {', '.join(modules)}; print(json.dumps({loaded}))"
    env = {**os.environ, "PYTHONPATH": str(REPO / "VolumetricSR")}
    done = subprocess.run(
        [PYTHON, "-c", "import json; " + check], capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(done.stdout) == []
