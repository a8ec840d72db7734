#!/usr/bin/env bash
# Build the autoglm-operator and autoglm-runtime images, and optionally smoke-test them.
#
#   scripts/build-images.sh [--smoke] [--no-build] [--variant cpu|cuda] [--tag TAG]
#
# With a working Docker engine it runs plain `docker build` (the Dockerfiles download from the
# package indexes as usual). Without one it builds daemonless with buildah (storage driver vfs)
# and works fully offline, the way these sandboxes need it:
#   * the base image is made with `debootstrap --variant=minbase` (Debian bookworm, python3 3.11)
#     from the mirror apt already uses, then `podman import`ed: no registry is reachable;
#   * every wheel is downloaded (or built, for this project) on the host, staged into the build
#     context as ./wheelhouse, and installed in the build with `pip --no-index`: pip inside a
#     build cannot verify TLS here.
# --smoke then runs both images with podman: the operator prints its CRD (and must match
# crds/), and the runtime (CPU variant) serves a tiny random GLM-4V mounted read-only, answering
# /readyz, one completion and one screenshot chat request, as uid 10001 on a read-only root filesystem.
#
# Environment: ENGINE=docker|buildah (default: docker when `docker info` works),
# BASE_IMAGE (skips debootstrap), PYTHON (host interpreter for pip, default .venv/bin/python).
set -Eeuo pipefail
# Every failing step says what failed (a bare `exit 2` under pipefail once left CI with no clue).
trap 'echo "build-images: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
REPO=$PWD

SMOKE=0
BUILD=1
VARIANT=cpu
TAG=$(sed -n 's/^version = "\(.*\)"/\1/p;T;q' pyproject.toml)  # sed stops itself: no early-exiting reader
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) SMOKE=1 ;;
    --no-build) BUILD=0; SMOKE=1 ;;  # smoke-test the images built last time
    --variant) VARIANT=$2; shift ;;
    --tag) TAG=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case $VARIANT in
  cpu) TORCH_INDEX=https://download.pytorch.org/whl/cpu; RUNTIME_TAG=$TAG-cpu ;;
  cuda) TORCH_INDEX=""; RUNTIME_TAG=$TAG ;;
  *) echo "--variant must be cpu or cuda, not $VARIANT" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
OPERATOR_IMAGE=localhost/autoglm-operator:$TAG
RUNTIME_IMAGE=localhost/autoglm-runtime:$RUNTIME_TAG
WORK=$REPO/build/images
mkdir -p "$WORK"

if [ -z "${ENGINE:-}" ]; then
  if command -v docker > /dev/null && docker info > /dev/null 2>&1; then ENGINE=docker; else ENGINE=buildah; fi
fi
log() { printf '[build-images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
logged() {  # logged LOGFILE WHAT COMMAND...: output to LOGFILE; on failure say WHAT and show its tail
  local file=$1 what=$2; shift 2
  if ! "$@" >> "$file" 2>&1; then
    echo "build-images: $what failed; the end of $file:" >&2
    tail -n 30 "$file" >&2
    return 1
  fi
}
START=$SECONDS

# Podman/buildah flags for this kind of host: vfs storage (no overlay in a VM without fuse),
# cgroupfs (no systemd), and ulimits at or below the host's hard limits (the defaults exceed them
# and runc fails with "error setting rlimit ... operation not permitted").
STORAGE=(--storage-driver vfs)
ULIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
podman_() { podman "${STORAGE[@]}" --cgroup-manager cgroupfs "$@"; }

if [ "$ENGINE" = docker ] && [ "$BUILD" = 1 ]; then
  docker build -f operator/Dockerfile --build-arg REVISION="$REVISION" -t "$OPERATOR_IMAGE" .
  docker build -f runtime/Dockerfile --build-arg REVISION="$REVISION" --build-arg TORCH_INDEX="$TORCH_INDEX" \
    --build-arg TORCH_VERSION="$TORCH_VERSION" -t "$RUNTIME_IMAGE" .
  log "built $OPERATOR_IMAGE and $RUNTIME_IMAGE with docker in $((SECONDS - START)) s"
  [ "$SMOKE" = 1 ] && log "--smoke is implemented for the buildah/podman path only"
  exit 0
fi

for tool in buildah podman; do
  command -v $tool > /dev/null || { echo "$tool is missing: apt-get install -y buildah podman runc debootstrap" >&2; exit 1; }
done

if [ "$BUILD" = 1 ]; then
# 1. Base image ------------------------------------------------------------------------------
if [ -z "${BASE_IMAGE:-}" ]; then
  BASE_IMAGE=localhost/autoglm-base:bookworm
  if ! podman_ image exists "$BASE_IMAGE"; then
    command -v debootstrap > /dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
    # The mirror apt itself resolves (scripts/debian-mirror.sh reads `apt-get indextargets`).
    MIRROR=$(scripts/debian-mirror.sh bookworm) || {
      MIRROR=http://deb.debian.org/debian
      log "no Debian mirror found in apt's sources (see above); trying $MIRROR"
    }
    log "making $BASE_IMAGE with debootstrap from $MIRROR"
    ROOTFS=$WORK/rootfs
    rm -rf "$ROOTFS"
    : > "$WORK/debootstrap.log"
    logged "$WORK/debootstrap.log" "debootstrap of bookworm from $MIRROR" \
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    tar -C "$ROOTFS" -c . | podman_ import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" > /dev/null
    rm -rf "$ROOTFS"
  fi
fi
log "base image: $BASE_IMAGE"

# 2. Wheelhouses (host side) -------------------------------------------------------------------
# --only-binary: nothing may need a compiler in the build stage.
PIP=("$PYTHON" -m pip --disable-pip-version-check -q)
PROJECT=$WORK/project
: > "$WORK/pip.log"
rm -rf "$PROJECT" && mkdir -p "$PROJECT"
logged "$WORK/pip.log" "building the project wheel" "${PIP[@]}" wheel --no-deps -w "$PROJECT" .
WHEEL=$(ls "$PROJECT"/autoglm-*.whl)
wheelhouse() {  # wheelhouse NAME REQUIREMENT...
  local dir=$WORK/wheelhouse-$1; shift
  mkdir -p "$dir"
  cp "$WHEEL" "$dir/"
  logged "$WORK/pip.log" "downloading wheels for the $(basename "$dir") image" \
    "${PIP[@]}" download --only-binary :all: -d "$dir" "$@"
}
wheelhouse operator "$WHEEL[operator]"
if [ "$VARIANT" = cpu ]; then
  wheelhouse runtime "torch==$TORCH_VERSION" "$WHEEL[runtime]"
else
  # The CUDA build of torch comes from PyPI with its nvidia-* wheels (several GB).
  wheelhouse runtime --index-url https://pypi.org/simple "torch==$TORCH_VERSION" "$WHEEL[runtime]"
fi
log "wheelhouses ready after $((SECONDS - START)) s"

# 3. Build contexts: the files .dockerignore lets in, plus the wheelhouse (hard links, no copy) ---
context() {  # context NAME -> prints its path
  local ctx=$WORK/context-$1
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp -a .dockerignore pyproject.toml README.md "$ctx/"
  mkdir -p "$ctx/operator" "$ctx/runtime"
  cp -a operator/src "$ctx/operator/" && cp -a runtime/src "$ctx/runtime/"
  cp -al "$WORK/wheelhouse-$1" "$ctx/wheelhouse"
  echo "$ctx"
}
# What the operator image must print: the CRD generated from the very sources it is built from.
OPERATOR_CONTEXT=$(context operator)
PYTHONPATH="$OPERATOR_CONTEXT/operator/src:$OPERATOR_CONTEXT/runtime/src" "$PYTHON" -m autoglm_operator.cli crd \
  > "$WORK/expected-crd.yaml"
bud() { buildah "${STORAGE[@]}" bud --isolation chroot "${ULIMITS[@]}" --layers=false \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg REVISION="$REVISION" "$@"; }

# vfs keeps every superseded image in full (GBs): remember them, drop them once re-tagged.
OLD_IMAGES=$(podman_ images -q "$OPERATOR_IMAGE" "$RUNTIME_IMAGE" 2>/dev/null || true)
T=$SECONDS
: > "$WORK/build-operator.log" && : > "$WORK/build-runtime.log"
logged "$WORK/build-operator.log" "building $OPERATOR_IMAGE" bud -f operator/Dockerfile -t "$OPERATOR_IMAGE" "$OPERATOR_CONTEXT"
log "built $OPERATOR_IMAGE in $((SECONDS - T)) s"
T=$SECONDS
RUNTIME_CONTEXT=$(context runtime)
logged "$WORK/build-runtime.log" "building $RUNTIME_IMAGE" \
  bud -f runtime/Dockerfile --build-arg TORCH_VERSION="$TORCH_VERSION" -t "$RUNTIME_IMAGE" "$RUNTIME_CONTEXT"
log "built $RUNTIME_IMAGE in $((SECONDS - T)) s"
for id in $OLD_IMAGES; do
  [ -z "$(podman_ images -q --filter "id=$id" --filter dangling=true)" ] || podman_ rmi "$id" > /dev/null || true
done
podman_ images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'autoglm-(operator|runtime|base)' >&2
log "images built in $((SECONDS - START)) s"
fi
[ "$SMOKE" = 1 ] || exit 0

# 4. Smoke tests -----------------------------------------------------------------------------
# As the pods run them: uid 10001, read-only root filesystem, writable /tmp only, no network
# but the host's loopback (podman's bridge networking needs iptables, absent here).
RUN=(podman_ run --rm "${ULIMITS[@]}" --read-only --tmpfs /tmp --user 10001:10001 --cap-drop ALL
     --security-opt no-new-privileges)
T=$SECONDS
# One container (vfs copies the whole image for each): --help works, `crd` prints, uid is 10001.
"${RUN[@]}" --network none --entrypoint /bin/sh "$OPERATOR_IMAGE" \
  -c 'autoglm-operator --help > /dev/null && autoglm-operator crd && id -u' > "$WORK/smoke-operator.out"
[ "$(tail -1 "$WORK/smoke-operator.out")" = 10001 ] || { echo "the operator image does not run as uid 10001" >&2; exit 1; }
sed '$d' "$WORK/smoke-operator.out" > "$WORK/smoke-crd.yaml"
if [ ! -f "$WORK/expected-crd.yaml" ] && [ -d "$WORK/context-operator" ]; then  # --no-build after a failed run
  PYTHONPATH="$WORK/context-operator/operator/src:$WORK/context-operator/runtime/src" "$PYTHON" \
    -m autoglm_operator.cli crd > "$WORK/expected-crd.yaml"
fi
cmp "$WORK/smoke-crd.yaml" "$WORK/expected-crd.yaml" \
  || { echo "the operator image prints a CRD other than its sources generate" >&2; exit 1; }
log "operator image: --help, crd and uid 10001 OK"

MODEL=$WORK/tiny-model
rm -rf "$MODEL"
HF_HUB_OFFLINE=1 "$PYTHON" - "$MODEL" <<'PY'
import sys
from autoglm_runtime.devmodels import build_tiny_glm4v
build_tiny_glm4v(sys.argv[1])  # a vision model: the image path (PIL processor, no torchvision) runs too
PY
chmod -R a+rX "$MODEL"
PORT=${SMOKE_PORT:-18000}
NAME=autoglm-runtime-smoke-$$
"${RUN[@]}" -d --name "$NAME" --network host -v "$MODEL:/model:ro" \
  -e AUTOGLM_MODEL=/model -e AUTOGLM_SERVED_MODEL_NAME=tiny-glm -e AUTOGLM_PORT="$PORT" \
  -e AUTOGLM_HOST=127.0.0.1 -e AUTOGLM_TORCH_THREADS=1 -e HF_HUB_OFFLINE=1 \
  "$RUNTIME_IMAGE" serve > /dev/null
cleanup() { podman_ logs "$NAME" > "$WORK/smoke-runtime.log" 2>&1 || true; podman_ rm -f "$NAME" > /dev/null 2>&1 || true; }
trap cleanup EXIT
for _ in $(seq 1 180); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" > /dev/null 2>&1 && break
  podman_ container exists "$NAME" || { cat "$WORK/smoke-runtime.log" >&2; exit 1; }
  sleep 1
done
curl -fsS "http://127.0.0.1:$PORT/readyz" > /dev/null
log "runtime ready after $((SECONDS - T)) s"
curl -fsS "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
  -d '{"model": "tiny-glm", "prompt": "Hello", "max_tokens": 4}' > "$WORK/smoke-completion.json"
"$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["model"] == "tiny-glm" and d["usage"]["completion_tokens"] >= 1, d' \
  "$WORK/smoke-completion.json"
# One phone-agent step: a 1080x2400 PNG screenshot as a data URL in a chat message.
"$PYTHON" - "$WORK/smoke-image-request.json" <<'PY'
import base64, io, json, sys
from PIL import Image
buf = io.BytesIO()
Image.new("RGB", (1080, 2400), (30, 120, 200)).save(buf, format="PNG")
url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "** Screen Info **"}]
body = {"model": "tiny-glm", "messages": [{"role": "user", "content": content}], "max_tokens": 4}
json.dump(body, open(sys.argv[1], "w"))
PY
curl -fsS "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
  -d @"$WORK/smoke-image-request.json" > "$WORK/smoke-image.json" \
  || { echo "the runtime image refused a screenshot request: $(cat "$WORK/smoke-image.json" 2>/dev/null)" >&2; exit 1; }
"$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["usage"]["prompt_tokens"] > 3354, d' \
  "$WORK/smoke-image.json"
bash scripts/http-expect.sh "http://127.0.0.1:$PORT/metrics" '^autoglm_' "the runtime's /metrics (autoglm_ metrics)"
log "runtime image: /readyz, /v1/completions, a screenshot chat request and /metrics OK; smoke tests took $((SECONDS - T)) s"
log "total $((SECONDS - START)) s"
