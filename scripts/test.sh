#!/usr/bin/env bash
# The project's test command (README, .ci/run): the fast suite, then the torch-free layers again with torch,
# diffusers, transformers and ralu_export made unimportable (DESIGN.md import rule), then the Kotlin core. Extra arguments go to
# the first pytest run (e.g. `-m slow` or `-k name`). Last, the browser demo's tests (web_demo/: its JS core against the
# same vectors, then headless Chromium against ralu-run).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
"$PY" -m pytest -q -m "not slow" "$@"
torch_free=$(ls tests/test_ralu_*.py tests/test_zo_*.py tests/test_runtime_*.py 2>/dev/null || true)
"$PY" -m pytest -q -m "not slow" -p tests.block_torch $torch_free
# The Android demo's pure-Kotlin core on the JVM against the Python runtime's conformance vectors
# (installs Debian's kotlin + junit4 with apt when missing).
android_demo/scripts/test-core.sh
# The browser demo: `npm test` in web_demo (node --test: the JS core against the conformance vectors, then headless
# Chromium generating on the demo page and compared with ralu-run; it exports its own shapes bundle, ~2 min).
(cd web_demo && npm test)
