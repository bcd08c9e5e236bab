"""The HU <-> [0, 1] mapping: window ends, clipping, round trip, int16 rounding."""

from __future__ import annotations

import numpy as np
import pytest

from VolumetricSRLib.intensity import HU_MAX, HU_MIN, hu_to_unit, to_int16_hu, unit_to_hu


def test_window_is_the_papers():
    assert (HU_MIN, HU_MAX) == (-1024.0, 2048.0)


def test_hu_to_unit_exact_values():
    hu = np.array([-1024, 512, 2048, -256], dtype=np.int16)
    unit = hu_to_unit(hu)
    assert unit.dtype == np.float32
    np.testing.assert_array_equal(unit, np.array([0.0, 0.5, 1.0, 0.25], dtype=np.float32))


def test_hu_to_unit_clips_outside_the_window():
    np.testing.assert_array_equal(hu_to_unit(np.array([-3000.0, -1025.0, 2049.0, 30000.0])), [0, 0, 1, 1])


def test_hu_to_unit_with_another_window():
    unit = hu_to_unit(np.array([-1000.0, 0.0, 500.0, 1000.0, 1500.0]), window=(-1000.0, 1000.0))
    np.testing.assert_array_equal(unit, np.array([0.0, 0.5, 0.75, 1.0, 1.0], dtype=np.float32))


def test_unit_to_hu_exact_values_and_clamping():
    hu = unit_to_hu(np.array([0.0, 0.25, 0.5, 1.0, -0.5, 1.5], dtype=np.float32))
    assert hu.dtype == np.float32
    np.testing.assert_array_equal(hu, [-1024.0, -256.0, 512.0, 2048.0, -1024.0, 2048.0])


def test_unit_to_hu_with_another_window():
    hu = unit_to_hu(np.array([0.0, 0.5, 1.0], dtype=np.float32), window=(-1000.0, 1000.0))
    np.testing.assert_array_equal(hu, [-1000.0, 0.0, 1000.0])


def test_round_trip_restores_every_integer_hu_in_the_window():
    hu = np.arange(-1024, 2049, dtype=np.int16)
    back = unit_to_hu(hu_to_unit(hu))
    np.testing.assert_allclose(back, hu, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(to_int16_hu(back), hu)


def test_round_trip_clips_values_outside_the_window():
    back = to_int16_hu(unit_to_hu(hu_to_unit(np.array([-2000, 3000], dtype=np.int16))))
    np.testing.assert_array_equal(back, [-1024, 2048])


@pytest.mark.parametrize(
    ("hu", "expected"),
    [
        (1.4, 1),
        (1.6, 2),
        (-1.6, -2),
        (-1.4, -1),
        (2.5, 2),  # halves round to even
        (3.5, 4),
        (40000.0, 32767),
        (-40000.0, -32768),
    ],
)
def test_to_int16_rounds_to_nearest_and_saturates(hu, expected):
    result = to_int16_hu(np.array([hu], dtype=np.float32))
    assert result.dtype == np.int16
    assert int(result[0]) == expected


def test_input_arrays_are_not_modified():
    hu = np.array([-3000.0, 0.0, 3000.0], dtype=np.float32)
    hu_to_unit(hu)
    np.testing.assert_array_equal(hu, [-3000.0, 0.0, 3000.0])
    unit = np.array([-0.5, 0.5, 1.5], dtype=np.float32)
    unit_to_hu(unit)
    np.testing.assert_array_equal(unit, [-0.5, 0.5, 1.5])
