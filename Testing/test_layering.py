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


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
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
        "child_run.py",
        "model_cards.py",
        "network_config.py",
        "baseline_config.py",
        "architectures.py",
        "volume_io.py",
        "geometry.py",
        "atomic.py",
        "output_plan.py",
        "checks.py",
        "events.py",
        "volume.py",
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


def package_imports(path: Path, package: str) -> set[str]:
    """Modules of the same package a file imports anywhere (functions included; `if TYPE_CHECKING:`
    blocks are left out: they import nothing when the code runs)."""
    found: set[str] = set()

    class Imports(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 1:
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif node.module and node.module.split(".")[0] == package and "." in node.module:
                found.add(node.module.split(".")[1])

    Imports().visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


@pytest.mark.parametrize(("folder", "package"), [(CORE, "VolumetricSRLib"), (MRML, "VolumetricSRMRML")])
def test_no_import_cycle_even_inside_functions(folder: Path, package: str) -> None:
    assert_no_cycle({path.stem: package_imports(path, package) for path in folder.glob("*.py")})
