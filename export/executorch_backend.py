"""ExecuTorch implementation of the denoiser seam over an `executorch` bundle's `.pte` program: one method per
RALU stage length (the manifest's static `denoiser_<L>` graphs name their `method`), weights stored once in the
program and shared by its methods. Same contract as `OrtDenoiser`: RoPE tables are computed on the host from
the text + image positions (spec/RALU.md §9.1) and cached per position array.

Optional: importing this module needs `executorch` (whose Python bindings take torch tensors, so this backend
imports torch; the ORT backends never do). Text encoders and the VAE of a .pte bundle are not run here."""

from __future__ import annotations

import time

import numpy as np

from ralu_edge.errors import UserError
from ralu_edge.rope import rope_tables
from ralu_edge.seam import Conditioning
from ralu_runtime.bundle import Bundle

try:
    import torch
    from executorch.runtime import Runtime
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("the ExecuTorch backend needs `executorch` (pip install executorch); "
                      f"it could not be imported: {e}") from e


class ExecutorchDenoiser:
    """velocity = f(tokens, positions, sigmas, cond) through the program method for tokens.shape[1]."""

    def __init__(self, bundle: Bundle, threads: int = 0):
        spec = bundle.manifest.denoiser
        self._spec, self._rope = spec, bundle.manifest.rope
        graphs = {g.name: g for g in bundle.manifest.graphs if g.role == "denoiser"}
        if not graphs or any(g.format != "pte" or not g.method for g in graphs.values()):
            raise UserError(f"{bundle.root.name}: the denoiser is not an ExecuTorch program with named methods; "
                            "export the bundle with --target executorch.")
        self._graphs = graphs
        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(threads)
        runtime = Runtime.get()
        self._programs = {f: runtime.load_program(bundle.path(f)) for f in {g.file for g in graphs.values()}}
        self._methods: dict[str, object] = {}
        self._rope_key: bytes | None = None
        self._rope_tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self.session_seconds = 0.0
        self.calls = 0

    def _method(self, num_tokens: int):
        name = self._spec.graph_for(num_tokens)
        if name not in self._methods:
            graph = self._graphs[name]
            self._methods[name] = self._programs[graph.file].load_method(graph.method)
        return self._methods[name]

    def _tables(self, positions: np.ndarray, cond: Conditioning):
        key = positions.tobytes()
        if key != self._rope_key:
            ids = np.concatenate([cond.positions_for_text(), positions], axis=0)
            cos, sin = rope_tables(ids, self._rope.axes_dim, self._rope.theta)
            self._rope_tables = (torch.from_numpy(np.ascontiguousarray(cos)),
                                 torch.from_numpy(np.ascontiguousarray(sin)))
            self._rope_key = key
        return self._rope_tables

    def __call__(self, tokens: np.ndarray, positions: np.ndarray, sigmas: np.ndarray, cond: Conditioning):
        cos, sin = self._tables(positions, cond)
        method = self._method(tokens.shape[1])
        input_names = [i.name for i in self._graphs[self._spec.graph_for(tokens.shape[1])].inputs]
        out = []
        for b in range(tokens.shape[0]):  # the exported methods take batch 1
            feeds = {"hidden_states": np.ascontiguousarray(tokens[b:b + 1], dtype=np.float32),
                     "encoder_hidden_states": np.ascontiguousarray(cond.text_states[b:b + 1], dtype=np.float32),
                     "pooled_projections": np.ascontiguousarray(cond.pooled[b:b + 1], dtype=np.float32),
                     "timestep": np.asarray(sigmas[b:b + 1], dtype=np.float32)}
            if self._spec.guidance:
                guidance = cond.guidance if cond.guidance is not None else np.full(tokens.shape[0], 3.5, np.float32)
                feeds["guidance"] = np.asarray(guidance[b:b + 1] if np.ndim(guidance) else [guidance], np.float32)
            tables = {"rope_cos": cos, "rope_sin": sin}
            # a program method takes positional inputs: the manifest's input order is the contract
            inputs = [tables[n] if n in tables else torch.from_numpy(feeds[n]) for n in input_names]
            start = time.perf_counter()
            result = method.execute(inputs)
            self.session_seconds += time.perf_counter() - start
            self.calls += 1
            out.append(result[0].numpy().copy())
        return np.concatenate(out, axis=0)
