"""Fixtures and reporting of the reliability suite.

- Tests marked ``reliability`` run only under ``make reliability`` (AUTOGLM_RELIABILITY=1); the rest
  of this folder is the fast subset that ``make test`` runs with small counts (see ``summary.scale``).
- The operator checks reuse the e2e harness (kmock-based API emulator, the real kopf operator run
  in-process); importing its conftest points KUBECONFIG at the emulator before any client reads it.
- At the end of the run the figures every check recorded are printed as one table and written to
  ``build/reliability/summary.json``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest

from autoglm_operator.kube import Kube, load_configuration
from tests.operator.e2e.conftest import write_kubeconfig
from tests.operator.e2e.emulator import register_resources
from tests.operator.e2e.harness import Harness

from . import summary
from .chaos import ChaosEmulator


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if summary.FULL:
        return
    skip = pytest.mark.skip(reason="long reliability run: `make reliability` (AUTOGLM_RELIABILITY=1)")
    for item in items:
        if item.get_closest_marker("reliability") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not summary.ROWS:
        return
    terminalreporter.write_sep("=", "reliability figures" + ("" if summary.FULL else " (fast subset)"))
    terminalreporter.write_line(summary.table(summary.ROWS))
    summary.write(summary.ROWS)
    terminalreporter.write_line(f"written to {summary.OUTPUT}")


@pytest.fixture
async def chaos_emulator() -> AsyncIterator[ChaosEmulator]:
    """The e2e emulator plus fault injection, a request log and a blackout switch (see chaos.py)."""
    async with ChaosEmulator() as emu, kmock.Server(emu) as server:
        register_resources(emu)
        write_kubeconfig(str(server.url).rstrip("/"))
        yield emu


@pytest.fixture
async def chaos(chaos_emulator: ChaosEmulator) -> AsyncIterator[Harness]:
    kube = Kube(load_configuration(), user_agent="autoglm-e2e")
    h = Harness(kube=kube, namespace=f"rel-{uuid.uuid4().hex[:6]}", emulator=chaos_emulator)
    try:
        yield h
    finally:
        chaos_emulator.faults_off()
        await h.stop_operator()
        kube.close()
