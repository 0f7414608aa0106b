"""The package layout, the README's two commands and CI agree with each other."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAMES = {"ralu_edge": "ralu_edge", "runtime": "ralu_runtime", "export": "ralu_export"}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, name in IMPORT_NAMES.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:bash|sh)\n(.+?)\n```", text, flags=re.S)[:2]


def test_readme_opens_with_two_commands_and_ci_runs_the_second():
    commands = _readme_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_runtime_and_core_import_with_torch_blocked():
    code = ("import sys; sys.path.insert(0, %r); import tests.block_torch; import ralu_edge, ralu_runtime; "
            "import ralu_edge.sampler, ralu_edge.presets; print('ok')" % str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
