"""Behaviour fingerprint of the toolkit, for refactors that must not change it (issue 14).

    .venv/bin/python scripts/identity_snapshot.py snap --out /tmp/before.json [--work /tmp/snap]
    .venv/bin/python scripts/identity_snapshot.py diff /tmp/before.json /tmp/after.json

`snap` exports the built-in `shapes` model (desktop, android, executorch) and seeded random tiny FLUX and
tiny SD3 pipelines (desktop, android, executorch), runs `ralu-run` (and the ExecuTorch denoiser through the
same sampler) for the baseline and every RALU preset the bundle carries, and records the sha256 of every
bundle file and every PNG's pixels. `diff` lists what changed; exit status 1 when anything did."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

PROMPTS = ("a small blue star at the top", "a large red circle on the left and a green square on the right")
TARGETS = ("desktop", "android", "executorch")


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _run(cmd: list[str]) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def _models(work: Path) -> dict[str, str]:
    from ralu_export.tiny_models import build_tiny_flux, build_tiny_sd3

    models = {"shapes": "shapes"}
    for name, build in (("tiny-flux", build_tiny_flux), ("tiny-sd3", build_tiny_sd3)):
        folder = work / name
        if not (folder / "model_index.json").is_file():
            build(folder, seed=0)
        models[name] = str(folder)
    return models


def _pixels_sha(path: Path) -> str:
    from PIL import Image

    return hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest()


def _canonical_sha(bundle: Path, rel: str) -> str:
    """sha256 of what a file means rather than of bytes that no export reproduces: an ONNX graph without the
    exporter's per-node `pkg.torch.onnx.stack_trace` metadata (source paths and line numbers of the code that
    traced it, so any edit above a traced line changes it), a text report without the export's temporary
    folder name, and for `.ort` files only the size: ONNX Runtime's converter writes different bytes for the
    same ONNX file on every run (checked: two conversions of one graph differ from byte 53), so their
    behaviour is checked by the images instead."""
    path = bundle / rel
    if rel.endswith(".onnx"):
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        for node in model.graph.node:
            keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    if rel.endswith(".ort"):
        return f"ort size {path.stat().st_size}"
    if rel.endswith((".txt", ".config")):
        text = re.sub(r"\S*\.tmp-[a-z0-9_]+", "<tmp>", path.read_text())
        return hashlib.sha256(text.encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _bundle_files(bundle: Path) -> dict[str, str]:
    """Every file of the bundle: its canonical sha256 (see _canonical_sha); the manifest without its file
    list, whose sha256 entries follow the raw bytes."""
    manifest = json.loads((bundle / "ralu_config.json").read_text())
    files = {entry["path"]: _canonical_sha(bundle, entry["path"]) for entry in manifest["files"]}
    manifest.pop("files")
    files["ralu_config.json (without files)"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    return files


def _modes(bundle: Path) -> list[str]:
    manifest = json.loads((bundle / "ralu_config.json").read_text())
    presets = manifest.get("presets", [])
    names = [p["name"] for p in presets] if isinstance(presets, list) else list(presets)
    return ["baseline"] + ["ralu-" + name.split("-", 1)[1] for name in names]


def _images_ort(bundle: Path, out: Path) -> dict[str, str]:
    result = {}
    for mode in _modes(bundle):
        folder = out / mode
        done = sorted(folder.glob("*.png"))
        if len(done) == len(PROMPTS):  # a rerun of the same --work re-hashes what it wrote
            result.update({f"{mode}/{i}": _pixels_sha(path) for i, path in enumerate(done)})
            continue
        raw = _run([_bin("ralu-run"), "--bundle", str(bundle), "--mode", mode, "--steps", "8", "--seed", "3",
                    "--threads", "1", "--out", str(folder), "--json", "--no-progress",
                    *[a for p in PROMPTS for a in ("--prompt", p)]])
        for i, image in enumerate(json.loads(raw)["images"]):
            result[f"{mode}/{i}"] = _pixels_sha(Path(image["out"]))
    return result


def snap(out: Path, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    record: dict = {}
    for model, source in _models(work).items():
        for target in TARGETS:
            bundle = work / "bundles" / f"{model}-{target}"
            if not (bundle / "ralu_config.json").is_file():  # a rerun of the same --work resumes
                _run([_bin("ralu-export"), "--model", source, "--target", target, "--out", str(bundle), "--quiet"])
            entry = {"files": _bundle_files(bundle)}
            if target != "executorch":
                entry["images"] = _images_ort(bundle, work / "images" / f"{model}-{target}")
            record[f"{model}/{target}"] = entry
            print(f"{model}/{target}: {len(entry['files'])} files, {len(entry.get('images', {}))} images",
                  file=sys.stderr)
    out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def diff(before: dict, after: dict) -> list[str]:
    changes = []
    for key in sorted(set(before) | set(after)):
        b, a = before.get(key, {}), after.get(key, {})
        for part in ("files", "images"):
            bp, ap = b.get(part, {}), a.get(part, {})
            for name in sorted(set(bp) | set(ap)):
                if bp.get(name) != ap.get(name):
                    changes.append(f"{key} {part} {name}: {str(bp.get(name))[:12]} -> {str(ap.get(name))[:12]}")
    return changes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snap")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--work", type=Path, default=Path("/tmp/identity-snapshot"))
    d = sub.add_parser("diff")
    d.add_argument("before", type=Path)
    d.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.cmd == "snap":
        snap(args.out, args.work)
        return 0
    changes = diff(json.loads(args.before.read_text()), json.loads(args.after.read_text()))
    print("\n".join(changes) if changes else "identical")
    return 1 if changes else 0


if __name__ == "__main__":
    sys.exit(main())
