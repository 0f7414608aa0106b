"""Write src/core/ziggurat_tables.js: numpy's ziggurat tables (fi_double, wi_double, ki_double of
numpy/random/src/distributions/ziggurat_constants.h) read out of the installed numpy's compiled `_generator`
module, where the three 256-entry arrays lie back to back (fi, wi, ki). numpy exposes them to no Python API;
the JS port of `Generator.standard_normal` (src/core/rng.js) needs them bit for bit.

Usage: .venv/bin/python web_demo/scripts/ziggurat_tables.py   (run from the repository root)"""

from __future__ import annotations

import glob
import os
import struct
import sys

import numpy

KI_0 = 0x000EF33D8025EF6A  # ki_double[0]; ki_double[1] is 0
HEADER = """// The ziggurat tables of numpy's Generator.standard_normal (numpy/random/src/distributions/ziggurat_constants.h:
// ki_double, wi_double, fi_double), read out of numpy {version}'s compiled _generator module by
// web_demo/scripts/ziggurat_tables.py and checked draw for draw against rng.standard_normal in test/rng.test.js.
// Every ki value is below 2^53, so a Number holds it exactly. Generated file: do not edit by hand.
"""


def read_tables() -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, ...]]:
    """(fi, wi, ki), 256 entries each, from numpy's compiled module."""
    path = glob.glob(os.path.join(os.path.dirname(numpy.__file__), "random", "_generator*.so"))[0]
    data = open(path, "rb").read()
    at = data.find(struct.pack("<QQ", KI_0, 0))
    if at < 4096:
        sys.exit(f"error: ki_double not found in {path}; this numpy build lays its tables out differently.")
    fi = struct.unpack("<256d", data[at - 4096:at - 2048])
    wi = struct.unpack("<256d", data[at - 2048:at])
    ki = struct.unpack("<256Q", data[at:at + 2048])
    if fi[0] != 1.0 or wi[0] != 8.68362706080130616677e-16 or max(ki) >= 2**53:
        sys.exit(f"error: the arrays before ki_double in {path} are not fi_double and wi_double.")
    return fi, wi, ki


def js_array(name: str, values, fmt) -> str:
    rows = ["  " + ", ".join(fmt(v) for v in values[i:i + 4]) + "," for i in range(0, len(values), 4)]
    return f"export const {name} = Float64Array.from([\n" + "\n".join(rows) + "\n]);\n"


def main() -> int:
    fi, wi, ki = read_tables()
    text = HEADER.format(version=numpy.__version__) + "\n" + "\n".join(
        [js_array("KI", ki, str), js_array("WI", wi, repr), js_array("FI", fi, repr)])
    out = os.path.join(os.path.dirname(__file__), "..", "src", "core", "ziggurat_tables.js")
    with open(out, "w") as f:
        f.write(text)
    print(os.path.normpath(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
