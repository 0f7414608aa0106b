"""First-order Textual Inversion with autograd on the fp32 torch FluxPipeline: the baseline that issue 6 item 4
measures zeroth-order personalization against (spec/ZO_PERSONALIZATION.md §13 "Related methods": TI).

Same data, loss and timestep sampling as the ZO trainer: VAE posterior moments of the user's images and their
horizontal flips, cached once (§10.1); the step's image, flip, σ (PUTS) and noise from
`ralu_edge.zo.timesteps.draw_step`, so with batch size 1 and one seed both trainers see identical draws; the
rectified-flow velocity MSE (§11.1). What is trained: one new token's row in each text encoder (CLIP `clip_l`,
T5 `t5`; §11.4), started from the init word's rows. The rows live in their own parameters and are swapped into
the embedding output by a forward hook, so autograd and Adam touch nothing else; every other weight is frozen.

Output: `learned_embeds.safetensors` with one entry per text encoder, keys `clip_l` and `t5` as in diffusers'
FLUX/SD3 advanced TI script (§11.6), each [1, d] float32, token and init word in the metadata. diffusers loads
the CLIP entry with `pipe.load_textual_inversion(sd["clip_l"], token=..., text_encoder=pipe.text_encoder,
tokenizer=pipe.tokenizer)`. Imports torch: lives in ralu_export."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ralu_edge.errors import UserError
from ralu_edge.feeds import FLUX_DEFAULT_GUIDANCE
from ralu_edge.tokens import grid_positions
from ralu_edge.zo.timesteps import PutsConfig, draw_step, training_pair
from ralu_runtime.tokenization import learned_added_token, word_like_learned_tokens

TEXT_LENGTH = 32  # the built-in model's T5 length (ralu_export.shapes_model.TEXT_LENGTH)
DEFAULT_CAPTION = "a {}"
PosteriorMode = Literal["sample", "mean"]
POSTERIOR_MODES: tuple[str, ...] = ("sample", "mean")
ENCODERS = {"clip_l": ("tokenizer", "text_encoder"), "t5": ("tokenizer_2", "text_encoder_2")}
"""Output key → (tokenizer attribute, text-encoder attribute) of a diffusers FluxPipeline (spec §11.4, §11.6)."""


@dataclass(frozen=True)
class PlaceholderToken:
    """A token added to every tokenizer in ENCODERS: its id and its init word's id per key."""

    token: str
    init_word: str
    ids: dict[str, int]
    init_ids: dict[str, int]


def add_placeholder_token(pipe, token: str, init_word: str) -> PlaceholderToken:
    """Add `token` to both tokenizers of a FluxPipeline, grow both embedding tables to hold its row, and copy the
    init word's row into it (spec §2 "Parameter θ"). Everything is checked before anything changes.

    Raises UserError when the token is already in a vocabulary (an entry, or a word that is one token) or the
    init word is not exactly one token."""
    if not token or token != token.strip() or " " in token:
        raise UserError(f"placeholder token {token!r} must be one word without spaces, e.g. '<sks>'")
    init_ids = {}
    for key, (tok_attr, _) in ENCODERS.items():
        tokenizer = getattr(pipe, tok_attr)
        # An exact vocabulary entry, or a word that is already one token (CLIP's 'circle' is 'circle</w>'):
        # adding it would shadow that word in every prompt.
        if token in tokenizer.get_vocab() or len(tokenizer.encode(token, add_special_tokens=False)) == 1:
            raise UserError(f"the token {token!r} is already in the {key} vocabulary; pick a new word, e.g. '<sks>'")
        ids = tokenizer.encode(init_word, add_special_tokens=False)
        if len(ids) != 1:
            raise UserError(f"init word {init_word!r} is {len(ids)} tokens for the {key} tokenizer, not one; pick "
                            "a single-token word that names the concept's class")
        init_ids[key] = int(ids[0])
    new_ids = {}
    for key, (tok_attr, enc_attr) in ENCODERS.items():
        tokenizer, encoder = getattr(pipe, tok_attr), getattr(pipe, enc_attr)
        # The runtime's flags and pre-tokenizer, so both sides give the same ids and the token tokenizes like a
        # word ("a red <hex> in" as long as "a red square in"; a plain add_tokens(token) leaves T5 a stray '▁').
        # (FluxPipeline loads CLIP as the slow CLIPTokenizer, which has no Metaspace and honours lstrip itself.)
        if getattr(tokenizer, "is_fast", False):
            word_like_learned_tokens(tokenizer.backend_tokenizer)
        tokenizer.add_tokens([learned_added_token(token)])
        new_ids[key] = int(tokenizer.convert_tokens_to_ids(token))
        _grow_embedding_table(encoder, new_ids[key], init_ids[key])
    return PlaceholderToken(token, init_word, new_ids, init_ids)


def _grow_embedding_table(encoder, new_id: int, init_id: int) -> None:
    """Make row `new_id` exist (T5's table may already have spare rows past the tokenizer) and set it to row
    `init_id`. Built by concatenation, not resize_token_embeddings: its random init would touch torch's global RNG."""
    table = encoder.get_input_embeddings()
    weight = table.weight.detach()
    rows = max(weight.shape[0], new_id + 1)
    extra = weight[init_id].expand(rows - weight.shape[0], -1)
    grown = torch.nn.Embedding(rows, weight.shape[1], padding_idx=table.padding_idx, dtype=weight.dtype,
                               device=weight.device)
    with torch.no_grad():
        grown.weight.copy_(torch.cat([weight, extra]))
        grown.weight[new_id] = weight[init_id]
    grown.requires_grad_(False)
    encoder.set_input_embeddings(grown)
    encoder.config.vocab_size = rows


def _injected_rows(table: torch.nn.Module, token_id: int, row: torch.Tensor, scale: float = 1.0):
    """Forward hook on an embedding module: positions holding `token_id` get `row`·scale (row carries the
    gradient)."""

    def hook(module, args, output):
        mask = (args[0] == token_id).unsqueeze(-1)
        return torch.where(mask, (row * scale if scale != 1.0 else row).to(output.dtype), output)

    return table.register_forward_hook(hook)


@torch.no_grad()
def encode_image_moments(pipe, images_u8: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """VAE posterior (mean, logvar) of every image and its horizontal flip: two [N, 2, C, h, w] float32 arrays,
    [:, 0] unflipped and [:, 1] flipped (spec §10.1: encoded once, sampled per step). images_u8: [N, H, W, 3]."""
    flipped = np.stack([images_u8, images_u8[:, :, ::-1]], axis=1).reshape(-1, *images_u8.shape[1:])
    means, logvars = [], []
    for i in range(0, len(flipped), batch):
        x = torch.from_numpy(np.ascontiguousarray(flipped[i:i + batch])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        posterior = pipe.vae.encode(x.to(pipe.vae.device, pipe.vae.dtype)).latent_dist
        means.append(posterior.mean.float().cpu().numpy())
        logvars.append(posterior.logvar.float().cpu().numpy())
    shape = (len(images_u8), 2, *means[0].shape[1:])
    return np.concatenate(means).reshape(shape), np.concatenate(logvars).reshape(shape)


def _caption_ids(pipe, captions: Sequence[str], placeholder: PlaceholderToken) -> dict[str, torch.Tensor]:
    """Token ids per encoder key: [N, TEXT_LENGTH] int64, padded as FluxPipeline pads (max_sequence_length 32)."""
    texts = [caption.replace("{}", placeholder.token) for caption in captions]
    out = {}
    for key, (tok_attr, _) in ENCODERS.items():
        tokenizer = getattr(pipe, tok_attr)
        ids = tokenizer(texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                        return_tensors="pt").input_ids
        missing = [c for c, row in zip(texts, ids) if not (row == placeholder.ids[key]).any()]
        if missing:
            raise UserError(f"caption {missing[0]!r} loses the token {placeholder.token!r} in the {key} tokenizer "
                            f"(longer than {TEXT_LENGTH} tokens?); shorten it")
        out[key] = ids
    return out


def _check_images(pipe, images_u8: np.ndarray, captions: Sequence[str]) -> None:
    factor = 2 * pipe.vae_scale_factor
    if images_u8.dtype != np.uint8 or images_u8.ndim != 4 or images_u8.shape[-1] != 3 or len(images_u8) == 0:
        raise UserError(f"images must be a non-empty uint8 array [N, H, W, 3], got {images_u8.dtype} "
                        f"{list(images_u8.shape)}; load them as RGB")
    if images_u8.shape[1] % factor or images_u8.shape[2] % factor:
        raise UserError(f"image size {images_u8.shape[2]}x{images_u8.shape[1]} is not a multiple of {factor}; "
                        "resize the images to the model's resolution (128x128 for the built-in model)")
    if len(captions) != len(images_u8) or not all("{}" in c for c in captions):
        raise UserError(f"need one caption per image ({len(images_u8)}), each with '{{}}' where the token goes, "
                        "e.g. 'a large red {} on the left'")


@dataclass(frozen=True)
class TiStep:
    """Progress of one first-order step: step (1-based), loss (the batch's velocity MSE), sigmas [B]."""

    step: int
    loss: float
    sigmas: np.ndarray


@dataclass(frozen=True)
class TiHistory:
    """losses: [steps] float64 (per-step velocity MSE before the update); seconds_per_step: mean wall time."""

    losses: np.ndarray
    seconds_per_step: float


def fit_first_order(pipe, images_u8: np.ndarray, token: str, init_word: str, steps: int, seed: int,
                    lr: float = 5e-3, batch_size: int = 1, sigma_range: tuple[float, float] | PutsConfig | None = None,
                    *, captions: Sequence[str] | None = None, posterior: PosteriorMode = "sample",
                    guidance: float = FLUX_DEFAULT_GUIDANCE, theta_units: str = "absolute",
                    on_step: Callable[[TiStep], None] | None = None, train_denoiser: bool = False
                    ) -> tuple[dict[str, np.ndarray], TiHistory]:
    """Textual Inversion by backpropagation: ({"clip_l": [1, d_clip], "t5": [1, d_t5]} float32, history).

    Adds `token` to `pipe` (add_placeholder_token), trains its two rows with Adam (β 0.9/0.999, ε 1e-8, no
    weight decay, constant lr; the paper's TI baseline uses lr 5e-3) on images_u8 [N, H, W, 3] uint8, and
    leaves the learned rows in the pipeline's tables so it can generate with the token afterwards.
    sigma_range: PUTS σ range — None for the spec default at the images' pixel count (PutsConfig()), a
    (low, high) pair, or a PutsConfig; ralu_edge.zo.timesteps.NO_PUTS trains on the whole range.
    captions: one template per image with '{}' for the token (default DEFAULT_CAPTION for all).
    posterior: "sample" draws x₀ from the VAE posterior every step (spec §10.1, the reference); "mean" uses the
    posterior mean, which models trained on means need (the built-in `shapes` model; see posterior_latents).
    theta_units: "absolute" trains the rows themselves; "table_rms" trains each row divided by the RMS of its
    encoder's token table, i.e. a per-encoder lr, as ralu_runtime.personalize.PersonalizeConfig.theta_units.
    train_denoiser: also train every transformer parameter with the same Adam (a DreamBooth-style full
    fine-tune, the memory baseline ZOODiP's "up to 8.2x" is measured against; issue 15)."""
    if theta_units not in ("absolute", "table_rms"):
        raise UserError(f"unknown theta_units {theta_units!r}; choose absolute or table_rms")
    if posterior not in POSTERIOR_MODES:
        raise UserError(f"unknown posterior mode {posterior!r}; choose one of {', '.join(POSTERIOR_MODES)}")
    captions = [DEFAULT_CAPTION] * len(images_u8) if captions is None else list(captions)
    _check_images(pipe, images_u8, captions)
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise UserError(f"steps ({steps}) and batch size ({batch_size}) must be ≥ 1 and lr ({lr}) positive")
    puts = (sigma_range if isinstance(sigma_range, PutsConfig) else PutsConfig() if sigma_range is None
            else PutsConfig(sigma_min=float(sigma_range[0]), sigma_max=float(sigma_range[1])))
    placeholder = add_placeholder_token(pipe, token, init_word)
    for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.transformer):
        module.requires_grad_(False)
    means, logvars = encode_image_moments(pipe, images_u8)
    ids = _caption_ids(pipe, captions, placeholder)
    scales = {}
    for key, (_, enc) in ENCODERS.items():  # the trained parameter is row / scale (the row itself when absolute)
        table = getattr(pipe, enc).get_input_embeddings().weight.detach().double()
        scales[key] = float(table[:placeholder.ids[key]].pow(2).mean().sqrt()) if theta_units == "table_rms" else 1.0
    rows = {key: torch.nn.Parameter(getattr(pipe, enc).get_input_embeddings().weight[placeholder.ids[key]]
                                    .detach().clone().float() / scales[key]) for key, (_, enc) in ENCODERS.items()}
    hooks = [_injected_rows(getattr(pipe, enc).get_input_embeddings(), placeholder.ids[key], rows[key],
                            scales[key]) for key, (_, enc) in ENCODERS.items()]
    trained = list(rows.values())
    if train_denoiser:
        pipe.transformer.requires_grad_(True)
        trained += list(pipe.transformer.parameters())
    optimizer = torch.optim.Adam(trained, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses, start = [], time.monotonic()
    try:
        for step in range(1, steps + 1):
            draw = draw_step(seed, step, num_images=len(images_u8), latent_shape=means.shape[2:], puts=puts,
                             image_pixels=images_u8.shape[1] * images_u8.shape[2], batch_size=batch_size)
            loss = _velocity_loss(pipe, means, logvars, ids, draw, posterior == "sample", guidance)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(TiStep(step, losses[-1], draw.sigmas))
    finally:
        for hook in hooks:
            hook.remove()
    embeds = {key: (row.detach() * scales[key]).cpu().numpy().astype(np.float32)[None] for key, row in rows.items()}
    with torch.no_grad():
        for key, (_, enc) in ENCODERS.items():
            table = getattr(pipe, enc).get_input_embeddings().weight
            table[placeholder.ids[key]] = torch.from_numpy(embeds[key][0]).to(table.dtype)
    return embeds, TiHistory(np.array(losses), (time.monotonic() - start) / steps)


def _velocity_loss(pipe, means: np.ndarray, logvars: np.ndarray, ids: dict[str, torch.Tensor], draw,
                   sample_posterior: bool, guidance: float) -> torch.Tensor:
    """mean((v̂(x_σ, σ, c(θ)) − (ε − x₀))²) over the step's batch (spec §11.1), differentiable in θ only."""
    vae_config = pipe.vae.config
    pair = training_pair(draw, means, logvars, shift_factor=vae_config.shift_factor or 0.0,
                         scaling_factor=vae_config.scaling_factor, sample_posterior=sample_posterior)
    grid_h, grid_w = means.shape[-2] // 2, means.shape[-1] // 2
    device, index = pipe.transformer.device, torch.from_numpy(draw.image_indices)
    pooled = pipe.text_encoder(ids["clip_l"][index].to(device)).pooler_output
    states = pipe.text_encoder_2(ids["t5"][index].to(device)).last_hidden_state
    guidance_t = None
    if getattr(pipe.transformer.config, "guidance_embeds", False):
        guidance_t = torch.full((len(index),), float(guidance), device=device)
    prediction = pipe.transformer(
        hidden_states=torch.from_numpy(pair.x_sigma).to(device),
        timestep=torch.from_numpy(draw.sigmas.astype(np.float32)).to(device),
        guidance=guidance_t, pooled_projections=pooled, encoder_hidden_states=states,
        txt_ids=torch.zeros(states.shape[1], 3, device=device),
        img_ids=torch.from_numpy(grid_positions(grid_h, grid_w)).float().to(device), return_dict=False)[0]
    return F.mse_loss(prediction.float(), torch.from_numpy(pair.target).to(device))


def save_learned_embeds(path: str | os.PathLike, embeds: dict[str, np.ndarray], token: str,
                        init_word: str | None = None) -> Path:
    """Write learned_embeds.safetensors atomically (temporary file in the folder, then rename; spec §11.6):
    one [num_vectors, d] float32 tensor per encoder key, metadata {"format": "pt", "token", "init_word"}."""
    from safetensors.numpy import save_file

    path = Path(path)
    unknown = set(embeds) - set(ENCODERS)
    if unknown or not embeds:
        raise ValueError(f"embedding keys must be among {sorted(ENCODERS)}, got {sorted(embeds)}")
    tensors = {key: np.ascontiguousarray(np.atleast_2d(value), dtype=np.float32) for key, value in embeds.items()}
    metadata = {"format": "pt", "token": token, **({"init_word": init_word} if init_word else {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_learned_embeds(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(embeddings per encoder key [num_vectors, d] float32, metadata) of a file save_learned_embeds wrote."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = dict(f.metadata() or {})
            embeds = {key: f.get_tensor(key) for key in f.keys()}
    except (OSError, SafetensorError) as e:
        raise UserError(f"{path}: not a readable learned_embeds.safetensors ({e.__class__.__name__}); "
                        "re-run the personalization that wrote it") from None
    if "token" not in metadata or not embeds or set(embeds) - set(ENCODERS):
        raise UserError(f"{path}: expected keys among {sorted(ENCODERS)} and a 'token' in the metadata; "
                        "re-run the personalization that wrote it")
    return embeds, metadata
