"""Every training entry point runs a couple of steps, resumes, and assembles a loadable FluxPipeline (its refusals
of bad input are in test_cli_errors.py)."""

import json
import subprocess
import sys


def test_train_all_resume_and_assemble_for_a_few_steps(tmp_path):
    base = [sys.executable, "-m", "ralu_export.training.cli", "all", "--work", str(tmp_path / "w"),
            "--weights-out", str(tmp_path / "weights"), "--threads", "2", "--num-images", "16", "--vae-steps", "2",
            "--vae-batch", "2", "--dit-batch", "2", "--clf-images", "16", "--clf-steps", "2", "--clf-batch", "4",
            "--workers", "1", "--checkpoint-every", "1"]
    first = subprocess.run(base + ["--dit-steps", "2"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = subprocess.run(base + ["--dit-steps", "3"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((tmp_path / "weights" / "training_report.json").read_text())
    assert report["dit"]["steps"] == 3 and report["vae"]["steps"] == 2
    out = subprocess.run([sys.executable, "-m", "ralu_export.training.cli", "assemble", "--weights",
                          str(tmp_path / "weights"), "--out", str(tmp_path / "pipe"), "--classifier-out",
                          str(tmp_path / "clf.safetensors")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(tmp_path / "pipe"), local_files_only=True)
    assert pipe.transformer.config.in_channels == 16


def test_training_continues_from_the_shipped_pipeline_folder(tmp_path):
    """The next GPU session continues from export/builtin/shapes itself (no packed shards needed): a step
    from there keeps the shipped VAE and classifier bit for bit and moves the transformer."""
    import torch
    from safetensors.torch import load_file

    from ralu_export import builtin_model_path

    shipped = builtin_model_path("shapes")
    done = subprocess.run([sys.executable, "-m", "ralu_export.training.cli", "all", "--work", str(tmp_path / "w"),
                           "--weights-out", str(tmp_path / "weights"), "--threads", "2", "--num-images", "16",
                           "--dit-batch", "2", "--dit-steps", "1", "--dit-warmup", "1", "--workers", "1",
                           "--init-weights", str(shipped)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    vae = load_file(str(tmp_path / "weights" / "vae.safetensors"))
    ref = load_file(str(shipped / "vae" / "diffusion_pytorch_model.safetensors"))
    assert vae.keys() == ref.keys() and all(torch.equal(vae[k], ref[k]) for k in ref)
    clf = load_file(str(tmp_path / "weights" / "classifier.safetensors"))
    ref_clf = load_file(str(shipped.parent / "classifier.safetensors"))
    assert all(torch.equal(clf[k], ref_clf[k]) for k in ref_clf)
    report = json.loads((tmp_path / "weights" / "training_report.json").read_text())
    assert report["init_weights"]["from"] == str(shipped) and report["dit"]["steps"] == 1


def test_a_round_with_the_issue_12_levers_records_its_learning_curve(tmp_path):
    """Plain backgrounds, caption dropout, fixed templates (no rotation or jitter), one resolution, and a
    learning-curve point before and after the step (held-out prompts sampled by the EMA model, scored without
    and with true CFG) in the packed report; the encoded latents are cached for a resumed run, keyed by the
    rendering settings."""
    from ralu_export import builtin_model_path
    from ralu_export.training.run import samples_seen_in

    shipped = builtin_model_path("shapes")
    done = subprocess.run([sys.executable, "-m", "ralu_export.training.cli", "all", "--work", str(tmp_path / "w"),
                           "--weights-out", str(tmp_path / "weights"), "--threads", "2", "--num-images", "8",
                           "--dit-batch", "2", "--dit-steps", "1", "--dit-warmup", "1", "--workers", "1",
                           "--backgrounds", "plain", "--caption-dropout", "0.5", "--resolutions", "64:1",
                           "--eval-every", "1", "--eval-steps", "1", "--eval-guidance", "2",
                           "--max-rotation", "0", "--position-jitter", "0", "--two-object-fraction", "0.6",
                           "--shape-weights", "circle:2,hexagon:2",
                           "--init-weights", str(shipped)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "weights" / "training_report.json").read_text())
    assert report["train_config"]["max_rotation"] == 0.0 and report["train_config"]["position_jitter"] == 0.0
    assert report["train_config"]["two_object_fraction"] == 0.6
    curve = report["learning_curve"]
    assert [p["step"] for p in curve] == [0, 1] and curve[1]["samples_seen"] == curve[0]["samples_seen"] + 2
    assert curve[0]["samples_seen"] == samples_seen_in(report["init_weights"]["earlier_report"]) > 0
    for point in curve:
        for key in ("cfg1", "cfg2"):
            assert 0.0 <= point[key]["attribute_accuracy_single"] <= 1.0 and point[key]["colour_accuracy"] >= 0.0
    assert report["train_config"]["backgrounds"] == "plain" and report["samples_seen"] == curve[1]["samples_seen"]
    import torch

    key = torch.load(tmp_path / "w" / "latents.pt")["key"]  # a cache of other renders is not reused
    assert key["max_rotation"] == 0.0 and key["position_jitter"] == 0.0 and key["two_object_fraction"] == 0.6
    assert key["shape_weights"] == report["train_config"]["shape_weights"] == "circle:2,hexagon:2"
