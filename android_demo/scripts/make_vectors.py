#!/usr/bin/env python3
"""Write the conformance vectors the Kotlin core tests replay (android_demo/core/src/test/resources/vectors).

Which denoiser produced them: the torch reference backend (`ralu_export.torch_backend.TorchFluxDenoiser`) over
the built-in `shapes` model (FLUX family, 128 px, packed grid 16x16, 16 channels per token), fp32 on the CPU,
with FluxPipeline's own initial noise per seed and its own prompt encoding (max_sequence_length 32); the
guided run (classifier-free guidance at the scale its RunSpec names) encodes the negative prompt "" the same way,
on its own, as FluxPipeline does with true_cfg_scale. The personalization steps use the same transformer with the exported text-encoder wrappers
(`ralu_export.graph_modules.ClipTextEncoder` / `T5TextEncoder`, embeddings injected at the placeholder) and
VAE posterior moments of ShapesWorld training images from `graph_modules.VaeEncoder`. The host-side values
(schedules, token layouts, draws, renoising, Euler updates, ZO updates) are computed by ralu_edge via
`ralu_export.conformance.write_vectors`, which accepts any seam denoiser; the denoiser only supplies the
recorded velocities. Every prompt is tokenized by the runtime's recipe (ralu_runtime.tokenization.PromptTokenizer)
with the pipeline tokenizers' pad, eos and vocabulary size, as an export's manifest records them.

Also writes a small bundle fixture (`bundle/`): placeholder graph files, the real tokenizer files and a
`ralu_config.json` built with ralu_edge.manifest from the flux family's graph declarations, for the Kotlin
manifest parser and checksum verification.

Needs the export extras (torch, diffusers). Takes about a minute on 2 cores. Usage:
    .venv/bin/python android_demo/scripts/make_vectors.py [--out DIR]"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "android_demo/core/src/test/resources/vectors"
SIZE = 128
TEXT_LENGTH = 32
PLACEHOLDER = "<shape-token>"
INIT_WORD = "circle"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="vector folder to (re)write")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser


def tokenizer_configs(pipe) -> dict:
    """name -> TokenizerConfig of the pipeline's two tokenizers at TEXT_LENGTH (what an export's manifest says)."""
    from ralu_runtime.tokenization import TokenizerConfig

    return {name: TokenizerConfig(TEXT_LENGTH, int(tok.pad_token_id), int(tok.eos_token_id), len(tok))
            for name, tok in (("tokenizer", pipe.tokenizer), ("tokenizer_2", pipe.tokenizer_2))}


def tokenizer_file(name: str) -> Path:
    from ralu_export import builtin_model_path

    return builtin_model_path("shapes") / name / "tokenizer.json"


class PersonalizationModel:
    """query_velocity for the ZO case: θ = [CLIP row ‖ T5 row] injected at the placeholder of the caption."""

    def __init__(self, pipe, caption: str):
        import torch

        from ralu_export import graph_modules as gm
        from ralu_export.torch_backend import TorchFluxDenoiser
        from ralu_runtime.tokenization import PromptTokenizer

        self.torch, self.pipe = torch, pipe
        self.clip = gm.ClipTextEncoder(pipe.text_encoder).eval()
        self.t5 = gm.T5TextEncoder(pipe.text_encoder_2).eval()
        self.denoiser = TorchFluxDenoiser(pipe.transformer)
        self.ids, self.placeholder_ids, self.init_rows = {}, {}, {}
        configs = tokenizer_configs(pipe)
        for name, encoder in (("tokenizer", pipe.text_encoder), ("tokenizer_2", pipe.text_encoder_2)):
            init_ids = getattr(pipe, name).encode(INIT_WORD, add_special_tokens=False)
            if len(init_ids) != 1:
                raise SystemExit(f"init word {INIT_WORD!r} is {len(init_ids)} tokens in {name}; pick a single-token word")
            tok = PromptTokenizer(tokenizer_file(name), configs[name], (PLACEHOLDER,))  # the runtime's recipe
            self.ids[name] = torch.from_numpy(tok.encode(caption))
            self.placeholder_ids[name] = torch.tensor([tok.placeholder_ids[PLACEHOLDER]], dtype=torch.int64)
            self.init_rows[name] = encoder.get_input_embeddings().weight[init_ids[0]].detach().numpy().copy()
        self.clip_dim = self.init_rows["tokenizer"].shape[0]

    def theta0(self) -> np.ndarray:
        return np.concatenate([self.init_rows["tokenizer"], self.init_rows["tokenizer_2"]]).astype(np.float32)

    def __call__(self, theta: np.ndarray, x_sigma: np.ndarray, sigma: float) -> np.ndarray:
        from ralu_edge.seam import Conditioning

        torch = self.torch
        rows = torch.from_numpy(np.ascontiguousarray(theta, dtype=np.float32))
        with torch.inference_mode():
            _, pooled = self.clip(self.ids["tokenizer"], self.placeholder_ids["tokenizer"], rows[None, :self.clip_dim])
            states = self.t5(self.ids["tokenizer_2"], self.placeholder_ids["tokenizer_2"], rows[None, self.clip_dim:])
        cond = Conditioning(text_states=states.float().numpy(), pooled=pooled.float().numpy())
        return self.denoiser(x_sigma, _positions(), np.array([sigma], np.float32), cond)


def _positions() -> np.ndarray:
    from ralu_edge.tokens import grid_positions

    return grid_positions(SIZE // 8, SIZE // 8)


def vae_moments(pipe, count: int = 3) -> np.ndarray:
    """[count, 2 (flip), 2·C, h, w] float32 raw posterior mean ‖ logvar of ShapesWorld training images."""
    import torch

    from ralu_export import graph_modules as gm
    from ralu_export.shapes_world import render_batch

    encoder = gm.VaeEncoder(pipe.vae).eval()
    images, _, _ = render_batch(seed=5, start=0, count=count, size=SIZE)
    out = []
    for image in images:
        pixels = torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        with torch.inference_mode():
            pair = [encoder(pixels)[0], encoder(torch.flip(pixels, dims=[3]))[0]]
        out.append(torch.cat(pair).numpy())
    return np.stack(out).astype(np.float32)


def bundle_fixture(pipe_folder: Path):
    """extra_files for write_vectors: a small bundle with placeholder graphs and a real manifest."""

    def write(folder: Path) -> dict:
        from ralu_edge import manifest as mf
        from ralu_edge import presets
        from ralu_export.families import FLUX
        from ralu_export.families.spec import present, tensor_specs
        from ralu_export.int8_policy import int8_method, precision_label

        bundle = folder / "bundle"
        geometry = FLUX.geometry(pipe_folder, SIZE, SIZE)
        sizes = geometry.sizes()
        graphs = []
        for spec in FLUX.graphs:
            if "android" not in spec.targets:
                continue
            path = bundle / spec.folder / f"{spec.stem}.ort"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"conformance fixture, not a real graph: {spec.name}\n".encode())
            graphs.append(mf.GraphEntry(name=spec.name, role=spec.role, file=f"{spec.folder}/{spec.stem}.ort",
                                        format="ort",
                                        precision=precision_label(int8_method("android", "int8", spec)),
                                        inputs=tensor_specs(present(spec.inputs, geometry), sizes),
                                        outputs=tensor_specs(spec.outputs, sizes)))
        (bundle / "required_operators.config").write_text("# conformance fixture\n")
        tokenizers, encoders = [], []
        for role, bos in zip(FLUX.encoders, (0, None)):
            vocab = sizes[role.vocab]
            target = bundle / role.tokenizer / "tokenizer.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pipe_folder / role.tokenizer / "tokenizer.json", target)
            tokenizers.append(mf.TokenizerSpec(
                name=role.tokenizer, files=(f"{role.tokenizer}/tokenizer.json",), file=f"{role.tokenizer}/tokenizer.json",
                kind=role.kind, max_length=sizes[role.length],
                pad_token_id=1 if role.kind == "clip" else 0, eos_token_id=1, bos_token_id=bos, first_free_id=vocab))
            hidden = sizes[role.hidden_size]
            encoders.append(mf.TextEncoderSpec(
                name=role.graph, graph=role.graph, tokenizer=role.tokenizer, kind=role.kind, use=role.use,
                hidden_size=hidden, vocab_rows=vocab, sequence_output=role.sequence_output.format(**sizes),
                pooled_output=role.pooled_output, placeholder_ids_input="placeholder_ids",
                placeholder_embeds_input="placeholder_embeds",
                precision=precision_label(int8_method("android", "int8", FLUX.graph(role.graph)))))
        resolution = mf.Resolution(SIZE, SIZE, geometry.latent_height, geometry.latent_width, geometry.grid_height,
                                   geometry.grid_width)
        preset_entries = tuple(
            mf.PresetEntry(name=p.name, preset=p.to_dict(), stages=(mf.PresetStages(
                SIZE, SIZE, p.num_selected(geometry.grid_height, geometry.grid_width),
                p.stage_lengths(geometry.grid_height, geometry.grid_width)),))
            for p in (presets.get("flux-4x"), presets.get("flux-5x"), presets.get("flux-7x")))
        manifest = mf.Manifest(
            format=mf.BUNDLE_FORMAT, format_version=mf.FORMAT_VERSION,
            exporter=mf.ExporterInfo("ralu-export", "fixture"),
            model=mf.ModelInfo("flux", "shapes", "FluxPipeline"), target="android", precision="int8",
            resolutions=(resolution,),
            vae=mf.VaeSpec(geometry.latent_channels, geometry.vae_factor, geometry.vae_scaling, geometry.vae_shift),
            text_length=geometry.text_length,
            rope=geometry.rope,
            denoiser=mf.DenoiserSpec(
                packaging="dynamic", packaging_note="fixture: one session over a dynamic token axis",
                token_dim="num_image_tokens", rope_token_dim="num_rope_tokens",
                stage_lengths=tuple(sorted({n for e in preset_entries for n in e.stages[0].stage_lengths})),
                token_channels=geometry.token_channels,
                text_length=geometry.text_length, text_dim=geometry.text_dim, pooled_dim=geometry.pooled_dim,
                guidance=geometry.guidance, timestep="sigma", stage_graphs=(mf.StageGraph("denoiser"),)),
            text_encoders=tuple(encoders), tokenizers=tuple(tokenizers), graphs=tuple(graphs),
            presets=preset_entries, files=mf.file_entries(bundle),
            notes={"fixture": "written by android_demo/scripts/make_vectors.py; graph files are placeholders"})
        mf.write_manifest(bundle, manifest)
        return {"bundle": "bundle"}

    return write


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch

    from ralu_edge.zo import PutsConfig, ZOConfig
    from ralu_export import builtin_model_path
    from ralu_export import torch_backend as tb
    from ralu_export import conformance as cf
    from ralu_export.models import load_flux_pipeline

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    pipe = load_flux_pipeline("shapes")
    grid = tb.packed_grid(pipe, SIZE, SIZE)
    caption = f"a photo of a {PLACEHOLDER} on a grey background"
    model = PersonalizationModel(pipe, caption)
    zo_case = cf.ZoCase(
        config=ZOConfig(tau=4), puts=PutsConfig(), seed=11, steps=9, moments=vae_moments(pipe),
        theta0=model.theta0(), shift_factor=float(pipe.vae.config.shift_factor),
        scaling_factor=float(pipe.vae.config.scaling_factor), image_pixels=SIZE * SIZE,
        notes={"caption": caption, "placeholder": PLACEHOLDER, "init_word": INIT_WORD,
               "theta_layout": "CLIP row (128) then T5 row (128)", "tau": "4 so that SG refreshes at steps 4 and 8"})
    shapes = builtin_model_path("shapes")
    configs = tokenizer_configs(pipe)
    sources = cf.VectorSources(
        denoiser=tb.TorchFluxDenoiser(pipe.transformer),
        cond_for=lambda prompt: tb.encode_prompt(pipe, [prompt], max_sequence_length=TEXT_LENGTH),
        noise_for=lambda seed: tb.initial_noise(pipe, seed, SIZE, SIZE),
        grid=grid, latent_channels=pipe.transformer.config.in_channels // 4,
        tokenizer_files={"tokenizer": (tokenizer_file("tokenizer"), "clip", configs["tokenizer"]),
                         "tokenizer_2": (tokenizer_file("tokenizer_2"), "t5", configs["tokenizer_2"])},
        provenance={"script": "android_demo/scripts/make_vectors.py",
                    "denoiser": "ralu_export.torch_backend.TorchFluxDenoiser over the built-in shapes model, "
                                "fp32, CPU",
                    "noise": "FluxPipeline's initial noise (torch.Generator().manual_seed(seed))",
                    "model": "shapes (FLUX family), 128 px, grid 16x16, 16 channels per token",
                    "torch": torch.__version__, "numpy": np.__version__},
        zo_case=zo_case, query_velocity=model, extra_files=bundle_fixture(shapes))
    out = cf.write_vectors(args.out, sources)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out} ({total / 1e6:.2f} MB)")
    problems = cf.check_vectors(out)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
