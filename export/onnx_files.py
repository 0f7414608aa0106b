"""ONNX files without torch: saving several graphs with their weights shared in one external data file,
and CPU ORT sessions and runners. Imports onnx, onnx_ir, numpy and onnxruntime only, so tests and
benchmarks that never trace a model stay light.

Saving streams (issue 8 "Large weights"): each initializer is read, hashed and written on its own, so at most
one tensor's bytes exist beside the model's weights, and the graph proto written is the small one with
external references (a proto holding the weights could not exceed 2 GB anyway). Tensors of at least
ALIGN_THRESHOLD_BYTES start at ALIGN_BYTES offsets, the condition for ONNX Runtime to memory-map external
data instead of copying it (onnxruntime's ModelSavingOptions: 4 KiB pages on Linux, 64 KiB allocation
granularity on Windows)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

EXTERNAL_MIN_BYTES = 1024  # smaller initializers stay inside the .onnx protobuf
ALIGN_BYTES = 65536
ALIGN_THRESHOLD_BYTES = 1 << 20  # onnxruntime's own threshold; smaller tensors start at 64-byte offsets
SMALL_ALIGN_BYTES = 64


def _tensor_bytes(tensor) -> np.ndarray:
    """The tensor's little-endian bytes as a uint8 array: a view where the tensor is contiguous (torch
    parameters, proto raw data), one tensor's copy where it is a transposed view."""
    array = np.ascontiguousarray(tensor.numpy())
    return array.reshape(-1).view(np.uint8)


def save_sharing_weights(models: list[tuple[ir.Model | onnx.ModelProto, Path]], data_path: Path,
                         min_external_bytes: int = EXTERNAL_MIN_BYTES) -> int:
    """Save several graphs whose initializers of at least `min_external_bytes` go into one external data
    file, each distinct tensor (dtype, shape and bytes) written once: graphs exported from the same module
    share every weight on disk. All graphs must sit in data_path's folder (ONNX external data paths are
    relative) and data_path must not be a file they read from. The given models are not modified. Returns
    the external data file's size in bytes."""
    written: dict[str, tuple[int, int]] = {}
    with open(data_path, "wb") as data:
        for original, path in models:
            if path.parent != data_path.parent:
                raise ValueError(f"{path} and {data_path} must share a folder")
            model = ir.from_proto(original) if isinstance(original, onnx.ModelProto) else original
            swapped = []
            try:
                for value in model.graph.initializers.values():
                    tensor = value.const_value
                    if tensor is None or tensor.nbytes < min_external_bytes:
                        continue
                    raw = _tensor_bytes(tensor)  # external tensors (an ir.load-ed model) are copied over too
                    key = hashlib.sha256(f"{tensor.dtype}{list(tensor.shape)}".encode() + raw.data).hexdigest()
                    if key not in written:
                        data.seek(0, os.SEEK_END)
                        align = ALIGN_BYTES if raw.nbytes >= ALIGN_THRESHOLD_BYTES else SMALL_ALIGN_BYTES
                        data.write(b"\0" * ((-data.tell()) % align))
                        written[key] = (data.tell(), raw.nbytes)
                        data.write(raw.data)
                    offset, length = written[key]
                    del raw
                    if isinstance(tensor, ir.ExternalTensor):
                        tensor.release()  # unmap the source file's pages now, not when the model is freed
                    value.const_value = ir.ExternalTensor(data_path.name, offset, length, tensor.dtype,
                                                          shape=tensor.shape, name=value.name,
                                                          base_dir=data_path.parent)
                    swapped.append((value, tensor))
                proto = ir.serde.serialize_model(model)
            finally:
                for value, tensor in swapped:
                    value.const_value = tensor
            onnx.save_model(proto, str(path))
        data.seek(0, os.SEEK_END)
        return data.tell()


def initializer_bytes(model: ir.Model | onnx.ModelProto) -> int:
    """Bytes of all initializers of a model (its weight size), without loading external data."""
    model = ir.from_proto(model) if isinstance(model, onnx.ModelProto) else model
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


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


def ort_runner(path: Path, threads: int = 2, config: dict[str, str] | None = None):
    """`run(feeds) -> outputs` over an ORT CPU session of the graph at `path` (.onnx or .ort); feeds the
    graph does not take (optional inputs of another graph) are dropped."""
    session = ort_session(path, threads, config)
    names = {i.name for i in session.get_inputs()} | {i.name for i in session.get_overridable_initializers()}

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return session.run(None, {k: v for k, v in feeds.items() if k in names})

    return run
