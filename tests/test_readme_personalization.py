"""The README's personalization quick start: the diffusers snippet runs as written on a file that a real
`ralu-personalize` process wrote, and puts exactly that file's vectors into the pipeline's two text encoders
(issue 13: `load_textual_inversion(path)` alone refuses a file with one entry per encoder)."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from tests.conftest import random_image_folder

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "<my-shape>"


def _readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (snippet,) = [b for b in blocks if "load_textual_inversion" in b]
    return snippet


def test_the_readme_diffusers_snippet_loads_what_ralu_personalize_wrote(desktop_bundle, tmp_path):
    from safetensors.numpy import load_file

    from ralu_export import builtin_model_path

    images = random_image_folder(tmp_path / "my_photos")
    learned_path = tmp_path / "learned_embeds.safetensors"
    done = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_personalize", "--bundle", str(desktop_bundle),
                           "--images", str(images), "--token", TOKEN, "--init-word", "square", "--steps", "2",
                           "--threads", "1", "--out", str(learned_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    snippet = _readme_python()
    for literal, actual in (('"export/builtin/shapes"', repr(str(builtin_model_path("shapes")))),
                            ('"out/learned_embeds.safetensors"', repr(str(learned_path)))):
        assert snippet.count(literal) == 1, literal
        snippet = snippet.replace(literal, actual)
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the README's code, run as written

    pipe, image = namespace["pipe"], namespace["image"]
    assert image.size == (128, 128)
    learned = load_file(str(learned_path))
    for tokenizer, encoder, key in ((pipe.tokenizer, pipe.text_encoder, "clip_l"),
                                    (pipe.tokenizer_2, pipe.text_encoder_2, "t5")):
        token_id = tokenizer.convert_tokens_to_ids(TOKEN)
        row = encoder.get_input_embeddings().weight[token_id].detach().numpy()
        np.testing.assert_array_equal(row, learned[key][0])
