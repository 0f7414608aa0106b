"""ExecuTorch implementation of the denoiser seam over an `executorch` bundle's `.pte` program: one method per
RALU stage length (the manifest's static `denoiser_<L>` graphs name their `method`), weights stored once in the
program and shared by its methods. Every family alike (FLUX RoPE tables, SD3 sin-cos embeddings and its
batch-2 CFG programs): `ralu_edge.feeds` builds the feeds and reads the outputs, as for `OrtDenoiser`; this
module only loads the methods and runs them.

Optional: importing this module needs `executorch` (whose Python bindings take torch tensors, so this backend
imports torch; the ORT backends never do). Text encoders and the VAE of a .pte bundle are not run here."""

from __future__ import annotations

import numpy as np

from ralu_edge.errors import UserError
from ralu_edge.feeds import PositionFeedCache, feed_spec, graph_feeds, velocity_from_outputs
from ralu_edge.seam import Conditioning
from ralu_runtime.backends import RunClock
from ralu_runtime.bundle import Bundle

try:
    import torch
    from executorch.runtime import Runtime
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("the ExecuTorch backend needs `executorch` (pip install executorch); "
                      f"it could not be imported: {e}") from e


class _MethodRunner:
    """`run(method, outputs, feeds)` for RunClock: a program method takes positional inputs in the manifest's
    input order (the export contract) and returns torch tensors."""

    def __init__(self, method, input_names: list[str]):
        self._method, self._names = method, input_names

    def run(self, outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self._method.execute([torch.from_numpy(feeds[name]) for name in self._names])
        return [r.numpy().copy() for r in result]


class ExecutorchDenoiser:
    """velocity = f(tokens, positions, sigmas, cond) through the program method for tokens.shape[1].
    `calls` and `session_seconds` count method executions and the seconds inside them."""

    def __init__(self, bundle: Bundle, threads: int = 0):
        self._denoiser = bundle.manifest.denoiser
        graphs = {g.name: g for g in bundle.manifest.graphs if g.role == "denoiser"}
        if not graphs or any(g.format != "pte" or not g.method for g in graphs.values()):
            raise UserError(f"{bundle.root.name}: the denoiser is not an ExecuTorch program with named methods; "
                            "export the bundle with --target executorch.")
        self._graphs = graphs
        self._feeds = feed_spec(bundle.manifest)
        self._positions = PositionFeedCache(self._feeds)
        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(threads)
        runtime = Runtime.get()
        self._programs = {f: runtime.load_program(bundle.path(f)) for f in {g.file for g in graphs.values()}}
        self._methods: dict[str, _MethodRunner] = {}
        self.clock = RunClock()

    @property
    def calls(self) -> int:
        return self.clock.calls

    @property
    def session_seconds(self) -> float:
        return self.clock.session_seconds

    def _method(self, num_tokens: int) -> _MethodRunner:
        name = self._denoiser.graph_for(num_tokens)
        if name not in self._methods:
            graph = self._graphs[name]
            method = self._programs[graph.file].load_method(graph.method)
            self._methods[name] = _MethodRunner(method, [i.name for i in graph.inputs])
        return self._methods[name]

    def __call__(self, tokens: np.ndarray, positions: np.ndarray, sigmas: np.ndarray, cond: Conditioning):
        method = self._method(tokens.shape[1])
        runs = graph_feeds(self._feeds, tokens, sigmas, cond, self._positions(positions, cond.positions_for_text()))
        return velocity_from_outputs(self._feeds, [self.clock.run(method, None, feeds)[0] for feeds in runs])
