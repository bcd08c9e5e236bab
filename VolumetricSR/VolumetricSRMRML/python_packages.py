"""The Python packages the core's command line needs in Slicer's Python, and their installation:
PyTorch through the PyTorch extension (PyTorch Utils picks the build for the GPU driver), the others
with pip. No Qt here; the panel asks before it installs."""

from __future__ import annotations

import importlib.metadata
import sys

import slicer

TORCH_REQUIREMENT = "torch>=2.3"
"""torch 2.3 is the first built for numpy 2 (Slicer 5.10 ships numpy 2.0)."""
PYTHON_REQUIREMENTS = ("safetensors>=0.4", "nibabel>=5.0", "tqdm>=4.60")
"""What the core's command line needs besides torch."""


class DependencyError(RuntimeError):
    """A package is missing or cannot be installed now; the message says what to do."""


def missing_packages(requirements: tuple[str, ...] = (TORCH_REQUIREMENT, *PYTHON_REQUIREMENTS)) -> list[str]:
    """The requirements that are not installed at a suitable version."""
    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        requirement = Requirement(text)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(text)
    return missing


def restart_needed_for(missing: list[str]) -> str | None:
    """Why installing `missing` now would leave a half-replaced package in memory, or None.

    Another module may have imported an older torch into this Slicer: replacing it on disk under the
    running process breaks both. Then the user restarts (or upgrades through PyTorch Utils) instead.
    """
    from packaging.requirements import Requirement

    for text in missing:
        name = Requirement(text).name
        if name in sys.modules:
            version = getattr(sys.modules[name], "__version__", "?")
            return (
                f"{name} {version} is already loaded in this Slicer session and must be upgraded ({text}). "
                "Upgrade it with the PyTorch Utils module (for torch) or restart Slicer and click Apply "
                "before opening other modules that use it."
            )
    return None


def install_packages() -> None:
    """Install what is missing: torch with the PyTorch extension, the others with pip."""
    missing = missing_packages()
    restart = restart_needed_for(missing)
    if restart:
        raise DependencyError(restart)
    if TORCH_REQUIREMENT in missing:
        try:
            import PyTorchUtils
        except ModuleNotFoundError as error:
            raise DependencyError(
                "The PyTorch extension is not installed: install 'PyTorch' with the Extensions Manager, "
                "restart Slicer, then apply again."
            ) from error
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT[len("torch") :]
        )
        if torch is None:
            raise DependencyError("PyTorch was not installed.")
    others = [text for text in missing if text != TORCH_REQUIREMENT]
    if others:
        try:
            from slicer.packaging import pip_ensure  # Slicer 5.11 and later
        except ImportError:
            slicer.util.pip_install(" ".join(others))
        else:
            pip_ensure(others, prompt_install=False, requester="VolumetricSR")
    still = missing_packages()
    if still:
        raise DependencyError(f"These packages are still missing: {', '.join(still)}")
