"""Opening a bundle: the manifest (schema-checked by ralu_edge.manifest) and the sha256 + size of every file
it names, checked before any file is used. A verified-bundle cache (one JSON file in the user's cache folder)
remembers (device, inode, size, mtime, ctime) -> sha256 per file so an unchanged bundle is not re-hashed on
every start; any change of those stats re-hashes the file. The ctime is what makes the cache safe: a user can
put an old mtime back with os.utime or `touch -d`, but every write or utime sets the ctime to the current time,
and only the kernel sets it. A tampered, truncated or missing file is refused by name, and so is a file that
resolves (through a symlink) to a place outside the bundle folder. `Bundle.path` hands out only paths the
manifest vouches for."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ralu_edge.errors import UserError
from ralu_edge.manifest import MANIFEST_NAME, Manifest, file_sha256, read_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: Manifest

    def path(self, relative: str) -> Path:
        """The bundle file `relative` (a path of the manifest's verified `files`, or a folder of them)."""
        listed = {f.path for f in self.manifest.files}
        if relative not in listed and not any(p.startswith(relative.rstrip("/") + "/") for p in listed):
            raise UserError(f"{self.root.name}/{relative}: not a file the manifest vouches for; re-export the bundle.")
        return self.root / relative

    @property
    def bundle_id(self) -> str:
        """A short id of the bundle: the first 12 hex digits of the manifest file's sha256."""
        return file_sha256(self.root / MANIFEST_NAME)[:12]


def _cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ralu-edge" / "verified-files.json"


def _load_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _store_cache(path: Path, cache: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, path)
    except OSError as e:  # a read-only home must not stop generation
        log.warning("could not write the verified-bundle cache %s: %s", path, e)


def verify_bundle_files(root: Path, manifest: Manifest, use_cache: bool = True) -> int:
    """Check every file of the manifest; returns how many were hashed (the rest came from the cache)."""
    cache_path = _cache_file()
    cache = _load_cache(cache_path) if use_cache else {}
    hashed = 0
    real_root = root.resolve()
    for entry in manifest.files:
        path = root / entry.path
        if not path.is_file():
            raise UserError(f"{root.name}/{entry.path}: missing from the bundle; re-export the bundle.")
        real = path.resolve()
        if not real.is_relative_to(real_root):
            raise UserError(f"{root.name}/{entry.path}: a link to {real}, outside the bundle folder; copy the "
                            "bundle with its files (e.g. `cp -rL`) or re-export it.")
        st = real.stat()
        if st.st_size != entry.size:
            raise UserError(f"{root.name}/{entry.path}: {st.st_size} bytes but the manifest says {entry.size}; "
                            "the file is truncated or replaced, re-export the bundle.")
        key = str(real)
        stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        cached = cache.get(key)
        if cached and cached[:-1] == stamp and cached[-1] == entry.sha256:
            continue
        digest = file_sha256(path)
        hashed += 1
        if digest != entry.sha256:
            raise UserError(f"{root.name}/{entry.path}: sha256 {digest[:12]}… but the manifest says "
                            f"{entry.sha256[:12]}…; the file was altered, re-export the bundle.")
        cache[key] = stamp + [digest]
    if use_cache and hashed:
        _store_cache(cache_path, cache)
    return hashed


def open_bundle(path: str | Path, *, verify: bool = True, use_cache: bool = True) -> Bundle:
    """A verified bundle folder (see the module docstring)."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no such bundle folder; export one with "
                        "`ralu-export --model shapes --target desktop --out DIR`.")
    manifest = read_manifest(root)
    if verify:
        verify_bundle_files(root, manifest, use_cache)
    return Bundle(root, manifest)
