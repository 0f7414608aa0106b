"""ralu-fleet (issue 19), fast part: every refusal is one sentence, exit 2, nothing written, before Ray starts; the
cache axis is one table; and one small fleet evaluation on a real local Ray cluster (`ray.init(num_cpus=2)`, two
actors) equals the single-process path bit for bit, pixels, metrics and table, with each actor opening its
Pipeline's ORT sessions once. The two-node cluster, SIGKILL and the other two jobs are in test_fleet_cluster.py
(slow)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from ralu_edge.errors import UserError
from ralu_export.fleet import cli as fleet_cli
from ralu_export.fleet import grid
from ralu_export.fleet.cluster import quiet_ray_data
from tests.conftest import random_image_folder

ray = pytest.importorskip("ray", reason="the `ray` extra (scripts/setup.sh installs it)")


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _manifest(tmp_path: Path, *lines) -> str:
    path = tmp_path / "users.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def _user(tmp_path: Path, user: str = "alice", **fields) -> dict:
    photos = tmp_path / f"{user}-photos"
    if not photos.exists():
        random_image_folder(photos)
    return {"user": user, "images": str(photos), "token": f"<{user}>", "init_word": "square", **fields}


# (argv after `ralu-fleet`, words of the refusal); OUT is tmp_path/out, NONE a missing path; callables build inputs.
REFUSALS = {
    "bad-address": (["eval", "--bundle", "NONE", "--address", "tcp:somewhere", "--out", "OUT"],
                    "--address 'tcp:somewhere' is not one of"),
    "num-cpus-without-local": (["eval", "--bundle", "NONE", "--num-cpus", "2", "--out", "OUT"],
                               "--num-cpus sizes a new cluster"),
    "zero-cpus-per-worker": (["eval", "--bundle", "NONE", "--cpus-per-worker", "0", "--out", "OUT"],
                             "--cpus-per-worker must be at least 1"),
    "unknown-cache": (["eval", "--bundle", "NONE", "--cache", "none,temporal", "--address", "serial", "--out", "OUT"],
                      "cache setting 'temporal' does not exist; choose from: none"),
    "bad-seeds": (["eval", "--bundle", "NONE", "--seeds", "0,x", "--address", "serial", "--out", "OUT"],
                  "--seeds must be whole numbers"),
    "repeated-mode": (["eval", "--bundle", "NONE", "--modes", "baseline,baseline", "--address", "serial",
                       "--out", "OUT"], "--modes names baseline more than once"),
    "limit-too-large": (["eval", "--bundle", "NONE", "--limit", "73", "--address", "serial", "--out", "OUT"],
                        "--limit must be 0 (all 72 held-out prompts) up to 72"),
    "missing-bundle": (["eval", "--bundle", "NONE", "--address", "serial", "--out", "OUT"], "no such bundle folder"),
    "no-manifest": (["personalize", "--bundle", "NONE", "--manifest", "NONE", "--address", "serial", "--out", "OUT"],
                    "no such manifest"),
    "manifest-not-json": (["personalize", "--bundle", "NONE", "--manifest", lambda t: _manifest(t, "{user: alice}"),
                           "--address", "serial", "--out", "OUT"], "users.jsonl:1: not a JSON object"),
    "manifest-user-twice": (["personalize", "--bundle", "NONE", "--manifest",
                             lambda t: _manifest(t, _user(t), _user(t)), "--address", "serial", "--out", "OUT"],
                            "users.jsonl:2: user 'alice' is listed twice"),
    "manifest-bad-user-id": (["personalize", "--bundle", "NONE", "--manifest",
                              lambda t: _manifest(t, _user(t, "../x")), "--address", "serial", "--out", "OUT"],
                             "cannot be a folder name"),
    "manifest-no-photos": (["personalize", "--bundle", "NONE", "--manifest",
                            lambda t: _manifest(t, {**_user(t), "images": str(t)}), "--address", "serial",
                            "--out", "OUT"], "holds 0 PNG/JPEG images"),
    "personalize-bad-steps": (["personalize", "--bundle", "NONE", "--manifest", lambda t: _manifest(t, _user(t)),
                               "--steps", "0", "--address", "serial", "--out", "OUT"], "must be >= 1"),
    "personalize-missing-bundle": (["personalize", "--bundle", "NONE", "--manifest",
                                    lambda t: _manifest(t, _user(t)), "--address", "serial", "--out", "OUT"],
                                   "no such bundle folder"),
    "export-unknown-target": (["export", "--model", "shapes", "--target", "toaster", "--address", "serial",
                               "--out", "OUT"], "toaster"),
    "export-same-name-twice": (["export", "--model", "shapes", "--model", "x/shapes", "--target", "desktop",
                                "--address", "serial", "--out", "OUT"], "both named 'shapes'"),
    "nothing-at-the-address": (["export", "--model", "shapes", "--target", "desktop", "--address", "127.0.0.1:1",
                                "--out", "OUT"], "nothing answers at --address 127.0.0.1:1"),
    "export-force-and-skip": (["export", "--model", "shapes", "--target", "desktop", "--force", "--skip-existing",
                               "--address", "serial", "--out", "OUT"], "pass one of them"),
}


def _argv(args: list, tmp_path: Path) -> list[str]:
    def one(a):
        return a(tmp_path) if callable(a) else a.replace("OUT", str(tmp_path / "out")).replace(
            "NONE", str(tmp_path / "none"))
    return [one(a) for a in args]


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_bad_input_is_one_sentence_exit_2_and_nothing_written(case, tmp_path, capsys):
    args, words = REFUSALS[case]
    argv = _argv(args, tmp_path)
    before = _listing(tmp_path)
    status = fleet_cli.main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert _listing(tmp_path) == before
    assert not ray.is_initialized()  # refused before any cluster was started or joined


def test_an_existing_out_is_refused_before_any_work(desktop_bundle, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    status = fleet_cli.main(["eval", "--bundle", str(desktop_bundle), "--modes", "ralu-9x", "--address", "serial",
                             "--out", str(tmp_path / "out")])
    assert status == 2 and "mode 'ralu-9x' is not in this bundle" in capsys.readouterr().err
    status = fleet_cli.main(["eval", "--bundle", str(desktop_bundle), "--address", "serial",
                             "--out", str(tmp_path / "out")])
    assert status == 2 and "already exists; pass --force" in capsys.readouterr().err
    assert _listing(tmp_path) == ["out"]


def test_personalize_takes_ralu_personalizes_own_fit_flags():
    from ralu_runtime.cli_personalize import build_parser as personalize_parser

    fleet = fleet_cli.build_parser().parse_args(["personalize", "--bundle", "b", "--manifest", "m", "--out", "o"])
    single = personalize_parser().parse_args(["--bundle", "b", "--images", "i", "--token", "t", "--init-word", "w",
                                              "--out", "o"])
    for flag in fleet_cli.FIT_FLAGS:
        dest = flag.lstrip("-").replace("-", "_")
        assert getattr(fleet, dest) == getattr(single, dest), flag


def test_a_new_cache_setting_is_one_table_entry(desktop_bundle, monkeypatch):
    """The cache axis is validated against CACHE_SETTINGS, and a new entry flows into the tasks and the calls."""
    monkeypatch.setitem(grid.CACHE_SETTINGS, "probe", grid.CacheSetting("probe", "test entry"))
    plan = grid.plan_eval([desktop_bundle], "baseline", "none,probe", 2, "0,5", 8)
    assert [(t["cache"], t["seed"], t["prompt_index"]) for t in plan.tasks()] == [
        ("none", 0, 0), ("none", 0, 1), ("none", 5, 0), ("none", 5, 1),
        ("probe", 0, 0), ("probe", 0, 1), ("probe", 5, 0), ("probe", 5, 1)]
    with pytest.raises(UserError, match="cache setting 'later' does not exist; choose from: none, .*probe"):
        grid.plan_eval([desktop_bundle], "baseline", "later", 2, "0", 8)


# ------------------------------------------------------------------------ a real local Ray cluster (two CPUs)

@pytest.fixture(scope="module")
def local_ray():
    """`ray.init(num_cpus=2)`: a real one-node cluster (GCS, raylet, worker processes), its session files in a
    short temporary folder (Ray's socket paths must stay short), shut down even when a test fails."""
    temp = tempfile.mkdtemp(prefix="ray-fleet-", dir="/tmp")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, logging_level="ERROR", log_to_driver=False)
    quiet_ray_data()
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_fleet_eval_on_two_actors_equals_the_single_process_path(desktop_bundle, local_ray):
    from ralu_export.fleet import evaluate, scoring
    from ralu_export.fleet.generate import image_of
    from ralu_runtime.pipeline import Pipeline

    plan = grid.plan_eval([desktop_bundle], "baseline,ralu-7x", "none", 2, "3", 6)
    ray_run = evaluate.run_on_ray(plan, workers=2, cpus_per_worker=1)
    assert [grid.task_key(r) for r in ray_run.rows] == [grid.task_key(t) for t in plan.tasks()]

    # The single-process path itself: ralu_runtime's Pipeline with one ORT thread, as each 1-CPU actor has.
    pipe = Pipeline.from_bundle(desktop_bundle, threads=1)
    for row in ray_run.rows:
        expected = pipe(row["prompt"], mode=row["mode"], steps=6, seed=row["seed"] + row["prompt_index"]).image
        np.testing.assert_array_equal(image_of(row), expected)

    # Both actors worked, each opened one Pipeline (4 ORT sessions: two text encoders, denoiser, VAE decoder) and
    # reused it for every image it served.
    workers = {}
    for row in ray_run.rows:
        workers.setdefault(row["worker"], []).append(row)
    assert len(workers) == 2
    for rows in workers.values():
        assert {r["worker_pipelines"] for r in rows} == {1}
        assert {r["worker_sessions"] for r in rows} == {4}
        assert sorted(r["worker_images"] for r in rows) == list(range(1, len(rows) + 1))

    serial = evaluate.run_serial(plan, threads=1)
    assert [r["image_sha256"] for r in serial.rows] == [r["image_sha256"] for r in ray_run.rows]
    (s_scores, s_groups), (r_scores, r_groups) = scoring.score(plan, serial.rows), scoring.score(plan, ray_run.rows)
    assert s_scores == r_scores and s_groups == r_groups
    assert scoring.format_table(plan, s_groups) == scoring.format_table(plan, r_groups)
    # ralu-eval over the same bundle, mode, seed and prompts (its single-process path) scores the same.
    from ralu_export.eval.cli import evaluate_bundle

    single = evaluate_bundle(desktop_bundle, "ralu-7x", 6, 3, limit=2, threads=1)
    assert {k: r_groups[1][k] for k in single if k.endswith("accuracy") or k.startswith("attribute_accuracy")} == \
        {k: v for k, v in single.items() if k.endswith("accuracy") or k.startswith("attribute_accuracy")}
    assert [g["mode"] for g in r_groups] == ["baseline", "ralu-7x"]
    assert "psnr_median_db" not in r_groups[0] and np.isfinite(r_groups[1]["psnr_median_db"])


def test_a_mistake_only_a_worker_sees_is_one_sentence_on_the_driver(desktop_bundle, local_ray, tmp_path):
    """A bundle gone after planning fails in the actor (Ray Data passes the driver only text), and a user whose init
    word is two tokens fails in a Ray task: both reach the driver as the runtime's UserError sentence."""
    from ralu_export.fleet import evaluate, personalize
    from ralu_runtime.personalize import PersonalizeConfig

    copy = tmp_path / "bundle"
    shutil.copytree(desktop_bundle, copy)
    plan = grid.plan_eval([copy], "baseline", "none", 1, "0", 2)
    shutil.rmtree(copy)
    with pytest.raises(UserError, match="no such bundle folder"):
        evaluate.run_on_ray(plan, workers=1)

    job = personalize.UserJob("carol", random_image_folder(tmp_path / "photos"), "<carol>", "two words")
    done = personalize.run_on_ray(str(desktop_bundle), [job], tmp_path / "out", PersonalizeConfig(steps=2), workers=1)
    assert done == [{"user": "carol", "error": done[0]["error"]}] and "init word 'two words' is" in done[0]["error"]


def test_paths_reach_the_workers_absolute(desktop_bundle, tmp_path, monkeypatch):
    """Ray workers do not run in the driver's working directory, so every path a job hands them is absolute."""
    from ralu_export.fleet import batch_export, personalize

    monkeypatch.chdir(desktop_bundle.parent)
    plan = grid.plan_eval([Path(desktop_bundle.name)], "baseline", "none", 1, "0", 2)
    assert plan.bundles[0].path == desktop_bundle.resolve()
    monkeypatch.chdir(tmp_path)
    random_image_folder(tmp_path / "photos")
    Path("users.jsonl").write_text(json.dumps({"user": "a", "images": "photos", "token": "<a>", "init_word": "x"}))
    assert personalize.read_users(Path("users.jsonl"))[0].images == tmp_path.resolve() / "photos"
    assert batch_export.parse_models(["shapes", "m=pipe"]) == [("shapes", "shapes"), ("m", str(tmp_path / "pipe"))]
