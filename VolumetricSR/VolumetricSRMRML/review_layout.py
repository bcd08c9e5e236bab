"""The review: Slicer's three-over-three layout, thick input on top, thin output below.

Top row Red / Green / Yellow, bottom row Red+ / Green+ / Yellow+, each row axial, coronal,
sagittal. Slicer links only the views of one view group, and the layout puts the bottom row in
group 1: the review moves it into group 0 and turns linked control on, so navigating any view
moves its partner in the other row too. The user's view groups and link states come back as soon
as the layout changes to anything else. Every view is set on its own slice composite node
(slicer.util.setSliceViewerLayers would change all views at once).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import slicer
import vtk

THREE_OVER_THREE = slicer.vtkMRMLLayoutNode.SlicerLayoutThreeOverThreeView
ORIENTATIONS = {"Red": "Axial", "Green": "Coronal", "Yellow": "Sagittal"}
THICK_ROW = ("Red", "Green", "Yellow")
THIN_ROW = ("Red+", "Green+", "Yellow+")
REVIEW_VIEWS = THICK_ROW + THIN_ROW
REVIEW_VIEW_GROUP = 0

# {view name: [view group, linked control]} before the review, kept on the layout node
SAVED_VIEWS_ATTRIBUTE = "VolumetricSR.ViewsBeforeReview"
_watched_layouts: dict[str, int] = {}  # layout node -> tag of its restoring observer

# (window, level) in HU, the usual chest CT settings.
WINDOW_PRESETS = {
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 50.0),
    "bone": (1800.0, 400.0),
}


class ReviewError(RuntimeError):
    """The review cannot be shown; the message says why."""


def orientation_of(view_name: str) -> str:
    return ORIENTATIONS[view_name.rstrip("+")]


def layout_node(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLLayoutNode:
    node = scene.GetSingletonNode("vtkMRMLLayoutNode", "vtkMRMLLayoutNode")
    if node is None:
        raise ReviewError("the scene has no layout node: the review needs Slicer's views (not batch mode)")
    return node


def slice_node(scene: slicer.vtkMRMLScene, view_name: str) -> slicer.vtkMRMLSliceNode:
    node = scene.GetSingletonNode(view_name, "vtkMRMLSliceNode")
    if node is None:
        raise ReviewError(f"the layout has no {view_name} view; switch to the three-over-three layout")
    return node


def composite_node(scene: slicer.vtkMRMLScene, view_name: str) -> slicer.vtkMRMLSliceCompositeNode:
    """The view's slice composite node, made here if no slice logic has made it yet.

    A slice logic created later adopts the composite node that carries its layout name.
    """
    node = slicer.vtkMRMLSliceLogic.GetSliceCompositeNode(slice_node(scene, view_name))
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLSliceCompositeNode")
        node.SetLayoutName(view_name)
        scene.AddNode(node)
        node.UnRegister(None)
    return node


def volume_center(volume: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """World (RAS) centre of a volume's bounds, its parent transform included."""
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    return np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])


def show_review(
    scene: slicer.vtkMRMLScene,
    thick: slicer.vtkMRMLVolumeNode,
    thin: slicer.vtkMRMLVolumeNode,
    *,
    world_position: Iterable[float] | None = None,
    application_logic: slicer.vtkMRMLApplicationLogic | None = None,
) -> np.ndarray:
    """Arrange the review and put all six views through one world point; returns that point.

    The point defaults to the centre of the thick volume. With `application_logic` (Slicer's, or
    one holding headless slice logics) every view is first fitted to its volume.
    """
    layout = layout_node(scene)
    layout.SetViewArrangement(THREE_OVER_THREE)
    _restore_views_when_layout_changes(scene, layout)
    for name in REVIEW_VIEWS:
        node = slice_node(scene, name)
        node.SetOrientation(orientation_of(name))
        node.SetViewGroup(REVIEW_VIEW_GROUP)
        composite = composite_node(scene, name)
        composite.SetBackgroundVolumeID((thick if name in THICK_ROW else thin).GetID())
        composite.SetForegroundVolumeID(None)
        composite.SetLinkedControl(True)
    if application_logic is not None:
        for name in REVIEW_VIEWS:
            logic = application_logic.GetSliceLogicByLayoutName(name)
            if logic is not None:
                logic.FitSliceToBackground()
    position = volume_center(thick) if world_position is None else np.asarray(list(world_position), float)
    jump_to(scene, position)
    return position


def _restore_views_when_layout_changes(scene: slicer.vtkMRMLScene, layout: slicer.vtkMRMLLayoutNode) -> None:
    """Remember the views' groups and link states before the first review (an attribute of the
    layout node) and put them back when the layout leaves the three-over-three arrangement."""
    if layout.GetAttribute(SAVED_VIEWS_ATTRIBUTE) is None:
        saved = {
            name: [
                slice_node(scene, name).GetViewGroup(),
                bool(composite_node(scene, name).GetLinkedControl()),
            ]
            for name in REVIEW_VIEWS
        }
        layout.SetAttribute(SAVED_VIEWS_ATTRIBUTE, json.dumps(saved))
        stale = _watched_layouts.pop(layout.__this__, None)
        if stale is not None:  # a scene close dropped the saved views: one observer, not one per close
            layout.RemoveObserver(stale)
    elif layout.__this__ in _watched_layouts:
        return  # this review follows another: what was saved first is the user's

    def on_layout_modified(caller, event) -> None:
        text = layout.GetAttribute(SAVED_VIEWS_ATTRIBUTE)
        if layout.GetViewArrangement() == THREE_OVER_THREE or text is None:
            return
        layout.RemoveObserver(tag)
        _watched_layouts.pop(layout.__this__, None)
        layout.RemoveAttribute(SAVED_VIEWS_ATTRIBUTE)
        for name, (group, linked) in json.loads(text).items():
            node = scene.GetSingletonNode(name, "vtkMRMLSliceNode")
            if node is not None:
                node.SetViewGroup(group)
                composite_node(scene, name).SetLinkedControl(linked)

    tag = layout.AddObserver(vtk.vtkCommand.ModifiedEvent, on_layout_modified)
    _watched_layouts[layout.__this__] = tag


def jump_to(scene: slicer.vtkMRMLScene, position: Iterable[float]) -> None:
    """Centre every review view on one world (RAS) point."""
    r, a, s = (float(value) for value in position)
    for name in REVIEW_VIEWS:
        slice_node(scene, name).JumpSliceByCentering(r, a, s)


def apply_window_preset(volumes: Iterable[slicer.vtkMRMLVolumeNode], preset: str) -> None:
    """Set the lung / mediastinum / bone window on every volume (both rows stay matched)."""
    if preset not in WINDOW_PRESETS:
        raise ValueError(f"unknown window preset {preset!r}; choose one of {', '.join(WINDOW_PRESETS)}")
    window, level = WINDOW_PRESETS[preset]
    for volume in volumes:
        display = volume.GetDisplayNode()
        if display is None:
            raise ReviewError(f"{volume.GetName()} has no display node; show it in a view first")
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(window, level)
