"""The torch modules whose forward is exactly one exported graph (as Apple's torch2coreml wraps each
component), for the FLUX family: the denoiser with host-computed RoPE (the RALU stage graph), the denoiser
with position ids (optimum's transformer I/O), the CLIP and T5 encoders with injectable embeddings, and the
VAE decoder and encoder; for the SD3 family, the transformer core on host-patchified tokens with per-token
position embeddings (the RALU stage graph), the full-latent transformer (optimum's I/O) and the CLIP encoders
with projection in optimum's output layout. Each wrapper holds the pipeline's own submodules, so its parameters are the
pipeline's and the parity check compares against the same weights. Imports torch; nothing from ralu_runtime."""

from __future__ import annotations

import torch
from torch import nn


class FluxDenoiser(nn.Module):
    """velocity [1, L, C] from packed tokens, text states, pooled text, sigma and RoPE tables
    (spec/RALU.md §9.1). Same computation as FluxTransformer2DModel.forward, except that the rotary
    tables come in as inputs instead of diffusers' float64 FluxPosEmbed, so the graph has no Double ops
    and fractional RALU positions need nothing special.

    hidden_states [1, L, C]; encoder_hidden_states [1, T, D_txt]; pooled_projections [1, D_pool];
    timestep [1] = sigma in [0, 1] (x1000 inside, as diffusers); rope_cos, rope_sin [T + L, head_dim]
    float32 with the text rows first; guidance [1] only for guidance-distilled models."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        self.guidance_embeds = bool(getattr(transformer.config, "guidance_embeds", False))

    def core(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, rotary, guidance=None):
        t = self.transformer
        hidden = t.x_embedder(hidden_states)
        timestep = timestep.to(hidden.dtype) * 1000.0
        if guidance is None:
            temb = t.time_text_embed(timestep, pooled_projections)
        else:
            temb = t.time_text_embed(timestep, guidance.to(hidden.dtype) * 1000.0, pooled_projections)
        context = t.context_embedder(encoder_hidden_states)
        for block in (*t.transformer_blocks, *t.single_transformer_blocks):
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb,
                                    image_rotary_emb=rotary)
        return t.proj_out(t.norm_out(hidden, temb))

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, rope_cos, rope_sin,
                guidance=None):
        return self.core(hidden_states, encoder_hidden_states, pooled_projections, timestep,
                         (rope_cos, rope_sin), guidance)


def rope_from_ids(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [N, sum(axes_dim)] float32 from position ids [N, n_axes]: ralu_edge.rope's formula in
    float32 (FluxPosEmbed uses float64, which mobile EPs reject); angles differ by ~1e-7 relative."""
    cos_parts, sin_parts = [], []
    ids = ids.to(torch.float32)
    for axis, dim in enumerate(axes_dim):
        frequencies = [1.0 / theta ** (j / dim) for j in range(0, dim, 2)]
        angles = ids[:, axis : axis + 1] * torch.tensor(frequencies, dtype=torch.float32)  # [N, dim/2]
        cos_parts.append(torch.cos(angles).repeat_interleave(2, dim=1))
        sin_parts.append(torch.sin(angles).repeat_interleave(2, dim=1))
    return torch.cat(cos_parts, dim=1), torch.cat(sin_parts, dim=1)


class FluxDenoiserFromIds(nn.Module):
    """optimum's FLUX transformer I/O (hidden_states, encoder_hidden_states, pooled_projections, timestep,
    txt_ids, img_ids[, guidance] -> out_hidden_states) over the same computation as FluxDenoiser, with the
    RoPE tables built in-graph in float32. It exists so that optimum's ORTDiffusionPipeline can open the
    desktop bundle; it shares every weight with the RALU denoiser graph on disk."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.denoiser = FluxDenoiser(transformer)
        self.axes_dim = tuple(int(d) for d in transformer.config.axes_dims_rope)
        self.theta = float(getattr(transformer.pos_embed, "theta", 10000))

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, txt_ids, img_ids,
                guidance=None):
        rotary = rope_from_ids(torch.cat((txt_ids, img_ids), dim=0), self.axes_dim, self.theta)
        return self.denoiser.core(hidden_states, encoder_hidden_states, pooled_projections, timestep, rotary,
                                  guidance)


def injected_embeddings(table: torch.Tensor, input_ids: torch.Tensor, placeholder_ids: torch.Tensor,
                        placeholder_embeds: torch.Tensor) -> torch.Tensor:
    """Token embeddings [B, T, D]: table[ids], except that a position whose id equals placeholder_ids[j]
    gets placeholder_embeds[j] (spec/ZO_PERSONALIZATION.md §11.3 (B)). Ids at or above the table size are
    clamped for the lookup, so any id can be a placeholder; P = 0 placeholders leaves the lookup unchanged.
    A one-hot [B, T, P] product instead of a Concat of the table, which would copy V x D every run."""
    rows = table.shape[0]
    base = nn.functional.embedding(input_ids.clamp(0, rows - 1), table)  # [B, T, D]
    match = (input_ids.unsqueeze(-1) == placeholder_ids.view(1, 1, -1)).to(table.dtype)  # [B, T, P]
    extra = torch.matmul(match, placeholder_embeds)  # [B, T, D]
    return torch.where(match.sum(dim=-1, keepdim=True) > 0, extra, base)


def clip_pool_token_id(config) -> int:
    """The id CLIP pools at. Configs older than transformers PR #24773 (FLUX.1's and SD3's CLIPs among them)
    say eos_token_id 2, and transformers then pools at the argmax id, i.e. <|endoftext|>, the last vocabulary
    id; the graphs pool at the first occurrence of that id instead of the argmax, which a new token's id
    could win."""
    return int(config.vocab_size - 1 if config.eos_token_id == 2 else config.eos_token_id)


class ClipTextEncoder(nn.Module):
    """transformers CLIPTextModel with injectable embeddings: (input_ids [1, T] int64, placeholder_ids [P]
    int64, placeholder_embeds [P, D] float32) -> (last_hidden_state [1, T, D], pooler_output [1, D]).
    Pools at the first EOS id, never at the argmax id (a new token's id can win the argmax)."""

    def __init__(self, text_model: nn.Module):
        super().__init__()
        self.text_model = text_model.text_model
        self.eos_token_id = clip_pool_token_id(text_model.config)

    def encode(self, input_ids, placeholder_ids, placeholder_embeds, output_hidden_states: bool = False):
        """(encoder output, final hidden states after the last LayerNorm, pooled at the first EOS)."""
        tm = self.text_model
        embeds = injected_embeddings(tm.embeddings.token_embedding.weight, input_ids, placeholder_ids,
                                     placeholder_embeds)
        hidden = tm.embeddings(inputs_embeds=embeds)
        length = input_ids.shape[1]
        causal = torch.full((length, length), torch.finfo(hidden.dtype).min, dtype=hidden.dtype).triu(1)
        encoded = tm.encoder(inputs_embeds=hidden, causal_attention_mask=causal[None, None],
                             output_hidden_states=output_hidden_states)
        final = tm.final_layer_norm(encoded.last_hidden_state)
        eos_position = (input_ids == self.eos_token_id).to(torch.int32).argmax(dim=-1)  # first EOS
        return encoded, final, final[torch.arange(final.shape[0]), eos_position]

    def forward(self, input_ids, placeholder_ids, placeholder_embeds):
        _, hidden, pooled = self.encode(input_ids, placeholder_ids, placeholder_embeds)
        return hidden, pooled


class T5TextEncoder(nn.Module):
    """transformers T5EncoderModel with injectable embeddings: (input_ids [1, T], placeholder_ids [P],
    placeholder_embeds [P, D]) -> last_hidden_state [1, T, D]; no attention mask, as FluxPipeline."""

    def __init__(self, encoder_model: nn.Module):
        super().__init__()
        self.encoder_model = encoder_model

    def forward(self, input_ids, placeholder_ids, placeholder_embeds):
        table = self.encoder_model.get_input_embeddings().weight
        embeds = injected_embeddings(table, input_ids, placeholder_ids, placeholder_embeds)
        return self.encoder_model(inputs_embeds=embeds, return_dict=False)[0]


class VaeDecoder(nn.Module):
    """image [1, 3, f*h, f*w] in about [-1, 1] from a raw latent z [1, C, h, w] (optimum's vae_decoder: the
    host undoes the sampler's normalisation first, z = x / scaling_factor + shift_factor)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


class VaeEncoder(nn.Module):
    """(latent_parameters [1, 2C, h, w] = raw posterior mean and logvar, optimum's output; latent_mean
    [1, C, h, w] = (mean - shift_factor) * scaling_factor, the sampler's normalised latent) from an
    image [1, 3, f*h, f*w] in [-1, 1]. Personalization samples the posterior from latent_parameters."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.channels = int(vae.config.latent_channels)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.shift_factor or 0.0)

    def forward(self, sample):
        parameters = self.vae.encode(sample).latent_dist.parameters
        mean = parameters[:, : self.channels]
        return parameters, (mean - self.shift_factor) * self.scaling_factor


class Sd3Denoiser(nn.Module):
    """The SD3 transformer core on token sequences (spec/RALU.md §9.7): velocity tokens [B, L, p*p*C] in SD3's
    (dy, dx, c) output order from host-patchified tokens, per-token position embeddings and the text inputs.
    Same computation as SD3Transformer2DModel.forward minus its 4-D edges: the PatchEmbed conv is applied as
    the equal Linear on packed (c, dy, dx) patches (weight reshaped to [D, C*p*p]), the cropped sin-cos table
    is replaced by the `pos_embed` input, and the unpatchify is left to the host. A RALU stage-2 sequence
    (mixed resolutions, fractional positions) therefore needs nothing special.

    hidden_states [B, L, C*p*p]; encoder_hidden_states [B, T_clip + T_t5, D_joint]; pooled_projections
    [B, D_pool]; timestep [B] = sigma * 1000 (what SD3Transformer2DModel takes); pos_embed [L, D]."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, pos_embed):
        t = self.transformer
        conv = t.pos_embed.proj
        weight = conv.weight.reshape(conv.weight.shape[0], -1)  # [D, C*p*p] in the conv's (c, dy, dx) order
        hidden = nn.functional.linear(hidden_states, weight, conv.bias) + pos_embed
        temb = t.time_text_embed(timestep, pooled_projections)
        context = t.context_embedder(encoder_hidden_states)
        for block in t.transformer_blocks:
            context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
        return t.proj_out(t.norm_out(hidden, temb))


class Sd3Transformer(nn.Module):
    """optimum's SD3 transformer I/O (hidden_states [B, C, h, w], encoder_hidden_states, pooled_projections,
    timestep [B] = sigma * 1000 -> out_hidden_states [B, C, h, w]): SD3Transformer2DModel.forward itself, so
    that optimum's ORTStableDiffusion3Pipeline can open the desktop bundle. It shares every transformer-block
    weight with the RALU core graph on disk."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep):
        return self.transformer(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states,
                                pooled_projections=pooled_projections, timestep=timestep, return_dict=False)[0]


class ClipProjectionTextEncoder(ClipTextEncoder):
    """transformers CLIPTextModelWithProjection (SD3's CLIP-L and CLIP-G) with injectable embeddings, in
    optimum's output layout: (input_ids [1, T], placeholder_ids [P], placeholder_embeds [P, D]) ->
    (text_embeds [1, D_proj], last_hidden_state [1, T, D], hidden_states.0 … hidden_states.N [1, T, D]),
    hidden_states.i being transformers' hidden_states[i] (embeddings, then each layer, before the final
    LayerNorm). StableDiffusion3Pipeline uses text_embeds (pooled) and hidden_states[-2]. Pools at the first
    EOS, as ClipTextEncoder."""

    def __init__(self, text_model: nn.Module):
        super().__init__(text_model)
        self.text_projection = text_model.text_projection

    def forward(self, input_ids, placeholder_ids, placeholder_embeds):
        encoded, final, pooled = self.encode(input_ids, placeholder_ids, placeholder_embeds, output_hidden_states=True)
        return (self.text_projection(pooled), final, *encoded.hidden_states)
