"""Read and write single-file NRRD volumes (http://teem.sourceforge.net/nrrd/format.html).

Supports attached data with raw, gzip, bzip2 or ascii encoding, every scalar type, either endian,
and the world spaces left-posterior-superior, right-anterior-superior, left-anterior-superior and
3D-right-handed (or a bare `space dimension: 3`). Arrays come back in C order, i.e. with the NRRD
axes reversed: a file with `sizes: I J K` gives an array of shape (K, J, I).
"""

from __future__ import annotations

import bz2
import gzip
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = re.compile(rb"^NRRD000[1-5]$")

_TYPES = {
    np.dtype(np.int8): ("signed char", "int8", "int8_t"),
    np.dtype(np.uint8): ("uchar", "unsigned char", "uint8", "uint8_t"),
    np.dtype(np.int16): ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    np.dtype(np.uint16): ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    np.dtype(np.int32): ("int", "signed int", "int32", "int32_t"),
    np.dtype(np.uint32): ("uint", "unsigned int", "uint32", "uint32_t"),
    np.dtype(np.int64): (
        "longlong",
        "long long",
        "long long int",
        "signed long long",
        "signed long long int",
        "int64",
        "int64_t",
    ),
    np.dtype(np.uint64): ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    np.dtype(np.float32): ("float",),
    np.dtype(np.float64): ("double",),
}
_DTYPE_OF_TYPE = {name: dtype for dtype, names in _TYPES.items() for name in names}

# World spaces, as the sign that turns each axis into RAS. 3D-right-handed has no anatomical
# meaning; like ITK (and so Slicer) we read it as LPS.
_SPACES = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
    "3d-right-handed": (-1.0, -1.0, 1.0),
}


class NrrdError(ValueError):
    """The file is not a NRRD this reader handles."""


@dataclass
class NrrdImage:
    """A NRRD's data and geometry.

    `array` has the NRRD axes reversed (C order). `directions` holds one world vector per NRRD axis
    (None for a non-spatial axis), `origin` the world position of the first voxel, both in the
    file's space; `to_ras` holds the sign per world axis that converts that space to RAS. Without
    space directions, `directions` comes from `spacings` (an axis-aligned grid) or is None.
    """

    array: np.ndarray
    fields: dict[str, str]
    directions: list[np.ndarray | None] | None
    origin: np.ndarray | None
    to_ras: tuple[float, float, float]


def read_nrrd(path: str | Path) -> NrrdImage:
    """Read a NRRD file with attached data."""
    path = Path(path)
    raw = path.read_bytes()
    fields, data_start = _parse_header(raw, path)
    if "data file" in fields or "datafile" in fields:
        detached = fields.get("data file") or fields["datafile"]
        raise NrrdError(
            f"{path.name} keeps its voxels in a separate data file ({detached}); only single-file NRRD "
            "is supported: re-save it as one .nrrd file"
        )
    try:
        dtype, sizes = _data_type(fields), _sizes(fields)
        space, to_ras = _space(fields)
        directions = _directions(fields, len(sizes), space)
        origin = _vector(fields["space origin"], "space origin") if "space origin" in fields else None
    except NrrdError:
        raise
    except ValueError as exc:
        raise NrrdError(f"{path.name}: malformed NRRD header ({exc})") from exc
    if origin is not None and space is None:
        raise NrrdError("the header has a space origin but no space")
    array = _read_data(raw[data_start:], fields, dtype, sizes, path)
    return NrrdImage(array=array, fields=fields, directions=directions, origin=origin, to_ras=to_ras)


def write_nrrd(
    path: str | Path,
    array: np.ndarray,
    directions_lps: np.ndarray,
    origin_lps: np.ndarray,
    compress: bool = True,
    key_values: Mapping[str, str] | None = None,
) -> None:
    """Write a 3D array (K, J, I) as NRRD in LPS space; directions are the columns of a 3x3.

    gzip by default; `compress=False` writes raw data (several times faster, for temporary files).
    `key_values` become `key:=value` lines of the header (one line each: no newlines, no ':=' in keys).
    """
    extra = []
    for key, value in (key_values or {}).items():
        if ":=" in key or any(c in f"{key}{value}" for c in "\r\n"):
            raise NrrdError(f"NRRD key/value {key!r}: {value!r} must be one line and the key without ':='")
        extra.append(f"{key}:={value}")
    if array.ndim != 3:
        raise NrrdError(f"only 3D arrays are written, got shape {array.shape}")
    dtype = np.dtype(array.dtype).newbyteorder("=")
    if dtype not in _TYPES:
        raise NrrdError(f"cannot store {array.dtype} voxels in NRRD")
    directions = np.asarray(directions_lps, dtype=np.float64)
    vectors = " ".join("(" + ",".join(_number(v) for v in directions[:, axis]) + ")" for axis in range(3))
    header = "\n".join(
        [
            "NRRD0004",
            "# Complete NRRD file format specification at:",
            "# http://teem.sourceforge.net/nrrd/format.html",
            f"type: {_TYPES[dtype][0]}",
            "dimension: 3",
            "space: left-posterior-superior",
            "sizes: " + " ".join(str(n) for n in array.shape[::-1]),
            f"space directions: {vectors}",
            "kinds: domain domain domain",
            "endian: little",
            f"encoding: {'gzip' if compress else 'raw'}",
            "space origin: (" + ",".join(_number(v) for v in np.asarray(origin_lps, dtype=np.float64)) + ")",
            *extra,
        ]
    )
    data = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()
    with open(path, "wb") as stream:
        stream.write(header.encode("ascii") + b"\n\n")
        stream.write(gzip.compress(data, compresslevel=6) if compress else data)


def _number(value: float) -> str:
    return repr(float(value))


def _parse_header(raw: bytes, path: Path) -> tuple[dict[str, str], int]:
    first_end = raw.find(b"\n")
    if first_end < 0 or not MAGIC.match(raw[:first_end].rstrip(b"\r")):
        raise NrrdError(f"{path.name} is not a NRRD file (it does not start with NRRD0001..NRRD0005)")
    fields: dict[str, str] = {}
    position = first_end + 1
    while True:
        end = raw.find(b"\n", position)
        if end < 0:
            # a header-only file (.nhdr style) ends without a blank line
            line, next_position = raw[position:], len(raw)
        else:
            line, next_position = raw[position:end], end + 1
        text = line.rstrip(b"\r").decode("latin-1")
        position = next_position
        if not text:
            return fields, position
        if text.startswith("#") or ":=" in text.split(": ", 1)[0]:
            continue  # a comment or a key/value pair
        name, separator, value = text.partition(": ")
        if not separator:
            raise NrrdError(f"{path.name}: malformed header line {text!r}")
        fields[name.strip().lower()] = value.strip()
        if end < 0:
            return fields, position


def _data_type(fields: dict[str, str]) -> np.dtype:
    if "type" not in fields:
        raise NrrdError("the NRRD header has no 'type' field")
    name = " ".join(fields["type"].split()).lower()
    if name not in _DTYPE_OF_TYPE:
        raise NrrdError(f"unsupported NRRD voxel type {fields['type']!r}")
    dtype = _DTYPE_OF_TYPE[name]
    if dtype.itemsize == 1:
        return dtype
    endian = fields.get("endian", "").lower()
    if endian not in ("little", "big"):
        if fields.get("encoding", "").lower() in ("ascii", "text", "txt"):
            return dtype
        raise NrrdError("the NRRD header gives no valid 'endian' (little or big) for multi-byte voxels")
    return dtype.newbyteorder("<" if endian == "little" else ">")


def _sizes(fields: dict[str, str]) -> list[int]:
    try:
        dimension = int(fields["dimension"])
        sizes = [int(s) for s in fields["sizes"].split()]
    except (KeyError, ValueError) as exc:
        raise NrrdError("the NRRD header needs integer 'dimension' and 'sizes' fields") from exc
    if len(sizes) != dimension or any(s < 1 for s in sizes):
        raise NrrdError(f"the NRRD sizes {sizes} do not match dimension {dimension}")
    return sizes


def _space(fields: dict[str, str]) -> tuple[str | None, tuple[float, float, float]]:
    """Name of the world space (None when the file has none) and its sign per axis towards RAS."""
    if "space" in fields:
        name = fields["space"].lower()
        if name not in _SPACES:
            raise NrrdError(
                f"unsupported NRRD space {fields['space']!r}; supported: left-posterior-superior, "
                "right-anterior-superior, left-anterior-superior, 3D-right-handed"
            )
        return name, _SPACES[name]
    if "space dimension" in fields:
        if fields["space dimension"].strip() != "3":
            raise NrrdError(
                f"only 3D world spaces are supported, got space dimension {fields['space dimension']}"
            )
        return "3d-right-handed", _SPACES["3d-right-handed"]
    return None, _SPACES["lps"]


def _directions(fields: dict[str, str], dimension: int, space: str | None) -> list[np.ndarray | None] | None:
    if "space directions" in fields:
        if space is None:
            raise NrrdError("the header has space directions but no space")
        entries = re.findall(r"\([^)]*\)|none", fields["space directions"], flags=re.IGNORECASE)
        if len(entries) != dimension:
            raise NrrdError(f"space directions list {len(entries)} entries for {dimension} axes")
        return [None if entry.lower() == "none" else _vector(entry, "space directions") for entry in entries]
    if "spacings" in fields:
        # no world space: an axis-aligned grid with the given spacings (read as LPS, as ITK does)
        values = fields["spacings"].split()
        if len(values) != dimension:
            raise NrrdError(f"spacings list {len(values)} values for {dimension} axes")
        directions: list[np.ndarray | None] = []
        spatial_axes = 0
        for value in values:
            if value.lower() == "nan":
                directions.append(None)
                continue
            if spatial_axes == 3:
                raise NrrdError("more than three spatial axes in 'spacings'")
            vector = np.zeros(3)
            vector[spatial_axes] = float(value)
            spatial_axes += 1
            directions.append(vector)
        return directions
    return None


def _vector(text: str, field: str) -> np.ndarray:
    body = text.strip()
    if not (body.startswith("(") and body.endswith(")")):
        raise NrrdError(f"malformed vector {text!r} in {field}")
    try:
        vector = np.array([float(v) for v in body[1:-1].split(",")], dtype=np.float64)
    except ValueError as exc:
        raise NrrdError(f"malformed vector {text!r} in {field}") from exc
    if vector.shape != (3,):
        raise NrrdError(f"{field} must hold 3D vectors, got {text!r}")
    return vector


def _read_data(
    payload: bytes, fields: dict[str, str], dtype: np.dtype, sizes: list[int], path: Path
) -> np.ndarray:
    try:
        line_skip = int(fields.get("line skip", fields.get("lineskip", "0")))
        byte_skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
    except ValueError as exc:
        raise NrrdError(f"{path.name}: malformed line skip or byte skip ({exc})") from exc
    for _ in range(line_skip):
        end = payload.find(b"\n")
        payload = payload[end + 1 :] if end >= 0 else b""
    encoding = fields.get("encoding", "").lower()
    count = int(np.prod(sizes))
    shape = tuple(reversed(sizes))
    if encoding in ("ascii", "text", "txt"):
        try:
            values = np.array(payload.decode("ascii").split(), dtype=np.float64)
        except (UnicodeDecodeError, ValueError) as exc:
            raise NrrdError(f"{path.name}: the ascii voxel data holds a value that is not a number") from exc
        if values.size != count:
            raise NrrdError(f"{path.name}: expected {count} ascii values, found {values.size}")
        return values.astype(dtype.newbyteorder("=")).reshape(shape)
    decompress = {"raw": bytes, "gzip": gzip.decompress, "gz": gzip.decompress}
    decompress.update({"bzip2": bz2.decompress, "bz2": bz2.decompress})
    if encoding not in decompress:
        raise NrrdError(f"unsupported NRRD encoding {encoding or '(none)'!r}; use raw, gzip, bzip2 or ascii")
    try:
        data = decompress[encoding](payload)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise NrrdError(f"{path.name}: the compressed voxel data is corrupt ({exc})") from exc
    needed = count * dtype.itemsize
    if byte_skip == -1:
        data = data[len(data) - needed :] if len(data) >= needed else data
    else:
        data = data[byte_skip:]
    if len(data) < needed:
        raise NrrdError(f"{path.name}: the voxel data is truncated ({len(data)} of {needed} bytes)")
    array = np.frombuffer(data, dtype=dtype, count=count).reshape(shape)
    return array.astype(dtype.newbyteorder("="))
