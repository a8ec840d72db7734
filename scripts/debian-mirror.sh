#!/usr/bin/env bash
# Print the Debian mirror apt on this machine uses, for debootstrap:
#
#   scripts/debian-mirror.sh [SUITE] [-o APT::OPTION=VALUE ...]
#
# The mirror comes from apt's own index targets (`apt-get indextargets`), so every layout apt reads
# works: a classic /etc/apt/sources.list, deb822 files in sources.list.d/*.sources only (a fresh
# machine may have no sources.list at all), and comment lines holding URLs that are not the
# mirror. Preference: the repository serving SUITE (default bookworm) itself, then any Debian main
# suite (not -security, -updates or -backports). Extra `-o` options go to apt-get (tests point
# Dir::Etc::SourceList and SourceParts at their own files). Exit 1, saying why, when apt knows no
# Debian repository.
set -euo pipefail
SUITE=bookworm
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then SUITE=$1; shift; fi
APT_OPTS=("$@")

command -v apt-get > /dev/null || { echo "debian-mirror: apt-get is not installed: no apt sources to read" >&2; exit 1; }
if ! TARGETS=$(apt-get "${APT_OPTS[@]}" indextargets --no-release-info \
    --format '$(TARGET_OF) $(IDENTIFIER) $(RELEASE) $(REPO_URI)' 2>&1); then
  echo "debian-mirror: apt-get indextargets failed: $TARGETS" >&2
  exit 1
fi
MIRROR=$(awk -v suite="$SUITE" '
  $1 == "deb" && $2 == "Packages" {
    if ($3 == suite && !exact) exact = $4
    if ($3 !~ /-(security|updates|backports|proposed-updates)$/ && !main) main = $4
  }
  END { print (exact ? exact : main) }' <<< "$TARGETS")
if [ -z "$MIRROR" ]; then
  echo "debian-mirror: apt knows no Debian repository for $SUITE (apt-get indextargets lists: ${TARGETS:-nothing})" >&2
  exit 1
fi
echo "${MIRROR%/}"
