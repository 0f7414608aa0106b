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
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
ORT_MAX_BYTES = 2 * 1024**3
OPERATORS_CONFIG = "required_operators.config"
USABILITY_FOLDER = "mobile_usability"
STAYS_ONNX_NOTE = (
    "over the 2 GB limit of an .ort flatbuffer, so shipped as .onnx + external data (aligned for memory "
    "mapping); ONNX Runtime Android loads it with a full (not minimal) build, and its operators are not in "
    "required_operators.config")

# Measured by benchmarks/bench_large_weights.py (results/large_weights.json, a 2.69 GB FLUX denoiser): with
# prepacking (ORT's default) the session copies every MatMul weight into packed anonymous memory; without it
# the weights stay memory-mapped from model.onnx_data, load much faster, at the same peak RSS, for a slower
# step. Clean file-backed pages are what a phone can reclaim under memory pressure instead of killing the
# app, so graphs that stay .onnx on android run without prepacking, at that price; desktop bundles keep
# ORT's default.
STAYS_ONNX_SESSION_CONFIG = {"session.disable_prepacking": "1"}


def onnx_bytes(path: Path, data_files: list[Path]) -> int:
    return path.stat().st_size + sum(p.stat().st_size for p in data_files)


def stays_onnx(path: Path, data_files: list[Path], limit_bytes: int = ORT_MAX_BYTES) -> bool:
    """Whether a graph with its external data is too big for .ort (the limit is a parameter so tests can
    exercise the rule on a small model)."""
    return onnx_bytes(path, data_files) >= limit_bytes


WEIGHTLESS_NOTE = ("Analysed on the graph's structure without its weights and without ORT's basic optimization "
                   "pass: onnxruntime's checker holds ~4 copies of the model, too much for a graph this large. "
                   "Operator support does not depend on the weights.\n")


def _weightless_copy(path: Path, folder: Path) -> Path:
    """The graph at `path` with its external initializers emptied (shapes and types kept), in `folder`."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
    copy = folder / path.name
    onnx.save_model(model, str(copy))
    return copy


def usability_report(path: Path, weightless: bool = False) -> str:
    """onnxruntime's mobile usability analysis of one .onnx graph, as the text its CLI prints; `weightless`
    analyses a copy without the weights (graphs too big to load twice; WEIGHTLESS_NOTE)."""
    from onnxruntime.tools.mobile_helpers import usability_checker

    if weightless:
        with tempfile.TemporaryDirectory(prefix="ralu-usability-") as tmp:
            return WEIGHTLESS_NOTE + _analysis(usability_checker, _weightless_copy(path, Path(tmp)), True)
    return _analysis(usability_checker, path, False)


def _analysis(usability_checker, path: Path, skip_optimize: bool) -> str:
    stream = io.StringIO()
    logger = logging.getLogger(f"ralu_export.usability.{path.stem}")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s:  %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(stream):
            try_eps = usability_checker.analyze_model(path, skip_optimize=skip_optimize, logger=logger)
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


# onnxruntime's full usability check optimizes the model into a second copy, loads that into Python and runs
# shape inference on a third: several copies of the graph in memory, which for an int8 FLUX-class denoiser
# raised the whole export's peak RSS well above the fp32 weights (bench_large_weights.py --int8,
# results/large_weights.json).
# Graphs from this size on get the weightless analysis.
WEIGHTLESS_USABILITY_BYTES = 256 * 1024**2


def convert_folder(root: Path, graphs: dict[str, tuple[Path, list[Path]]],
                   session_config: dict[str, str], limit_bytes: int = ORT_MAX_BYTES) -> dict[str, Path]:
    """Convert the graphs {name: (onnx path, data files)} under `root` to .ort; returns {name: graph file}
    (.ort, or the .onnx for graphs over 2 GB). Writes root/required_operators.config and
    root/mobile_usability/<name>.txt. Graphs over the limit are renamed aside during conversion.
    `session_config` entries apply to the conversion's optimization pass, whose fusions are baked into the
    .ort (quantize.SESSION_CONFIG: int8 weight-only MatMuls must keep float activations)."""

    too_big = {name for name, (path, data) in graphs.items() if stays_onnx(path, data, limit_bytes)}
    (root / USABILITY_FOLDER).mkdir(exist_ok=True)
    for name, (path, data) in graphs.items():
        report = usability_report(path, weightless=onnx_bytes(path, data) >= WEIGHTLESS_USABILITY_BYTES
                                  or name in too_big)
        (root / USABILITY_FOLDER / f"{name}.txt").write_text(report)
    hidden = {name: graphs[name][0].with_name(graphs[name][0].name + ".staged") for name in too_big}
    for name, path in hidden.items():  # the converter takes every *.onnx under root (os.walk, hidden folders
        graphs[name][0].rename(path)   # too): the ones that stay .onnx change suffix meanwhile
    chatter = io.StringIO()  # the tool prints a line per graph; shown only when the conversion fails
    try:
        with contextlib.redirect_stdout(chatter):
            _convert_fixed_arm(root, session_config)
        log.info("converted %d graphs to ORT format", len(graphs) - len(too_big))
    except BaseException:
        sys.stderr.write(chatter.getvalue())
        raise
    finally:
        for name, path in hidden.items():
            path.rename(graphs[name][0])
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
