"""The table of volume formats: what each reads and writes, under which names, and how.

A format module (image_files: NIfTI, NRRD, MetaImage; dicom_format: DICOM series folders) registers
its entries when imported; volume_io imports them all and dispatches reading, writing and the output
checks through this table. Adding a format is one module with its reader and writer and one
`register` call, imported by volume_io.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .volume import ConsistencyRecord, Volume

if TYPE_CHECKING:
    from .dicom_source import DicomSource


@dataclass(frozen=True)
class WriteOptions:
    """What a writer needs beyond the voxels and their affine (see volume_io.write_volume)."""

    overwrite: bool = False
    input_path: Path | None = None
    compress: bool = True
    synthetic: Mapping[str, str] | None = None
    source: DicomSource | None = None
    consistency: ConsistencyRecord | None = None
    burn_in_marker: bool = False


Reader = Callable[[Path, "str | None"], Volume]
Writer = Callable[[Path, np.ndarray, np.ndarray, WriteOptions], Path]
OutputCheck = Callable[["Path | None", Path, bool], Path]
GeometryReader = Callable[[Path], "tuple[tuple[int, int, int], np.ndarray]"]


@dataclass(frozen=True)
class VolumeFormat:
    """One format: its name, the file name endings it owns (none: a folder format), its reader, its
    writer (None: read only), its own output check (None: the check for a new file) and, optionally,
    a reader of the geometry alone."""

    name: str
    suffixes: tuple[str, ...]
    read: Reader
    write: Writer | None = None
    check_output: OutputCheck | None = None
    read_geometry: GeometryReader | None = None
    # whether the writer can burn a SYNTHETIC marker into the pixels
    burns_in_marker: bool = False
    # the ending of an output name in a run over many studies ("" for a folder format)
    output_ending: str = ""

    @property
    def folder(self) -> bool:
        """A format of folders (a DICOM series), not of files."""
        return not self.suffixes


TABLE: dict[str, VolumeFormat] = {}


def register(volume_format: VolumeFormat) -> VolumeFormat:
    """Add a format; a second one of the same name, or a file ending another format owns, is refused."""
    if volume_format.name in TABLE:
        raise ValueError(f"the volume format {volume_format.name!r} is registered already")
    taken = {suffix for known in TABLE.values() for suffix in known.suffixes} & set(volume_format.suffixes)
    if taken:
        raise ValueError(f"{volume_format.name}: another format owns the endings {sorted(taken)}")
    if volume_format.folder and any(known.folder for known in TABLE.values()):
        raise ValueError(f"{volume_format.name}: one folder format is registered already")
    TABLE[volume_format.name] = volume_format
    return volume_format
