#!/usr/bin/env bash
# Installs the daemonless image tools scripts/build-images.sh uses (Debian packages), when missing.
set -euo pipefail
missing=()
for tool in buildah podman runc debootstrap; do command -v "$tool" > /dev/null || missing+=("$tool"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing ${missing[*]}: run as root, or: sudo apt-get install -y buildah podman runc debootstrap" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends buildah podman runc debootstrap > /dev/null
