#!/usr/bin/env bash
# `make gpu-check`: the GPU acceptance check, offline. Needs a Python 3.11/3.12 with a CUDA build of
# torch (>= 2.4) already installed and the folder `make gpu-wheelhouse` built on a networked machine.
# Installs from that folder only (`pip --no-index`) into a temporary target beside the machine's own
# torch, which it never installs, replaces or upgrades; then runs benchmarks/gpu_check.py. Without
# CUDA the same parts run at tiny scale on the CPU (what CI runs).
#   PYTHON=/usr/bin/python3 GPU_WHEELHOUSE=build/gpu-wheelhouse bash scripts/gpu-check.sh OUT [gpu_check args]
set -euo pipefail
cd "$(dirname "$0")/.."
export GPU_CHECK_STARTED=${GPU_CHECK_STARTED:-$(date +%s)}  # the ten minutes count from here
PYTHON=${PYTHON:-python3}
WHEELHOUSE=${GPU_WHEELHOUSE:-build/gpu-wheelhouse}
OUT=${1:-build/gpu-check}
shift || true
if ! "$PYTHON" -c 'import torch' 2>/dev/null; then
  echo "error: $PYTHON cannot import torch: install a CUDA build of torch (>= 2.4) for it first" >&2
  exit 2
fi
if ! ls "$WHEELHOUSE"/autoglm-*.whl >/dev/null 2>&1; then
  echo "error: no wheelhouse at $WHEELHOUSE: run 'make gpu-wheelhouse' on a machine with network and copy" \
       "build/gpu-wheelhouse here (or set GPU_WHEELHOUSE)" >&2
  exit 2
fi
TARGET=$(mktemp -d "${TMPDIR:-/tmp}/autoglm-gpu-check-site.XXXXXX")
trap 'rm -rf "$TARGET"' EXIT
started=$(date +%s)
PIP_NO_INDEX=1 "$PYTHON" scripts/gpu_check_install.py "$WHEELHOUSE" "$TARGET"
echo "gpu-check: installed in $(( $(date +%s) - started )) s"
export PYTHONPATH="$TARGET:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" -m benchmarks.gpu_check --out "$OUT" "$@"
