import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _export_inputs_digest(target: str, precision: str) -> str:
    """Hash of what a bundle export depends on, so a cached bundle is rebuilt when any of it changes."""
    h = hashlib.sha256(f"{target}/{precision}".encode())
    for path in sorted((ROOT / "export").rglob("*.py")) + sorted((ROOT / "ralu_edge").rglob("*.py")):
        h.update(path.read_bytes())
    h.update((ROOT / "export" / "builtin" / "shapes" / "model_index.json").read_bytes())
    return h.hexdigest()[:16]


def exported_bundle(request, target: str, precision: str = "fp32") -> Path:
    """A bundle of the built-in model, exported once in a subprocess (so this process never imports torch,
    which lets the runtime tests run under the torch blocker) and cached in pytest's cache folder."""
    base = Path(request.config.cache.mkdir("ralu-bundles"))
    out = base / f"shapes-{target}-{precision}-{_export_inputs_digest(target, precision)}"
    if not (out / "ralu_config.json").is_file():
        cmd = [sys.executable, "-m", "ralu_export.cli", "--model", "shapes", "--target", target,
               "--precision", precision, "--out", str(out), "--force"]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"export failed:\n{done.stderr[-3000:]}")
    return out


@pytest.fixture(scope="session")
def desktop_bundle(request) -> Path:
    return exported_bundle(request, "desktop")


def random_image_folder(path: Path, n: int = 2, size: int = 128) -> Path:
    """A new folder of `n` random RGB PNGs (size x size, seed 0): photos for ralu-personalize."""
    import numpy as np
    from PIL import Image

    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return path


@pytest.fixture(scope="session")
def executorch_bundle(request) -> Path:
    """The built-in model's executorch bundle. A missing `.pte` denoiser is a failure, not a skip: the export
    claimed parity for a program that is not there."""
    out = exported_bundle(request, "executorch")
    assert list((out / "transformer").glob("*.pte")), f"{out}: the executorch export wrote no transformer/*.pte"
    return out


def tiny_model_folder(request, kind: str) -> Path:
    """A seeded random tiny pipeline folder (`ralu_export.tiny_models.build_tiny_<kind>`, kind "flux" or "sd3"),
    built once in a subprocess (this process never imports torch for it) and cached in pytest's cache folder,
    keyed like `exported_bundle`."""
    import shutil

    base = Path(request.config.cache.mkdir("ralu-bundles"))
    model = base / f"tiny-{kind}-model-{_export_inputs_digest(f'tiny-{kind}', 'fp32')}"
    if not (model / "model_index.json").is_file():
        partial = model.with_name(model.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        code = (f"import sys; from pathlib import Path; from ralu_export.tiny_models import build_tiny_{kind}; "
                f"build_tiny_{kind}(Path(sys.argv[1]))")
        done = subprocess.run([sys.executable, "-c", code, str(partial)], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"building the tiny {kind} model failed:\n{done.stderr[-3000:]}")
        shutil.rmtree(model, ignore_errors=True)
        os.replace(partial, model)
    return model


def tiny_model_bundle(request, kind: str, target: str, *extra: str) -> Path:
    """`tiny_model_folder(request, kind)` exported to `target` with `extra` ralu-export arguments, once, in a
    subprocess, cached in pytest's cache folder."""
    model = tiny_model_folder(request, kind)
    tag = hashlib.sha256(" ".join((target, *extra)).encode()).hexdigest()[:8]
    out = model.with_name(f"tiny-{kind}-{target}-{tag}-{model.name.rsplit('-', 1)[1]}")
    if not (out / "ralu_config.json").is_file():
        cmd = [sys.executable, "-m", "ralu_export.cli", "--model", str(model), "--target", target, "--out", str(out),
               "--force", *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"export failed:\n{done.stderr[-3000:]}")
    return out
