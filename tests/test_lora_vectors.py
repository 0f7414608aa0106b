"""The Kotlin core's LoRA vectors (android_demo/core/src/test/resources/lora_vectors, issue 17) are what the
Python runtime computes from the folder's own inputs today, and come from the LoRA this repository trains."""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from ralu_export.conformance.lora_vectors import LORA, expected_overrides

FOLDER = Path(__file__).resolve().parents[1] / "android_demo" / "core" / "src" / "test" / "resources" / "lora_vectors"


def test_the_vectors_are_the_runtimes_overrides_bit_for_bit():
    index = json.loads((FOLDER / "index.json").read_text())
    ours = expected_overrides(FOLDER)
    assert sum(len(t) for t in ours.values()) == len(index["expected"])
    for e in index["expected"]:
        written = np.fromfile(FOLDER / e["file"], dtype=e["dtype"]).reshape(e["shape"])
        np.testing.assert_array_equal(ours[e["graph"]][e["name"]], written)
    assert {e["dtype"] for e in index["expected"]} == {"float32", "int8", "uint8"}


def test_the_vector_lora_is_cut_from_the_trained_lora():
    subset, trained = load_file(str(FOLDER / "lora.safetensors")), load_file(str(LORA))
    shared = [k for k in subset if k in trained]
    assert shared and all(np.array_equal(subset[k], trained[k]) for k in shared)
