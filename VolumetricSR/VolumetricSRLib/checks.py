"""Value checks shared by the core (numpy only)."""

from __future__ import annotations

import numpy as np


def is_whole_number(value: object) -> bool:
    """A Python or numpy integer, but not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_positive_whole_number(value: object) -> bool:
    """A whole number >= 1 (see is_whole_number)."""
    return is_whole_number(value) and bool(value >= 1)
