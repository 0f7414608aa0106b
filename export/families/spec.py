"""The declarative types of an export family (STYLE.md "Configs and presets"; the role of optimum's
model_configs.py without its inheritance): a family is data — its graphs with their boundary modules, I/O
names with symbolic axes and example-input builders, its text encoders, symbolic dims, tolerances, defaults,
and a function reading its Geometry from a pipeline folder. The families themselves are in flux.py and
sd3.py; this module holds no model name. Imports numpy and ralu_edge only (never torch), so validating a
request stays light.

Shapes are templates: an int is a fixed size, a key of `Geometry.sizes()` is the model's size (resolved
when the bundle is built), any other string is a symbolic dimension from the family's `dims`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal, Optional, Union

import numpy as np

from ralu_edge.manifest import PosEmbedSpec, RopeSpec, TensorSpec

Dim = Union[int, str]
ALL_TARGETS = ("desktop", "android", "executorch", "ios", "web")
EXAMPLE_BATCH = 2  # a batch dim is traced at 2: torch.export specialises sizes 0 and 1 (SD3: CFG's batch)


@dataclass(frozen=True)
class ExampleContext:
    """What an input's example builder may read for one case of one graph.

    dims: the case's symbolic-dim values (batch EXAMPLE_BATCH and num_placeholders 0 unless the case sets
    them); token_ids: [1, T] int64, the example prompt through this graph's tokenizer (text encoders only);
    image_ids: [num_image_tokens, 3] float64 positions of the case's image tokens (examples.image_positions,
    drawn from rng before any input, so every family draws in the same order)."""

    geometry: "Geometry"
    dims: dict[str, int]
    rng: np.random.Generator
    token_ids: Optional[np.ndarray]
    image_ids: np.ndarray

    @property
    def num_image_tokens(self) -> int:
        return len(self.image_ids)

    def shape(self, template: "TensorTemplate") -> tuple[int, ...]:
        """The template's shape at this case: model sizes, then case dims, then the image-token count."""
        sizes = self.geometry.sizes()
        return tuple(d if isinstance(d, int) else sizes.get(d, self.dims.get(d, self.num_image_tokens))
                     for d in template.shape)


Example = Callable[["TensorTemplate", ExampleContext], np.ndarray]


def standard_normal(template: "TensorTemplate", ctx: ExampleContext) -> np.ndarray:
    """The default example: standard normal float32 of the template's shape."""
    return ctx.rng.standard_normal(ctx.shape(template)).astype(np.float32)


@dataclass(frozen=True)
class TensorTemplate:
    """A graph input or output: name, dtype, shape template; `optional` inputs get an empty in-graph
    default (an overridable initializer) so that optimum, which never feeds them, still runs the graph;
    `requires` names a Geometry flag without which the model has no such input (FLUX guidance); `repeat`
    names a size: that many tensors, named name.format(i) (optimum's hidden_states.{i}); `example` builds
    the input's example value for tracing and parity (numpy, in the template's dtype)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    optional: bool = False
    requires: Optional[str] = None
    repeat: Optional[str] = None
    example: Example = standard_normal


def expand(templates: tuple[TensorTemplate, ...], sizes: dict[str, int]) -> tuple[TensorTemplate, ...]:
    """The templates with each `repeat` template unrolled into sizes[repeat] numbered tensors."""
    out: list[TensorTemplate] = []
    for t in templates:
        if t.repeat is None:
            out.append(t)
        else:
            out += [replace(t, name=t.name.format(i), repeat=None) for i in range(sizes[t.repeat])]
    return tuple(out)


def present(templates: tuple[TensorTemplate, ...], geometry: "Geometry") -> tuple[TensorTemplate, ...]:
    """The templates this model has (those whose `requires` flag is set on its geometry)."""
    return tuple(t for t in templates if t.requires is None or getattr(geometry, t.requires))


def resolve_shape(template: TensorTemplate, sizes: dict[str, int], fixed: dict[str, int]) -> tuple:
    """The manifest shape of a template: model sizes and `fixed` dims resolved to ints, others symbolic."""
    out = []
    for dim in template.shape:
        if isinstance(dim, int):
            out.append(dim)
        elif dim in sizes:
            out.append(sizes[dim])
        elif dim in fixed:
            out.append(fixed[dim])
        else:
            out.append(dim)
    return tuple(out)


def tensor_specs(templates: tuple[TensorTemplate, ...], sizes: dict[str, int],
                 fixed: dict[str, int] | None = None) -> tuple[TensorSpec, ...]:
    """Manifest TensorSpecs of a graph's inputs or outputs."""
    return tuple(TensorSpec(t.name, t.dtype, resolve_shape(t, sizes, fixed or {}), t.optional)
                 for t in expand(templates, sizes))


@dataclass(frozen=True)
class DimSpec:
    """A symbolic dimension: a root with bounds, or derived from a root as root * times + plus (plus and
    times may name a Geometry size)."""

    min: int = 2
    max: int = 65536
    root: Optional[str] = None
    times: Union[int, str] = 1
    plus: Union[int, str] = 0


GraphRole = Literal["denoiser", "denoiser_ids", "text_encoder", "vae_decoder", "vae_encoder"]
ParityCases = Literal["stages", "placeholders", "full_and_half", "full"]


@dataclass(frozen=True)
class GraphSpec:
    """One graph of a family.

    name: manifest graph name; role: what the runtime uses it for (the int8 policy, int8_policy.py, is
    per role); folder/stem: `<folder>/<stem>.<format>` (optimum's layout uses stem "model"); source: the
    pipeline attribute the boundary module wraps; module: the boundary module's class in
    ralu_export.graph_modules (named, so that validating a request does not import torch); targets: those
    that ship the graph; shares_weights: graphs with the same key write their weights once, into
    `<folder>/model.onnx_data`; parity_cases: the symbolic-dim values to compare at (examples.parity_cases:
    "stages" is every preset stage length of every resolution)."""

    name: str
    role: GraphRole
    folder: str
    stem: str
    source: str
    module: str
    inputs: tuple[TensorTemplate, ...]
    outputs: tuple[TensorTemplate, ...]
    targets: tuple[str, ...] = ALL_TARGETS
    shares_weights: Optional[str] = None
    parity_cases: ParityCases = "full"

    @property
    def path(self) -> str:
        return f"{self.folder}/{self.stem}.onnx"


@dataclass(frozen=True)
class EncoderRole:
    """A text encoder of the family: its graph, tokenizer folder, kind, what the denoiser uses from it, and
    the names of its sizes in Geometry.sizes() (tokenizer length, hidden width, vocabulary rows).
    sequence_output may name a size in braces: "hidden_states.{clip_l_penultimate}"."""

    graph: str
    tokenizer: str
    kind: Literal["clip", "t5"]
    use: Literal["pooled", "sequence", "both"]
    sequence_output: str
    pooled_output: Optional[str]
    length: str
    hidden_size: str
    vocab: str


@dataclass(frozen=True)
class Tolerances:
    """Export-time parity floors (DESIGN.md "Conventions", issue 4 item 7): float graphs by max abs error
    relative to max |reference| (fp32_rel on ONNX Runtime, xnnpack_rel on ExecuTorch's XNNPACK), int8 graphs
    by cosine of the outputs. Which applies where is parity.parity_rule."""

    fp32_rel: float = 1e-3
    int8_cosine: float = 0.99
    xnnpack_rel: float = 1e-2


@dataclass(frozen=True)
class Geometry:
    """Sizes of one model at one bundle resolution, read from the pipeline's component configs.

    text_length: the T5 sequence length (the manifest's text_length); denoiser_text_length: the text tokens
    the denoiser attends to (FLUX: the T5 sequence; SD3: CLIP + T5); rope / pos_embed: the denoiser's
    position scheme, exactly one set (the manifest's rope and denoiser.pos_embed); named_sizes: the family's
    own sizes that its shape templates and encoder roles name (CLIP widths, vocabularies, ...)."""

    height: int
    width: int
    vae_factor: int
    latent_channels: int
    patch: int
    text_length: int
    denoiser_text_length: int
    text_dim: int
    pooled_dim: int
    guidance: bool
    vae_scaling: float
    vae_shift: float
    scheduler_shift: float
    rope: Optional[RopeSpec] = None
    pos_embed: Optional[PosEmbedSpec] = None
    named_sizes: tuple[tuple[str, int], ...] = ()

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

    @property
    def clip_length(self) -> int:
        """The CLIP tokenizers' length (the named size clip_length)."""
        return self.sizes()["clip_length"]

    def sizes(self) -> dict[str, int]:
        """The named sizes shape templates and encoder roles may use."""
        return {
            "token_channels": self.token_channels, "text_length": self.text_length, "text_dim": self.text_dim,
            "pooled_dim": self.pooled_dim, "latent_channels": self.latent_channels,
            "latent_parameters": 2 * self.latent_channels, "vae_factor": self.vae_factor,
            **dict(self.named_sizes),
        }


@dataclass(frozen=True)
class FamilySpec:
    """Everything the exporter knows about one model family.

    default_presets: RALU presets exported when none are asked for; guidance_scale: the manifest's CFG
    default when the model records none (None: no CFG); static_dims: values of dynamic dims in static
    programs (ExecuTorch, Core ML). positions / timestep / output_order / baseline_schedule are the denoiser
    conventions the manifest states (ralu_edge.manifest.DenoiserSpec)."""

    name: str
    pipeline_class: str
    graphs: tuple[GraphSpec, ...]
    encoders: tuple[EncoderRole, ...]
    dims: dict[str, DimSpec]
    geometry: Callable[[Path, int, int], Geometry]
    default_presets: tuple[str, ...]
    load: Callable[[str], object]
    positions: Literal["rope", "sincos"]
    timestep: Literal["sigma", "sigma_x1000"]
    output_order: Literal["c_dy_dx", "dy_dx_c"]
    baseline_schedule: Literal["flux_dynamic", "sd3_static"]
    guidance_scale: Optional[float] = None
    tolerances: Tolerances = field(default_factory=Tolerances)
    static_dims: dict[str, int] = field(default_factory=dict)

    def graph(self, name: str) -> GraphSpec:
        return next(g for g in self.graphs if g.name == name)


def boundary_module(spec: GraphSpec, pipe):
    """The torch module whose forward is the graph of `spec`, over the pipeline's own submodule."""
    from ralu_export import graph_modules

    return getattr(graph_modules, spec.module)(getattr(pipe, spec.source)).eval()


def component_config(folder: Path, component: str) -> dict:
    """The config.json of one pipeline component."""
    return json.loads((folder / component / "config.json").read_text())


def tokenizer_length(folder: Path, component: str, fallback: int) -> int:
    """The tokenizer's model_max_length capped at `fallback` (which it is when missing)."""
    path = folder / component / "tokenizer_config.json"
    length = json.loads(path.read_text()).get("model_max_length", fallback) if path.is_file() else fallback
    return int(min(length, fallback)) if isinstance(length, (int, float)) else fallback
