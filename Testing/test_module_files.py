"""The Slicer module's files agree: CMake lists everything the module needs, the code matches the .ui.

Slicer's Qt is not here, so the module file is read with `ast` and the .ui with xml.etree.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from VolumetricSRMRML.resources import find_resource

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "VolumetricSR"
MODULE_FILE = MODULE_DIR / "VolumetricSR.py"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
EXTENSION_CMAKE = REPO / "CMakeLists.txt"
UI_FILE = REPO / "Resources" / "UI" / "VolumetricSR.ui"
PACKAGES = ("VolumetricSRLib", "VolumetricSRMRML")
RESOURCE_FOLDERS = ("UI", "Icons", "Models")

# Widget classes the parameter node wrapper binds to each field type: Slicer's GUI connectors
# (parameterNodeWrapper/guiConnectors.py) match the exact class, so a subclass such as ctkCheckBox fails.
CONNECTORS = {
    "vtkMRMLScalarVolumeNode": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView"},
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget"},
    "str": {"QLineEdit", "QTextEdit"},
    "choice": {"QComboBox"},
    "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
}
# The class a widget must have, from the end of its name.
NAME_SUFFIXES = {
    "CollapsibleButton": {"ctkCollapsibleButton"},
    "Button": {"QPushButton", "QToolButton"},
    "Selector": {"qMRMLNodeComboBox", "QComboBox", "ctkComboBox", "ctkPathLineEdit"},
    "SpinBox": {"QSpinBox", "QDoubleSpinBox", "ctkDoubleSpinBox"},
    "CheckBox": {"QCheckBox", "ctkCheckBox"},
    "Label": {"QLabel"},
    "ProgressBar": {"QProgressBar"},
}
SIGNALS = {
    "qMRMLNodeComboBox": {"currentNodeChanged(vtkMRMLNode*)", "currentNodeIDChanged(QString)"},
    "QComboBox": {"currentIndexChanged(int)", "currentTextChanged(QString)"},
    "QPushButton": {"clicked(bool)", "clicked()", "toggled(bool)"},
    "QCheckBox": {"toggled(bool)", "clicked(bool)", "stateChanged(int)"},
    "QSpinBox": {"valueChanged(int)"},
    "ctkPathLineEdit": {"currentPathChanged(QString)"},
}


def cmake_list(path: Path, variable: str) -> list[str]:
    """Entries of `set(<variable> ...)`, with ${MODULE_NAME} expanded."""
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{path.name} has no set({variable} ...)"
    lines = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    return [line.replace("${MODULE_NAME}", "VolumetricSR") for line in lines if line]


def ui_widgets() -> dict[str, str]:
    return {widget.get("name"): widget.get("class") for widget in ET.parse(UI_FILE).iter("widget")}


def ui_bindings() -> dict[str, str]:
    """Widget name -> its SlicerParameterName."""
    bindings = {}
    for widget in ET.parse(UI_FILE).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", f"{widget.get('name')}: SlicerParameterName must be dynamic"
                bindings[widget.get("name")] = prop.findtext("string")
    return bindings


def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def parameter_fields() -> dict[str, str]:
    """Field name -> connector kind of the @parameterNodeWrapper class."""
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.ClassDef) and any(
            isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {
                item.target.id: field_kind(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    raise AssertionError("VolumetricSR.py has no @parameterNodeWrapper class")


def field_kind(annotation: ast.expr) -> str:
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
        base, *extras = annotation.slice.elts
        if any(isinstance(e, ast.Call) and ast.unparse(e.func) == "Choice" for e in extras):
            return "choice"
        return field_kind(base)
    return ast.unparse(annotation)


def ui_attributes() -> dict[str, set[str]]:
    """Every `self.ui.<widget>` the module names -> the signals it connects on that widget."""
    used: dict[str, set[str]] = {}
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self.ui":
            used.setdefault(node.attr, set())
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "connect"
            and ast.unparse(node.func.value).startswith("self.ui.")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            used.setdefault(ast.unparse(node.func.value)[len("self.ui.") :], set()).add(node.args[0].value)
    return used


def test_cmake_lists_every_script_of_the_module():
    listed = cmake_list(MODULE_CMAKE, "MODULE_PYTHON_SCRIPTS")
    on_disk = ["VolumetricSR.py"] + [
        path.relative_to(MODULE_DIR).as_posix()
        for package in PACKAGES
        for path in sorted((MODULE_DIR / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    ]
    assert sorted(listed) == sorted(on_disk)
    assert len(set(listed)) == len(listed), "a script is listed twice"


def test_cmake_lists_every_resource_and_each_exists():
    listed = cmake_list(MODULE_CMAKE, "MODULE_PYTHON_RESOURCES")
    on_disk = [
        path.relative_to(REPO / "Resources").as_posix()
        for folder in RESOURCE_FOLDERS
        for path in sorted((REPO / "Resources" / folder).rglob("*"))
        if path.is_file() and path.suffix != ".py"  # a script that draws an icon is not a resource
    ]
    assert sorted(listed) == sorted(on_disk)
    assert "UI/VolumetricSR.ui" in listed and "Icons/VolumetricSR.png" in listed
    for resource in listed:
        assert (REPO / "Resources" / resource).is_file(), resource


def test_module_cmake_builds_the_scripted_module_with_its_tests():
    text = MODULE_CMAKE.read_text(encoding="utf-8")
    assert re.search(
        r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}.*?WITH_GENERIC_TESTS", text, re.S
    )
    assert "set(MODULE_NAME VolumetricSR)" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "${CMAKE_CURRENT_SOURCE_DIR}/../Resources/${_resource}" in text
    assert "${_module_build_dir}/Resources/${_resource}" in text


def test_extension_cmake_has_the_metadata_and_the_module():
    text = EXTENSION_CMAKE.read_text(encoding="utf-8")
    assert "project(VolumetricSR)" in text
    for field in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{field} "[^"]+"\)', text), field
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    order = [
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(VolumetricSR)",
        "## NEXT_MODULE",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ]
    positions = [text.index(line) for line in order]
    assert positions == sorted(positions)
    for field, name in (("README", "README.md"), ("LICENSE", "LICENSE")):
        match = re.search(rf"set\(EXTENSION_{field}_FILE \$\{{CMAKE_CURRENT_SOURCE_DIR\}}/(\S+)\)", text)
        assert match and match.group(1) == name, f"EXTENSION_{field}_FILE must name the project's {name}"
        assert (EXTENSION_CMAKE.parent / name).is_file()
        assert text.index(match.group(0)) < text.index("include(${Slicer_EXTENSION_CPACK})")


def test_every_widget_the_module_names_exists_with_the_expected_class():
    widgets = ui_widgets()
    used = ui_attributes()
    assert {"applyButton", "modelSelector", "progressBar", "statusLabel", "reviewButton"} <= set(used)
    for name, signals in used.items():
        assert name in widgets, f"VolumetricSR.py uses self.ui.{name}, which the .ui does not have"
        suffix = next((s for s in NAME_SUFFIXES if name.lower().endswith(s.lower())), None)
        assert suffix is not None, f"{name}: no known widget suffix, so its class cannot be checked"
        assert widgets[name] in NAME_SUFFIXES[suffix], f"{name} is a {widgets[name]}"
        for signal in signals:
            assert signal in SIGNALS.get(widgets[name], set()), (
                f"{name} ({widgets[name]}) has no signal {signal}"
            )


def test_every_bound_widget_matches_a_parameter_node_field():
    fields = parameter_fields()
    widgets = ui_widgets()
    bindings = ui_bindings()
    assert bindings, "no widget carries SlicerParameterName"
    for widget, field in bindings.items():
        assert field in fields, f"{widget} is bound to {field!r}, which the parameter node does not have"
        assert widgets[widget] in CONNECTORS[fields[field]], (
            f"{widget} ({widgets[widget]}) cannot show a {fields[field]}"
        )
    unbound = set(fields) - set(bindings.values())
    # modelId follows modelSelector; modelFile is kept in step with modelFileSelector by the widget
    assert unbound == {"modelId", "modelFile"}, f"fields without a widget: {unbound}"


def test_volume_selectors_list_scalar_volumes_and_get_the_scene():
    root = ET.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget"
    connected = {
        connection.findtext("receiver")
        for connection in root.iter("connection")
        if connection.findtext("sender") == top.get("name")
        and connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and connection.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    combos = [w for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"]
    assert {w.get("name") for w in combos} == {"inputSelector", "outputSelector"}
    for combo in combos:
        assert combo.get("name") in connected, f"{combo.get('name')} never gets the MRML scene"
        types = [
            s.text
            for p in combo.findall("property")
            if p.get("name") == "nodeTypes"
            for s in p.iter("string")
        ]
        assert types == ["vtkMRMLScalarVolumeNode"]
        child_types = [
            p.findtext("bool") for p in combo.findall("property") if p.get("name") == "showChildNodeTypes"
        ]
        assert child_types == ["false"], "label maps must not be offered as CT volumes"


def test_every_resource_the_module_opens_exists_from_the_source_tree():
    names = [
        node.args[0].value
        for node in ast.walk(module_tree())
        if isinstance(node, ast.Call)
        and ast.unparse(node.func) == "find_resource"
        and isinstance(node.args[0], ast.Constant)
    ]
    assert sorted(names) == ["Icons/VolumetricSR.png", "UI/VolumetricSR.ui"]
    for name in names:
        assert find_resource(name, MODULE_DIR) == REPO / "Resources" / name


def test_resources_beside_a_built_module_come_first(tmp_path):
    module = tmp_path / "qt-scripted-modules"
    (module / "Resources" / "UI").mkdir(parents=True)
    (module / "Resources" / "UI" / "VolumetricSR.ui").write_text("<ui/>")
    (tmp_path / "Resources" / "UI").mkdir(parents=True)
    (tmp_path / "Resources" / "UI" / "VolumetricSR.ui").write_text("<ui/>")
    assert find_resource("UI/VolumetricSR.ui", module) == module / "Resources" / "UI" / "VolumetricSR.ui"
    with pytest.raises(FileNotFoundError, match=r"Icons/VolumetricSR\.png is missing.*qt-scripted-modules"):
        find_resource("Icons/VolumetricSR.png", module)


def test_module_import_chain_leaves_torch_and_qt_for_later():
    """What VolumetricSR.py imports at load time (besides Slicer itself) must not import torch."""
    top_level = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in module_tree().body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    ours = sorted({name for name in top_level if name.startswith(PACKAGES)})
    assert ours and not [name for name in top_level if name.split(".")[0] in ("torch", "safetensors")]
    imports = "; ".join(f"import {name}" for name in ours)
    check = f"import sys; {imports}; print('torch' in sys.modules, 'qt' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(MODULE_DIR)}
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == ["False", "False"]
