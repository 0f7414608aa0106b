"""ONNX Runtime implementations of the denoiser seam, the text encoders (with injected learned-token
embeddings) and the VAE. One session per graph; the dynamic-token denoiser graph serves every RALU stage
length from one session (one copy of the weights: ENVIRONMENT.md measured it leaner and faster on the CPU EP
than per-stage sessions). The denoiser's feeds (positions, σ units, guidance, batching, output layout) are
`ralu_edge.feeds`', shared with the ExecuTorch and torch backends."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ralu_edge.errors import UserError
from ralu_edge.feeds import PositionFeedCache, feed_spec, graph_feeds, velocity_from_outputs
from ralu_edge.sd3 import joint_text_states
from ralu_edge.seam import Conditioning
from ralu_runtime.bundle import Bundle
from ralu_runtime.sessions import SessionConfig, open_session
from ralu_runtime.tokenization import PromptTokenizer, TokenizerConfig


@dataclass
class RunClock:
    """Seconds spent inside session.run, and calls, accumulated by the backends (for host-overhead stats)."""

    session_seconds: float = 0.0
    calls: int = 0

    def run(self, session, outputs, feeds):
        start = time.perf_counter()
        result = session.run(outputs, feeds)
        self.session_seconds += time.perf_counter() - start
        self.calls += 1
        return result


class OrtDenoiser:
    """The seam over the bundle's denoiser graph, every family alike: `ralu_edge.feeds` turns each call into
    the graph's feeds (RoPE tables or sin-cos embeddings, cached per position array; σ units; guidance; CFG
    rows per run) and the outputs back into the velocity; this class only opens and runs the sessions."""

    def __init__(self, bundle: Bundle, config: SessionConfig, clock: RunClock):
        self._bundle, self._config, self._clock = bundle, config, clock
        self._denoiser = bundle.manifest.denoiser
        self._feeds = feed_spec(bundle.manifest)
        self._positions = PositionFeedCache(self._feeds)
        self._sessions: dict[str, object] = {}

    def open(self) -> None:
        """Open every denoiser graph's session now (a Pipeline does, so that session creation is load time,
        not the first step's); without it, or after `release`, sessions open at their first call."""
        for stage in self._denoiser.stage_graphs:
            self._open(stage.graph)

    def _open(self, name: str):
        if name not in self._sessions:
            self._sessions[name] = open_session(self._bundle, name, self._config)
        return self._sessions[name]

    def _session(self, num_tokens: int):
        return self._open(self._denoiser.graph_for(num_tokens))

    def __call__(self, tokens: np.ndarray, positions: np.ndarray, sigmas: np.ndarray, cond: Conditioning):
        session = self._session(tokens.shape[1])
        runs = graph_feeds(self._feeds, tokens, sigmas, cond, self._positions(positions, cond.positions_for_text()))
        return velocity_from_outputs(self._feeds, [self._clock.run(session, None, feeds)[0] for feeds in runs])

    def release(self) -> None:
        """Drop the sessions (low-memory handling); the next call reopens them."""
        self._sessions.clear()

    def reopen(self, config: SessionConfig, graphs: set[str]) -> None:
        """Take `config` (other LoRA initializer overrides, issue 17) and reopen the open sessions of `graphs`
        only, each closed before its successor opens."""
        self._config = config
        for name in graphs & set(self._sessions):
            del self._sessions[name]
            self._open(name)


def open_denoiser(bundle: Bundle, config: SessionConfig, clock: RunClock) -> OrtDenoiser:
    """The seam over the bundle's denoiser (FLUX RoPE or SD3-class sin-cos positions alike). Generation and
    personalization both open it here."""
    return OrtDenoiser(bundle, config, clock)


@dataclass
class LearnedTokens:
    """Learned embeddings per token: {token: {text_encoder_name: [hidden] float32}}."""

    embeddings: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


class OrtTextEncoders:
    """Prompt -> Conditioning through the bundle's text encoders, injecting learned-token embeddings."""

    def __init__(self, bundle: Bundle, config: SessionConfig, clock: RunClock, learned: LearnedTokens | None = None):
        self._bundle, self._clock = bundle, clock
        self._learned = learned or LearnedTokens()
        self._encoders = bundle.manifest.text_encoders
        self._sessions = {e.name: open_session(bundle, e.graph, config) for e in self._encoders}
        self._tokenizers = {}
        for e in self._encoders:
            spec = bundle.manifest.tokenizer(e.tokenizer)
            cfg = TokenizerConfig(spec.max_length, spec.pad_token_id, spec.eos_token_id, spec.first_free_id)
            self._tokenizers[e.name] = PromptTokenizer(bundle.path(spec.file), cfg, tuple(self._learned.embeddings))
        for token, per_encoder in self._learned.embeddings.items():
            for e in self._encoders:
                vec = per_encoder.get(e.name)
                if vec is None or vec.shape != (e.hidden_size,):
                    raise UserError(f"learned token {token!r} has no {e.hidden_size}-d embedding for {e.name}; "
                                    "the embeddings file was made for another model.")

    def reopen(self, config: SessionConfig, graphs: set[str]) -> None:
        """Reopen the encoders whose graph is in `graphs` with `config` (LoRA initializer overrides, issue 17)."""
        for e in self._encoders:
            if e.graph in graphs:
                del self._sessions[e.name]
                self._sessions[e.name] = open_session(self._bundle, e.graph, config)

    @property
    def tokenizers(self) -> dict[str, PromptTokenizer]:
        return self._tokenizers

    def encode(self, prompt: str, overrides: dict[str, np.ndarray] | None = None) -> Conditioning:
        """Conditioning of one prompt. `overrides` {encoder_name: [P, hidden]} replaces the learned tokens'
        embeddings (in learned-token order) for this call only: the ZO personalizer's queries."""
        # FLUX: pooled from CLIP, sequence from T5. SD3: both CLIPs give a pooled part and a sequence part,
        # joined as StableDiffusion3Pipeline.encode_prompt does (ralu_edge.sd3.joint_text_states).
        pooled_parts, clip_states, t5_states = [], [], None
        for e in self._encoders:
            tok = self._tokenizers[e.name]
            ids = tok.encode(prompt)
            tokens = list(self._learned.embeddings)
            p_ids = np.asarray([tok.placeholder_ids[t] for t in tokens], dtype=np.int64)
            if overrides is not None and e.name in overrides:
                p_emb = np.asarray(overrides[e.name], dtype=np.float32).reshape(len(tokens), e.hidden_size)
            else:
                p_emb = np.stack([self._learned.embeddings[t][e.name] for t in tokens]).astype(np.float32) \
                    if tokens else np.zeros((0, e.hidden_size), np.float32)
            feeds = {"input_ids": ids, e.placeholder_ids_input: p_ids, e.placeholder_embeds_input: p_emb}
            names = [e.sequence_output] + ([e.pooled_output] if e.pooled_output else [])
            outs = dict(zip(names, self._clock.run(self._sessions[e.name], names, feeds)))
            if e.use in ("pooled", "both"):
                pooled_parts.append(outs[e.pooled_output])
            if e.use in ("sequence", "both"):
                if e.kind == "t5":
                    t5_states = outs[e.sequence_output]
                else:
                    clip_states.append(outs[e.sequence_output])
        return Conditioning(text_states=joint_text_states(clip_states, t5_states),
                            pooled=np.concatenate(pooled_parts, axis=-1))


class OrtVae:
    """VAE decode/encode through the bundle's graphs; latents are held normalised, as the sampler holds them."""

    def __init__(self, bundle: Bundle, config: SessionConfig, clock: RunClock, encoder: bool = False):
        self._vae = bundle.manifest.vae
        self._clock = clock
        dec = [g for g in bundle.manifest.graphs if g.role == "vae_decoder"]
        enc = [g for g in bundle.manifest.graphs if g.role == "vae_encoder"]
        if not dec:
            raise UserError(f"{bundle.root.name}: the manifest names no vae_decoder graph, which turns latents into "
                            "images; re-export the bundle.")
        self._bundle, self._config = bundle, config
        self._decoder = None  # opened at the first decode: personalization only encodes
        self._decoder_graph = dec[0]
        self._encoder = open_session(bundle, enc[0].name, config) if encoder and enc else None
        self._encoder_graph = enc[0] if enc else None

    def open_decoder(self) -> None:
        """Open the decoder's session now (generation does; personalization, which only encodes, never)."""
        if self._decoder is None:
            self._decoder = open_session(self._bundle, self._decoder_graph.name, self._config)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Normalised latents [B, C, h, w] -> images [B, 3, H, W] in [-1, 1]."""
        if not self._vae.normalization_in_graph:
            latents = latents / self._vae.scaling_factor + self._vae.shift_factor
        self.open_decoder()
        name = self._decoder_graph.inputs[0].name
        return np.concatenate([self._clock.run(self._decoder, None, {name: latents[i:i + 1].astype(np.float32)})[0]
                               for i in range(latents.shape[0])])

    def encode_mean(self, images: np.ndarray) -> np.ndarray:
        """Images [B, 3, H, W] in [-1, 1] -> normalised posterior means [B, C, h, w]."""
        if self._encoder is None:
            raise UserError("this bundle has no VAE encoder graph; re-export it (ralu-export writes vae_encoder/).")
        name = self._encoder_graph.inputs[0].name
        means = [self._clock.run(self._encoder, ["latent_mean"], {name: images[i:i + 1].astype(np.float32)})[0]
                 for i in range(images.shape[0])]
        mean = np.concatenate(means)
        return mean if self._vae.normalization_in_graph else (mean - self._vae.shift_factor) * self._vae.scaling_factor
