"""The denoiser graph's feeds, computed once for every engine (issue 14): the pure functions that turn one seam
call `denoiser(tokens[B, L, C], positions[L, 3], sigmas[B], cond)` into the named inputs of the denoiser graph
and the graph's outputs back into the seam's velocity. Every engine (ORT sessions, ExecuTorch programs, the
torch modules) does exactly this and nothing else around its own run:

    spec = feed_spec(manifest)                           # or FeedSpec(...) for a torch module
    runs = graph_feeds(spec, tokens, sigmas, cond, position_feeds(spec, positions, cond.positions_for_text()))
    velocity = velocity_from_outputs(spec, [engine_run(feeds) for feeds in runs])

What is decided here, once:
- positions: FLUX RoPE tables `rope_cos`/`rope_sin` [T + L, head_dim] from text + image ids (`ralu_edge.rope`,
  spec/RALU.md §9.1), SD3 sin-cos `pos_embed` [L, D] (`ralu_edge.sd3`, §9.7), or the float ids themselves
  (`txt_ids`/`img_ids`, what diffusers' FluxTransformer2DModel and optimum's transformer graph take);
- σ units: `timestep` is σ (FLUX graphs scale by 1000 inside) or σ·SD3_TIMESTEP_SCALE (SD3, spec §9.3);
- guidance: a guidance-distilled graph's `guidance` input is the conditioning's, and FLUX_DEFAULT_GUIDANCE
  (diffusers' FluxPipeline default `guidance_scale`) when the conditioning carries none. Every engine defaults
  the same way (the torch backend used to raise instead; the runtime's text encoders never set a guidance, so
  defaulting is what made every ORT and ExecuTorch image, and raising would have changed none of torch's,
  whose `encode_prompt` always fills it with this value);
- batching: classifier-free guidance (`ralu_edge.guidance`) calls the seam with the [negative, prompt] batch
  2B; a graph whose `hidden_states` has a fixed batch n (FLUX graphs: 1, SD3 ExecuTorch programs: 2) runs it
  in chunks of n rows, a graph with a symbolic batch in one run;
- output layout: SD3's per-token (dy, dx, c) output is permuted back to the sampler's (c, dy, dx).

Depends on numpy and ralu_edge only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from ralu_edge.errors import UserError
from ralu_edge.manifest import MANIFEST_NAME, Manifest, RopeSpec
from ralu_edge.rope import rope_tables
from ralu_edge.sd3 import SincosGrid, packed_from_sd3_output, position_embeddings
from ralu_edge.seam import Conditioning

FLUX_DEFAULT_GUIDANCE = 3.5
SD3_TIMESTEP_SCALE = 1000.0

PositionFeeds = Literal["rope", "sincos", "ids"]


@dataclass(frozen=True)
class FeedSpec:
    """How one denoiser graph (or torch module) takes the seam's arguments.

    positions: "rope" (feeds rope_cos, rope_sin from `rope`), "sincos" (feeds pos_embed from `sincos` read
    against the full-resolution packed grid `grid_hw`) or "ids" (feeds txt_ids, img_ids as float32).
    timestep: "sigma" or "sigma_x1000". guidance: the graph has a `guidance` input (guidance-distilled FLUX).
    output_order: "dy_dx_c" outputs are permuted to (c, dy, dx) with `latent_channels` channels per patch.
    rows_per_run: the graph's fixed batch (it runs a seam batch in chunks of that many rows); None: any."""

    positions: PositionFeeds
    timestep: Literal["sigma", "sigma_x1000"] = "sigma"
    guidance: bool = False
    output_order: Literal["c_dy_dx", "dy_dx_c"] = "c_dy_dx"
    rope: Optional[RopeSpec] = None
    sincos: Optional[SincosGrid] = None
    grid_hw: Optional[tuple[int, int]] = None
    latent_channels: int = 0
    rows_per_run: Optional[int] = None

    def __post_init__(self) -> None:
        if self.positions == "rope" and self.rope is None:
            raise ValueError("rope positions need a RopeSpec")
        if self.positions == "sincos" and (self.sincos is None or self.grid_hw is None):
            raise ValueError("sincos positions need a SincosGrid and the full-resolution grid_hw")
        if self.output_order == "dy_dx_c" and self.latent_channels < 1:
            raise ValueError("a dy_dx_c output needs latent_channels")
        if self.rows_per_run is not None and self.rows_per_run < 1:
            raise ValueError(f"rows_per_run is {self.rows_per_run}; a graph runs at least one row")


def feed_spec(manifest: Manifest) -> FeedSpec:
    """The FeedSpec of a bundle's denoiser graphs, read from its manifest (`denoiser`, `rope`, the first
    resolution's grid, the VAE's latent channels, the stage graphs' `hidden_states` batch); UserError when the
    manifest lacks what its own conventions need."""
    denoiser = manifest.denoiser
    if denoiser.positions == "rope" and manifest.rope is None:
        raise _fail("rope", "is missing, but the denoiser takes RoPE tables")
    if denoiser.positions == "sincos" and denoiser.pos_embed is None:
        raise _fail("denoiser.pos_embed", "is missing, but the denoiser takes sin-cos positions")
    sincos = None
    if denoiser.pos_embed is not None:
        p = denoiser.pos_embed
        sincos = SincosGrid(p.embed_dim, p.max_size, p.base_size, p.interpolation_scale)
    resolution = manifest.resolutions[0]
    return FeedSpec(positions=denoiser.positions, timestep=denoiser.timestep, guidance=denoiser.guidance,
                    output_order=denoiser.output_order, rope=manifest.rope, sincos=sincos,
                    grid_hw=(resolution.grid_height, resolution.grid_width),
                    latent_channels=manifest.vae.latent_channels, rows_per_run=_rows_per_run(manifest))


def _rows_per_run(manifest: Manifest) -> Optional[int]:
    """The fixed batch of the stage graphs' `hidden_states` (None when symbolic); UserError when they differ."""
    batches = set()
    for stage in manifest.denoiser.stage_graphs:
        graph = manifest.graph(stage.graph)
        shape = next((t.shape for t in graph.inputs if t.name == "hidden_states"), None)
        if shape is None:
            raise _fail(f"graph {graph.name!r}", "has no hidden_states input")
        batches.add(shape[0] if isinstance(shape[0], int) else None)
    if len(batches) != 1:
        raise _fail("denoiser.stage_graphs", f"disagree on their batch ({sorted(map(str, batches))})")
    return batches.pop()


def _fail(where: str, problem: str) -> UserError:
    return UserError(f"{MANIFEST_NAME}: {where} {problem}; re-export the bundle with ralu-export.")


def timestep_values(spec: FeedSpec, sigmas: np.ndarray) -> np.ndarray:
    """The `timestep` input [B] float32 in the graph's units: σ, or σ·SD3_TIMESTEP_SCALE (spec/RALU.md §9.3)."""
    scale = SD3_TIMESTEP_SCALE if spec.timestep == "sigma_x1000" else 1.0
    return np.asarray(sigmas, dtype=np.float32) * np.float32(scale)


def guidance_values(spec: FeedSpec, cond: Conditioning, batch: int) -> Optional[np.ndarray]:
    """The `guidance` input [batch] float32 of a guidance-distilled graph (None for others): the conditioning's
    guidance (a scalar or one value is broadcast), else FLUX_DEFAULT_GUIDANCE for every row."""
    if not spec.guidance:
        return None
    if cond.guidance is None:
        return np.full(batch, FLUX_DEFAULT_GUIDANCE, dtype=np.float32)
    guidance = np.asarray(cond.guidance, dtype=np.float32).reshape(-1)
    if guidance.size == 1:
        return np.full(batch, guidance[0], dtype=np.float32)
    if guidance.size != batch:
        raise ValueError(f"cond.guidance has {guidance.size} values for a batch of {batch}")
    return guidance


def position_feeds(spec: FeedSpec, positions: np.ndarray, text_positions: np.ndarray) -> dict[str, np.ndarray]:
    """The position inputs, float32, for image positions [L, 3] and text positions [T, 3] (float64 ids, may be
    fractional): {rope_cos, rope_sin} [T + L, head_dim]; {pos_embed} [L, D] (text positions unused); or
    {txt_ids [T, 3], img_ids [L, 3]}."""
    if spec.positions == "rope":
        ids = np.concatenate([text_positions, positions], axis=0)
        cos, sin = rope_tables(ids, spec.rope.axes_dim, spec.rope.theta)
        return {"rope_cos": cos, "rope_sin": sin}
    if spec.positions == "sincos":
        return {"pos_embed": position_embeddings(positions, *spec.grid_hw, spec.sincos)}
    return {"txt_ids": np.asarray(text_positions, dtype=np.float32),
            "img_ids": np.asarray(positions, dtype=np.float32)}


def graph_feeds(spec: FeedSpec, tokens: np.ndarray, sigmas: np.ndarray, cond: Conditioning,
                positions: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """One feed dict per graph run for tokens [B, L, C] at sigmas [B] (σ in [0, 1]) under `cond` (batch B),
    with `positions` from `position_feeds`: hidden_states, encoder_hidden_states, pooled_projections,
    timestep, guidance (guidance-distilled graphs only) and the position inputs, all float32 and contiguous.
    B rows run in chunks of `spec.rows_per_run` (one run when None); ValueError when B is not a multiple."""
    batch = tokens.shape[0]
    if sigmas.shape != (batch,) or cond.text_states.shape[0] != batch or cond.pooled.shape[0] != batch:
        raise ValueError(f"seam batch sizes disagree: tokens {tokens.shape}, sigmas {sigmas.shape}, text_states "
                         f"{cond.text_states.shape}, pooled {cond.pooled.shape}")
    rows = spec.rows_per_run or batch
    if batch % rows:
        raise ValueError(f"this denoiser runs batches of {rows} rows (classifier-free guidance's [negative, "
                         f"prompt] pair for a batch of 2), not {batch}")
    per_row = {"hidden_states": np.ascontiguousarray(tokens, dtype=np.float32),
               "encoder_hidden_states": np.ascontiguousarray(cond.text_states, dtype=np.float32),
               "pooled_projections": np.ascontiguousarray(cond.pooled, dtype=np.float32),
               "timestep": timestep_values(spec, sigmas)}
    guidance = guidance_values(spec, cond, batch)
    if guidance is not None:
        per_row["guidance"] = guidance
    return [{**{name: value[start:start + rows] for name, value in per_row.items()}, **positions}
            for start in range(0, batch, rows)]


def velocity_from_outputs(spec: FeedSpec, outputs: list[np.ndarray]) -> np.ndarray:
    """The seam's velocity [B, L, C] float32 in (c, dy, dx) token layout from the graph runs' first outputs
    (in run order, as `graph_feeds` made them)."""
    velocity = np.concatenate([np.asarray(o, dtype=np.float32) for o in outputs], axis=0)
    if spec.output_order == "dy_dx_c":
        velocity = packed_from_sd3_output(velocity, spec.latent_channels)
    return velocity


class PositionFeedCache:
    """`position_feeds` for one FeedSpec, remembering the last result: a sampler stage runs many steps over
    the same positions, so each stage computes its RoPE tables or sin-cos embeddings once. Keyed by the
    shapes, dtypes and bytes of both position arrays."""

    def __init__(self, spec: FeedSpec):
        self._spec = spec
        self._key: Optional[tuple] = None
        self._feeds: dict[str, np.ndarray] = {}

    def __call__(self, positions: np.ndarray, text_positions: np.ndarray) -> dict[str, np.ndarray]:
        key = tuple((a.shape, a.dtype.str, a.tobytes()) for a in map(np.asarray, (positions, text_positions)))
        if key != self._key:
            self._feeds = position_feeds(self._spec, positions, text_positions)
            self._key = key
        return self._feeds
