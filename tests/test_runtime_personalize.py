"""Forward-only ZO personalization through a real bundle (runs under the torch blocker too): it learns, its
checkpoints resume bit for bit, its output loads into the Pipeline, and bad input exits 2 with nothing
written."""

import subprocess
import sys

import numpy as np
import pytest

from ralu_edge.errors import UserError
from ralu_edge.zo.optimizer import ZOConfig
from ralu_runtime.personalize import PersonalizeConfig, Personalizer
from ralu_runtime.pipeline import Pipeline


def _renders(n=3):
    from PIL import Image  # noqa: F401  (Pillow is a runtime dependency)

    rng = np.random.default_rng(0)
    base = np.full((n, 128, 128, 3), 200, np.uint8)
    yy, xx = np.mgrid[:128, :128]
    for i in range(n):
        mask = (np.abs(yy - 64) + np.abs(xx - 64 - i)) < 30  # a diamond-ish blob
        base[i][mask] = rng.integers(0, 255, 3)
    return base


@pytest.fixture(scope="module")
def personalizer(desktop_bundle):
    return Personalizer.from_bundle(desktop_bundle, threads=2)


def test_init_embedding_is_the_init_words_row(personalizer):
    rows = personalizer.init_embeddings("circle")
    assert set(rows) == {"text_encoder", "text_encoder_2"}
    assert all(v.shape == (128,) and np.isfinite(v).all() for v in rows.values())


def test_a_resumed_run_equals_an_uninterrupted_one(personalizer, tmp_path):
    images = _renders()
    config = PersonalizeConfig(steps=4, seed=7, checkpoint_every=2, zo=ZOConfig(tau=3))
    full = personalizer.fit(images, "<blob>", "square", config, checkpoint=tmp_path / "a")
    first = personalizer.fit(images, "<blob>", "square", PersonalizeConfig(
        steps=2, seed=7, checkpoint_every=2, zo=ZOConfig(tau=3)), checkpoint=tmp_path / "b")
    rest = personalizer.fit(images, "<blob>", "square", config, checkpoint=tmp_path / "b", resume=True)
    assert rest.resumed_from == 2 and rest.steps_done == 4
    for name in full.embeddings:
        assert np.array_equal(full.embeddings[name], rest.embeddings[name])
    assert full.losses == first.losses + rest.losses[2:] or len(rest.losses) == 4
    assert not np.array_equal(full.embeddings["text_encoder"], personalizer.init_embeddings("square")["text_encoder"])


def test_the_output_file_drives_generation_with_the_new_token(personalizer, desktop_bundle, tmp_path):
    result = personalizer.fit(_renders(2), "<blob>", "square", PersonalizeConfig(steps=2, seed=1))
    path = personalizer.save(result, tmp_path / "learned_embeds.safetensors", "square")
    pipe = Pipeline.from_bundle(desktop_bundle, threads=2, embeddings=path)
    image = pipe("a red <blob> in the centre", mode="ralu-7x", seed=0).image
    assert image.shape == (128, 128, 3)


@pytest.mark.parametrize("token, init_word, message", [
    ("circle", "square", "already in the vocabulary"),
    ("<new>", "zebra", "init word 'zebra' is"),
])
def test_bad_token_or_init_word_is_a_user_error(personalizer, token, init_word, message):
    with pytest.raises(UserError, match=message):
        personalizer.fit(_renders(1), token, init_word, PersonalizeConfig(steps=1))


def test_cli_rejects_a_broken_image_and_writes_nothing(desktop_bundle, tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.png").write_text("not an image")
    out = tmp_path / "learned.safetensors"
    done = subprocess.run([sys.executable, "-m", "ralu_runtime.cli_personalize", "--bundle", str(desktop_bundle),
                           "--images", str(images), "--token", "<x>", "--init-word", "square", "--steps", "1",
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "a.png: not a readable image" in done.stderr.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == [images]


def test_table_rms_units_scale_each_encoders_step_by_its_table(personalizer):
    """theta_units="table_rms": the optimiser works in θ / (per-encoder table RMS), so one lr moves each encoder's
    row by the same share of its own table's scale (CLIP rows are ~50x smaller than T5 rows in this model)."""
    from safetensors.numpy import load_file

    scale = personalizer.theta_scale("table_rms")
    encoders = personalizer.bundle.manifest.text_encoders
    for e, part in zip(encoders, np.split(scale, np.cumsum([x.hidden_size for x in encoders])[:-1])):
        table = load_file(str(personalizer.bundle.path(e.token_embeddings)))["weight"].astype(np.float64)
        assert np.allclose(part, np.sqrt(np.mean(table ** 2)), rtol=1e-6)
    assert np.array_equal(personalizer.theta_scale("absolute"), np.ones_like(scale))
    init = personalizer.init_embeddings("square")
    config = PersonalizeConfig(steps=1, seed=3, theta_units="table_rms", zo=ZOConfig(lr=1e-2))
    moved = personalizer.fit(_renders(1), "<blob>", "square", config).embeddings
    for e, part in zip(encoders, np.split(scale, np.cumsum([x.hidden_size for x in encoders])[:-1])):
        step = np.abs(moved[e.name] - init[e.name])  # Adam's first step is lr·sign(g) per coordinate, in units
        assert 0 < step.max() <= 1e-2 * part[0] * (1 + 1e-4)
    with pytest.raises(UserError, match="theta_units"):
        PersonalizeConfig(theta_units="relative")


def _cli(bundle, images, out, *extra):
    return subprocess.run([sys.executable, "-m", "ralu_runtime.cli_personalize", "--bundle", str(bundle), "--images",
                           str(images), "--token", "<blob>", "--init-word", "square", "--threads", "1", "--out",
                           str(out), *extra], capture_output=True, text=True)


def _image_folder(path, n=2):
    from PIL import Image

    path.mkdir()
    for i, image in enumerate(_renders(n)):
        Image.fromarray(image).save(path / f"{i}.png")
    return path


def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_embedding(desktop_bundle, tmp_path):
    """The real process is killed (SIGKILL, no cleanup) once its checkpoint reaches a random step; --resume then
    finishes, and the file equals an uninterrupted run's bit for bit."""
    import json
    import os
    import signal
    import time

    from safetensors.numpy import load_file

    images = _image_folder(tmp_path / "imgs")
    steps = ["--steps", "40", "--seed", "3", "--checkpoint-every", "1"]
    whole = _cli(desktop_bundle, images, tmp_path / "whole.safetensors", *steps)
    assert whole.returncode == 0, whole.stderr[-2000:]
    kill_after = int(np.random.default_rng().integers(1, 30))  # random on purpose: any step must resume exactly
    out = tmp_path / "killed.safetensors"
    state = tmp_path / "killed.safetensors.checkpoint" / "state.json"
    proc = subprocess.Popen([sys.executable, "-m", "ralu_runtime.cli_personalize", "--bundle", str(desktop_bundle),
                             "--images", str(images), "--token", "<blob>", "--init-word", "square", "--threads", "1",
                             "--out", str(out), *steps], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["state"]["step"] >= kill_after:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before step {kill_after} could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    resumed = _cli(desktop_bundle, images, out, *steps, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["resumed_from"] >= kill_after
    a, b = load_file(str(tmp_path / "whole.safetensors")), load_file(str(out))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case, message", [
    ("missing", "no such images folder"),
    ("empty", "no PNG or JPEG images in it"),
    ("no_vae_encoder", "bundle has no VAE encoder graph"),
])
def test_cli_bad_inputs_exit_2_and_write_nothing(desktop_bundle, tmp_path, case, message):
    import json
    import shutil

    bundle, images = desktop_bundle, tmp_path / "imgs"
    if case == "empty":
        images.mkdir()
    elif case == "no_vae_encoder":
        images = _image_folder(images)
        bundle = tmp_path / "bundle"
        shutil.copytree(desktop_bundle, bundle)
        config = json.loads((bundle / "ralu_config.json").read_text())
        config["graphs"] = [g for g in config["graphs"] if g["role"] != "vae_encoder"]
        config["files"] = [f for f in config["files"] if not f["path"].startswith("vae_encoder/")]
        (bundle / "ralu_config.json").write_text(json.dumps(config))
        shutil.rmtree(bundle / "vae_encoder")
    out = tmp_path / "out" / "learned.safetensors"
    out.parent.mkdir()
    done = _cli(bundle, images, out, "--steps", "1")
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr.strip().splitlines()[-1]
    assert list(out.parent.iterdir()) == []
