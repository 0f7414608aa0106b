"""The bundle manifest `ralu_config.json` (DESIGN.md "Bundles"): what an exported bundle holds and what the
runtime may trust — every file with its sha256 and size, every graph with its inputs and outputs, the
resolutions and packed grids, the VAE normalisation, the text encoders with their injectable-embedding
inputs, the tokenizers, the RoPE axes, the denoiser packaging chosen for the target (and why) and the RALU
presets with their precomputed sigma lists and stage lengths.

Written by `ralu_export` (last, after every file it names) and read by `ralu_runtime`. Standard library only:
no numpy, no onnxruntime, no torch. Every malformed entry raises `UserError` naming the field and the fix."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Optional, Union

from ralu_edge.errors import UserError
from ralu_edge.typed_json import from_json, to_json

MANIFEST_NAME = "ralu_config.json"
BUNDLE_FORMAT = "ralu-bundle"
FORMAT_VERSION = 1

Target = Literal["desktop", "android", "executorch", "ios", "web"]
Precision = Literal["fp32", "int8", "int4"]
GraphFormat = Literal["onnx", "ort", "pte", "mlpackage"]
GraphRole = Literal["denoiser", "denoiser_ids", "text_encoder", "vae_decoder", "vae_encoder"]
Packaging = Literal["dynamic", "static"]
DType = Literal["float32", "float16", "int64", "int32", "int8", "uint8", "bool"]
Dim = Union[int, str]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Bounds no real model comes near (FLUX: 2048 px, T5 512 tokens, head_dim 128); they stop a damaged manifest from
# asking the runtime for terabytes before any graph could object.
MAX_IMAGE_SIDE = 16384
MAX_TEXT_TOKENS = 1 << 16
MAX_HEAD_DIM = 1 << 14
_HASH_CHUNK_BYTES = 1 << 20


def _fail(where: str, problem: str) -> UserError:
    return UserError(f"{MANIFEST_NAME}: {where} {problem}; re-export the bundle with ralu-export.")


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle: POSIX path relative to the bundle root, sha256 (hex), size in bytes."""

    path: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        parts = PurePosixPath(self.path).parts
        if not self.path or self.path.startswith("/") or ".." in parts or "\\" in self.path:
            raise _fail(f"files entry {self.path!r}", "is not a relative POSIX path inside the bundle")
        if not _SHA256.match(self.sha256):
            raise _fail(f"files entry {self.path!r}", f"has a malformed sha256 {self.sha256!r}")
        if self.size < 0:
            raise _fail(f"files entry {self.path!r}", f"has a negative size {self.size}")


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, dtype and shape; a str dim is symbolic (e.g. "num_image_tokens").
    `optional` inputs carry a default inside the graph (an empty placeholder list) and may be left out."""

    name: str
    dtype: DType
    shape: tuple[Dim, ...]
    optional: bool = False

    def __post_init__(self) -> None:
        for dim in self.shape:
            if not (isinstance(dim, str) and dim) and not (isinstance(dim, int) and dim >= 0):
                raise _fail(f"tensor {self.name!r}", f"has an invalid dimension {dim!r}")


@dataclass(frozen=True)
class Parity:
    """Export-time check of a graph against its torch module on example inputs (issue 4, item 7).

    metric "max_rel" passes when max_abs_error <= tolerance * max|reference| (float graphs); metric
    "cosine" passes when cosine >= tolerance (int8 graphs). `cases` names the example shapes compared."""

    reference: str
    metric: Literal["max_rel", "cosine"]
    tolerance: float
    max_abs_error: float
    max_rel_error: float
    cosine: float
    passed: bool
    cases: tuple[str, ...] = ()


@dataclass(frozen=True)
class TensorLocation:
    """Where a graph tensor's raw little-endian bytes lie in a bundle file (an .onnx, its external data, or an
    .ort), so the runtime can read a base weight without parsing the graph (issue 17: LoRA merges)."""

    file: str
    offset: int
    dtype: DType
    shape: tuple[int, ...]


@dataclass(frozen=True)
class LoraTarget:
    """A graph tensor that a LoRA on the diffusers Linear `module` changes (docs/lora.md).

    layout "float": `weight` holds W [out, in] (or W^T [in, out] when `transposed`); "qdq": `weight` holds int8
    q with W = q * scale per output channel (`scale` [out], `zero_point` int8 zeros, same transposition);
    "nbits": ORT's MatMulNBits form, `weight` uint8 [out, in / block_size, block_size] holding q + 128,
    `scale` and `zero_point` [out * in / block_size] (the per-channel scale repeated per block)."""

    module: str
    layout: Literal["float", "qdq", "nbits"]
    weight: str
    weight_at: TensorLocation
    transposed: bool = False
    scale: Optional[str] = None
    scale_at: Optional[TensorLocation] = None
    zero_point: Optional[str] = None
    block_size: int = 0


@dataclass(frozen=True)
class LoraAliasPart:
    """Rows [start, stop) of an alias's up matrix (B) that belong to one diffusers module."""

    module: str
    start: int
    stop: int


@dataclass(frozen=True)
class LoraAlias:
    """A key prefix of a non-diffusers LoRA format (kohya's `lora_unet_...`, `lora_te1_...`) and the diffusers
    modules diffusers' own converter maps it to at export time (several for fused projections like qkv)."""

    name: str
    parts: tuple[LoraAliasPart, ...]


@dataclass(frozen=True)
class LoraSpec:
    """What LoRA files a bundle takes: the diffusers components a LoRA may address (`transformer.`,
    `text_encoder.`, ...), the alias names of other formats, and a sentence on what the target supports."""

    components: tuple[str, ...]
    aliases: tuple[LoraAlias, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph (or one method of a multi-method program).

    file: the graph file (for mlpackage, the package folder); data_files: external weights it reads
    (shared between graphs when several list the same file); static_dims: symbolic dims baked into this
    graph, e.g. {"num_image_tokens": 64} for a static stage variant; method: the program method (pte);
    session_config: ORT SessionOptions config entries the graph must run with (int8 weight-only graphs need
    {"session.qdq_matmulnbits_accuracy_level": "1"} to keep float activations); generation_session_config:
    entries that replace those in sessions that only generate (not zeroth-order personalization, which needs
    float activations to see its perturbations), e.g. level 4 for the desktop int8 denoiser: int8 dot
    products, 0.64x fp32's step at FLUX.1's width (docs/precision.md); generation_parity: the export-time
    check of the graph run that way; generation_file: a graph file over the same data_files with the same
    inputs and outputs that generation sessions open instead of `file` (the int4 denoiser with MatMulNBits at
    accuracy level 4, which carries its level in the graph)."""

    name: str
    role: GraphRole
    file: str
    format: GraphFormat
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    data_files: tuple[str, ...] = ()
    static_dims: dict[str, int] = field(default_factory=dict)
    method: Optional[str] = None
    session_config: dict[str, str] = field(default_factory=dict)
    parity: Optional[Parity] = None
    generation_session_config: dict[str, str] = field(default_factory=dict)
    generation_parity: Optional[Parity] = None
    generation_file: Optional[str] = None
    lora_targets: tuple[LoraTarget, ...] = ()  # issue 17: tensors a LoRA may replace at session creation

    def input(self, name: str) -> TensorSpec:
        """The input called `name`; UserError when the graph has none."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise _fail(f"graph {self.name!r}", f"has no input {name!r}")


@dataclass(frozen=True)
class Resolution:
    """An image size the bundle serves: pixels, latent size (pixels / VAE factor) and packed token grid
    (latent / 2, FLUX 2x2 packing); RALU needs the grid even in both axes (spec/RALU.md §9.2)."""

    height: int
    width: int
    latent_height: int
    latent_width: int
    grid_height: int
    grid_width: int

    def __post_init__(self) -> None:
        if not (0 < self.height <= MAX_IMAGE_SIDE and 0 < self.width <= MAX_IMAGE_SIDE):
            raise _fail(f"resolution {self.height}x{self.width}", f"is outside 1..{MAX_IMAGE_SIDE} pixels a side")
        if self.latent_height != 2 * self.grid_height or self.latent_width != 2 * self.grid_width:
            raise _fail(f"resolution {self.height}x{self.width}", "has a packed grid that is not latent / 2")
        if self.grid_height % 2 or self.grid_width % 2 or self.grid_height < 2 or self.grid_width < 2:
            raise _fail(f"resolution {self.height}x{self.width}", "has an odd packed grid")

    @property
    def num_tokens(self) -> int:
        """M = grid_height * grid_width full-resolution image tokens."""
        return self.grid_height * self.grid_width


@dataclass(frozen=True)
class VaeSpec:
    """Latent geometry and normalisation. The sampler holds normalised latents x = (z - shift) * scale;
    the vae_decoder graph takes raw z = x / scale + shift (optimum's convention), so the host applies it
    unless `normalization_in_graph` is true. The vae_encoder graph outputs both `latent_parameters` (raw
    mean and logvar, optimum's name) and `latent_mean` (already normalised)."""

    latent_channels: int
    factor: int
    scaling_factor: float
    shift_factor: float
    normalization_in_graph: bool = False

    def __post_init__(self) -> None:
        if self.latent_channels < 1 or self.factor < 1 or not self.scaling_factor > 0:
            raise _fail("vae", f"has latent_channels {self.latent_channels}, factor {self.factor} and scaling_factor "
                        f"{self.scaling_factor}; each must be positive")


@dataclass(frozen=True)
class RopeSpec:
    """Host-side RoPE (spec/RALU.md §9.1): tables [T + L, head_dim] from ids [T + L, len(axes_dim)] by
    `ralu_edge.rope.rope_tables(ids, axes_dim, theta)`; text ids first (all zero for FLUX)."""

    axes_dim: tuple[int, ...]
    theta: float
    head_dim: int

    def __post_init__(self) -> None:
        if not self.theta > 0:
            raise _fail("rope", f"theta {self.theta} is not positive")
        if not 0 < self.head_dim <= MAX_HEAD_DIM or any(d <= 0 or d % 2 for d in self.axes_dim):
            raise _fail("rope", f"axes_dim {list(self.axes_dim)} are not positive even sizes of a head_dim up to "
                        f"{MAX_HEAD_DIM}")
        if sum(self.axes_dim) != self.head_dim:
            raise _fail("rope", f"axes_dim {list(self.axes_dim)} do not sum to head_dim {self.head_dim}")


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer folder copied into the bundle. `file` is what the `tokenizers` library loads; ids are
    padded/truncated to max_length. New (learned) tokens take ids from first_free_id upwards."""

    name: str
    files: tuple[str, ...]
    file: str
    kind: Literal["clip", "t5"]
    max_length: int
    pad_token_id: int
    eos_token_id: int
    bos_token_id: Optional[int]
    first_free_id: int

    def __post_init__(self) -> None:
        if not 0 < self.max_length <= MAX_TEXT_TOKENS:
            raise _fail(f"tokenizer {self.name!r}", f"has max_length {self.max_length}, outside 1..{MAX_TEXT_TOKENS}")
        for what, token_id in (("pad", self.pad_token_id), ("eos", self.eos_token_id), ("bos", self.bos_token_id)):
            if token_id is not None and not 0 <= token_id < self.first_free_id:
                raise _fail(f"tokenizer {self.name!r}", f"has {what}_token_id {token_id}, outside its vocabulary "
                            f"0..{self.first_free_id - 1}")


@dataclass(frozen=True)
class TextEncoderSpec:
    """A text encoder graph with injectable embeddings (spec/ZO_PERSONALIZATION.md §11.3 (B)): every position
    whose id equals placeholder_ids[j] takes placeholder_embeds[j] instead of the table row; ids at or above
    vocab_rows are valid only as placeholders. Placeholder ids must be distinct. `use` is what the denoiser
    takes from it: the pooled vector (CLIP, FLUX) or the sequence (T5). placeholder_slots: None when the
    placeholder inputs have a dynamic length (ONNX/ORT: optional, empty by default); otherwise the fixed
    number of slots (ExecuTorch, Core ML), unused slots taking id -1, which matches no token.
    token_embeddings: the encoder's input embedding table, for starting a learned token from a word."""

    name: str
    graph: str
    tokenizer: str
    kind: Literal["clip", "t5"]
    use: Literal["pooled", "sequence", "both"]  # "both": SD3's CLIPs give the pooled vector and a sequence
    hidden_size: int
    vocab_rows: int
    sequence_output: str
    pooled_output: Optional[str]
    placeholder_ids_input: str
    placeholder_embeds_input: str
    precision: str
    placeholder_slots: Optional[int] = None
    token_embeddings: Optional[str] = None  # file with float32 `weight` [vocab_rows, hidden] (init-word rows)


@dataclass(frozen=True)
class PosEmbedSpec:
    """SD3-class absolute 2-D sin-cos position embeddings, computed on the host per token by
    `ralu_edge.sd3.position_embeddings` and fed as the denoiser's `pos_embed` input [L, embed_dim]: diffusers'
    PatchEmbed table geometry (pos_embed_max_size, base_size = sample_size // patch, interpolation scale)."""

    embed_dim: int
    max_size: int
    base_size: int
    interpolation_scale: float = 1.0


@dataclass(frozen=True)
class StageGraph:
    """Which graph serves `num_image_tokens` image tokens; num_image_tokens is None for a dynamic graph."""

    graph: str
    num_image_tokens: Optional[int] = None


@dataclass(frozen=True)
class DenoiserSpec:
    """The denoiser stage graphs and how they are packaged for the target.

    packaging "dynamic": one graph over a symbolic `token_dim` (and `rope_token_dim` = text_length +
    token_dim for the RoPE tables) serves every stage length (one weight copy; NPU sessions can pin both with
    SessionOptions.add_free_dimension_override_by_name); "static": one graph per stage length.
    `packaging_note` records the measurement behind the choice. stage_lengths: every image-token count the
    bundle's presets and resolutions need. Inputs follow spec/RALU.md §9.1: timestep is sigma in [0, 1]
    (the graph multiplies by 1000) for FLUX, "sigma_x1000" for SD3 (spec §9.3 "Timestep scaling").
    guidance: the graph has a distilled-guidance input (guidance-embedded FLUX.1-dev class models).
    `ralu_edge.feeds.feed_spec` reads these conventions and turns every seam call into the graph's feeds.
    guidance_scale: the classifier-free guidance default of every mode ([negative "", prompt] batch,
    v = v_u + s·(v_c − v_u)): SD3's 7.0, or the true_cfg_scale a FLUX-family model records in its pipeline
    folder's sampling.json; None: no CFG batch (the runtime then refuses a requested scale).
    SD3-class fields: positions "sincos" (a `pos_embed` [L, D] input built from `pos_embed` on the host
    instead of RoPE tables), output_order "dy_dx_c" (the host permutes the velocity back to (c, dy, dx)),
    baseline_schedule and baseline_shift (the plain sampler's sigmas, as the source pipeline's scheduler
    builds them)."""

    packaging: Packaging
    packaging_note: str
    token_dim: str
    rope_token_dim: str
    stage_lengths: tuple[int, ...]
    token_channels: int
    text_length: int
    text_dim: int
    pooled_dim: int
    guidance: bool
    timestep: Literal["sigma", "sigma_x1000"]
    stage_graphs: tuple[StageGraph, ...]
    full_res_graph: Optional[str] = None
    # SD3-class models (spec/RALU.md §9.7); the defaults describe FLUX, so older bundles read unchanged.
    positions: Literal["rope", "sincos"] = "rope"
    pos_embed: Optional[PosEmbedSpec] = None
    output_order: Literal["c_dy_dx", "dy_dx_c"] = "c_dy_dx"
    guidance_scale: Optional[float] = None
    baseline_schedule: Literal["flux_dynamic", "sd3_static"] = "flux_dynamic"
    baseline_shift: float = 3.0

    def __post_init__(self) -> None:
        if not self.stage_graphs:
            raise _fail("denoiser.stage_graphs", "is empty")
        if min(self.token_channels, self.text_length, self.text_dim, self.pooled_dim) < 1:
            raise _fail("denoiser", "has a token_channels, text_length, text_dim or pooled_dim below 1")
        if self.text_length > MAX_TEXT_TOKENS:
            raise _fail("denoiser.text_length", f"is {self.text_length}, over {MAX_TEXT_TOKENS}")
        if self.guidance_scale is not None and not self.guidance_scale >= 1.0:
            raise _fail("denoiser.guidance_scale", f"is {self.guidance_scale}; a CFG scale is at least 1")
        if not self.baseline_shift > 0:
            raise _fail("denoiser.baseline_shift", f"is {self.baseline_shift}; a schedule shift is positive")

    def graph_for(self, num_image_tokens: int) -> str:
        """The graph to run at this many image tokens; UserError when the bundle has none for it."""
        for stage in self.stage_graphs:
            if stage.num_image_tokens in (None, num_image_tokens):
                return stage.graph
        lengths = sorted(s.num_image_tokens for s in self.stage_graphs if s.num_image_tokens is not None)
        raise UserError(f"this bundle has static denoiser graphs for {lengths} image tokens, not "
                        f"{num_image_tokens}; re-export it with the resolution and preset you need.")


@dataclass(frozen=True)
class PresetStages:
    """A preset's geometry at one resolution: k selected low-res tokens and (L1, L2, L3) (spec/RALU.md §9.2)."""

    height: int
    width: int
    k: int
    stage_lengths: tuple[int, int, int]


@dataclass(frozen=True)
class PresetEntry:
    """A RALU preset as `RaluPreset.to_dict()` wrote it (N, e, h, Z, r, c, s, a, b, stage_sigmas) plus its
    stage lengths per bundle resolution. `ralu_edge.presets.RaluPreset.from_dict(entry.preset)` rebuilds it
    and refuses sigma lists that disagree with N, e, h, Z."""

    name: str
    preset: dict[str, Any]
    stages: tuple[PresetStages, ...]

    def __post_init__(self) -> None:
        missing = [k for k in ("name", "N", "e", "h", "Z", "r", "stage_sigmas") if k not in self.preset]
        if missing or self.preset.get("name") != self.name:
            raise _fail(f"preset {self.name!r}", f"lacks {missing or ['a matching name']}")


@dataclass(frozen=True)
class ModelInfo:
    """Where the bundle came from: family (FamilySpec name), model name or path, pipeline class."""

    family: str
    name: str
    pipeline_class: str


@dataclass(frozen=True)
class ExporterInfo:
    """Exporter name and version, plus the versions of the tools that wrote the graphs."""

    name: str
    version: str
    tools: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CacheCalibration:
    """TeaCache's rescale fitted for this model at export time (ralu_edge.cache, issue 16): the output's relative
    L1 change ≈ c0·(relative L1 change of the seam's input tokens) + c1·(σ step) + c2, least squares over every
    call but the first of each stage of `runs` full (uncached) sampling runs of `prompts` prompts through this
    bundle's own denoiser; r2 is the fit's coefficient of determination on those samples."""

    signal: Literal["input_rel_l1,sigma_step"]
    coefficients: tuple[float, float, float]
    prompts: tuple[str, ...]
    runs: tuple[str, ...]
    samples: int
    r2: float


@dataclass(frozen=True)
class Manifest:
    """The whole `ralu_config.json`. Cross-references are checked on construction: every graph file and
    data file is listed in `files`, every encoder/stage names an existing graph, and every placeholder
    input exists in its encoder's graph."""

    format: str
    format_version: int
    exporter: ExporterInfo
    model: ModelInfo
    target: Target
    precision: Precision
    resolutions: tuple[Resolution, ...]
    vae: VaeSpec
    text_length: int
    rope: Optional[RopeSpec]  # None for SD3-class models (absolute positions: denoiser.pos_embed)
    denoiser: DenoiserSpec
    text_encoders: tuple[TextEncoderSpec, ...]
    tokenizers: tuple[TokenizerSpec, ...]
    graphs: tuple[GraphEntry, ...]
    presets: tuple[PresetEntry, ...]
    files: tuple[FileEntry, ...]
    notes: dict[str, str] = field(default_factory=dict)
    cache: Optional[CacheCalibration] = None  # None: exported before issue 16, or a target not calibrated
    lora: Optional[LoraSpec] = None  # issue 17; None: the bundle takes no LoRA (exported before, or its target)

    def __post_init__(self) -> None:
        if self.format != BUNDLE_FORMAT:
            raise _fail("format", f"is {self.format!r}, not {BUNDLE_FORMAT!r}")
        if self.format_version != FORMAT_VERSION:
            raise UserError(f"{MANIFEST_NAME}: format_version {self.format_version} is not the supported "
                            f"{FORMAT_VERSION}; re-export the bundle with this version of ralu-export.")
        if not self.resolutions:
            raise _fail("resolutions", "is empty")
        for res in self.resolutions:
            if res.latent_height * self.vae.factor != res.height or res.latent_width * self.vae.factor != res.width:
                raise _fail(f"resolution {res.height}x{res.width}", f"disagrees with VAE factor {self.vae.factor}")
        _unique("files", [f.path for f in self.files])
        _unique("graphs", [g.name for g in self.graphs])
        _unique("presets", [p.name for p in self.presets])
        _unique("tokenizers", [t.name for t in self.tokenizers])
        # Every path the manifest names must be a verified file of the bundle (or, for an .mlpackage, a folder
        # of them): a path outside `files` would be read without a hash check, possibly outside the bundle.
        listed = {f.path for f in self.files}
        for graph in self.graphs:
            extra = (graph.generation_file,) if graph.generation_file else ()
            for path in (graph.file, *graph.data_files, *extra):
                if path not in listed and not any(p.startswith(path.rstrip("/") + "/") for p in listed):
                    raise _fail(f"graph {graph.name!r}", f"uses {path!r}, which the files list lacks")
            for target in graph.lora_targets:  # base weights are read only from the graph's own verified files
                for at in (target.weight_at, target.scale_at):
                    if at is not None and at.file not in (graph.file, *graph.data_files):
                        raise _fail(f"graph {graph.name!r}", f"reads LoRA base tensor {target.weight!r} from "
                                    f"{at.file!r}, which is not one of its files")
        for tokenizer in self.tokenizers:
            for path in (tokenizer.file, *tokenizer.files):
                if path not in listed:
                    raise _fail(f"tokenizer {tokenizer.name!r}", f"uses {path!r}, which the files list lacks")
        for encoder in self.text_encoders:
            if encoder.token_embeddings is not None and encoder.token_embeddings not in listed:
                raise _fail(f"text encoder {encoder.name!r}",
                            f"uses {encoder.token_embeddings!r}, which the files list lacks")
        for encoder in self.text_encoders:
            graph = self.graph(encoder.graph)
            graph.input(encoder.placeholder_ids_input)
            graph.input(encoder.placeholder_embeds_input)
            self.tokenizer(encoder.tokenizer)
        for stage in self.denoiser.stage_graphs:
            self.graph(stage.graph)
        if not self.text_encoders:
            raise _fail("text_encoders", "is empty")
        roles = [g.role for g in self.graphs]
        # Several decoders are legitimate: ExecuTorch / Core ML bundles carry `vae_decoder` (full resolution) and
        # `vae_decoder_half` (the Canny proxy's half-resolution decode) as separate static programs, full first.
        if roles.count("vae_encoder") > 1:
            raise _fail("graphs", f"hold {roles.count('vae_encoder')} VAE encoders; a bundle has at most one")
        self._check_declared_dims()

    def _check_declared_dims(self) -> None:
        """The sizes stated beside the graphs (token_channels, text_length, hidden sizes, ...) agree with the
        graphs' own input specs, so a wrong number is refused here rather than by a failed run."""
        den, vae = self.denoiser, self.vae
        if den.token_channels != 4 * vae.latent_channels:
            raise _fail("denoiser.token_channels", f"is {den.token_channels}, but 2x2-packed tokens of "
                        f"{vae.latent_channels} latent channels have {4 * vae.latent_channels}")
        expected: list[tuple[str, str, int, int]] = []  # (graph, input, axis, size)
        for stage in den.stage_graphs:
            expected += [(stage.graph, "hidden_states", -1, den.token_channels),
                         (stage.graph, "encoder_hidden_states", -2, den.text_length),
                         (stage.graph, "encoder_hidden_states", -1, den.text_dim),
                         (stage.graph, "pooled_projections", -1, den.pooled_dim)]
        for encoder in self.text_encoders:
            expected += [(encoder.graph, encoder.placeholder_embeds_input, -1, encoder.hidden_size),
                         (encoder.graph, "input_ids", -1, self.tokenizer(encoder.tokenizer).max_length)]
        expected += [(g.name, g.inputs[0].name, 1, vae.latent_channels)
                     for g in self.graphs if g.role == "vae_decoder" and g.inputs]
        for graph_name, input_name, axis, size in expected:
            spec = next((t for t in self.graph(graph_name).inputs if t.name == input_name), None)
            if spec is None or len(spec.shape) < abs(axis) + (axis >= 0):
                continue
            dim = spec.shape[axis]
            if isinstance(dim, int) and dim != size:
                raise _fail(f"graph {graph_name!r} input {input_name!r}",
                            f"has size {dim} on axis {axis}, but the manifest elsewhere says {size}")

    def graph(self, name: str) -> GraphEntry:
        """The graph called `name`; UserError listing the graphs otherwise."""
        for graph in self.graphs:
            if graph.name == name:
                return graph
        raise UserError(f"{MANIFEST_NAME}: no graph {name!r} (the bundle has "
                        f"{', '.join(g.name for g in self.graphs)}); re-export the bundle with ralu-export.")

    def tokenizer(self, name: str) -> TokenizerSpec:
        """The tokenizer called `name`; UserError otherwise."""
        for tokenizer in self.tokenizers:
            if tokenizer.name == name:
                return tokenizer
        raise _fail(f"tokenizer {name!r}", "is referenced but not described")

    def preset(self, name: str) -> PresetEntry:
        """The preset called `name`; UserError listing the bundle's presets otherwise."""
        for preset in self.presets:
            if preset.name == name:
                return preset
        raise UserError(f"this bundle has no RALU preset {name!r}; it carries "
                        f"{', '.join(p.name for p in self.presets) or 'none'} (re-export with --presets).")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return to_json(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        """The manifest described by a parsed `ralu_config.json`; UserError on any missing or mistyped field."""
        return from_json(cls, data, "manifest", _fail)


def _unique(what: str, names: list[str]) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise _fail(what, f"lists {name!r} twice")
        seen.add(name)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(bundle_dir: Path, exclude: tuple[str, ...] = (MANIFEST_NAME,)) -> tuple[FileEntry, ...]:
    """A FileEntry for every regular file under bundle_dir (sorted POSIX paths), except `exclude`."""
    bundle_dir = Path(bundle_dir)
    entries = []
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle_dir).as_posix()
        if rel not in exclude:
            entries.append(FileEntry(rel, file_sha256(path), path.stat().st_size))
    return tuple(entries)


class DigestCache:
    """sha256 digests `verify_files` may trust without reading a file again. This base knows none; the runtime's
    verified-bundle cache (ralu_runtime.bundle) subclasses it, keyed by each file's identity and change stamps."""

    def known(self, path: Path, stat: Any) -> Optional[str]:
        """The digest recorded for `path` (resolved) in the state `stat` (its os.stat_result), or None."""
        return None

    def remember(self, path: Path, stat: Any, sha256: str) -> None:
        """Record that `path` in the state `stat` was hashed and matched the manifest."""


def verify_files(bundle_dir: Path, manifest: Manifest, cache: Optional[DigestCache] = None) -> int:
    """Check every file the manifest lists before any is used: it exists, resolves (through any symlink) to a
    place inside the bundle folder, and has the listed size and sha256. UserError naming the first file that is
    missing, outside, truncated or altered. A file whose digest `cache` knows to be the listed one is not read
    again. Returns how many files were hashed."""
    bundle_dir = Path(bundle_dir)
    real_root = bundle_dir.resolve()
    hashed = 0
    for entry in manifest.files:
        path = bundle_dir / entry.path
        if not path.is_file():
            raise UserError(f"{bundle_dir.name}/{entry.path}: missing from the bundle; re-export the bundle.")
        real = path.resolve()
        if not real.is_relative_to(real_root):
            raise UserError(f"{bundle_dir.name}/{entry.path}: a link to {real}, outside the bundle folder; copy the "
                            "bundle with its files (e.g. `cp -rL`) or re-export it.")
        stat = real.stat()
        if stat.st_size != entry.size:
            raise UserError(f"{bundle_dir.name}/{entry.path}: {stat.st_size} bytes but the manifest says "
                            f"{entry.size}; the file is truncated or replaced, re-export the bundle.")
        if cache is not None and cache.known(real, stat) == entry.sha256:
            continue
        digest = file_sha256(real)
        hashed += 1
        if digest != entry.sha256:
            raise UserError(f"{bundle_dir.name}/{entry.path}: sha256 {digest[:12]}… but the manifest says "
                            f"{entry.sha256[:12]}…; the file was altered, re-export the bundle.")
        if cache is not None:
            cache.remember(real, stat, digest)
    return hashed


def read_manifest(bundle_dir: Path) -> Manifest:
    """The manifest of a bundle folder (schema checked, files not hashed; call verify_files for that)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{bundle_dir}: no {MANIFEST_NAME}, so this is not a complete ralu-export bundle; "
                        "export one with `ralu-export --model shapes --target desktop --out DIR`.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e.__class__.__name__}); re-export the bundle.") from None
    return Manifest.from_dict(data)


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Path:
    """Write `ralu_config.json` into bundle_dir (via a temporary name and os.replace); returns its path."""
    path = Path(bundle_dir) / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
