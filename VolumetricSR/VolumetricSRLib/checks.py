"""Value checks shared by the core (numpy only)."""

from __future__ import annotations

import numpy as np


class InputError(ValueError):
    """The input volume or the options cannot be used; the message says why and what to do."""


def is_whole_number(value: object) -> bool:
    """A Python or numpy integer, but not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_positive_whole_number(value: object) -> bool:
    """A whole number >= 1 (see is_whole_number)."""
    return is_whole_number(value) and bool(value >= 1)


def odd_ratio(ratio: object) -> int:
    """`ratio` as an int if it is an odd whole number >= 1; otherwise a ValueError that says why an
    even ratio cannot work: a thick slice would sit between two thin slices, matching none."""
    if not is_positive_whole_number(ratio):
        raise ValueError(f"the ratio must be a positive integer, got {ratio!r}")
    if ratio % 2 == 0:
        raise ValueError(
            f"ratio {ratio} is even: a thick slice would sit between two thin slices, so no thin "
            "slice matches it; use an odd ratio (e.g. 5)"
        )
    return int(ratio)
