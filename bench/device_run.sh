#!/usr/bin/env bash
# Run the bench on the accelerator machine (bare image: torch, transformers, httpx there), in one call:
# the GPU and versions, the device-to-device copy bandwidth, then what the arguments select, each part in
# its own process under --deadline: the standard cells per backend (--cells / --no-standard), the extra
# workloads (--workloads), the peer (--peer generate_batch,serve). One results JSON comes out, merged:
# $OUT/<device>-<date>[-<tag>].json (h200-... on the H200), with log.txt and gpu.txt.
#
# Needs, carried with the working tree (git-ignored, see bench/README.md):
#   .carry/wheels/*.whl     the server's missing deps (fastapi, uvicorn, pydantic, ...); for the
#                           transformers-serve peer also openai, jiter, distro, sniffio
#   .carry/flash_attn-2.8.3.post2-cp312.tar.xz   the flash-attn wheel's contents, xz-packed (15 MB, not 60)
# Usage: BENCH_COMMIT=<hash> bash bench/device_run.sh [python -m bench.vlmbench run arguments...]
# (the device's copy of .git is from the session's start: BENCH_COMMIT says which commit this is)
# Environment: OUT (default ./bench-out), PY (default python3), WORKDIR (default /tmp/vlmbench).
set -uo pipefail
OUT="${OUT:-$PWD/bench-out}"
PY="${PY:-python3}"
WORKDIR="${WORKDIR:-/tmp/vlmbench}"
mkdir -p "$OUT" "$WORKDIR"
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
SITE="$WORKDIR/site"
FLASH="$WORKDIR/flash"
rm -rf "$SITE" "$FLASH"
mkdir -p "$SITE" "$FLASH"
if compgen -G ".carry/wheels/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .carry/wheels/*.whl || exit 1
fi
FLASH_TAR=$(ls .carry/flash_attn-*.tar.xz 2>/dev/null | head -1)
if [ -n "$FLASH_TAR" ]; then
  $PY -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$FLASH_TAR" "$FLASH" || exit 1
fi
export PYTHONPATH="$FLASH:$SITE:$PWD/server/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm --format=csv 2>&1 || true
  $PY -c "import json; from bench.vlmbench.results import versions; print(json.dumps(versions()))" 2>&1
  $PY -m bench.vlmbench bandwidth 2>&1
} | tee -a "$OUT/gpu.txt"
$PY -m bench.vlmbench run --isolate --out "$OUT" --workdir "$WORKDIR" "$@" 2>&1 | tee -a "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
