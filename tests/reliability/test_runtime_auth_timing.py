"""Wrong-key rejection takes the same time whatever the key shares with a real one: keys are hashed
and compared in constant time (``autoglm_runtime.auth``), so a timing side channel cannot reveal a
key prefix by prefix. Measured against the app in-process (httpx ASGITransport, no model call: the
401 comes before the body is read), samples of the two kinds interleaved so drift hits both alike.

Timing is noisy on a shared machine: the figures are always recorded, the (generous) bound is only
asserted in the full run (``make reliability``)."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from . import summary
from .runtime_app import make_app

pytestmark = pytest.mark.slow

KEY = "sk-" + "k3y" * 20  # 63 characters
NEAR = KEY[:-1] + ("x" if KEY[-1] != "x" else "y")  # shares all but the last character
FAR = "Z" * len(KEY)  # shares nothing, same length


def test_wrong_key_rejection_time_does_not_depend_on_the_shared_prefix() -> None:
    samples = summary.scale(300, 2000)
    keys = Path(tempfile.mkdtemp(prefix="rel-keys-")) / "api-keys"
    keys.write_text(KEY + "\n")
    app, engine = make_app(api_keys_file=keys)
    times: dict[str, list[float]] = {"near": [], "far": []}
    statuses: set[int] = set()

    async def measure() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            for i in range(samples * 2 + 50):
                kind = "near" if i % 2 else "far"
                headers = {"Authorization": f"Bearer {NEAR if kind == 'near' else FAR}"}
                t0 = time.perf_counter()
                r = await c.get("/v1/models", headers=headers)
                elapsed = time.perf_counter() - t0
                statuses.add(r.status_code)
                if i >= 50:  # the first requests warm up the app
                    times[kind].append(elapsed)
            assert (await c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})).status_code == 200

    try:
        asyncio.run(measure())
    finally:
        engine.stop()
    near, far = statistics.median(times["near"]), statistics.median(times["far"])
    ratio = near / far
    bounded = abs(ratio - 1) < 0.5
    summary.record(
        "runtime auth",
        "wrong-key rejection time vs shared prefix (in-process)",
        cases=len(times["near"]) + len(times["far"]),
        failures=int(summary.FULL and not bounded),
        median_us_near=near * 1e6,
        median_us_far=far * 1e6,
        ratio=ratio,
        prefix_chars=len(KEY) - 1,
    )
    assert statuses == {401}
    if summary.FULL:
        assert bounded, f"median near/far = {ratio:.3f}"
