#!/usr/bin/env bash
# `make gpu-wheelhouse`, on a machine with network: the wheels `make gpu-check` installs on an
# air-gapped GPU node beside the node's own CUDA torch, for Linux x86-64 and CPython 3.11 and 3.12.
#   build/gpu-wheelhouse/        this project + what the runtime and the check need beyond torch,
#                                transformers and accelerate (scripts/gpu-wheelhouse.txt): at most 50 MB
#   build/gpu-wheelhouse/extra/  optional: transformers, accelerate and their dependencies, Pillow
#                                (scripts/gpu-wheelhouse-extra.txt), for nodes that lack them or whose
#                                transformers/accelerate are older than the runtime supports
# Binary wheels only, downloaded without resolving dependencies (that would pull a CUDA torch); the
# lists name every dependency, and the CPU form of the check (CI) proves they are complete.
# The downloads (2 Python versions x 2 lists, in parallel) are kept in GPU_WHEELHOUSE_CACHE under a
# key of the lists and this script, and reused while neither changes; this project's wheel is built
# anew every time.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/gpu-wheelhouse}
PYTHON=${PYTHON:-python3}
PYTHONS=${GPU_WHEELHOUSE_PYTHONS:-3.11 3.12}
LIMIT_BYTES=${GPU_WHEELHOUSE_LIMIT_BYTES:-50000000}
CACHE=${GPU_WHEELHOUSE_CACHE:-build/gpu-wheelhouse-cache}
PIP=("$PYTHON" -m pip --disable-pip-version-check -q)

key=$( { cat "$0" scripts/gpu-wheelhouse.txt scripts/gpu-wheelhouse-extra.txt; echo "$PYTHONS"; } | sha256sum | cut -c1-16)
downloads=$CACHE/$key
if [ ! -f "$downloads/.complete" ]; then
  rm -rf "$downloads"
  mkdir -p "$downloads/extra" "$downloads/logs"
  pids=()
  for version in $PYTHONS; do
    abi="cp${version/./}"
    for list in gpu-wheelhouse gpu-wheelhouse-extra; do
      dest="$downloads"
      [ "$list" = gpu-wheelhouse-extra ] && dest="$downloads/extra"
      "${PIP[@]}" download --no-deps --only-binary=:all: --implementation cp --python-version "$version" \
        --abi "$abi" --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dest" -r "scripts/$list.txt" > "$downloads/logs/$list-$version.log" 2>&1 &
      pids+=("$!:$list-$version")
    done
  done
  failed=0
  for entry in "${pids[@]}"; do
    if ! wait "${entry%%:*}"; then
      echo "error: pip download of ${entry#*:} failed:" >&2
      grep -v "^WARNING: Location" "$downloads/logs/${entry#*:}.log" >&2 || true
      failed=1
    fi
  done
  [ "$failed" = 0 ] || exit 1
  touch "$downloads/.complete"
fi

rm -rf "$OUT"
mkdir -p "$OUT/extra"
cp "$downloads"/*.whl "$OUT/"
cp "$downloads"/extra/*.whl "$OUT/extra/"
"${PIP[@]}" wheel --no-deps -w "$OUT" . 2> >(grep -v "^WARNING: Location" >&2)
(cd "$OUT" && sha256sum ./*.whl extra/*.whl > SHA256SUMS)
"$PYTHON" - "$OUT" "$LIMIT_BYTES" <<'PY'
import sys
from pathlib import Path

out, limit = Path(sys.argv[1]), int(sys.argv[2])
main = sorted(out.glob("*.whl"))
extra = sorted((out / "extra").glob("*.whl"))
size = sum(f.stat().st_size for f in main)
print(f"gpu wheelhouse {out}: {len(main)} wheels, {size / 1e6:.2f} MB (limit {limit / 1e6:.0f} MB); "
      f"extra/: {len(extra)} wheels, {sum(f.stat().st_size for f in extra) / 1e6:.2f} MB")
if size > limit:
    sys.exit(f"error: {out} is {size} bytes, over the {limit}-byte budget (see scripts/gpu-wheelhouse.txt)")
PY
