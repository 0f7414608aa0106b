"""Opening a bundle: the manifest (schema-checked by ralu_edge.manifest) and every file it names, checked by
`ralu_edge.manifest.verify_files` before any file is used (a tampered, truncated or missing file is refused by
name, and so is a file that resolves through a symlink to a place outside the bundle folder). What the runtime
adds is a verified-bundle cache (one JSON file in the user's cache folder) that remembers (device, inode, size,
mtime, ctime) -> sha256 per file, so an unchanged bundle is not re-hashed on every start; any change of those
stats re-hashes the file. The ctime is what makes the cache safe: a user can put an old mtime back with os.utime
or `touch -d`, but every write or utime sets the ctime to the current time, and only the kernel sets it.
`Bundle.path` hands out only paths the manifest vouches for."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ralu_edge.errors import UserError
from ralu_edge.manifest import MANIFEST_NAME, DigestCache, Manifest, file_sha256, read_manifest, verify_files

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


class _VerifiedFiles(DigestCache):
    """The verified-bundle cache: resolved path -> [device, inode, size, mtime_ns, ctime_ns, sha256]."""

    def __init__(self, entries: dict):
        self.entries = entries

    @staticmethod
    def _stamp(stat: os.stat_result) -> list[int]:
        return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]

    def known(self, path: Path, stat: os.stat_result) -> str | None:
        cached = self.entries.get(str(path))
        return cached[-1] if cached and cached[:-1] == self._stamp(stat) else None

    def remember(self, path: Path, stat: os.stat_result, sha256: str) -> None:
        self.entries[str(path)] = self._stamp(stat) + [sha256]


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
    """`verify_files` through the verified-bundle cache; returns how many files were hashed (the rest came from
    the cache)."""
    if not use_cache:
        return verify_files(root, manifest)
    cache_path = _cache_file()
    cache = _VerifiedFiles(_load_cache(cache_path))
    hashed = verify_files(root, manifest, cache)
    if hashed:
        _store_cache(cache_path, cache.entries)
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
