"""Conformance vectors for the Kotlin core's LoRA merge (issue 17, android_demo/core Lora.kt): a small,
self-contained case cut from real bundles and the real LoRA of tests/data/lora — a LoRA-file subset, a manifest
subset (`lora` spec and the graphs' `lora_targets`, pointing at base tensors copied into the folder), and the
tensors ralu_runtime.lora computes from them (the expected overrides). Layouts covered: ORT's MatMulNBits (CLIP
q_proj of the android int8 .ort), the same int8 weight as QDQ, and a float W^T of the desktop .onnx reached
through a kohya alias (fused qkv). Written to android_demo/core/src/test/resources/lora_vectors:

    python -m ralu_export.conformance.lora_vectors --desktop D --android-int8 A --out FOLDER"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from safetensors.numpy import load_file, save_file

from ralu_edge.manifest import LoraAlias, LoraAliasPart, LoraSpec, LoraTarget, TensorLocation, read_manifest
from ralu_edge.typed_json import to_json

ROOT = Path(__file__).resolve().parents[2]
LORA = ROOT / "tests" / "data" / "lora" / "shapes-red-to-green.safetensors"
CLIP_Q = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
BLOCK = "transformer.transformer_blocks.0.attn."
QKV = "lora_unet_double_blocks_0_img_attn_qkv"
SCALE = 0.8


class _Folder:
    """What ralu_runtime.lora needs of a bundle: a root, a manifest-like object and `path`."""

    def __init__(self, root: Path, manifest_json: dict):
        self.root = root
        graphs = tuple(SimpleNamespace(name=g["name"], lora_targets=tuple(_target(t) for t in g["lora_targets"]))
                       for g in manifest_json["graphs"])
        spec = manifest_json["lora"]
        lora = LoraSpec(tuple(spec["components"]), tuple(
            LoraAlias(a["name"], tuple(LoraAliasPart(**p) for p in a["parts"])) for a in spec["aliases"]), spec["note"])
        self.manifest = SimpleNamespace(graphs=graphs, lora=lora, precision="int8",
                                        model=SimpleNamespace(pipeline_class="FluxPipeline"))

    def path(self, relative: str) -> Path:
        return self.root / relative


def _at(d: dict | None) -> TensorLocation | None:
    return None if d is None else TensorLocation(d["file"], d["offset"], d["dtype"], tuple(d["shape"]))


def _target(t: dict) -> LoraTarget:
    at = _at
    return LoraTarget(t["module"], t["layout"], t["weight"], at(t["weight_at"]), t["transposed"], t["scale"],
                      at(t["scale_at"]), t["zero_point"], t["block_size"])


def _copy_tensor(bundle: Path, at: TensorLocation, out: Path, name: str) -> TensorLocation:
    count = int(np.prod(at.shape))
    data = np.fromfile(bundle / at.file, dtype=at.dtype, count=count, offset=at.offset)
    data.tofile(out / name)
    return TensorLocation(name, 0, at.dtype, at.shape)


def write_vectors(desktop: Path, android_int8: Path, out: Path, lora: Path = LORA) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    targets = []
    a = read_manifest(android_int8)
    clip = next(t for g in a.graphs for t in g.lora_targets if t.module == CLIP_Q and t.layout == "nbits")
    w = _copy_tensor(android_int8, clip.weight_at, out, "clip_q_nbits_weight.bin")
    s = _copy_tensor(android_int8, clip.scale_at, out, "clip_q_nbits_scale.bin")
    targets.append(("text_encoder", dataclasses.replace(clip, weight_at=w, scale_at=s)))
    # the same real int8 weight in the QDQ layout, as desktop int8 graphs hold it (q^T [in, out], scale [out])
    rows, blocks, block = clip.weight_at.shape
    q = (np.fromfile(out / w.file, np.uint8).reshape(rows, blocks * block).astype(np.int16) - 128).astype(np.int8)
    q.T.copy().tofile(out / "clip_q_qdq_weight.bin")
    np.fromfile(out / s.file, np.float32).reshape(rows, blocks)[:, 0].copy().tofile(out / "clip_q_qdq_scale.bin")
    targets.append(("text_encoder_qdq", LoraTarget(
        CLIP_Q, "qdq", "clip_q_int8", TensorLocation("clip_q_qdq_weight.bin", 0, "int8", (blocks * block, rows)),
        True, "clip_q_scale", TensorLocation("clip_q_qdq_scale.bin", 0, "float32", (rows,)), "clip_q_zero_point")))
    d = read_manifest(desktop)
    for name in ("to_q", "to_k", "to_v"):
        t = next(t for g in d.graphs if g.name == "denoiser" for t in g.lora_targets if t.module == BLOCK + name)
        targets.append(("denoiser", dataclasses.replace(t, weight_at=_copy_tensor(desktop, t.weight_at, out,
                                                                                   f"{name}_float.bin"))))
    alias = next(x for x in d.lora.aliases if x.name == QKV)
    tensors = load_file(str(lora))
    subset = {k: v for k, v in tensors.items() if k.startswith(CLIP_Q + ".")}
    downs = [tensors[f"{BLOCK}{n}.lora_A.weight"] for n in ("to_q", "to_k", "to_v")]
    ups = [tensors[f"{BLOCK}{n}.lora_B.weight"] for n in ("to_q", "to_k", "to_v")]
    rank, rows_out = downs[0].shape[0], ups[0].shape[0]
    up = np.zeros((3 * rows_out, 3 * rank), np.float32)
    for i, u in enumerate(ups):
        up[i * rows_out:(i + 1) * rows_out, i * rank:(i + 1) * rank] = u
    subset.update({f"{QKV}.lora_down.weight": np.concatenate(downs), f"{QKV}.lora_up.weight": up,
                   f"{QKV}.alpha": np.array(2.0 * rank, np.float32)})  # α/r = 2/3 of the stacked rank 3r
    save_file(subset, str(out / "lora.safetensors"))
    graphs: dict[str, list] = {}
    for graph, target in targets:
        graphs.setdefault(graph, []).append(to_json(target))
    manifest = {"lora": to_json(LoraSpec(("transformer", "text_encoder"), (alias,), "")),
                "graphs": [{"name": g, "lora_targets": ts} for g, ts in graphs.items()]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    expected = expected_overrides(out)
    index = {"scale": SCALE, "lora": "lora.safetensors", "manifest": "manifest.json", "expected": []}
    for graph, tensors_out in expected.items():
        for name, array in tensors_out.items():
            file = f"expected_{graph}_{name}.bin"
            array.tofile(out / file)
            index["expected"].append({"graph": graph, "name": name, "file": file, "dtype": str(array.dtype),
                                      "shape": list(array.shape)})
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def expected_overrides(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    """What ralu_runtime.lora computes for the folder's case at SCALE."""
    from ralu_runtime.lora import LoraRequest, load_lora, lora_overrides

    bundle = _Folder(folder, json.loads((folder / "manifest.json").read_text()))
    loaded = load_lora(bundle, LoraRequest(folder / "lora.safetensors", SCALE))
    return lora_overrides(bundle, [loaded])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--desktop", type=Path, required=True, help="a desktop fp32 bundle of the built-in model")
    p.add_argument("--android-int8", type=Path, required=True, help="an android int8 bundle of the built-in model")
    p.add_argument("--out", type=Path, required=True, help="vector folder written")
    args = p.parse_args(argv)
    index = write_vectors(args.desktop, args.android_int8, args.out)
    print(json.dumps({"out": str(args.out), "expected": len(index["expected"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
