#!/usr/bin/env bash
# The CPU form of `make gpu-check`, as CI runs it: a fresh virtualenv holding only torch (the CPU
# build on these machines' disk), then the check installs everything else from the wheelhouse
# (`make gpu-wheelhouse`, which must exist) and runs every part at tiny scale.
set -euo pipefail
cd "$(dirname "$0")/.."
BARE=${GPU_CHECK_BARE_VENV:-build/bare-torch}
PYTHON=${PYTHON:-python3}
rm -rf "$BARE"
"$PYTHON" -m venv "$BARE"
"$BARE/bin/python" -m pip --disable-pip-version-check -q install "torch==2.13.0" 2> >(grep -v "^WARNING: Location" >&2)
echo "bare venv: $("$BARE/bin/python" -m pip --disable-pip-version-check list 2>/dev/null | tail -n +3 | awk '{printf "%s ", $1}')"
PYTHON="$BARE/bin/python" bash scripts/gpu-check.sh "${1:-build/gpu-check-cpu}" "${@:2}"
