"""Fuzzing the runtime's inputs (issue 13): damaged bundles (every manifest field and every file: truncated,
flipped, swapped, linked out of the bundle, absolute and ../ paths, huge shapes, NaN/Inf, wrong dtypes, with and
without a re-hashed manifest), `ralu-personalize` inputs and `--embeddings` files. Every run must either
succeed or end with one `error:` sentence and exit status 2; never a traceback, never a read outside the
bundle. Cases come from hypothesis; the harness is tests/fuzz_inputs.py.

The fast tests run a fixed (derandomized) handful of cases; the slow ones run hundreds with a pinned seed and
print their counts:  HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q -s -m slow tests/test_fuzz_inputs.py"""

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests.fuzz_inputs import (
    MANIFEST, PROMPT, OpenWatch, Tally, damage_file, damage_tensor_file, json_paths, link_copy,
    replacement_values, resign, run_main, set_json,
)

FILE_OPS = ("truncate", "flip", "swap", "nan", "inf", "symlink_out", "folder", "delete")
TENSOR_OPS = ("nan_rows", "inf_rows", "float16", "int32", "float64", "transposed", "one_row", "renamed")
SEED = 13
FAST = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def slow_settings(n):
    return settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))


class World:
    """The reference bundle, the canary folder every outward damage points at, the watch, the tallies."""

    def __init__(self, bundle: Path, root: Path):
        from ralu_runtime import cli_run

        self.bundle, self.root = bundle, root
        self.canary = root / "canary"
        self.canary.mkdir()
        self.canary_file = self.canary / "tokenizer.json"  # a readable tokenizer, so a read would "work"
        self.canary_file.write_bytes((bundle / "tokenizer" / "tokenizer.json").read_bytes())
        self.watch = OpenWatch(self.canary)
        self.watch.wrap_native_readers()
        self.manifest = json.loads((bundle / MANIFEST).read_text())
        self.paths = json_paths(self.manifest)
        self.files = [f["path"] for f in self.manifest["files"]]
        self.tables = [e["token_embeddings"] for e in self.manifest["text_encoders"]]
        self.values = replacement_values(self.canary_file, root / "case")
        self.tallies = {"bundle": Tally(), "personalize": Tally(), "embeddings": Tally()}
        self.reference = {}
        for mode in ("baseline", "ralu-7x"):
            out = root / f"reference-{mode}"
            assert cli_run.main(self._run_args(bundle, out, mode)) == 0
            self.reference[mode] = _pixels(next(out.glob("*.png")))

    @staticmethod
    def _run_args(bundle: Path, out: Path, mode: str, *extra: str) -> list[str]:
        return ["--bundle", str(bundle), "--prompt", PROMPT, "--mode", mode, "--steps", "1", "--threads", "1",
                "--no-progress", "--out", str(out), *extra]


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def world(desktop_bundle, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("fuzz")
    mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
    w = World(desktop_bundle, root)
    yield w
    w.watch.restore()
    mp.undo()
    for name, tally in w.tallies.items():
        if tally.counts:
            print(f"\nfuzz {name}: {json.dumps(tally.summary())}"
                  + (f" different images from: {dict(tally.different)}" if tally.different else ""))
            for reason, count in tally.reasons.most_common(12):
                print(f"  {count:4d}  {reason}")


# ------------------------------------------------------------------------------------------ damaged bundles

def _bundle_damage(world_paths, world_files, world_tables, n_values):
    sections: dict = {}
    for path in world_paths:  # each top-level section equally likely, not each of its ~1000 leaves
        sections.setdefault(path[0], []).append(path)
    some_path = st.sampled_from(sorted(sections)).flatmap(lambda name: st.sampled_from(sections[name]))
    manifest_edit = st.tuples(st.just("manifest"), some_path,
                              st.one_of(st.integers(0, n_values - 1), st.just("delete")))
    file_edit = st.tuples(st.just("file"), st.sampled_from(world_files), st.sampled_from(FILE_OPS),
                          st.floats(0, 1, exclude_max=True), st.sampled_from(world_files), st.booleans())
    tensor_edit = st.tuples(st.just("tensor"), st.sampled_from(world_tables), st.sampled_from(TENSOR_OPS),
                            st.booleans())
    return st.lists(st.one_of(manifest_edit, file_edit, tensor_edit), min_size=1, max_size=3)


def _apply(world: World, case: Path, edits) -> str:
    """Damage the copy at `case` (file damage first, then manifest edits); returns a label naming it."""
    labels = []
    for edit in sorted(edits, key=lambda e: e[0] == "manifest"):
        if edit[0] == "file":
            _, rel, op, where, other, rehash = edit
            if not (case / rel).is_file() or (op == "swap" and (other == rel or not (case / other).is_file())):
                continue
            if (case / rel).is_symlink() or (op == "swap" and (case / other).is_symlink()):
                continue  # already linked out: damaging it would make this harness read the canary itself
            damage_file(case, rel, op, where, other, world.canary)
            if rehash:
                resign(case, rel)
                if op == "swap":
                    resign(case, other)
            labels.append(f"file {rel} {op}{' re-hashed' if rehash else ''}")
        elif edit[0] == "tensor":
            _, rel, op, rehash = edit
            if not (case / rel).is_file() or (case / rel).is_symlink():
                continue
            damage_tensor_file(case / rel, op)
            if rehash:
                resign(case, rel)
            labels.append(f"tensor {rel} {op}{' re-hashed' if rehash else ''}")
        else:
            _, path, choice = edit
            data = json.loads((case / MANIFEST).read_text())
            try:
                if choice == "delete":
                    set_json(data, path, None, delete=True)
                else:
                    set_json(data, path, world.values[choice])
            except (KeyError, IndexError, TypeError):
                continue  # an earlier edit removed or retyped the parent
            (case / MANIFEST).write_text(json.dumps(data))
            shown = "deleted" if choice == "delete" else repr(world.values[choice])[:40]
            labels.append(f"manifest {'.'.join(map(str, path))} = {shown}")
    return "; ".join(labels) or "no damage"


def _check_bundle_case(world: World, edits, mode: str) -> None:
    from ralu_runtime import cli_run

    case = link_copy(world.bundle, world.root / "case")
    label = _apply(world, case, edits) + f" [{mode}]"
    out = world.root / "out"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    outcome = run_main(cli_run.main, World._run_args(case, out, mode), world.watch)
    if outcome.kind == "success":
        outcome.identical = bool(np.array_equal(_pixels(next(out.glob("*.png"))), world.reference[mode]))
    elif out.exists():
        outcome.kind, outcome.detail = "unclean", f"refused but left {sorted(p.name for p in out.iterdir())}"
    world.tallies["bundle"].add(label, outcome)
    assert outcome.kind in ("success", "refusal") and not outcome.outside, f"{label}\n{outcome}"


def _bundle_test(settings_):
    def decorate(_):
        @settings_
        @given(data=st.data(), mode=st.sampled_from(["baseline", "ralu-7x"]))
        def test(world, data, mode):
            edits = data.draw(_bundle_damage(world.paths, world.files, world.tables, len(world.values)))
            _check_bundle_case(world, edits, mode)
        return test
    return decorate


@_bundle_test(FAST)
def test_a_damaged_bundle_runs_identically_or_is_refused_in_one_sentence():
    """(fast: a fixed dozen cases)"""


@pytest.mark.slow
@seed(SEED)
@_bundle_test(slow_settings(1000))
def test_many_damaged_bundles_run_identically_or_are_refused_in_one_sentence():
    """(slow: 1000 cases, seed 13)"""


# ------------------------------------------------------------------------------ ralu-personalize inputs

def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_item(kind: str, rng: np.random.Generator) -> tuple[str, bytes | None]:
    rgb = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    if kind == "good":
        return "good.png", _png_bytes(rgb)
    if kind == "truncated":
        return "cut.png", _png_bytes(rgb)[:200]
    if kind == "random":
        return "noise.jpg", rng.integers(0, 255, 300, dtype=np.uint8).tobytes()
    if kind == "empty":
        return "empty.png", b""
    if kind == "tiny":
        return "tiny.png", _png_bytes(rgb[:1, :1])
    if kind == "gray16":
        return "gray16.png", _png_bytes(rng.integers(0, 65535, (96, 80), dtype=np.uint16))
    if kind == "rgba":
        return "rgba.png", _png_bytes(rng.integers(0, 255, (128, 100, 4), dtype=np.uint8))
    if kind == "huge_header":  # IHDR claiming 40000 x 40000 pixels and no data (a decompression bomb)
        import struct
        import zlib

        ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
        chunk = b"IHDR" + ihdr
        return "bomb.png", (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
                            + struct.pack(">I", zlib.crc32(chunk)))
    if kind == "folder":
        return "folder.png", None
    raise ValueError(kind)


IMAGE_KINDS = ("good", "truncated", "random", "empty", "tiny", "gray16", "rgba", "huge_header", "folder")
personalize_case = st.fixed_dictionaries({
    "images": st.lists(st.sampled_from(IMAGE_KINDS), min_size=0, max_size=3),
    "token": st.one_of(st.sampled_from(["<blob>", "circle", "", "a b", "<", "<x>" * 40, "<ü>", "\t", "-x"]),
                       st.text(max_size=10)),
    "init_word": st.one_of(st.sampled_from(["square", "circle", "", "zebra", "red circle", "<blob>"]),
                           st.text(max_size=8)),
    "numbers": st.lists(st.sampled_from([
        ("--steps", "0"), ("--steps", "-3"), ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-1"), ("--mu", "0"),
        ("--mu", "nan"), ("--queries", "0"), ("--queries", "-2"), ("--checkpoint-every", "0"),
        ("--sigma-range", "0.8", "0.2"), ("--sigma-range", "nan", "1"), ("--sigma-range", "-1", "2"),
        ("--sigma-range", "0", "0"), ("--seed", "-5"), ("--threads", "-1"), ("--caption", "no slot"),
        ("--caption", "{} and {}"), ("--caption", "{0}"), ("--caption", "{x}"), ("--caption", "{"),
        ("--caption", "a photo of {}"), ("--posterior", "sample"), ("--theta-units", "table_rms"),
        ("--resume",)]), max_size=2),
})


def _check_personalize_case(world: World, case: dict, index: int) -> None:
    import shutil

    from ralu_runtime import cli_personalize

    rng = np.random.default_rng(index)
    work = world.root / "personalize"
    if work.exists():
        shutil.rmtree(work)
    images = work / "images"
    images.mkdir(parents=True)
    for i, kind in enumerate(case["images"]):
        name, blob = _image_item(kind, rng)
        if blob is None:
            (images / f"{i}-{name}").mkdir()
        else:
            (images / f"{i}-{name}").write_bytes(blob)
    out = work / "out" / "learned.safetensors"
    out.parent.mkdir()
    extra = [part for option in case["numbers"] for part in option]
    argv = ["--bundle", str(world.bundle), "--images", str(images), "--token", case["token"], "--init-word",
            case["init_word"], "--steps", "1", "--threads", "1", "--out", str(out), *extra]
    outcome = run_main(cli_personalize.main, argv, world.watch)
    if outcome.kind == "refusal" and any(out.parent.iterdir()):
        outcome.kind, outcome.detail = "unclean", f"refused but left {sorted(p.name for p in out.parent.iterdir())}"
    label = json.dumps(case, ensure_ascii=True)
    world.tallies["personalize"].add(label, outcome)
    assert outcome.kind in ("success", "refusal") and not outcome.outside, f"{label}\n{outcome}"


def _personalize_test(settings_):
    def decorate(_):
        @settings_
        @given(case=personalize_case, index=st.integers(0, 2**16))
        def test(world, case, index):
            _check_personalize_case(world, case, index)
        return test
    return decorate


@_personalize_test(settings(max_examples=8, deadline=None, derandomize=True, database=None,
                            suppress_health_check=list(HealthCheck)))
def test_bad_personalization_inputs_are_refused_in_one_sentence_leaving_nothing():
    """(fast)"""


@pytest.mark.slow
@seed(SEED)
@_personalize_test(slow_settings(300))
def test_many_bad_personalization_inputs_are_refused_in_one_sentence_leaving_nothing():
    """(slow: 300 cases, seed 13)"""


# ------------------------------------------------------------------------------------- --embeddings files

def _embeddings_bytes(kind: str, token: str | None, rng: np.random.Generator) -> bytes:
    from ralu_runtime.embeddings import canonical_safetensors
    from safetensors.numpy import save

    vectors = {"clip_l": rng.standard_normal((1, 128)).astype(np.float32),
               "t5": rng.standard_normal((1, 128)).astype(np.float32)}
    meta = {} if token is None else {"token": token}
    if kind == "nan":
        vectors["clip_l"][0, 3] = np.nan
    elif kind == "inf":
        vectors["t5"][0, 0] = -np.inf
    elif kind == "huge":
        vectors["t5"] = np.full((1, 128), 1e300, np.float64)
    elif kind in ("float16", "float64", "int32", "uint8"):
        vectors = {k: v.astype(kind) for k, v in vectors.items()}
    elif kind == "short":
        vectors["t5"] = vectors["t5"][:, :100]
    elif kind == "two_rows":
        vectors["clip_l"] = np.concatenate([vectors["clip_l"]] * 2)
    elif kind == "missing_key":
        del vectors["t5"]
    elif kind == "extra_key":
        vectors["clip_g"] = vectors["clip_l"]
    blob = canonical_safetensors(save(vectors, metadata=meta or None))
    if kind == "truncated":
        blob = blob[:len(blob) // 2]
    elif kind == "random":
        blob = rng.integers(0, 255, 200, dtype=np.uint8).tobytes()
    elif kind == "huge_header":
        blob = (2**62).to_bytes(8, "little") + blob[8:]
    elif kind == "empty":
        blob = b""
    return blob


EMBEDDING_KINDS = ("good", "nan", "inf", "huge", "float16", "float64", "int32", "uint8", "short", "two_rows",
                   "missing_key", "extra_key", "truncated", "random", "huge_header", "empty")
embeddings_case = st.tuples(st.sampled_from(EMBEDDING_KINDS), st.one_of(
    st.sampled_from(["<blob>", None, "", "a b", "circle", "<blob> ", "<x>" * 30, "<ü>"]), st.text(max_size=8)))


def _check_embeddings_case(world: World, kind: str, token: str | None, index: int) -> None:
    import shutil

    from ralu_runtime import cli_run

    path = world.root / "embeds.safetensors"
    path.write_bytes(_embeddings_bytes(kind, token, np.random.default_rng(index)))
    out = world.root / "out"
    if out.exists():
        shutil.rmtree(out)
    prompt = f"a red {token.strip()}" if token and token.strip() else PROMPT
    argv = World._run_args(world.bundle, out, "baseline", "--embeddings", str(path))
    argv[argv.index(PROMPT)] = prompt
    outcome = run_main(cli_run.main, argv, world.watch)
    if outcome.kind == "refusal" and out.exists():
        outcome.kind, outcome.detail = "unclean", "refused but left an --out folder"
    label = f"{kind} token={token!r}"
    world.tallies["embeddings"].add(label, outcome)
    assert outcome.kind in ("success", "refusal") and not outcome.outside, f"{label}\n{outcome}"


def _embeddings_test(settings_):
    def decorate(_):
        @settings_
        @given(case=embeddings_case, index=st.integers(0, 2**16))
        def test(world, case, index):
            _check_embeddings_case(world, *case, index)
        return test
    return decorate


@_embeddings_test(settings(max_examples=10, deadline=None, derandomize=True, database=None,
                           suppress_health_check=list(HealthCheck)))
def test_a_damaged_embeddings_file_is_used_or_refused_in_one_sentence():
    """(fast)"""


@pytest.mark.slow
@seed(SEED)
@_embeddings_test(slow_settings(300))
def test_many_damaged_embeddings_files_are_used_or_refused_in_one_sentence():
    """(slow: 300 cases, seed 13)"""


def test_the_watch_sees_reads_of_the_canary_through_python_and_the_native_readers(world):
    """The fuzz tests' `reads_outside == 0` means something: each kind of read the runtime makes is seen."""
    from ralu_runtime.tokenization import PromptTokenizer, TokenizerConfig

    def reads(main):
        return run_main(main, [], world.watch).outside

    assert reads(lambda argv: len(world.canary_file.read_text()) and 0)
    assert reads(lambda argv: PromptTokenizer(world.canary_file, TokenizerConfig(32, 1, 1, 400)) and 0)
    link = world.root / "link.json"
    link.unlink(missing_ok=True)
    link.symlink_to(world.canary_file)
    assert reads(lambda argv: PromptTokenizer(link, TokenizerConfig(32, 1, 1, 400)) and 0)
    assert not reads(lambda argv: (world.bundle / MANIFEST).read_text() and 0)
