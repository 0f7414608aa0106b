"""The RALU study's metrics over a fleet run's images, computed by ralu_export.eval (the attribute classifier,
PSNR/SSIM, the Fréchet distance to real renders) and nothing of its own. Runs on the driver, after generation, on
rows in task order: the serial and the Ray path hand it identical rows, so they get identical numbers.

A group is (bundle, cache setting, mode), pooling its prompts and seeds. Per group: attribute accuracies
(`attribute_report`), the Fréchet distance between the classifier's features of its images and of
REAL_RENDERS_PER_PROMPT real renders per prompt (backgrounds the bundle's model was trained on), and, against the
reference group (mode `baseline`, cache `none`, same bundle; same prompt and seed per image), PSNR/SSIM and the
image-token-step ratio (the study's tokFLOP×)."""

from __future__ import annotations

import numpy as np

from ralu_export.fleet.generate import image_of
from ralu_export.fleet.grid import REFERENCE_CACHE, REFERENCE_MODE, EvalPlan

REAL_RENDERS_PER_PROMPT = 4  # as the RALU study (benchmarks/bench_ralu_study.py)
REAL_RENDERS_SEED = 0


def group_key(row: dict) -> tuple:
    return (row["bundle_index"], row["cache"], row["mode"])


def score(plan: EvalPlan, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(per-image scores in row order, per-group metrics in plan order). `rows` come sorted by task key."""
    from ralu_export.eval.metrics import frechet_distance, psnr, ssim
    from ralu_export.eval.scoring import attribute_report, classify, load_classifier, object_checks
    from ralu_export.shapes_world import heldout_scenes

    clf = load_classifier()
    scenes = heldout_scenes()[:len(plan.prompts)]
    by_group: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        by_group.setdefault(group_key(row), []).append(i)
    images = {key: np.stack([image_of(rows[i]) for i in idx]) for key, idx in by_group.items()}
    per_image: list[dict] = [{} for _ in rows]
    groups = []
    real_features = {}
    for key, idx in by_group.items():
        bundle_index, cache, mode = key
        if bundle_index not in real_features:
            real_features[bundle_index] = _real_features(clf, plan, bundle_index, scenes)
        group_scenes = [scenes[rows[i]["prompt_index"]] for i in idx]
        pred = classify(clf, images[key])
        for j, i in enumerate(idx):
            checks = object_checks(pred, j, group_scenes[j])
            per_image[i].update(attr_correct=bool(checks["all"]), shape_correct=bool(checks["shape"]),
                                colour_correct=bool(checks["colour"]), position_correct=bool(checks["position"]))
        first = rows[idx[0]]
        group = {"bundle_index": bundle_index, "bundle": first["bundle"], "cache": cache, "mode": mode,
                 "nfe": first["nfe"], "image_token_steps": first["image_token_steps"], "images": len(idx),
                 **attribute_report(pred, group_scenes),
                 "frechet_distance": frechet_distance(pred.features, real_features[bundle_index])
                 if len(idx) >= 2 else None}
        reference = (bundle_index, REFERENCE_CACHE, REFERENCE_MODE)
        if reference in by_group and reference != key:
            ref_rows = [rows[i] for i in by_group[reference]]
            group["token_flop_speedup"] = ref_rows[0]["image_token_steps"] / first["image_token_steps"]
            ref_images = np.stack([image_of(r) for r in ref_rows])  # same (seed, prompt) order as the group's
            p, s = psnr(images[key], ref_images), ssim(images[key], ref_images)
            for j, i in enumerate(idx):
                per_image[i].update(psnr_db=float(p[j]), ssim=float(s[j]))
            group.update(psnr_median_db=float(np.median(p)), psnr_mean_db=float(np.mean(np.minimum(p, 100.0))),
                         ssim_median=float(np.median(s)), ssim_mean=float(np.mean(s)))
        groups.append(group)
    return per_image, groups


def _real_features(clf, plan: EvalPlan, bundle_index: int, scenes) -> np.ndarray:
    """Classifier features [P * K, D] of the real renders the bundle's images are compared with."""
    from ralu_export.eval.scoring import classify, reference_renders

    real = reference_renders(scenes, REAL_RENDERS_PER_PROMPT, REAL_RENDERS_SEED,
                             _backgrounds(plan.bundles[bundle_index].path))
    return classify(clf, real.reshape(-1, *real.shape[2:])).features


def _backgrounds(bundle_path) -> tuple[str, ...]:
    """The backgrounds the bundle's model was trained on, when its manifest names a model folder that still
    exists (the built-in `shapes` does); otherwise every ShapesWorld background."""
    from ralu_edge.errors import UserError
    from ralu_edge.manifest import read_manifest
    from ralu_export.eval.scoring import model_backgrounds
    from ralu_export.models import resolve_model
    from ralu_export.shapes_world import BACKGROUNDS

    try:
        return model_backgrounds(resolve_model(read_manifest(bundle_path).model.name))
    except UserError:
        return BACKGROUNDS


def _num(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


TABLE_COLUMNS = (  # header, width, group -> text; the study's columns that a fleet run measures
    ("bundle", 6, lambda g: f"b{g['bundle_index']}"),
    ("cache", 6, lambda g: g["cache"]),
    ("mode", 12, lambda g: g["mode"]),
    ("NFE", 4, lambda g: _num(g["nfe"], "d")),
    ("tokFLOP×", 8, lambda g: _num(g.get("token_flop_speedup"), ".2f")),
    ("images", 6, lambda g: _num(g["images"], "d")),
    ("attr", 5, lambda g: _num(g["attribute_accuracy"], ".3f")),
    ("single", 6, lambda g: _num(g["attribute_accuracy_single"], ".3f")),
    ("pair", 5, lambda g: _num(g["attribute_accuracy_pair"], ".3f")),
    ("shape", 5, lambda g: _num(g["shape_accuracy"], ".3f")),
    ("colour", 6, lambda g: _num(g["colour_accuracy"], ".3f")),
    ("pos", 5, lambda g: _num(g["position_accuracy"], ".3f")),
    ("FD", 6, lambda g: _num(g.get("frechet_distance"), ".1f")),
    ("PSNR md", 7, lambda g: _num(g.get("psnr_median_db"), ".2f")),
    ("PSNR mn", 7, lambda g: _num(g.get("psnr_mean_db"), ".2f")),
    ("SSIM md", 7, lambda g: _num(g.get("ssim_median"), ".3f")),
    ("SSIM mn", 7, lambda g: _num(g.get("ssim_mean"), ".3f")),
)


def format_table(plan: EvalPlan, groups: list[dict]) -> str:
    """The fixed-width metrics table (deterministic: no timings), with the bundle legend under it."""
    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, (_, w, _)) in enumerate(zip(cells, TABLE_COLUMNS)))

    lines = [line([h for h, _, _ in TABLE_COLUMNS])]
    for g in groups:
        lines.append(line([f(g) for _, _, f in TABLE_COLUMNS]))
    lines.append("")
    lines += [f"b{b.index} = {b.path}" for b in plan.bundles]
    return "\n".join(lines)
