"""The fuzz harness of tests/test_fuzz_inputs.py (issue 13): damaged bundles, images folders, embeddings files
and arguments, run through the real `ralu-run` / `ralu-personalize` entry points (`main(argv)`, in this
process, so hundreds of cases fit in a test) over real ONNX Runtime sessions.

Each case ends in exactly one of:
  success     exit 0 (for ralu-run: the image is compared with the undamaged bundle's, `identical` or not)
  refusal     exit 2 with one `error: ...` line on stderr and nothing else
  unclean     any other exit status or stderr (several lines, a warning from a library, ...)
  traceback   an exception escaped main()
and, separately, whether anything was read outside the bundle: every path the case's process opened is watched
(Python's `open` audit event, and the paths handed to ONNX Runtime, tokenizers and safetensors, the native
readers), and every damage that points outside aims at one canary folder, so a read outside is any opened path
that resolves into it."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

MANIFEST = "ralu_config.json"
PROMPT = "a red circle on the left"


# ------------------------------------------------------------------------------ watching what is opened

class OpenWatch:
    """Records every opened path that resolves into `canary`: Python-level opens via the `open` audit event,
    and the paths our code hands to the native readers (wrapped in place; the real readers still run)."""

    def __init__(self, canary: Path):
        self.canary = canary.resolve()
        self.outside: list[str] = []
        self.active = False
        sys.addaudithook(self._audit)  # audit hooks cannot be removed; `active` turns this one off
        self._undo: list[Callable[[], None]] = []

    def _note(self, path: Any) -> None:
        if not self.active or not isinstance(path, (str, bytes, os.PathLike)):
            return
        try:
            real = Path(os.fsdecode(path)).resolve()
        except (OSError, RuntimeError, ValueError):
            return
        if real == self.canary or self.canary in real.parents:
            self.outside.append(str(path))

    def _audit(self, event: str, args: tuple) -> None:
        if event == "open" and args:
            self._note(args[0])

    def wrap_native_readers(self) -> None:
        import onnxruntime
        import safetensors
        import safetensors.numpy
        import tokenizers

        from ralu_runtime import embeddings, personalize, tokenization

        note = self._note
        real_session = onnxruntime.InferenceSession

        class WatchedSession(real_session):
            def __init__(self, path_or_bytes, *args, **kwargs):
                note(path_or_bytes)
                super().__init__(path_or_bytes, *args, **kwargs)

        real_from_file = tokenizers.Tokenizer.from_file
        real_safe_open = safetensors.safe_open
        real_load_file = safetensors.numpy.load_file

        class WatchedTokenizer:
            from_str = staticmethod(tokenizers.Tokenizer.from_str)

            @staticmethod
            def from_file(path, *args, **kwargs):
                note(path)
                return real_from_file(path, *args, **kwargs)

        def safe_open(path, *args, **kwargs):
            note(path)
            return real_safe_open(path, *args, **kwargs)

        def load_file(path, *args, **kwargs):
            note(path)
            return real_load_file(path, *args, **kwargs)

        patches = [(onnxruntime, "InferenceSession", WatchedSession), (tokenization, "Tokenizer", WatchedTokenizer),
                   (embeddings, "safe_open", safe_open), (personalize, "load_file", load_file)]
        for module, name, value in patches:
            old = getattr(module, name)
            setattr(module, name, value)
            self._undo.append(lambda m=module, n=name, o=old: setattr(m, n, o))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


# ------------------------------------------------------------------------------------------ outcomes

@dataclass
class Outcome:
    kind: str  # success / refusal / unclean / traceback
    detail: str = ""
    identical: bool | None = None
    outside: list[str] = field(default_factory=list)


@dataclass
class Tally:
    counts: Counter = field(default_factory=Counter)
    problems: list[tuple[str, Outcome]] = field(default_factory=list)
    different: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)

    def add(self, label: str, outcome: Outcome) -> None:
        self.counts["cases"] += 1
        self.counts[outcome.kind] += 1
        if outcome.kind == "refusal":
            self.reasons[refusal_reason(outcome.detail)] += 1
        if outcome.kind == "success" and outcome.identical is not None:
            self.counts["success_identical" if outcome.identical else "success_different"] += 1
            if not outcome.identical:
                self.different[label] += 1
        if outcome.outside:
            self.counts["reads_outside"] += 1
        if outcome.kind in ("unclean", "traceback") or outcome.outside:
            self.problems.append((label, outcome))

    def summary(self) -> dict:
        keys = ("cases", "success", "success_identical", "success_different", "refusal", "unclean", "traceback",
                "reads_outside")
        return {k: self.counts.get(k, 0) for k in keys}


def refusal_reason(stderr: str) -> str:
    """The refusal's message with paths, numbers and quoted values blanked, to count refusals by kind."""
    line = [x for x in stderr.splitlines() if x.strip()][-1]
    line = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", line)
    line = re.sub(r"(/[^\s:;,]+)+", "PATH", line)
    line = re.sub(r"\b[0-9a-f]{12}…|-?\d[\d.e+-]*", "N", line)
    return line[:110]


def run_main(main: Callable[[list[str]], int], argv: list[str], watch: OpenWatch) -> Outcome:
    """One CLI run in this process: its exit status, stderr and opened paths, classified."""
    err = io.StringIO()
    watch.outside = []
    watch.active = True
    caught: list = []
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
                warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # a Python warning would be a line on a user's terminal
            status = main(argv)
    except SystemExit as e:  # argparse's own refusals
        status = e.code
    except BaseException as e:  # noqa: BLE001 - a traceback is exactly what the fuzz test looks for
        import traceback

        watch.active = False
        return Outcome("traceback", "".join(traceback.format_exception(e))[-3000:], outside=list(watch.outside))
    finally:
        watch.active = False
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    lines += [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
    errors = [line for line in lines if not line.startswith("warning: ")]
    if status == 0:
        kind = "success" if not errors else "unclean"
    elif status == 2 and len(errors) == 1 and errors[0].startswith("error: ") and not errors[0].endswith("error: "):
        kind = "refusal"
    elif status == 2 and lines and lines[0].startswith("usage:") and ": error: " in lines[-1]:
        kind = "refusal"  # argparse: its usage and one `prog: error: ...` line
    else:
        kind = "unclean"
    return Outcome(kind, "\n".join(lines)[-2000:], outside=list(watch.outside))


# ----------------------------------------------------------------------------------- damaging a bundle

def json_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a parsed JSON value (dict keys and list indices), containers included."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += json_paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += json_paths(v, prefix + (i,))
    return out


def replacement_values(canary_file: Path, bundle: Path) -> list[Any]:
    """Values a damaged manifest field may hold: paths out of the bundle (absolute, and ../ from the bundle),
    wrong types, extreme and non-finite numbers, huge shapes."""
    relative = os.path.relpath(canary_file, bundle)
    return [str(canary_file), relative, "../" * 8 + str(canary_file).lstrip("/"), "", "nonsense", None, True,
            False, 0, -1, 1, 3, 2**31, 2**62, -(2**62), 0.5, -0.5, 1e308, -1e308, 1e-320, math.nan, math.inf,
            -math.inf, "float16", "int8", "static", [], [0], [2**40, 2**40], [-1, 5], {}, {"x": 1}]


def set_json(data: Any, path: tuple, value: Any, delete: bool = False) -> None:
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


def resign(bundle: Path, relative: str) -> None:
    """Make the manifest vouch for a file's current bytes (a re-packager who re-hashed damaged files)."""
    path = bundle / MANIFEST
    data = json.loads(path.read_text())
    target = bundle / relative
    if target.is_symlink():  # symlink_out keeps the bytes (and so the hash); reading it would read the canary
        return
    for entry in data.get("files", []):
        if isinstance(entry, dict) and entry.get("path") == relative and target.is_file():
            blob = target.read_bytes()
            entry["sha256"], entry["size"] = hashlib.sha256(blob).hexdigest(), len(blob)
    path.write_text(json.dumps(data))


def replace_file(path: Path, blob: bytes) -> None:
    """New bytes under a new inode (the copy's files are hard links to the reference bundle's)."""
    path.unlink()
    path.write_bytes(blob)


def damage_file(bundle: Path, relative: str, op: str, where: float, other: str, canary: Path) -> None:
    """One damage to one bundle file; `where` in [0, 1) picks the byte or length."""
    path = bundle / relative
    blob = path.read_bytes()
    if op == "truncate":
        replace_file(path, blob[:int(where * len(blob))])
    elif op == "flip":
        data = bytearray(blob)
        if data:
            data[int(where * len(data))] ^= 0xFF
        replace_file(path, bytes(data))
    elif op == "swap":
        other_path = bundle / other
        other_blob = other_path.read_bytes()
        replace_file(path, other_blob)
        replace_file(other_path, blob)
    elif op == "nan":  # float32 NaN over a stretch of the file
        data = bytearray(blob)
        start = int(where * len(data)) // 4 * 4
        stretch = np.full(max(1, (len(data) - start) // 8), np.nan, np.float32).tobytes()
        data[start:start + len(stretch)] = stretch
        replace_file(path, bytes(data[:len(blob)]))
    elif op == "inf":
        data = bytearray(blob)
        start = int(where * len(data)) // 4 * 4
        stretch = np.full(max(1, (len(data) - start) // 8), np.inf, np.float32).tobytes()
        data[start:start + len(stretch)] = stretch
        replace_file(path, bytes(data[:len(blob)]))
    elif op == "symlink_out":  # identical bytes, but living outside the bundle
        target = canary / f"linked-{relative.replace('/', '_')}"
        target.write_bytes(blob)
        path.unlink()
        path.symlink_to(target)
    elif op == "folder":
        path.unlink()
        path.mkdir()
    elif op == "delete":
        path.unlink()
    else:
        raise ValueError(op)


def damage_tensor_file(path: Path, op: str) -> None:
    """Rewrite a safetensors table (the token-embedding tables) with non-finite rows, another dtype or shape,
    or a renamed key; valid safetensors either way."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, save_file

    try:
        tables = load_file(str(path))
    except SafetensorError:
        return  # an earlier damage already broke the file
    name, table = next(iter(tables.items()))
    if op == "nan_rows":
        table = table.astype(np.float32)  # (a copy, float even after an earlier int32 damage)
        table[::3] = np.nan
    elif op == "inf_rows":
        table = table.astype(np.float32)
        table[1::2] = np.inf
    elif op == "float16":
        table = table.astype(np.float16)
    elif op == "int32":
        table = np.nan_to_num(table.astype(np.float64), posinf=0.0, neginf=0.0).astype(np.int32)
    elif op == "float64":
        table = table.astype(np.float64)
    elif op == "transposed":
        table = np.ascontiguousarray(table.T)
    elif op == "one_row":
        table = table[:1]
    elif op == "renamed":
        name = "embeddings"
    path.unlink()
    save_file({name: table}, str(path))


def link_copy(reference: Path, dest: Path) -> Path:
    """A copy of the bundle whose files are hard links (cheap); damage replaces files, never edits them."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(reference, dest, copy_function=os.link)
    (dest / MANIFEST).unlink()
    shutil.copyfile(reference / MANIFEST, dest / MANIFEST)
    return dest
