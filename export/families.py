"""Per-family export knowledge in one declarative table (STYLE.md "Configs and presets"; the role of
optimum's model_configs.py without its inheritance): for each family, the graphs it exports, each graph's
boundary module, input/output names with symbolic axes, the targets that carry it, whether int8 applies,
the dynamic dimensions and the tolerances. The built-in `shapes` model is an instance of the `flux` family;
a model name never appears in an `if` outside this table.

Shapes are templates: an int is a fixed size, a key of `Geometry.sizes()` is the model's size (resolved
when the bundle is built), any other string is a symbolic dimension from the family's `dims`. The `sd3`
family (StableDiffusion3Pipeline) exports the transformer core on host-patchified tokens with per-token
position embeddings (spec/RALU.md §9.7) and runs classifier-free guidance as a batch of 2."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from ralu_edge.errors import UserError
from ralu_export.models import load_flux_pipeline, load_sd3_pipeline

Dim = Union[int, str]
ALL_TARGETS = ("desktop", "android", "executorch", "ios")


@dataclass(frozen=True)
class TensorTemplate:
    """A graph input or output: name, dtype, shape template; `optional` inputs get an empty in-graph
    default (an overridable initializer) so that optimum, which never feeds them, still runs the graph;
    `requires` names a Geometry flag without which the model has no such input (FLUX guidance)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    optional: bool = False
    requires: Optional[str] = None
    repeat: Optional[str] = None  # a size: that many tensors, named name.format(i) (optimum's hidden_states.{i})


def expand(templates: tuple[TensorTemplate, ...], sizes: dict[str, int]) -> tuple[TensorTemplate, ...]:
    """The templates with each `repeat` template unrolled into sizes[repeat] numbered tensors."""
    out: list[TensorTemplate] = []
    for t in templates:
        if t.repeat is None:
            out.append(t)
        else:
            out += [TensorTemplate(t.name.format(i), t.dtype, t.shape, t.optional, t.requires)
                    for i in range(sizes[t.repeat])]
    return tuple(out)


def present(templates: tuple[TensorTemplate, ...], geometry: "Geometry") -> tuple[TensorTemplate, ...]:
    """The templates this model has (those whose `requires` flag is set on its geometry)."""
    return tuple(t for t in templates if t.requires is None or getattr(geometry, t.requires))


@dataclass(frozen=True)
class DimSpec:
    """A symbolic dimension: a root with bounds, or derived from a root as root * times + plus (plus and
    times may name a Geometry size)."""

    min: int = 2
    max: int = 65536
    root: Optional[str] = None
    times: Union[int, str] = 1
    plus: Union[int, str] = 0


@dataclass(frozen=True)
class GraphSpec:
    """One graph of a family.

    name: manifest graph name; folder/stem: `<folder>/<stem>.onnx` (optimum's layout uses stem "model");
    source: the pipeline attribute the boundary module wraps; module: the boundary module's class in
    ralu_export.graph_modules (named, so that validating a request does not import torch);
    shares_weights: graphs with the same key write their weights once, into `<folder>/model.onnx_data`;
    parity_cases: the symbolic-dim values to compare at ("stages" expands to every preset stage length of
    every resolution); pt2e_int8: whether ExecuTorch's pt2e int8 flow can take the graph (T5: pt2e
    preparation turns its integer relative-position buckets into floats, and a constant bias breaks
    XNNPACK's broadcast)."""

    name: str
    role: str
    folder: str
    stem: str
    source: str
    module: str
    inputs: tuple[TensorTemplate, ...]
    outputs: tuple[TensorTemplate, ...]
    targets: tuple[str, ...] = ALL_TARGETS
    quantizable: bool = False
    shares_weights: Optional[str] = None
    parity_cases: str = "single"
    pt2e_int8: bool = True

    @property
    def path(self) -> str:
        return f"{self.folder}/{self.stem}.onnx"


@dataclass(frozen=True)
class EncoderRole:
    """A text encoder of the family: its graph, tokenizer folder, kind, and what the denoiser uses from it."""

    graph: str
    tokenizer: str
    kind: str
    use: str
    sequence_output: str  # may name a size in braces: "hidden_states.{clip_l_penultimate}"
    pooled_output: Optional[str]
    hidden_size: Optional[str] = None  # size names; None: FLUX's (pooled_dim for CLIP, text_dim for T5)
    vocab: Optional[str] = None


@dataclass(frozen=True)
class Tolerances:
    """Export-time parity floors (DESIGN.md "Conventions", issue 4 item 7): float graphs by max abs error
    relative to max |reference|, int8 graphs by cosine of the outputs."""

    fp32_rel: float = 1e-3
    int8_cosine: float = 0.99
    xnnpack_rel: float = 1e-2


@dataclass(frozen=True)
class Geometry:
    """Sizes of one model at one bundle resolution, read from the pipeline's component configs."""

    height: int
    width: int
    vae_factor: int
    latent_channels: int
    patch: int
    text_length: int
    clip_length: int
    text_dim: int
    pooled_dim: int
    head_dim: int
    axes_dim: tuple[int, ...]
    theta: float
    guidance: bool
    vae_scaling: float
    vae_shift: float
    clip_vocab: int
    t5_vocab: int
    clip_eos: int
    scheduler_shift: float = 3.0
    extra_sizes: tuple[tuple[str, int], ...] = ()  # family-specific named sizes (SD3: CLIP widths, pos table)

    @property
    def latent_height(self) -> int:
        return self.height // self.vae_factor

    @property
    def latent_width(self) -> int:
        return self.width // self.vae_factor

    @property
    def grid_height(self) -> int:
        return self.latent_height // self.patch

    @property
    def grid_width(self) -> int:
        return self.latent_width // self.patch

    @property
    def token_channels(self) -> int:
        return self.latent_channels * self.patch * self.patch

    def sizes(self) -> dict[str, int]:
        """The named sizes shape templates may use."""
        return {
            "token_channels": self.token_channels, "text_length": self.text_length, "text_dim": self.text_dim,
            "pooled_dim": self.pooled_dim, "head_dim": self.head_dim, "clip_length": self.clip_length,
            "clip_dim": self.pooled_dim, "t5_dim": self.text_dim, "latent_channels": self.latent_channels,
            "latent_parameters": 2 * self.latent_channels, "vae_factor": self.vae_factor,
            "num_axes": len(self.axes_dim), **dict(self.extra_sizes),
        }


@dataclass(frozen=True)
class FamilySpec:
    """Everything the exporter knows about one model family."""

    name: str
    pipeline_class: str
    graphs: tuple[GraphSpec, ...]
    encoders: tuple[EncoderRole, ...]
    dims: dict[str, DimSpec]
    geometry: Callable[[Path, int, int], Geometry]
    default_presets: tuple[str, ...]
    load: Callable[[str], object]
    tolerances: Tolerances = field(default_factory=Tolerances)
    # Denoiser conventions written to the manifest (ralu_edge.manifest.DenoiserSpec); defaults are FLUX's.
    positions: str = "rope"
    timestep: str = "sigma"
    output_order: str = "c_dy_dx"
    guidance_scale: Optional[float] = None
    baseline_schedule: str = "flux_dynamic"
    static_dims: dict[str, int] = field(default_factory=dict)  # values of dynamic dims in static programs

    def graph(self, name: str) -> GraphSpec:
        return next(g for g in self.graphs if g.name == name)


def boundary_module(spec: GraphSpec, pipe):
    """The torch module whose forward is the graph of `spec`, over the pipeline's own submodule."""
    from ralu_export import graph_modules

    return getattr(graph_modules, spec.module)(getattr(pipe, spec.source)).eval()


def _config(folder: Path, component: str) -> dict:
    return json.loads((folder / component / "config.json").read_text())


def _tokenizer_length(folder: Path, component: str, fallback: int) -> int:
    path = folder / component / "tokenizer_config.json"
    length = json.loads(path.read_text()).get("model_max_length", fallback) if path.is_file() else fallback
    return int(min(length, fallback)) if isinstance(length, (int, float)) else fallback


def flux_geometry(folder: Path, height: int, width: int) -> Geometry:
    """Geometry of a diffusers FluxPipeline folder at height x width (configs only, no weights loaded).
    T5 length: tokenizer_2's model_max_length capped at 512 (FluxPipeline's max_sequence_length)."""
    transformer, vae = _config(folder, "transformer"), _config(folder, "vae")
    clip, t5 = _config(folder, "text_encoder"), _config(folder, "text_encoder_2")
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return Geometry(
        height=height, width=width, vae_factor=factor, latent_channels=int(vae["latent_channels"]), patch=2,
        text_length=_tokenizer_length(folder, "tokenizer_2", 512),
        clip_length=_tokenizer_length(folder, "tokenizer", int(clip["max_position_embeddings"])),
        text_dim=int(transformer["joint_attention_dim"]), pooled_dim=int(transformer["pooled_projection_dim"]),
        head_dim=int(transformer["attention_head_dim"]), axes_dim=tuple(transformer["axes_dims_rope"]),
        theta=10000.0, guidance=bool(transformer.get("guidance_embeds", False)),
        vae_scaling=float(vae["scaling_factor"]), vae_shift=float(vae.get("shift_factor") or 0.0),
        clip_vocab=int(clip["vocab_size"]), t5_vocab=int(t5["vocab_size"]), clip_eos=int(clip["eos_token_id"]),
    )


_DENOISER_COMMON = (
    TensorTemplate("hidden_states", "float32", (1, "num_image_tokens", "token_channels")),
    TensorTemplate("encoder_hidden_states", "float32", (1, "text_length", "text_dim")),
    TensorTemplate("pooled_projections", "float32", (1, "pooled_dim")),
    TensorTemplate("timestep", "float32", (1,)),
)
_GUIDANCE = TensorTemplate("guidance", "float32", (1,), requires="guidance")  # last: the modules' last argument
_PLACEHOLDERS = (
    TensorTemplate("placeholder_ids", "int64", ("num_placeholders",), optional=True),
)

FLUX = FamilySpec(
    name="flux",
    pipeline_class="FluxPipeline",
    dims={
        "num_image_tokens": DimSpec(min=2, max=65536),
        "num_rope_tokens": DimSpec(root="num_image_tokens", plus="text_length"),
        "num_placeholders": DimSpec(min=0, max=1024),
        "latent_height": DimSpec(min=2, max=1024),
        "latent_width": DimSpec(min=2, max=1024),
        "height": DimSpec(root="latent_height", times="vae_factor"),
        "width": DimSpec(root="latent_width", times="vae_factor"),
    },
    geometry=flux_geometry,
    default_presets=("flux-4x", "flux-5x", "flux-7x"),
    load=load_flux_pipeline,
    encoders=(
        EncoderRole("text_encoder", "tokenizer", "clip", "pooled", "last_hidden_state", "pooler_output"),
        EncoderRole("text_encoder_2", "tokenizer_2", "t5", "sequence", "last_hidden_state", None),
    ),
    graphs=(
        GraphSpec(
            name="denoiser", role="denoiser", folder="transformer", stem="denoiser", source="transformer",
            module="FluxDenoiser",
            inputs=_DENOISER_COMMON + (
                TensorTemplate("rope_cos", "float32", ("num_rope_tokens", "head_dim")),
                TensorTemplate("rope_sin", "float32", ("num_rope_tokens", "head_dim")), _GUIDANCE,
            ),
            outputs=(TensorTemplate("velocity", "float32", (1, "num_image_tokens", "token_channels")),),
            quantizable=True, shares_weights="transformer", parity_cases="stages",
        ),
        GraphSpec(
            name="transformer", role="denoiser_ids", folder="transformer", stem="model", source="transformer",
            module="FluxDenoiserFromIds",
            inputs=_DENOISER_COMMON + (
                TensorTemplate("txt_ids", "float32", ("text_length", "num_axes")),
                TensorTemplate("img_ids", "float32", ("num_image_tokens", "num_axes")), _GUIDANCE,
            ),
            outputs=(TensorTemplate("out_hidden_states", "float32", (1, "num_image_tokens", "token_channels")),),
            targets=("desktop",), quantizable=True, shares_weights="transformer", parity_cases="full",
        ),
        GraphSpec(
            name="text_encoder", role="text_encoder", folder="text_encoder", stem="model", source="text_encoder",
            module="ClipTextEncoder",
            inputs=(TensorTemplate("input_ids", "int64", (1, "clip_length")), *_PLACEHOLDERS,
                    TensorTemplate("placeholder_embeds", "float32", ("num_placeholders", "clip_dim"), True)),
            outputs=(TensorTemplate("last_hidden_state", "float32", (1, "clip_length", "clip_dim")),
                     TensorTemplate("pooler_output", "float32", (1, "clip_dim"))),
            quantizable=True, parity_cases="placeholders",
        ),
        GraphSpec(
            name="text_encoder_2", role="text_encoder", folder="text_encoder_2", stem="model",
            source="text_encoder_2", module="T5TextEncoder",
            inputs=(TensorTemplate("input_ids", "int64", (1, "text_length")), *_PLACEHOLDERS,
                    TensorTemplate("placeholder_embeds", "float32", ("num_placeholders", "t5_dim"), True)),
            outputs=(TensorTemplate("last_hidden_state", "float32", (1, "text_length", "t5_dim")),),
            quantizable=True, parity_cases="placeholders", pt2e_int8=False,
        ),
        GraphSpec(
            name="vae_decoder", role="vae_decoder", folder="vae_decoder", stem="model", source="vae",
            module="VaeDecoder",
            inputs=(TensorTemplate("latent_sample", "float32", (1, "latent_channels", "latent_height",
                                                                   "latent_width")),),
            outputs=(TensorTemplate("sample", "float32", (1, 3, "height", "width")),),
            parity_cases="full_and_half",
        ),
        GraphSpec(
            name="vae_encoder", role="vae_encoder", folder="vae_encoder", stem="model", source="vae",
            module="VaeEncoder",
            inputs=(TensorTemplate("sample", "float32", (1, 3, "height", "width")),),
            outputs=(TensorTemplate("latent_parameters", "float32", (1, "latent_parameters", "latent_height",
                                                                      "latent_width")),
                     TensorTemplate("latent_mean", "float32", (1, "latent_channels", "latent_height",
                                                               "latent_width"))),
            parity_cases="full",
        ),
    ),
)


def _scheduler_shift(folder: Path) -> float:
    path = folder / "scheduler" / "scheduler_config.json"
    return float(json.loads(path.read_text()).get("shift", 3.0)) if path.is_file() else 3.0


def sd3_geometry(folder: Path, height: int, width: int) -> Geometry:
    """Geometry of a diffusers StableDiffusion3Pipeline folder (configs only). Text: CLIP-L and CLIP-G at the
    CLIP tokenizer length (77), T5 at tokenizer_3's model_max_length capped at 256 (StableDiffusion3Pipeline's
    max_sequence_length default); the denoiser sees their joint sequence (spec/RALU.md §9.2: 77 + 256)."""
    transformer, vae = _config(folder, "transformer"), _config(folder, "vae")
    clip_l, clip_g, t5 = (_config(folder, c) for c in ("text_encoder", "text_encoder_2", "text_encoder_3"))
    patch = int(transformer["patch_size"])
    clip_length = _tokenizer_length(folder, "tokenizer", int(clip_l["max_position_embeddings"]))
    t5_length = _tokenizer_length(folder, "tokenizer_3", 256)
    inner = int(transformer["num_attention_heads"]) * int(transformer["attention_head_dim"])
    extra = {
        "joint_text_length": clip_length + t5_length, "inner_dim": inner, "t5_dim": int(t5["d_model"]),
        "pos_embed_max_size": int(transformer["pos_embed_max_size"]),
        "pos_base_size": int(transformer["sample_size"]) // patch, "timestep_scale": 1000,
    }
    for prefix, config in (("clip_l", clip_l), ("clip_g", clip_g)):
        layers = int(config["num_hidden_layers"])
        extra.update({f"{prefix}_dim": int(config["hidden_size"]), f"{prefix}_proj": int(config["projection_dim"]),
                      f"{prefix}_states": layers + 1, f"{prefix}_penultimate": layers - 1,
                      f"{prefix}_vocab": int(config["vocab_size"])})
    return Geometry(
        height=height, width=width, vae_factor=2 ** (len(vae["block_out_channels"]) - 1),
        latent_channels=int(vae["latent_channels"]), patch=patch, text_length=t5_length, clip_length=clip_length,
        text_dim=int(transformer["joint_attention_dim"]), pooled_dim=int(transformer["pooled_projection_dim"]),
        head_dim=int(transformer["attention_head_dim"]), axes_dim=(), theta=0.0, guidance=False,
        vae_scaling=float(vae["scaling_factor"]), vae_shift=float(vae.get("shift_factor") or 0.0),
        clip_vocab=int(clip_l["vocab_size"]), t5_vocab=int(t5["vocab_size"]), clip_eos=int(clip_l["eos_token_id"]),
        scheduler_shift=_scheduler_shift(folder), extra_sizes=tuple(sorted(extra.items())),
    )


def _sd3_clip(name: str, prefix: str) -> GraphSpec:
    """An SD3 CLIP encoder with projection, in optimum's output layout plus injectable embeddings."""
    return GraphSpec(
        name=name, role="text_encoder", folder=name, stem="model", source=name, module="ClipProjectionTextEncoder",
        inputs=(TensorTemplate("input_ids", "int64", (1, "clip_length")), *_PLACEHOLDERS,
                TensorTemplate("placeholder_embeds", "float32", ("num_placeholders", f"{prefix}_dim"), True)),
        outputs=(TensorTemplate("text_embeds", "float32", (1, f"{prefix}_proj")),
                 TensorTemplate("last_hidden_state", "float32", (1, "clip_length", f"{prefix}_dim")),
                 TensorTemplate("hidden_states.{}", "float32", (1, "clip_length", f"{prefix}_dim"),
                                repeat=f"{prefix}_states")),
        quantizable=True, parity_cases="placeholders",
    )


_SD3_TEXT = (
    TensorTemplate("encoder_hidden_states", "float32", ("batch", "joint_text_length", "text_dim")),
    TensorTemplate("pooled_projections", "float32", ("batch", "pooled_dim")),
    TensorTemplate("timestep", "float32", ("batch",)),
)

SD3 = FamilySpec(
    name="sd3",
    pipeline_class="StableDiffusion3Pipeline",
    dims={
        "batch": DimSpec(min=1, max=16),  # classifier-free guidance runs [negative, prompt] as one batch of 2
        "num_image_tokens": DimSpec(min=2, max=65536),
        "num_placeholders": DimSpec(min=0, max=1024),
        "latent_height": DimSpec(min=2, max=1024),
        "latent_width": DimSpec(min=2, max=1024),
        "height": DimSpec(root="latent_height", times="vae_factor"),
        "width": DimSpec(root="latent_width", times="vae_factor"),
    },
    geometry=sd3_geometry,
    default_presets=("sd3-2x", "sd3-3x"),
    load=load_sd3_pipeline,
    encoders=(
        EncoderRole("text_encoder", "tokenizer", "clip", "both", "hidden_states.{clip_l_penultimate}", "text_embeds",
                    hidden_size="clip_l_dim", vocab="clip_l_vocab"),
        EncoderRole("text_encoder_2", "tokenizer_2", "clip", "both", "hidden_states.{clip_g_penultimate}",
                    "text_embeds", hidden_size="clip_g_dim", vocab="clip_g_vocab"),
        EncoderRole("text_encoder_3", "tokenizer_3", "t5", "sequence", "last_hidden_state", None),
    ),
    graphs=(
        GraphSpec(
            name="denoiser", role="denoiser", folder="transformer", stem="denoiser", source="transformer",
            module="Sd3Denoiser",
            inputs=(TensorTemplate("hidden_states", "float32", ("batch", "num_image_tokens", "token_channels")),
                    *_SD3_TEXT, TensorTemplate("pos_embed", "float32", ("num_image_tokens", "inner_dim"))),
            outputs=(TensorTemplate("velocity", "float32", ("batch", "num_image_tokens", "token_channels")),),
            quantizable=True, shares_weights="transformer", parity_cases="stages",
        ),
        GraphSpec(
            # role "denoiser_ids": the desktop-only graph in optimum's transformer I/O (full latent in and out).
            name="transformer", role="denoiser_ids", folder="transformer", stem="model", source="transformer",
            module="Sd3Transformer",
            inputs=(TensorTemplate("hidden_states", "float32", ("batch", "latent_channels", "latent_height",
                                                                 "latent_width")), *_SD3_TEXT),
            outputs=(TensorTemplate("out_hidden_states", "float32", ("batch", "latent_channels", "latent_height",
                                                                      "latent_width")),),
            targets=("desktop",), quantizable=True, shares_weights="transformer", parity_cases="full",
        ),
        _sd3_clip("text_encoder", "clip_l"),
        _sd3_clip("text_encoder_2", "clip_g"),
        GraphSpec(
            name="text_encoder_3", role="text_encoder", folder="text_encoder_3", stem="model",
            source="text_encoder_3", module="T5TextEncoder",
            inputs=(TensorTemplate("input_ids", "int64", (1, "text_length")), *_PLACEHOLDERS,
                    TensorTemplate("placeholder_embeds", "float32", ("num_placeholders", "t5_dim"), True)),
            outputs=(TensorTemplate("last_hidden_state", "float32", (1, "text_length", "t5_dim")),),
            quantizable=True, parity_cases="placeholders", pt2e_int8=False,
        ),
        FLUX.graph("vae_decoder"),
        FLUX.graph("vae_encoder"),
    ),
    positions="sincos", timestep="sigma_x1000", output_order="dy_dx_c",
    guidance_scale=7.0,  # StableDiffusion3Pipeline's default guidance_scale
    baseline_schedule="sd3_static",
    static_dims={"batch": 2},  # ExecuTorch / Core ML programs run CFG's [negative, prompt] batch
)

FAMILIES: dict[str, FamilySpec] = {FLUX.pipeline_class: FLUX, SD3.pipeline_class: SD3}


def family_for(pipeline_class: str) -> FamilySpec:
    """The family exporting a diffusers pipeline class; UserError listing the supported ones otherwise."""
    if pipeline_class not in FAMILIES:
        raise UserError(f"pipeline class {pipeline_class!r} has no export family yet; supported: "
                        f"{', '.join(FAMILIES)}.")
    return FAMILIES[pipeline_class]
