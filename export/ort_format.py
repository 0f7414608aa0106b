"""The android target's ORT-format step: convert every .onnx graph of a bundle folder with onnxruntime's
own tool (`python -m onnxruntime.tools.convert_onnx_models_to_ort`, Fixed optimization style, ARM target
platform), which writes `<graph>.ort` beside each graph and one `required_operators.config` for a reduced
build; save onnxruntime's mobile usability report for every graph; then drop the .onnx files and their
external data, except graphs beyond the 2 GB flatbuffer limit of .ort, which stay .onnx + external data."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from pathlib import Path

ORT_MAX_BYTES = 2 * 1024**3
OPERATORS_CONFIG = "required_operators.config"
USABILITY_FOLDER = "mobile_usability"


def onnx_bytes(path: Path, data_files: list[Path]) -> int:
    return path.stat().st_size + sum(p.stat().st_size for p in data_files)


def usability_report(path: Path) -> str:
    """onnxruntime's mobile usability analysis of one .onnx graph, as the text its CLI prints."""
    from onnxruntime.tools.mobile_helpers import usability_checker

    stream = io.StringIO()
    logger = logging.getLogger(f"ralu_export.usability.{path.stem}")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s:  %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(stream):
            try_eps = usability_checker.analyze_model(path, skip_optimize=False, logger=logger)
    finally:
        logger.removeHandler(handler)
    stream.write("NNAPI / CoreML EP may help; compare with the CPU EP on device.\n" if try_eps
                 else "Use the CPU EP for this graph.\n")
    return stream.getvalue()


def _convert_fixed_arm(root: Path, session_config: dict[str, str]) -> None:
    """What `python -m onnxruntime.tools.convert_onnx_models_to_ort ROOT --optimization_style Fixed
    --target_platform arm` does, plus extra session config entries, which its public function cannot take
    (hence its internal `_convert`; onnxruntime is pinned to 1.32.0 in pyproject.toml)."""
    from onnxruntime.tools import convert_onnx_models_to_ort as tool
    from onnxruntime.tools.ort_format_model import create_config_from_models

    entries = {"session.qdqisint8allowed": "1", **session_config}  # the tool's own entry for ARM targets
    converted = tool._convert(
        model_path_or_dir=root.resolve(), output_dir=None, optimization_level_str="all",
        optimization_style=tool.OptimizationStyle.Fixed, custom_op_library=None, create_optimized_onnx_model=False,
        allow_conversion_failures=False, target_platform="arm", session_options_config_entries=entries,
    )
    create_config_from_models(converted, root.resolve() / OPERATORS_CONFIG, enable_type_reduction=False)


def convert_folder(root: Path, graphs: dict[str, tuple[Path, list[Path]]],
                   session_config: dict[str, str]) -> dict[str, Path]:
    """Convert the graphs {name: (onnx path, data files)} under `root` to .ort; returns {name: graph file}
    (.ort, or the .onnx for graphs over 2 GB). Writes root/required_operators.config and
    root/mobile_usability/<name>.txt. Graphs over the limit are moved aside during conversion.
    `session_config` entries apply to the conversion's optimization pass, whose fusions are baked into the
    .ort (quantize.SESSION_CONFIG: int8 weight-only MatMuls must keep float activations)."""

    (root / USABILITY_FOLDER).mkdir(exist_ok=True)
    for name, (path, _) in graphs.items():
        (root / USABILITY_FOLDER / f"{name}.txt").write_text(usability_report(path))
    too_big = {name for name, (path, data) in graphs.items() if onnx_bytes(path, data) >= ORT_MAX_BYTES}
    staging = root / ".onnx_staging"
    staging.mkdir()
    for name in too_big:  # the converter takes every .onnx under root: hide the ones that stay .onnx
        graphs[name][0].rename(staging / f"{name}.onnx")
    with contextlib.redirect_stdout(sys.stderr):
        _convert_fixed_arm(root, session_config)
    for name in too_big:
        (staging / f"{name}.onnx").rename(graphs[name][0])
    staging.rmdir()
    result = {}
    for name, (path, data) in graphs.items():
        if name in too_big:
            result[name] = path
            continue
        result[name] = path.with_suffix(".ort")
        path.unlink()
        for data_file in data:
            if data_file.exists():
                data_file.unlink()
    return result
