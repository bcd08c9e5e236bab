"""Every event the command line writes parses into its dataclass, and nothing else does."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import pytest

from VolumetricSRLib.app.events import (
    EVENTS,
    Devices,
    Done,
    Failed,
    Fallback,
    Progress,
    Study,
    Summary,
    Warned,
    emit,
    parse,
    to_json,
)

EXAMPLES = [
    Progress(0.25, "window 1 of 4"),
    Warned("3 voxels above 2048 HU"),
    Fallback("GPU out of memory: batch 4 -> 2"),
    Done(
        "thin.nrrd",
        [72, 64, 36],
        [0.7, 0.7, 1.0],
        [[1.0, 0, 0, 0]] * 4,
        1.5,
        "cpu",
        [],
        "m",
        "ab" * 32,
        5,
        123,
        0,
        None,
        {"mean_abs_hu": 1.2},
        "consistency: 1.2 HU",
    ),
    Failed("the model needs at least 4 slices, got 3", 2),
    Study(0, "a.nii.gz", "done", 3.5, "out/a_thin.nii.gz"),
    Summary([{"study": "a.nii.gz", "status": "done", "seconds": 3.5, "detail": "x"}], []),
    Devices("CPU only (2 threads): no CUDA", 2, "2.13.0", None, None, "no CUDA"),
]


def test_every_kind_of_event_has_an_example() -> None:
    assert {type(event) for event in EXAMPLES} == set(EVENTS.values())
    assert set(EVENTS) == {"progress", "warning", "fallback", "done", "error", "study", "summary", "devices"}


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda event: event.name)
def test_each_event_round_trips_through_its_line(event) -> None:
    line = to_json(event)
    assert json.loads(line) == {"event": event.name, **asdict(event)}
    assert parse(line) == event
    stream = io.StringIO()
    emit(event, stream)
    assert stream.getvalue() == line + "\n"


def test_fields_a_newer_writer_adds_are_ignored() -> None:
    assert parse('{"event": "progress", "fraction": 1.0, "message": "done", "eta": 3}') == Progress(
        1.0, "done"
    )


@pytest.mark.parametrize(
    "line",
    [
        "wrote thin.nrrd",
        "{not json",
        "[1, 2]",
        '{"fraction": 0.5}',
        '{"event": "launch", "message": "x"}',
        '{"event": "progress", "message": "no fraction"}',
    ],
)
def test_what_is_not_an_event_parses_to_none(line: str) -> None:
    assert parse(line) is None


def test_every_line_the_command_line_writes_is_an_event(tmp_path, capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    from VolumetricSRLib.app.cli import main
    from VolumetricSRLib.io.volume_io import write_volume
    from VolumetricSRLib.phantom import chest_phantom, simulate_thick

    thin, affine = chest_phantom((30, 32, 32), pixel_mm=1.5)
    thick, thick_affine = simulate_thick(thin, affine, 5)
    good = write_volume(tmp_path / "good.nrrd", np.rint(thick).astype(np.int16), thick_affine)
    bad = write_volume(tmp_path / "bad.nrrd", np.zeros((3, 8, 8), np.int16), np.diag([1, 1, 5.0, 1]))
    runs = [
        ["predict", good, tmp_path / "one.nrrd", "--device", "cpu"],
        ["predict", good, bad, "--output-dir", tmp_path / "many", "--device", "cpu"],
        ["predict", bad, tmp_path / "bad_thin.nrrd"],
        ["devices", "--json"],
    ]
    seen = set()
    for argv in runs:
        json_flag = [] if argv[0] == "devices" else ["--progress", "json"]
        main([str(arg) for arg in argv] + json_flag)
        lines = capsys.readouterr().out.splitlines()
        assert lines and all(parse(line) is not None for line in lines), lines
        seen |= {parse(line).name for line in lines}
    assert seen >= {"progress", "done", "error", "study", "summary", "devices"}
