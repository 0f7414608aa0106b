"""`ralu-fleet`: ralu-edge's batch jobs on a Ray cluster (issue 19; docs/scale-out.md).

  eval         {bundles x modes x cache settings x held-out prompts x seeds} -> images and the RALU study's metrics
               (attribute accuracy, Fréchet distance to real renders, PSNR/SSIM and token-FLOPs against the
               baseline), as a Ray Data pipeline over an actor pool with one Pipeline per actor and bundle. Writes
               OUT/ (table.txt, summary.json, results.parquet, results.jsonl, images/), atomically.
  personalize  a JSON-lines manifest of users' photo folders -> OUT/<user>/learned_embeds.safetensors, one task per
               user, resuming from OUT/<user>/learned_embeds.safetensors.checkpoint/ after a failure or a rerun.
  export       checkpoints x targets -> OUT/<name>/<target>/ bundles, one ralu-export per task, each atomic.

--address: auto (the cluster `ray start` made on this machine, or RAY_ADDRESS), local (a new cluster of this
machine's CPUs for this run), ray://HOST:PORT (Ray Client), HOST:PORT (a cluster's GCS address), or serial (no
Ray: this process alone, the reference the Ray results equal bit for bit). Paths must name the same files on every
node. Results go to stdout (a table, then the output path); progress to stderr."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ralu_edge.errors import UserError, run_cli

FIT_FLAGS = ("--steps", "--seed", "--lr", "--queries", "--mu", "--no-subspace-gradient", "--sigma-range",
             "--caption", "--posterior", "--theta-units", "--checkpoint-every")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where it runs")
    g.add_argument("--address", default="auto", help="auto, local, serial, ray://HOST:PORT or HOST:PORT (see above)")
    g.add_argument("--workers", type=int, default=0,
                   help="parallel workers (actors or tasks); 0 = the cluster's CPUs / --cpus-per-worker")
    g.add_argument("--cpus-per-worker", type=int, default=1,
                   help="CPUs Ray reserves per worker, and its ONNX Runtime (and torch) threads; ORT's sums depend "
                        "on the thread count, so compare runs made with the same value")
    g.add_argument("--num-cpus", type=int, default=None, help="with --address local: the new cluster's CPUs")
    g.add_argument("--max-retries", type=int, default=3,
                   help="personalize/export: how often a task whose worker process died is run again")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _fit_flags(p: argparse.ArgumentParser) -> None:
    """ralu-personalize's own fit flags (defaults and help included), so the two command lines cannot drift apart.
    argparse has no public way to share actions between parsers; `_actions`/`_add_action` are that way."""
    from ralu_runtime.cli_personalize import build_parser

    group = p.add_argument_group("fit settings (as ralu-personalize)")
    for action in build_parser()._actions:
        if set(action.option_strings) & set(FIT_FLAGS):
            group._add_action(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ralu-fleet", description=__doc__, formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="job", required=True, metavar="{eval,personalize,export}")

    ev = sub.add_parser("eval", help="fleet evaluation", formatter_class=_Formatter,
                        description="Generate and score {bundles x modes x cache settings x prompts x seeds}; prompt "
                                    "i under seed s uses seed s + i (as ralu-eval).")
    ev.add_argument("--bundle", type=Path, action="append", default=[], required=True,
                    help="bundle folder written by ralu-export (repeat for several)")
    ev.add_argument("--modes", default="all", help="comma-separated modes (baseline, ralu-4x, ...) or all")
    ev.add_argument("--cache", default="none", help="comma-separated cache settings; today only none")
    ev.add_argument("--limit", type=int, default=0, help="the first N held-out prompts (0 = all 72)")
    ev.add_argument("--seeds", default="0", help="comma-separated base seeds")
    ev.add_argument("--steps", type=int, default=28, help="steps of the baseline mode (RALU presets fix theirs)")
    ev.add_argument("--out", type=Path, required=True, help="results folder to create")
    ev.add_argument("--force", action="store_true", help="replace an existing --out once the new one is complete")
    _common(ev)

    pe = sub.add_parser("personalize", help="batch personalization", formatter_class=_Formatter,
                        description="One ralu-personalize fit per user of --manifest (JSON lines: user, images, "
                                    "token, init_word), resuming from each user's checkpoint.")
    pe.add_argument("--bundle", type=Path, required=True, help="bundle folder written by ralu-export")
    pe.add_argument("--manifest", type=Path, required=True, help="JSON lines, one user per line")
    pe.add_argument("--out", type=Path, required=True,
                    help="folder for OUT/<user>/learned_embeds.safetensors (an existing one is resumed)")
    _fit_flags(pe)
    _common(pe)

    ex = sub.add_parser("export", help="batch export", formatter_class=_Formatter,
                        description="One ralu-export per (--model, --target) into OUT/<name>/<target>/.")
    ex.add_argument("--model", action="append", default=[], required=True,
                    help="`shapes`, a diffusers pipeline folder, or NAME=FOLDER (repeat for several)")
    ex.add_argument("--target", action="append", default=[], required=True,
                    help="desktop, android, executorch or ios (repeat for several)")
    ex.add_argument("--precision", default="fp32", help="denoiser precision, as ralu-export --precision")
    ex.add_argument("--out", type=Path, required=True, help="folder for OUT/<name>/<target>/ bundles")
    ex.add_argument("--force", action="store_true", help="replace existing bundles (each once its new one is complete)")
    ex.add_argument("--skip-existing", action="store_true", help="leave bundles that are already there")
    _common(ex)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out = args.out.resolve()  # Ray workers do not share this process's working directory
    return run_cli(lambda: JOBS[args.job](args))


def _check_common(args) -> None:
    from ralu_export.fleet.cluster import check_address

    check_address(args.address)
    for flag, value, low in (("--workers", args.workers, 0), ("--cpus-per-worker", args.cpus_per_worker, 1),
                             ("--max-retries", args.max_retries, 0)):
        if value < low:
            raise UserError(f"{flag} must be at least {low}, got {value}.")
    if args.num_cpus is not None and (args.address != "local" or args.num_cpus < 1):
        raise UserError("--num-cpus sizes a new cluster: use it with --address local, and at least 1.")


def _workers(args) -> int:
    from ralu_export.fleet.cluster import check_workers, default_workers

    if args.address == "serial":
        return 1
    workers = args.workers or default_workers(args.cpus_per_worker)
    check_workers(workers, args.cpus_per_worker)
    return workers


def _run_info(args, workers: int, seconds: float, load_start: float, **extra) -> dict:
    info = {"address": args.address, "path": "serial" if args.address == "serial" else "ray", "workers": workers,
            "cpus_per_worker": args.cpus_per_worker, "seconds": seconds, "load_average_start": load_start,
            "load_average_end": os.getloadavg()[0], **extra}
    if args.address != "serial":
        import ray

        info.update(ray_version=ray.__version__, nodes=sum(1 for n in ray.nodes() if n["Alive"]),
                    cluster_cpus=ray.cluster_resources().get("CPU", 0.0))
    return info


def eval_job(args) -> None:
    from ralu_export.fleet import evaluate, results, scoring
    from ralu_export.fleet.cluster import connected, progress, user_errors_unwrapped
    from ralu_export.fleet.grid import plan_eval
    from ralu_export.plan import check_out

    _check_common(args)
    plan = plan_eval(args.bundle, args.modes, args.cache, args.limit, args.seeds, args.steps)
    check_out(args.out, args.force)  # the same refusals as ralu-export's --out
    load_start = os.getloadavg()[0]
    with connected(args.address, args.num_cpus), user_errors_unwrapped():
        workers = _workers(args)
        bar = progress(len(plan.tasks()), "image", args.no_progress)
        on_row = lambda row: bar.update(1)  # noqa: E731
        if args.address == "serial":
            run = evaluate.run_serial(plan, args.cpus_per_worker, on_row)
        else:
            run = evaluate.run_on_ray(plan, workers, args.cpus_per_worker, on_row)
        bar.close()
        info = _run_info(args, workers, run.seconds, load_start, images=len(run.rows),
                         images_per_second=run.images_per_second)
    per_image, groups = scoring.score(plan, run.rows)
    table = scoring.format_table(plan, groups)
    out = results.write_results(args.out, plan, run.rows, per_image, groups, table, info, args.force)
    print(table)
    print()
    print(_workers_table(results.worker_summary(run.rows), info))
    print(out)


def _workers_table(workers: list[dict], info: dict) -> str:
    lines = [f"{info['images']} images in {info['seconds']:.1f} s ({info['images_per_second']:.2f}/s) on "
             f"{info['workers']} worker(s) x {info['cpus_per_worker']} CPU ({info['path']})",
             f"{'worker':<44} {'images':>6} {'pipelines':>9} {'ORT sessions':>12}"]
    lines += [f"{w['worker']:<44} {w['images']:>6} {w['pipelines_opened']:>9} {w['ort_sessions']:>12}"
              for w in workers]
    return "\n".join(lines)


def personalize_job(args) -> None:
    from ralu_export.fleet import personalize
    from ralu_export.fleet.cluster import connected, progress, user_errors_unwrapped
    from ralu_runtime.bundle import open_bundle
    from ralu_runtime.cli_personalize import config_from_args

    _check_common(args)
    config = config_from_args(args)
    jobs = personalize.read_users(args.manifest)
    personalize.check_out(args.out, jobs)
    open_bundle(args.bundle)  # a missing or tampered bundle is refused here, not once per user
    bundle = str(args.bundle.resolve())
    load_start = os.getloadavg()[0]
    with connected(args.address, args.num_cpus), user_errors_unwrapped():
        workers = _workers(args)
        bar = progress(len(jobs), "user", args.no_progress)
        started = time.perf_counter()
        if args.address == "serial":
            done = personalize.run_serial(bundle, jobs, args.out, config, args.cpus_per_worker,
                                          lambda r: bar.update(1))
        else:
            done = personalize.run_on_ray(bundle, jobs, args.out, config, workers, args.cpus_per_worker,
                                          args.max_retries, lambda r: bar.update(1))
        bar.close()
        info = _run_info(args, workers, time.perf_counter() - started, load_start, users=len(jobs))
    summary = personalize.write_summary(args.out, bundle, config, done, info)
    print(personalize.format_table(done))
    print(summary)
    failed = [r for r in done if "error" in r]
    if failed:
        raise UserError(f"{len(failed)} of {len(done)} users failed, the rest are in {args.out}; user "
                        f"{failed[0]['user']!r}: {failed[0]['error']}")


def export_job(args) -> None:
    from ralu_export.fleet import batch_export
    from ralu_export.fleet.cluster import connected, progress, user_errors_unwrapped

    _check_common(args)
    jobs, skipped = batch_export.plan_exports(args.model, args.target, args.out, args.precision, args.force,
                                              args.skip_existing)
    load_start = os.getloadavg()[0]
    with connected(args.address, args.num_cpus), user_errors_unwrapped():
        workers = _workers(args)
        bar = progress(len(jobs), "bundle", args.no_progress)
        started = time.perf_counter()
        if args.address == "serial":
            done = batch_export.run_serial(jobs, args.precision, args.force, args.cpus_per_worker,
                                           lambda r: bar.update(1))
        else:
            done = batch_export.run_on_ray(jobs, args.precision, args.force, workers, args.cpus_per_worker,
                                           args.max_retries, lambda r: bar.update(1))
        bar.close()
        info = _run_info(args, workers, time.perf_counter() - started, load_start, bundles=len(jobs))
    summary = batch_export.write_summary(args.out, done, skipped, info)
    print(batch_export.format_table(done, skipped))
    print(summary)


JOBS = {"eval": eval_job, "personalize": personalize_job, "export": export_job}


if __name__ == "__main__":
    sys.exit(main())
