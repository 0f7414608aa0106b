"""This process's peak resident memory, for the `--json` reports of the command lines. Standard library only."""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB: Linux's VmHWM (the high-water mark of this process's own
    address space; ru_maxrss would carry the forking parent's peak across exec), else ru_maxrss (bytes on
    macOS, KiB elsewhere)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 1024**2 if sys.platform == "darwin" else maxrss / 1024
