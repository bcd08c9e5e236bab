"""The shared whole-number checks."""

from __future__ import annotations

import numpy as np
import pytest

from VolumetricSRLib.checks import is_positive_whole_number, is_whole_number


@pytest.mark.parametrize(
    ("value", "whole", "positive"),
    [
        (5, True, True),
        (np.int64(3), True, True),
        (0, True, False),
        (-2, True, False),
        (True, False, False),
        (5.0, False, False),
        ("5", False, False),
        (None, False, False),
    ],
)
def test_whole_and_positive_numbers(value, whole, positive):
    assert is_whole_number(value) is whole
    assert is_positive_whole_number(value) is positive
