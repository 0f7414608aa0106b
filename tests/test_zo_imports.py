"""ralu_edge.zo depends on numpy and the standard library only (DESIGN.md "Layers": the personalization
process never imports torch)."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
ZO = ROOT / "ralu_edge" / "zo"

_PROBE = """
import sys
for blocked in ("torch", "onnxruntime", "scipy", "sklearn", "diffusers", "transformers", "ralu_export"):
    sys.modules[blocked] = None  # makes `import blocked` raise ImportError
import numpy as np
from ralu_edge.zo import ZOConfig, init_state, zo_step
state, _ = zo_step(init_state(np.zeros(4), ZOConfig(tau=2), seed=0), lambda q: (q ** 2).sum(1), ZOConfig(tau=2))
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnxruntime", "scipy", "sklearn")
                and sys.modules[m] is not None)
assert not leaked, leaked
print("ok", state.step)
"""


def test_zo_runs_with_torch_scipy_sklearn_and_onnxruntime_unimportable():
    completed = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok 1"


def test_zo_modules_import_only_numpy_the_standard_library_and_ralu_edge():
    allowed = {"numpy", "ralu_edge", "__future__"} | set(sys.stdlib_module_names)
    for path in sorted(ZO.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots - allowed, f"{path.relative_to(ROOT)} imports {sorted(roots - allowed)}"
