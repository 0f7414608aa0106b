"""Conformance vectors: golden files that let a port of the host-side algorithms (the pure-Kotlin core in
`android_demo/core`, or any other) prove it computes what `ralu_edge` computes. A development tool, not part
of the shipped runtime: `android_demo/scripts/make_vectors.py` writes the vectors from the torch reference,
the Kotlin tests and `python -m ralu_export.conformance DIR` check them.

- `vectors`: the folder format (index.json + raw little-endian arrays), the tolerances and the comparison.
- `recording`: recording and replaying the seam denoiser's calls and the samplers' random draws.
- `trace`: a recorded RALU run's host-side intermediates, rebuilt from ralu_edge's building blocks.
- `sources`: what is recorded (runs, prompts, the personalization case) and from what (`VectorSources`).
- `synthetic`: the entries that need no model (presets, schedules, Canny, SG refreshes).
- `writing`: `write_vectors`. `checking`: `check_vectors`. `cli`: the command line.

It lives in ralu_export because it uses the runtime's tokenizer recipe (ralu_runtime.tokenization) and the
core may not import the runtime, while the runtime ships only what generation and personalization need. It
never imports torch (ralu_export's own `__init__` does not either), so the checker runs on a runtime-only
install; tests/test_conformance.py proves it with torch made unimportable."""

from ralu_export.conformance.checking import check_vectors, determined_rows, projector_error, zo_case_from_index
from ralu_export.conformance.recording import (
    DenoiserCall, Draw, RecordingDenoiser, RecordingRng, ReplayDenoiser, ReplayRng,
)
from ralu_export.conformance.sources import (
    DEFAULT_ADDED_TOKENS, DEFAULT_PROMPTS, DEFAULT_RUNS, NEGATIVE_PROMPT, QueryVelocity, RunSpec, VectorSources,
    ZoCase,
)
from ralu_export.conformance.trace import ralu_trace
from ralu_export.conformance.vectors import (
    FORMAT, INDEX_NAME, RELATIVE_TOLERANCE, SIGMA_TOLERANCE, VERSION, Vectors, load_vectors, relative_error,
)
from ralu_export.conformance.writing import tokenizer_entries, write_vectors

__all__ = [
    "check_vectors", "determined_rows", "projector_error", "zo_case_from_index", "DenoiserCall", "Draw",
    "RecordingDenoiser", "RecordingRng", "ReplayDenoiser", "ReplayRng", "DEFAULT_ADDED_TOKENS", "DEFAULT_PROMPTS",
    "DEFAULT_RUNS", "NEGATIVE_PROMPT", "QueryVelocity", "RunSpec", "VectorSources", "ZoCase", "ralu_trace",
    "FORMAT", "INDEX_NAME", "RELATIVE_TOLERANCE", "SIGMA_TOLERANCE", "VERSION", "Vectors", "load_vectors",
    "relative_error", "tokenizer_entries", "write_vectors",
]
