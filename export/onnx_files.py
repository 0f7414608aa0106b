"""ONNX files without torch: saving several graphs with their weights shared in one external data file,
CPU ORT sessions and runners, and the error measures of the export-time parity check. Imports onnx,
numpy and onnxruntime only, so tests and benchmarks that never trace a model stay light."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

EXTERNAL_MIN_BYTES = 1024  # smaller initializers stay inside the .onnx protobuf


class ParityError(RuntimeError):
    """An exported graph disagrees with its reference beyond the family's tolerance (an exporter bug)."""


def save_sharing_weights(models: list[tuple[onnx.ModelProto, Path]], data_path: Path) -> None:
    """Save several graphs whose large initializers go into one external data file, each distinct tensor
    (dtype, shape and bytes) written once: graphs exported from the same module share every weight on disk.
    All graphs must sit in data_path's folder (ONNX external data paths are relative). The given protos
    are not modified."""
    written: dict[str, tuple[int, int]] = {}
    with open(data_path, "wb") as data:
        for original, path in models:
            model = onnx.ModelProto.FromString(original.SerializeToString())
            if path.parent != data_path.parent:
                raise ValueError(f"{path} and {data_path} must share a folder")
            for tensor in model.graph.initializer:
                array = numpy_helper.to_array(tensor) if tensor.data_location != onnx.TensorProto.EXTERNAL else None
                if array is None or array.nbytes < EXTERNAL_MIN_BYTES:
                    continue
                raw = np.ascontiguousarray(array).tobytes()
                key = hashlib.sha256(f"{tensor.data_type}{list(tensor.dims)}".encode() + raw).hexdigest()
                if key not in written:
                    data.seek(0, os.SEEK_END)
                    pad = (-data.tell()) % 64  # aligned offsets let ORT memory-map the tensors
                    data.write(b"\0" * pad)
                    written[key] = (data.tell(), len(raw))
                    data.write(raw)
                offset, length = written[key]
                _make_external(tensor, data_path.name, offset, length)
            onnx.save_model(model, str(path))


def _make_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def ort_session(path: Path, threads: int = 2, config: dict[str, str] | None = None):
    """A CPU ORT session with fixed thread count, the graph's session config entries (the manifest's
    `session_config`) and quiet logging (overridable-initializer warnings are expected: the optional
    placeholder inputs are exactly that)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class Comparison:
    """Largest errors over all cases and outputs; the worst output cosine."""

    max_abs_error: float
    max_rel_error: float
    reference_max: float
    cosine: float


def compare_outputs(pairs: list[tuple[np.ndarray, np.ndarray]]) -> Comparison:
    """Errors of (graph output, reference output) pairs: max |a-b|, max |a-b| / max |b| per pair, and the
    minimum cosine between the flattened pairs."""
    max_abs = max_rel = ref_max = 0.0
    cosine = 1.0
    for got, ref in pairs:
        got, ref = np.asarray(got, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
        if got.shape != ref.shape:
            raise ParityError(f"output shape {got.shape} differs from the reference {ref.shape}")
        err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        max_abs, ref_max = max(max_abs, err), max(ref_max, scale)
        max_rel = max(max_rel, err / scale if scale > 0 else err)
        norm = float(np.linalg.norm(got) * np.linalg.norm(ref))
        cosine = min(cosine, float(got @ ref) / norm if norm > 0 else float(err == 0.0))
    return Comparison(max_abs, max_rel, ref_max, cosine)


def ort_runner(path: Path, threads: int = 2, config: dict[str, str] | None = None):
    """`run(feeds) -> outputs` over an ORT CPU session of the graph at `path` (.onnx or .ort); feeds the
    graph does not take (optional inputs of another graph) are dropped."""
    session = ort_session(path, threads, config)
    names = {i.name for i in session.get_inputs()} | {i.name for i in session.get_overridable_initializers()}

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(None, {k: v for k, v in feeds.items() if k in names})

    return run
