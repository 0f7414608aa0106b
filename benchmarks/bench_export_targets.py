"""Export time and bundle size per target and precision for the built-in `shapes` model (issue 4 "Must
show"): runs `build_bundle` for every (target, precision) pair into a temporary folder and reports wall
seconds, total bundle bytes, the denoiser's share and the worst parity number of the bundle.

Prints a fixed-width table on stdout; writes benchmarks/results/export_targets.json. Progress on stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import measure
from ralu_edge.manifest import read_manifest
from ralu_export.bundle import ExportConfig, build_bundle
from ralu_export.targets import PRECISIONS, TARGETS


def export_row(target: str, precision: str, presets: tuple[str, ...], work: Path) -> dict:
    """One export: seconds, sizes and the worst parity of the resulting bundle."""
    out = work / f"{target}-{precision}"
    started = time.perf_counter()
    build_bundle(ExportConfig(model="shapes", target=target, out=out, precision=precision, presets=presets))
    seconds = time.perf_counter() - started
    manifest = read_manifest(out)
    denoiser_files = {g.file for g in manifest.graphs if g.role == "denoiser"} | {
        d for g in manifest.graphs if g.role == "denoiser" for d in g.data_files}
    checked = [g.parity for g in manifest.graphs if g.parity is not None]
    return {
        "target": target, "precision": precision, "seconds": seconds,
        "bundle_bytes": sum(f.size for f in manifest.files),
        "denoiser_bytes": sum(f.size for f in manifest.files
                              if f.path in denoiser_files or any(f.path.startswith(d + "/") for d in denoiser_files)),
        "graphs": len(manifest.graphs),
        "worst_max_rel_float": max((p.max_rel_error for p in checked if p.metric == "max_rel"), default=None),
        "worst_cosine_int8": min((p.cosine for p in checked if p.metric == "cosine"), default=None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets")
    parser.add_argument("--presets", default="flux-4x,flux-5x,flux-7x", help="RALU presets of every bundle")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results",
                        help="folder for export_targets.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-targets-") as tmp:
        for target in args.targets.split(","):
            for precision in PRECISIONS:
                print(f"export {target} {precision}", file=sys.stderr, flush=True)
                rows.append(export_row(target, precision, tuple(args.presets.split(",")), Path(tmp)))
    print(f"{'target':<11} {'precision':<9} {'seconds':>8} {'bundle MB':>10} {'denoiser MB':>12} {'graphs':>7} "
          f"{'worst rel (float)':>18} {'worst cos (int8)':>17}")
    for r in rows:
        rel = "-" if r["worst_max_rel_float"] is None else f"{r['worst_max_rel_float']:.2e}"
        cos = "-" if r["worst_cosine_int8"] is None else f"{r['worst_cosine_int8']:.6f}"
        print(f"{r['target']:<11} {r['precision']:<9} {r['seconds']:>8.1f} {r['bundle_bytes'] / 1e6:>10.2f} "
              f"{r['denoiser_bytes'] / 1e6:>12.2f} {r['graphs']:>7} {rel:>18} {cos:>17}")
    args.out.mkdir(parents=True, exist_ok=True)
    environment = {"cpu_count": os.cpu_count(), **measure.versions("python"), "model": "shapes",
                   "presets": args.presets, "load_average_at_end": measure.load_average()[0]}
    (args.out / "export_targets.json").write_text(json.dumps({"environment": environment, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
