"""Where the module's resources are: beside the module (built extension) or one level up (source tree).

The repository keeps `Resources/` at its top level, next to the `VolumetricSR/` module folder;
CMake installs the same files into `<module dir>/Resources` of a built extension.
"""

from __future__ import annotations

from pathlib import Path


def resource_candidates(relative: str, module_dir: str | Path) -> list[Path]:
    """`<module dir>/Resources/<relative>`, then `<module dir>/../Resources/<relative>`."""
    module_dir = Path(module_dir)
    return [module_dir / "Resources" / relative, module_dir.parent / "Resources" / relative]


def find_resource(relative: str, module_dir: str | Path) -> Path:
    """The first existing candidate; FileNotFoundError names every place tried."""
    candidates = resource_candidates(relative, module_dir)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = ", ".join(str(candidate) for candidate in candidates)
    raise FileNotFoundError(
        f"the module resource {relative} is missing (looked in {tried}); reinstall the extension"
    )
