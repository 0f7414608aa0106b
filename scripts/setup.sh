#!/usr/bin/env bash
# Create .venv and install ralu-edge with the export and dev extras (CPU torch, pinned).
# torch is pinned in the same install as everything else: pip then takes the CPU wheel on this machine kind
# instead of resolving a multi-GB CUDA build (docs/install.md). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[export,dev]' 'torch==2.13.0' 'numpy==2.3.5'
.venv/bin/python -m pip check >&2 || true
