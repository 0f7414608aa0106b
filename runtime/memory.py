"""This process's peak resident memory, for the `--json` reports of the command lines, and the memory lines of any
process's Linux status file (benchmarks/measure.py reads children with it). Standard library only."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def process_status_mb(pid: int | str = "self") -> dict[str, float]:
    """The kB-valued lines of /proc/<pid>/status (VmHWM, VmRSS, RssAnon, RssFile, ...) in MiB; {} where there is
    no such file (not Linux, or the process has ended)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields = value.split()
        if len(fields) == 2 and fields[1] == "kB":
            out[key] = int(fields[0]) / 1024
    return out


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB: Linux's VmHWM (the high-water mark of this process's own
    address space; ru_maxrss would carry the forking parent's peak across exec), else ru_maxrss (bytes on
    macOS, KiB elsewhere)."""
    peak = process_status_mb().get("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 1024**2 if sys.platform == "darwin" else maxrss / 1024
