"""The vector folder on disk (format version 1): `index.json` and one raw little-endian `.bin` per array (C
order); the index names each array's file, dtype (float32, float64, int64 or uint8) and shape. Also the
tolerances a port must meet and the comparison that applies them. numpy and the standard library only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ralu_edge.errors import UserError

FORMAT = "ralu-conformance-vectors"
VERSION = 1
INDEX_NAME = "index.json"
DTYPES = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "uint8": np.uint8}
RELATIVE_TOLERANCE = 1e-5  # issue 7: host-side values within 1e-5 relative
SIGMA_TOLERANCE = 1e-6


class ArrayStore:
    """Collects named arrays for the index and writes each as a raw little-endian file."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.entries: dict[str, dict[str, Any]] = {}

    def add(self, name: str, array: np.ndarray) -> str:
        array = np.asarray(array)
        dtype = {np.dtype(v): k for k, v in DTYPES.items()}.get(array.dtype)
        if dtype is None:
            raise TypeError(f"{name}: dtype {array.dtype} is not one of {list(DTYPES)}")
        if name in self.entries:
            raise ValueError(f"array {name!r} written twice")
        path = self.folder / f"{name}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())
        self.entries[name] = {"file": f"{name}.bin", "dtype": dtype, "shape": list(array.shape)}
        return name


@dataclass(frozen=True)
class Vectors:
    """A loaded vector folder: its index and a reader for its arrays."""

    folder: Path
    index: dict[str, Any]

    def array(self, name: str) -> np.ndarray:
        """The array called `name`, with its stored dtype and shape."""
        entry = self.index["arrays"][name]
        data = np.fromfile(self.folder / entry["file"], dtype=np.dtype(DTYPES[entry["dtype"]]).newbyteorder("<"))
        return data.reshape(entry["shape"]).astype(DTYPES[entry["dtype"]])


def load_vectors(folder: Path) -> Vectors:
    """The vector folder at `folder`; UserError when it is not one."""
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise UserError(f"{folder}: no {INDEX_NAME}, so this is not a conformance vector folder; write one with "
                        "android_demo/scripts/make_vectors.py")
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise UserError(f"{path}: format {index.get('format')!r} version {index.get('version')} is not {FORMAT!r} "
                        f"version {VERSION}; regenerate the vectors with android_demo/scripts/make_vectors.py")
    return Vectors(Path(folder), index)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual − expected| / max |expected| (0 when both are all zero); inf on a shape mismatch."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    error = float(np.abs(actual - expected).max()) if expected.size else 0.0
    return error / scale if scale > 0 else error


def compare(out: list[str], what: str, actual, expected, tolerance: float = RELATIVE_TOLERANCE) -> None:
    """Append a line to `out` when `actual` differs from `expected` by more than `tolerance` (relative_error)."""
    error = relative_error(actual, expected)
    if not error <= tolerance:
        out.append(f"{what}: relative error {error:.3g} > {tolerance:g}")
