#!/usr/bin/env bash
# Security scan of the Helm chart as it is installed: render it in each mode the tests use, then
# run checkov's Kubernetes checks over the manifests. Skips, each with its reason, are in
# charts/checkov.yaml. checkov pins old versions of common packages (packaging, networkx), so it
# lives in its own virtualenv under build/ rather than in the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=build/checkov-venv
CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
if [ ! -x "$VENV/bin/checkov" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi
[ "${1:-}" = "--install-only" ] && exit 0
HELM=${HELM:-.venv/bin/helm}
OUT=build/chart-render
rm -rf "$OUT" && mkdir -p "$OUT"
render() {  # render NAME HELM-ARGS...
  local name=$1; shift
  "$HELM" template agd charts/autoglm-operator --namespace autoglm-system --include-crds "$@" > "$OUT/$name.yaml"
}
render default
render namespaced --set 'watchNamespaces={ml,serving}'
render monitoring --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true \
  --set grafanaDashboard.enabled=true
# --skip-download: no call to the vendor platform (unreachable offline, and not needed).
"$VENV/bin/checkov" --config-file charts/checkov.yaml --skip-download --directory "$OUT"
