"""How every benchmark measures: memory (peak and current RSS of this process or a child, read by
ralu_runtime.memory from Linux's /proc/<pid>/status), the environment a result was measured in (CPU, cores,
versions, load average), timing (callables timed in interleaved, rotating rounds; medians and p90 in `_ms` fields)
and image fidelity (PSNR and SSIM, ralu_export.eval.metrics). The scripts in benchmarks/ import it as a sibling
module (Python puts a script's own folder on sys.path). Imports numpy, the standard library and those two
modules, none of which pulls in torch or onnxruntime (personalization.py's ZO worker records that torch stays
out); a library whose version is asked for is imported then."""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Hashable, Mapping, Sequence, TypeVar

import numpy as np

from ralu_export.eval.metrics import psnr, ssim
from ralu_runtime.memory import peak_rss_mb, process_status_mb

__all__ = ["cpu_name", "environment", "interleaved_seconds", "json_child", "load_average", "machine_line", "memory_mb",
           "peak_rss_mb",
           "psnr", "rotated", "rss_mb", "run_with_peak_rss", "ssim", "summary_ms", "versions"]

K = TypeVar("K", bound=Hashable)


# ------------------------------------------------------------------------------------------------- memory

def rss_mb() -> float:
    """Resident set size of this process now, in MiB (VmRSS); NaN where /proc is missing."""
    return process_status_mb().get("VmRSS", float("nan"))


def memory_mb() -> dict[str, float]:
    """This process's peak and current RSS and its anonymous and file-backed parts, in MiB: keys VmHWM_mb,
    VmRSS_mb, RssAnon_mb, RssFile_mb (Linux)."""
    status = process_status_mb()
    return {f"{key}_mb": status[key] for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile") if key in status}


def run_with_peak_rss(cmd: list[str], env: Mapping[str, str] | None = None, poll_s: float = 0.05) -> dict:
    """Run a command (stdout discarded; `env` added to this process's environment); {"seconds": wall seconds,
    "peak_rss_mb": the child's VmHWM polled every `poll_s`}. Not ru_maxrss from wait4: Linux folds the forking
    parent's image into it, so it reads the benchmark's own RSS for any child lighter than the benchmark.
    SystemExit when the command fails."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, process_status_mb(proc.pid).get("VmHWM", 0.0))
        time.sleep(poll_s)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed with exit status {proc.returncode}")
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak}


def json_child(cmd: list[str], threads: int, label: str) -> dict:
    """Run one phase of a benchmark in a fresh process (its own peak RSS; offline; OpenMP at `threads`) and
    return the JSON object on the last line of its stdout. SystemExit naming `label` when it fails."""
    print(label, file=sys.stderr, flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{label} failed with exit status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------- environment

def cpu_name() -> str:
    """The CPU model ("model name" in /proc/cpuinfo), else what the platform module knows, else "unknown CPU"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> list[float]:
    """The system load average over the last 1, 5 and 15 minutes (a shared machine's load skews timings)."""
    return list(os.getloadavg())


def versions(*names: str) -> dict[str, str]:
    """{name: version} in the order given; "python" is the interpreter's, "platform" the OS string, "host" the
    machine's network name, anything else a module's __version__ (imported here)."""
    special = {"python": platform.python_version, "platform": platform.platform, "host": platform.node}
    return {name: special[name]() if name in special else importlib.import_module(name).__version__
            for name in names}


def environment(threads: int | None, libraries: Sequence[str] = ()) -> dict:
    """The machine and software a result was measured on: cpu, cores, threads, python, platform, each library's
    version, and load_average_at_start (1/5/15 min)."""
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": threads,
            **versions("python", "platform", *libraries), "load_average_at_start": load_average()}


def machine_line(env: dict, load_at_end: Sequence[float]) -> str:
    """"CPU ..., N cores (shared; load average at start a, b, c, at end d, e, f), ORT v" for a results page, from
    environment()'s dict (ORT only where it was asked for)."""
    def loads(values):
        return ", ".join(f"{x:.1f}" for x in values)

    ort = f", ORT {env['onnxruntime']}" if "onnxruntime" in env else ""
    return (f"CPU {env['cpu']}, {env['cores']} cores (shared; load average at start "
            f"{loads(env['load_average_at_start'])}, at end {loads(load_at_end)}){ort}")


# ------------------------------------------------------------------------------------------------- timing

def summary_ms(seconds: Sequence[float], *, count: bool = False) -> dict:
    """{"median_ms", "p90_ms"} of timings given in seconds (with count: also "n", how many)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    out = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90))}
    return {**out, "n": int(ms.size)} if count else out


def rotated(names: Sequence[K], round_index: int) -> list[K]:
    """`names` started at position round_index (mod len): round r of an interleaved measurement runs them in this
    order, so that no name always runs first, or always after the same other one."""
    shift = round_index % len(names)
    return list(names[shift:]) + list(names[:shift])


def interleaved_seconds(calls: Mapping[K, Callable[[], object]], repeats: int,
                        warmup: int = 1) -> dict[K, list[float]]:
    """Wall seconds of each call, `repeats` times: every call runs `warmup` untimed times first, then once per
    round in rotating order, so that load changes on a shared machine hit all of them alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    names = list(calls)
    seconds: dict[K, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in rotated(names, r):
            started = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - started)
    return seconds
