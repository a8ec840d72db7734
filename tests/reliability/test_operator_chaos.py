"""Chaos against the emulated API: the real operator is killed mid-reconcile, fed API faults, has its
children edited and deleted behind its back, and is given many CRs at once — and must always end
with exactly the objects ``render()`` of the final CRs asks for (nothing missing, nothing extra, no
orphan, no stale status), with a bounded number of retries.

Counts are small in ``make test`` and large under ``make reliability`` (see ``summary.scale``).
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from autoglm_operator import api
from autoglm_operator.kube import KINDS
from tests.operator.e2e.harness import Harness, reconciles

from . import summary
from .chaos import ChaosEmulator, differences, wait_converged
from .specs import CHANGES, random_spec

SEED = 20250601


async def _create_many(h: Harness, rng: random.Random, n: int, prefix: str = "cr") -> list[str]:
    names = [f"{prefix}-{i}" for i in range(n)]
    for name in names:
        await h.create_cr(name, random_spec(rng))
    return names


async def test_kill_mid_reconcile_converges(chaos: Harness) -> None:
    """Stop the operator at a random write (a blackout: nothing it sends after lands), change CRs while
    it is down, restart; after the last restart the namespace equals render() of the CRs."""
    emu: ChaosEmulator = chaos.emulator
    rng = random.Random(SEED)
    runs = summary.scale(3, 15)
    names = await _create_many(chaos, rng, summary.scale(4, 12))
    kills = 0
    for _ in range(runs):
        emu.kill_after(rng.randint(0, 3 * len(names)))
        await chaos.start_operator(resync_seconds=30)
        # Let it work until the kill lands (or it finished everything it had to do).
        deadline = time.monotonic() + 10
        while not emu.blackout and differences(emu, chaos.namespace) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        kills += emu.blackout
        await chaos.stop_operator()
        emu.faults_off()
        # While it is down, users keep changing things.
        for name in rng.sample(names, k=min(2, len(names))):
            await chaos.patch_spec(name, rng.choice(CHANGES))
    await chaos.start_operator(resync_seconds=30)
    diff = await wait_converged(chaos, timeout=60)
    summary.record(
        "operator chaos",
        "kill mid-reconcile + restart",
        cases=runs,
        faults=kills,
        failures=len(diff),
        crs=len(names),
        writes_lost=emu.injected["blackout"],
    )
    assert diff == [], diff


async def test_api_faults_converge_with_bounded_retries(chaos: Harness) -> None:
    """500 / 409 / 429 / slow answers / cut watches on ~6% of the operator's requests, all run long:
    everything converges, and the operator retries no more often than faults were injected."""
    emu: ChaosEmulator = chaos.emulator
    rng = random.Random(SEED + 1)
    emu.rng = random.Random(SEED + 2)
    emu.fault_rate = 0.06
    retries_before = reconciles("retrying")
    names = await _create_many(chaos, rng, summary.scale(6, 25))
    await chaos.start_operator(resync_seconds=2)
    rounds = summary.scale(2, 6)
    for _ in range(rounds):
        for name in rng.sample(names, k=max(1, len(names) // 3)):
            await chaos.patch_spec(name, rng.choice(CHANGES))
        await asyncio.sleep(0.5)
    diff = await wait_converged(chaos, timeout=summary.scale(60, 180))
    retries = reconciles("retrying") - retries_before
    faults = emu.faults_total()
    summary.record(
        "operator chaos",
        "API faults (500/409/429/slow/cut watch)",
        cases=len(names) * (1 + rounds),
        faults=faults,
        failures=len(diff) + (retries > faults),
        retries=int(retries),
        **{f"n_{k}": v for k, v in sorted(emu.injected.items())},
    )
    assert diff == [], diff
    assert faults > 0, "no fault was injected: the test proves nothing"
    assert retries <= faults, f"{retries} reconcile retries for {faults} injected faults: a retry storm"


async def test_child_drift_and_deletion_are_repaired(chaos: Harness) -> None:
    """Someone edits or deletes children: the next resync (or the child watch) puts them back."""
    rng = random.Random(SEED + 3)
    for i in range(3):
        await chaos.create_cr(f"d-{i}", random_spec(random.Random(i)) | {"quantization": "int8"})
    resync = 1.0
    await chaos.start_operator(resync_seconds=resync)
    assert await wait_converged(chaos, timeout=30) == []
    cases = summary.scale(6, 40)
    unrepaired = []
    kinds = ("Service", "ConfigMap", "Deployment")
    for case in range(cases):
        name = f"d-{case % 3}"
        kind = rng.choice(kinds)
        child = name if kind != "ConfigMap" else f"{name}-settings"
        if case % 2 == 0:
            await chaos.delete(kind, child)
            what = f"deleted {kind}"
        else:
            patch = {
                "Service": {"spec": {"ports": [{"name": "http", "port": 1234, "targetPort": 1234}]}},
                "ConfigMap": {"data": {"AUTOGLM_MAX_NEW_TOKENS": "1"}},
                "Deployment": {
                    "spec": {
                        "template": {"spec": {"containers": [{"name": "runtime", "image": "evil:latest"}]}}
                    }
                },
            }[kind]
            await chaos.call(chaos.kube.patch, KINDS[kind], chaos.namespace, child, patch)
            what = f"edited {kind}"
        # Repaired within two resync intervals (plus slack for the shared machine).
        diff = await wait_converged(chaos, timeout=2 * resync + 10)
        if diff:
            unrepaired.append((what, diff))
    summary.record(
        "operator chaos",
        "child drift + deletion repaired",
        cases=cases,
        faults=cases,
        failures=len(unrepaired),
        resync_s=resync,
    )
    assert unrepaired == [], unrepaired


@pytest.mark.timeout(1500)
async def test_many_crs_with_interleaved_updates_and_deletes(chaos: Harness) -> None:
    """Many CRs created, updated and deleted while the operator works: the final state is exactly
    render() of the CRs left (300 under `make reliability`; 1000 did not finish in 9 minutes:
    the emulator's scans are O(objects) per request)."""
    emu: ChaosEmulator = chaos.emulator
    rng = random.Random(SEED + 4)
    n = summary.scale(50, 300)
    await chaos.start_operator(resync_seconds=600)
    started = time.monotonic()
    names: list[str] = []
    updates = deletes = 0
    for i in range(n):
        names.append(f"m-{i}")
        await chaos.create_cr(names[-1], random_spec(rng))
        if i and rng.random() < 0.3:
            await chaos.patch_spec(rng.choice(names), rng.choice(CHANGES))
            updates += 1
        if i and rng.random() < 0.1:
            victim = names.pop(rng.randrange(len(names)))
            await chaos.delete(api.KIND, victim)
            deletes += 1
    created = time.monotonic() - started
    diff = await wait_converged(chaos, timeout=summary.scale(90, 1200))
    elapsed = time.monotonic() - started
    summary.record(
        "operator chaos",
        "many CRs, interleaved updates/deletes",
        cases=n,
        failures=len(diff),
        updates=updates,
        deletes=deletes,
        crs_left=len(names),
        children=sum(
            len(emu.objects_of(p, chaos.namespace)) for p in ("configmaps", "services", "deployments")
        ),
        create_s=round(created, 1),
        converged_s=round(elapsed, 1),
    )
    assert diff == [], diff[:20]
    assert differences(emu, chaos.namespace) == []
