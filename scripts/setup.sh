#!/usr/bin/env bash
# Create .venv and install ralu-edge with the export and dev extras (CPU torch, pinned).
# torch is pinned in the same install as everything else: pip then takes the CPU wheel on this machine kind
# instead of resolving a multi-GB CUDA build (docs/install.md). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[export,dev,ray]' 'torch==2.13.0' 'numpy==2.3.5'
.venv/bin/python -m pip check >&2 || true
# The browser demo (web_demo/, issue 18): Debian's Chromium for its headless tests, and its npm packages exactly as
# web_demo/package-lock.json pins them (web_demo/.npmrc skips install scripts, which would download binaries).
if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >&2 || { apt-get update -q >&2 && apt-get install -y -q chromium >&2; }
fi
(cd web_demo && npm ci --no-audit --no-fund --loglevel=error)
