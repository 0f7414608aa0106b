"""The fleet-evaluation grid: {bundles x modes x cache settings x prompts x seeds}, validated before any work
(every mistake a UserError naming the fix), and expanded into one task per image.

Prompts are the held-out ShapesWorld prompts (the RALU study's and ralu-eval's, whose scenes the attribute
classifier scores); as in ralu-eval and ralu-run, prompt i under seed s is generated with seed s + i.

Cache settings are one table, CACHE_SETTINGS: a name and the keyword arguments it adds to the Pipeline call: `none`
and named settings of the temporal caches (ralu_edge.cache, issue 16; names without the comma of `--cache`, which
the grid's lists use). Another setting is one entry there; the grid, the workers, the results and the table pick
it up by name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ralu_edge.errors import UserError


@dataclass(frozen=True)
class CacheSetting:
    """One value of the cache axis: `call_kwargs` go to every `Pipeline.__call__` made under it."""

    name: str
    description: str
    call_kwargs: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


CACHE_SETTINGS: dict[str, CacheSetting] = {
    "none": CacheSetting("none", "no caching: every step runs the denoiser"),
    **{name: CacheSetting(name, f"temporal cache --cache {cache} (docs/caching.md)", MappingProxyType({"cache": cache}))
       for name, cache in (("teacache", "teacache:0.3"), ("teacache-0.5", "teacache:0.5"),
                           ("taylorseer", "taylorseer:1,2"), ("taylorseer-2-3", "taylorseer:2,3"))},
}
REFERENCE_MODE = "baseline"  # PSNR/SSIM and token-FLOP ratios are against this mode of the same bundle
REFERENCE_CACHE = "none"  # ... and this cache setting, for the same prompt and seed
MAX_SEED = 2**32 - 1 - 1000  # seed + prompt index must stay a valid numpy seed


@dataclass(frozen=True)
class BundleEntry:
    """One bundle of the grid: its index in the grid (a stable short name for outputs), path and chosen modes."""

    index: int
    path: Path  # absolute: Ray workers do not share the driver's working directory
    modes: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"b{self.index}-{self.path.name}"


@dataclass(frozen=True)
class EvalPlan:
    """A validated grid. Tasks come out sorted by (bundle, cache, mode, seed, prompt): the order of the rows, the
    images and the table on every path."""

    bundles: tuple[BundleEntry, ...]
    caches: tuple[str, ...]
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int

    def tasks(self) -> list[dict]:
        """One plain dict per image (Ray Data rows are dicts of plain values)."""
        return [{"bundle_index": b.index, "bundle": str(b.path), "cache": cache, "mode": mode, "seed": seed,
                 "prompt_index": i, "prompt": prompt, "steps": self.steps}
                for b in self.bundles for cache in self.caches for mode in b.modes for seed in self.seeds
                for i, prompt in enumerate(self.prompts)]

    def to_dict(self) -> dict:
        return {"bundles": [{"index": b.index, "path": str(b.path), "label": b.label, "modes": list(b.modes)}
                            for b in self.bundles],
                "caches": list(self.caches), "prompts": list(self.prompts), "seeds": list(self.seeds),
                "steps": self.steps, "images": len(self.tasks())}


def task_key(row: dict) -> tuple:
    """The identity of one image of the grid; rows are sorted, de-duplicated and compared by it."""
    return (row["bundle_index"], row["cache"], row["mode"], row["seed"], row["prompt_index"])


def parse_list(text: str, what: str) -> tuple[str, ...]:
    """`a,b,c` -> ('a', 'b', 'c'); UserError for an empty list or a repeated value."""
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    if not items:
        raise UserError(f"{what} is empty; give a comma-separated list, e.g. {'0,1' if what == '--seeds' else 'a,b'}.")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise UserError(f"{what} names {', '.join(repeated)} more than once; list each value once.")
    return items


def parse_seeds(text: str) -> tuple[int, ...]:
    seeds = parse_list(text, "--seeds")
    bad = [s for s in seeds if not re.fullmatch(r"\d+", s) or int(s) > MAX_SEED]
    if bad:
        raise UserError(f"--seeds must be whole numbers from 0 to {MAX_SEED}, got {', '.join(bad)}.")
    return tuple(int(s) for s in seeds)


def bundle_modes(path: Path) -> tuple[str, ...]:
    """The modes a bundle offers (as Pipeline.modes: baseline plus one per preset), from its verified manifest."""
    from ralu_runtime.bundle import open_bundle
    from ralu_runtime.pipeline import mode_for_preset

    bundle = open_bundle(path)
    return ("baseline",) + tuple(mode_for_preset(p.name) for p in bundle.manifest.presets)


def plan_eval(bundles: list[Path], modes: str, caches: str, limit: int, seeds: str, steps: int) -> EvalPlan:
    """Validate the grid (UserError names the fix) and fix its order. modes: comma list or `all` (every mode of
    each bundle); caches: comma list of CACHE_SETTINGS names; limit: the first N held-out prompts (0 = all 72)."""
    from ralu_export.shapes_world import caption_for, heldout_scenes

    if not bundles:
        raise UserError("no bundle given; pass --bundle DIR (repeat for several), a folder ralu-export wrote.")
    if len({p.resolve() for p in bundles}) != len(bundles):
        raise UserError("a --bundle is given twice; list each bundle once.")
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}.")
    scenes = heldout_scenes()
    if not 0 <= limit <= len(scenes):
        raise UserError(f"--limit must be 0 (all {len(scenes)} held-out prompts) up to {len(scenes)}, got {limit}.")
    cache_names = parse_list(caches, "--cache")
    unknown = [c for c in cache_names if c not in CACHE_SETTINGS]
    if unknown:
        raise UserError(f"cache setting {unknown[0]!r} does not exist; choose from: {', '.join(CACHE_SETTINGS)}.")
    wanted = None if modes.strip() == "all" else parse_list(modes, "--modes")
    seed_values = parse_seeds(seeds)
    entries = []
    for index, path in enumerate(bundles):
        available = bundle_modes(path)
        if wanted is not None:
            missing = [m for m in wanted if m not in available]
            if missing:
                raise UserError(f"{path}: mode {missing[0]!r} is not in this bundle; choose from "
                                f"{', '.join(available)} (or --modes all).")
        entries.append(BundleEntry(index, path.resolve(), available if wanted is None else wanted))
    prompts = tuple(caption_for(s) for s in scenes[:limit or None])
    return EvalPlan(tuple(entries), cache_names, prompts, seed_values, steps)
