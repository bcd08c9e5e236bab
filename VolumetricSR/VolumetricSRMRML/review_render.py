"""Render the six review views through Slicer's own slice logic, without a window or Qt.

In the Slicer application the layout manager creates the slice logics; here `HeadlessViews`
creates them (application, colour and layout logic included) so tests and scripts can render the
review exactly as the slice views compute it, then save the six views as one PNG.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .review_layout import REVIEW_VIEWS, THREE_OVER_THREE, layout_node, show_review

GAP_PIXELS = 4


@dataclass
class HeadlessViews:
    """The logics that Slicer's GUI would hold: application, colour, layout and slice logics."""

    scene: slicer.vtkMRMLScene
    application_logic: slicer.vtkMRMLApplicationLogic = field(init=False)
    slice_logics: dict[str, slicer.vtkMRMLSliceLogic] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.application_logic = slicer.vtkMRMLApplicationLogic()
        self.application_logic.SetMRMLScene(self.scene)
        self._color_logic = slicer.vtkSlicerColorLogic()
        self._color_logic.SetMRMLScene(self.scene)  # adds the colour tables (Grey for CT)
        self._layout_logic = slicer.vtkMRMLLayoutLogic()
        self._layout_logic.SetMRMLScene(self.scene)  # creates view nodes for the arrangement

    def attach_slice_logics(self, view_names: Iterable[str] = REVIEW_VIEWS) -> None:
        """A slice logic per view of the current layout, registered with the application logic."""
        collection = vtk.vtkCollection()
        for name in view_names:
            node = self.scene.GetSingletonNode(name, "vtkMRMLSliceNode")
            if node is None:
                raise ValueError(f"the scene has no {name} slice view; set the layout first")
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLScene(self.scene)
            logic.SetMRMLApplicationLogic(self.application_logic)
            logic.SetSliceNode(node)
            self.slice_logics[name] = logic
            collection.AddItem(logic)
        self.application_logic.SetSliceLogics(collection)

    def resize(self, width: int, height: int) -> None:
        """Give every view a viewport of width x height pixels."""
        for logic in self.slice_logics.values():
            logic.ResizeSliceNode(width, height)

    def render(self, view_name: str) -> np.ndarray:
        """The view's RGBA image (rows top to bottom), as the slice logic blends it."""
        producer = self.slice_logics[view_name].GetImageDataConnection().GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(0)
        width, height, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        return pixels.reshape(height, width, -1)[::-1].copy()


def review_grid(images: Sequence[np.ndarray], columns: int = 3, gap: int = GAP_PIXELS) -> np.ndarray:
    """RGBA views of one size on black (as a slice view shows them), tiled row by row: one RGB image."""
    height, width = images[0].shape[:2]
    rows = -(-len(images) // columns)
    grid = np.zeros((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), np.uint8)
    for index, image in enumerate(images):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        opacity = image[..., 3:4].astype(np.float32) / 255.0
        grid[top : top + height, left : left + width] = np.rint(image[..., :3] * opacity).astype(np.uint8)
    return grid


def render_review(
    views: HeadlessViews,
    thick: slicer.vtkMRMLVolumeNode,
    thin: slicer.vtkMRMLVolumeNode,
    png_path: str | Path | None = None,
    *,
    size: tuple[int, int] = (320, 320),
    world_position: Iterable[float] | None = None,
    overwrite: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Show the review, render the six views; returns (world point, images) and can save a PNG."""
    from VolumetricSRLib.io.png import write_png

    layout_node(views.scene).SetViewArrangement(THREE_OVER_THREE)
    if not views.slice_logics:
        views.attach_slice_logics()
    views.resize(*size)
    position = show_review(
        views.scene, thick, thin, world_position=world_position, application_logic=views.application_logic
    )
    images = {name: views.render(name) for name in REVIEW_VIEWS}
    if png_path is not None:
        write_png(png_path, review_grid([images[name] for name in REVIEW_VIEWS]), overwrite=overwrite)
    return position, images
