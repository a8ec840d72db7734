#!/usr/bin/env bash
# Fetch a URL and check that its body has a line matching a pattern:
#
#   scripts/http-expect.sh URL REGEX [WHAT]
#
# The body is read whole first, then searched. Never `curl … | grep -q` under `pipefail`: grep -q
# exits at its first match, and a curl still writing (a body that arrives in several pieces, as
# through a container's port forwarding) then gets EPIPE, exits 23, and fails the pipeline although
# the line was there. Exit 0 = found; 1 = not found or the URL failed, saying which.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: http-expect.sh URL REGEX [WHAT]" >&2; exit 2; }
url=$1 pattern=$2 what=${3:-$1}
body=$(mktemp)
trap 'rm -f "$body"' EXIT
if ! err=$(curl -fsS --max-time "${HTTP_EXPECT_TIMEOUT:-60}" -o "$body" "$url" 2>&1); then
  echo "$what: could not read $url: $err" >&2
  exit 1
fi
grep -qE -- "$pattern" "$body" || { echo "$what: no line matches '$pattern' in $url ($(wc -c < "$body") bytes)" >&2; exit 1; }
