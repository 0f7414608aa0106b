#!/usr/bin/env bash
# Train the built-in `shapes` model on a lent GPU machine (the `device` tool), in one call:
#   wheels for the pinned diffusers/transformers stack travel in .whl/ (see docs/shapes-model.md),
#   the packed weights + training report come back in $OUT, and `ralu-train assemble` turns them into
#   export/builtin/shapes on this machine.
set -euo pipefail
OUT=${OUT:-/tmp/shapes_out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/pk
ln -sfn "$PWD/ralu_edge" /tmp/pk/ralu_edge
ln -sfn "$PWD/export" /tmp/pk/ralu_export
ln -sfn "$PWD/runtime" /tmp/pk/ralu_runtime
export PYTHONPATH=/tmp/site:/tmp/pk PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m ralu_export.training.cli all --device cuda --work /tmp/shapes_work --weights-out "$OUT/weights" \
  --seed 0 --num-images 80000 --vae-steps 4000 --vae-batch 64 --vae-seconds 70 \
  --dit-steps 20000 --dit-batch 256 --dit-seconds 290 \
  --clf-images 30000 --clf-steps 4000 --clf-batch 256 --clf-seconds 45 --checkpoint-every 1000 "$@"
