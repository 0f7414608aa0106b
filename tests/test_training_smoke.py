"""Every training entry point runs a couple of steps, resumes, and assembles a loadable FluxPipeline."""

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


def test_assemble_refuses_a_folder_without_a_report(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ralu_export.training.cli", "assemble", "--weights", str(tmp_path),
                          "--out", str(tmp_path / "p"), "--classifier-out", str(tmp_path / "c")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "no training_report.json" in out.stderr
