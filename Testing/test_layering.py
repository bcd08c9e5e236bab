"""Imports only point down: the core never imports Slicer, Qt, VTK or the training package; the MRML adapter
never imports Qt; the modules Slicer's GUI process loads never import torch at module level."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

TRAINING = REPO / "training"
CORE = REPO / "VolumetricSR" / "VolumetricSRLib"
MRML = REPO / "VolumetricSR" / "VolumetricSRMRML"


def imported_roots(path: Path, top_level_only: bool = False) -> set[str]:
    """First component of every module a file imports (anywhere in it, or at module level only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    roots = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


CORE_FILES = sorted(CORE.rglob("*.py"))
# the core's packages and the packages each may import ("" = the modules at the core's top level)
CORE_PACKAGES = {
    "": set(),
    "models": {""},
    "io": {""},
    "inference": {"", "models"},
    "app": {"", "models", "io", "inference"},
}


def core_name(path: Path) -> str:
    return path.relative_to(CORE).with_suffix("").as_posix()


@pytest.mark.parametrize("path", CORE_FILES, ids=core_name)
def test_the_core_imports_no_slicer_qt_vtk_or_training(path: Path) -> None:
    assert not imported_roots(path) & {
        "slicer",
        "qt",
        "ctk",
        "vtk",
        "volumetricsr_training",
        "VolumetricSRMRML",
    }


@pytest.mark.parametrize("path", sorted(MRML.glob("*.py")), ids=lambda p: p.name)
def test_the_mrml_adapter_imports_no_qt_and_no_torch(path: Path) -> None:
    assert not imported_roots(path) & {"qt", "ctk", "volumetricsr_training", "torch", "safetensors"}


@pytest.mark.parametrize(
    "name",
    [
        "__init__.py",
        "app/__init__.py",
        "app/child_run.py",
        "app/events.py",
        "models/__init__.py",
        "models/model_cards.py",
        "models/network_config.py",
        "models/baseline_config.py",
        "models/architectures.py",
        "io/__init__.py",
        "io/volume_io.py",
        "io/volume.py",
        "io/formats.py",
        "io/image_files.py",
        "io/dicom_format.py",
        "io/dicom_source.py",
        "inference/__init__.py",
        "inference/output_plan.py",
        "geometry.py",
        "atomic.py",
        "checks.py",
    ],
)
def test_what_the_gui_process_loads_of_the_core_needs_no_torch(name: str) -> None:
    assert not imported_roots(CORE / name, top_level_only=True) & {"torch", "safetensors", "nibabel"}


def training_imports(path: Path) -> set[str]:
    """The training modules a training module imports (relatively), at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_training_modules_import_each_other_without_a_cycle() -> None:
    graph = {path.stem: training_imports(path) for path in TRAINING.glob("*.py")}
    assert graph["checkpoints"] == set() and "trainer" not in graph["evaluate"] | graph["export"]
    assert_no_cycle(graph)


def assert_no_cycle(graph: dict[str, set[str]]) -> None:
    """Fail with the cycle's path when following imports from any module comes back to it."""
    done: set[str] = set()

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, f"import cycle: {' -> '.join((*trail, module))}"
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, (*trail, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_nothing_imports_the_training_folder_by_its_generic_name() -> None:
    """The training package installs as `volumetricsr_training`; a bare `training` would collide."""
    sources = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "build" not in p.parts]
    offenders = [p.relative_to(REPO) for p in sources if "training" in imported_roots(p)]
    assert sources and offenders == []


def test_the_training_package_uses_relative_imports_between_its_modules() -> None:
    absolute = {
        path.name for path in TRAINING.glob("*.py") if "volumetricsr_training" in imported_roots(path)
    }
    assert absolute == set()


def package_imports(path: Path, root: Path, package: str) -> set[str]:
    """Modules of the same package a file imports anywhere (functions and `if TYPE_CHECKING:` blocks
    included), as paths below `root` without suffix ("io/volume", "checks")."""
    here = path.relative_to(root).parent.parts
    found: set[str] = set()

    def module(parts: list[str]) -> str:
        return "/".join(parts) if (root / Path(*parts)).with_suffix(".py").is_file() else ""

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = list(here[: len(here) - node.level + 1])
        elif node.module and node.module.split(".")[0] == package:
            base, node_module = [], node.module.split(".", 1)[1:]
            node = ast.ImportFrom(module=node_module[0] if node_module else None, names=node.names, level=0)
        else:
            continue
        parts = [*base, *(node.module.split(".") if node.module else [])]
        named = [module([*parts, alias.name]) for alias in node.names]
        found.update(name for name in named if name) if any(named) else found.add(module(parts))
    found.discard("")
    return found


def core_package(name: str) -> str:
    return name.rpartition("/")[0]


@pytest.mark.parametrize(("folder", "package"), [(CORE, "VolumetricSRLib"), (MRML, "VolumetricSRMRML")])
def test_no_import_cycle_even_inside_functions(folder: Path, package: str) -> None:
    graph = {
        path.relative_to(folder).with_suffix("").as_posix(): package_imports(path, folder, package)
        for path in folder.rglob("*.py")
    }
    assert_no_cycle(graph)


@pytest.mark.parametrize("path", CORE_FILES, ids=core_name)
def test_each_core_package_imports_only_the_packages_before_it(path: Path) -> None:
    """models and io import only the top-level modules; inference also models; app anything."""
    own = core_package(core_name(path))
    imported = {core_package(name) for name in package_imports(path, CORE, "VolumetricSRLib")}
    assert imported - {own} <= CORE_PACKAGES[own], f"{core_name(path)} imports from {imported - {own}}"


def test_the_core_has_the_packages_its_layering_names() -> None:
    folders = {p.parent.relative_to(CORE).as_posix() for p in CORE.rglob("__init__.py")}
    assert {"" if f == "." else f for f in folders} == set(CORE_PACKAGES)
