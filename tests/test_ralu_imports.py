"""ralu_edge's RALU modules depend on numpy only (DESIGN.md "Layers"; spec/RALU.md §9.5: scipy stays off
the device)."""

import ast
import pathlib
import subprocess
import sys

MODULES = ["schedules", "presets", "ntfit", "tokens", "rope", "renoise", "edges", "sampler", "guidance"]
ROOT = pathlib.Path(__file__).resolve().parents[1]

_PROBE = """
import sys
for blocked in ("torch", "onnxruntime", "scipy", "cv2"):
    sys.modules[blocked] = None  # makes `import blocked` raise ImportError
import importlib
for name in {modules!r}:
    importlib.import_module("ralu_edge." + name)
from ralu_edge import presets, sampler
assert presets.get("flux-4x").stage_lengths(16, 16) == (64, 121, 256)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxruntime", "scipy", "cv2")
                and sys.modules[m] is not None)
assert not leaked, leaked
print("ok")
"""


def test_ralu_modules_import_with_torch_scipy_and_onnxruntime_unimportable():
    completed = subprocess.run([sys.executable, "-c", _PROBE.format(modules=MODULES)], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_ralu_modules_import_only_numpy_the_standard_library_and_ralu_edge():
    allowed = {"numpy", "ralu_edge", "__future__"} | set(sys.stdlib_module_names)
    for name in MODULES:
        tree = ast.parse((ROOT / "ralu_edge" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            extra = roots - allowed - ({"scipy"} if name == "ntfit" else set())
            assert not extra, f"ralu_edge/{name}.py imports {sorted(extra)}"
