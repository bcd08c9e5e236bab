"""What the Slicer module finds missing in Slicer's Python, and when it must ask for a restart."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the adapter imports slicer (the slicer-core wheel)")

from VolumetricSRMRML.python_packages import (
    PYTHON_REQUIREMENTS,
    TORCH_REQUIREMENT,
    missing_packages,
    restart_needed_for,
)


def test_missing_means_absent_or_too_old() -> None:
    assert missing_packages(("numpy>=1.0",)) == []
    assert missing_packages(("numpy>=999", "no-such-package-volumetricsr>=1")) == [
        "numpy>=999",
        "no-such-package-volumetricsr>=1",
    ]
    assert missing_packages((TORCH_REQUIREMENT, *PYTHON_REQUIREMENTS)) == []  # this test environment has them


def test_a_loaded_package_that_needs_an_upgrade_asks_for_a_restart() -> None:
    message = restart_needed_for(["numpy>=999"])
    assert message.startswith(f"numpy {np.__version__} is already loaded in this Slicer session")
    assert "(numpy>=999)" in message and "restart Slicer" in message
    assert restart_needed_for(["no-such-package-volumetricsr>=1"]) is None
