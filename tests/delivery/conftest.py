"""Helpers for the delivery checks: the real helm binary, rendering the chart with given values."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

CHART = REPO / "charts" / "autoglm-operator"
NAMESPACE = "autoglm-system"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion ">=X.Y.Z-0"): everything is
# validated against that version's schemas.
KUBE_VERSION = re.search(r'kubeVersion: ">=(\d+\.\d+\.\d+)', (CHART / "Chart.yaml").read_text()).group(1)  # type: ignore[union-attr]


def helm_binary() -> str | None:
    local = REPO / ".venv" / "bin" / "helm"
    return str(local) if local.exists() else shutil.which("helm")


@pytest.fixture(scope="session")
def helm() -> str:
    path = helm_binary()
    if path is None:
        pytest.skip("no helm binary: `make install` puts one in .venv/bin (scripts/get-helm.sh)")
    return path


def run_helm(
    helm: str, *args: str, values: dict[str, Any] | None = None, tmp: Path
) -> subprocess.CompletedProcess[str]:
    cmd = [helm, *args]
    if values is not None:
        digest = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
        path = tmp / f"values-{digest}.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["-f", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def render(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict[str, Any]]]:
    """render(values, include_crds=False) -> the chart's objects; a failing render fails the test."""
    tmp = tmp_path_factory.mktemp("helm")
    cache: dict[str, list[dict[str, Any]]] = {}

    def _render(values: dict[str, Any] | None = None, include_crds: bool = False) -> list[dict[str, Any]]:
        key = json.dumps([values, include_crds], sort_keys=True)
        if key not in cache:
            args = ["template", "agd", str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
            if include_crds:
                args.append("--include-crds")
            done = run_helm(helm, *args, values=values, tmp=tmp)
            assert done.returncode == 0, done.stderr
            cache[key] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        return cache[key]

    return _render


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# Value sets every structural check runs over: the default and the non-default modes.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["ml", "serving"]},
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    },
    "standalone-minimal": {
        "replicaCount": 1,
        "peering": {"enabled": False},
        "operator": {"nodeLookup": False, "allowNetwork": True, "logFormat": "text"},
        "podDisruptionBudget": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "metrics": {"service": {"enabled": False}},
        "image": {"digest": "sha256:" + "a" * 64},
    },
}
