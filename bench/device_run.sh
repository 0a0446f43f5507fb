#!/usr/bin/env bash
# Run the issue-7 benchmark on the accelerator machine (bare image: torch, transformers, httpx there).
#
# Needs, carried with the working tree (git-ignored, see bench/README.md):
#   .carry/wheels/*.whl                          the server's missing deps (fastapi, uvicorn, pydantic...)
#   .carry/flash_attn-2.8.3.post2-cp312.tar.xz   the flash-attn wheel's contents, xz-packed (15 MB, not 60)
# Usage: bash bench/device_run.sh [python -m bench.vlmbench run arguments...]
# Results, log and versions go to $OUT (or ./bench-out).
set -uo pipefail
OUT="${OUT:-$PWD/bench-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=8
PY=python3
SITE=/tmp/vlmbench-site
FLASH=/tmp/vlmbench-flash
rm -rf "$SITE" "$FLASH"
mkdir -p "$SITE" "$FLASH"
if compgen -G ".carry/wheels/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .carry/wheels/*.whl || exit 1
fi
FLASH_TAR=$(ls .carry/flash_attn-*.tar.xz 2>/dev/null | head -1)
if [ -n "$FLASH_TAR" ]; then
  $PY -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$FLASH_TAR" "$FLASH" || exit 1
fi
export PYTHONPATH="$FLASH:$SITE:$PWD/server/src:$PWD"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm --format=csv | tee -a "$OUT/gpu.txt"
$PY -c "import torch, transformers, flash_attn; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'flash_attn', flash_attn.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"
$PY -m bench.vlmbench run --isolate --out "$OUT" --workdir /tmp/vlmbench "$@" 2>&1 | tee -a "$OUT/log.txt"
