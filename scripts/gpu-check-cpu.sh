#!/usr/bin/env bash
# The CPU form of `make gpu-check`, as CI runs it: a fresh virtualenv holding only torch, then the
# check installs everything else from the wheelhouse (`make gpu-wheelhouse`, which must exist) and
# runs every part at tiny scale.
# The bare venv's torch is linked from an interpreter that has torch 2.13.0 already (TORCH_FROM,
# default .venv/bin/python: `make test` made it; the same files pip would unpack, a second instead of
# a minute: scripts/bare_torch_venv.py); without one it is pip-installed.
set -euo pipefail
cd "$(dirname "$0")/.."
BARE=${GPU_CHECK_BARE_VENV:-build/bare-torch}
PYTHON=${PYTHON:-python3}
TORCH_FROM=${TORCH_FROM:-.venv/bin/python}
TORCH_VERSION=2.13.0
started=$(date +%s)
rm -rf "$BARE"
if ! { [ -x "$TORCH_FROM" ] && "$TORCH_FROM" scripts/bare_torch_venv.py "$BARE" "$TORCH_VERSION"; }; then
  "$PYTHON" -m venv "$BARE"
  "$BARE/bin/python" -m pip --disable-pip-version-check -q install "torch==$TORCH_VERSION" 2> >(grep -v "^WARNING: Location" >&2)
  echo "bare venv: $("$BARE/bin/python" -m pip --disable-pip-version-check list 2>/dev/null | tail -n +3 | awk '{printf "%s ", $1}')"
fi
echo "bare venv in $(( $(date +%s) - started )) s"
# The check's temporary folders (the install target: ~6,500 files, 330 MB; the tiny models) in memory
# where there is room: writing and removing them on this VM's disk cost up to 30 s of a run.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ] \
   && [ "$(df -Pk /dev/shm | awk 'NR == 2 {print $4}')" -gt 2000000 ]; then
  export TMPDIR=/dev/shm
fi
PYTHON="$BARE/bin/python" bash scripts/gpu-check.sh "${1:-build/gpu-check-cpu}" "${@:2}"
