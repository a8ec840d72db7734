"""Fixtures of the end-to-end operator tests: an emulated API server (or a real cluster) and a harness.

``KUBECONFIG`` must name the emulator before anything reads it; the operator's client and its kopf
login read the variable at call time, so one file per session, rewritten with each test's emulator
URL, is enough. Against a real cluster (``-m cluster`` with ``AUTOGLM_TEST_CLUSTER=1``) the
variable is left as the user set it.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

CLUSTER = os.environ.get("AUTOGLM_TEST_CLUSTER") == "1"
_KUBECONFIG = Path(tempfile.mkdtemp(prefix="autoglm-e2e-")) / "kubeconfig"
if not CLUSTER:
    os.environ["KUBECONFIG"] = str(_KUBECONFIG)

import kmock  # noqa: E402

from autoglm_operator.kube import Kube, load_configuration  # noqa: E402

from .emulator import ApiEmulator, kubeconfig_yaml, register_resources  # noqa: E402
from .harness import Harness  # noqa: E402


def write_kubeconfig(url: str) -> None:
    _KUBECONFIG.write_text(kubeconfig_yaml(url))


@pytest.fixture
async def emulator() -> AsyncIterator[ApiEmulator]:
    async with ApiEmulator() as emu, kmock.Server(emu) as server:
        register_resources(emu)
        write_kubeconfig(str(server.url).rstrip("/"))
        yield emu


@pytest.fixture
async def harness(emulator: ApiEmulator) -> AsyncIterator[Harness]:
    kube = Kube(load_configuration(), user_agent="autoglm-e2e")
    h = Harness(kube=kube, namespace=f"e2e-{uuid.uuid4().hex[:6]}", emulator=emulator)
    try:
        yield h
    finally:
        await h.stop_operator()
        kube.close()
