"""The routing benchmark's policies (round-robin vs the picker's prefix affinity, simulated) and
its report section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.report import load, routing_section
from benchmarks.routing_bench import BLOCK_BYTES, PrefixAffine, RoundRobin, block_hashes

SYSTEM = {"role": "system", "content": "Rule: tap what the task needs. " * 40}


def session(n: int, steps: int) -> list[dict[str, str]]:
    messages = [SYSTEM]
    for s in range(steps):
        messages += [
            {"role": "user", "content": f"Session {n}, step {s}: the screen shows a list of twelve apps."},
            {"role": "assistant", "content": 'do(action="Tap", element=[500,800])' + " thinking" * 20},
        ]
    return messages


def test_blocks_are_chained_full_blocks_of_the_flattened_messages() -> None:
    a = block_hashes(session(0, 2))
    b = block_hashes(session(0, 3))
    raw = sum(len(m["role"]) + len(m["content"]) for m in session(0, 2))
    assert len(a) == raw // BLOCK_BYTES
    assert b[: len(a)] == a  # a longer history extends the same chain
    other = block_hashes(session(1, 2))
    shared = next(i for i, (x, y) in enumerate(zip(a, other, strict=False)) if x != y)
    system_blocks = len(SYSTEM["role"] + SYSTEM["content"]) // BLOCK_BYTES
    assert shared == system_blocks  # the sessions share the system prompt's blocks, then differ
    assert all(x != y for x, y in zip(a[shared:], other[shared:], strict=False))  # chained: never re-merge


def test_round_robin_ignores_the_request() -> None:
    rr = RoundRobin(3)
    assert [rr.pick(session(0, s)) for s in range(6)] == [0, 1, 2, 0, 1, 2]


def test_prefix_affinity_keeps_a_session_on_one_replica_and_spreads_new_ones_by_load() -> None:
    router = PrefixAffine(3)
    assert [router.pick(session(n, 1)) for n in range(2)] == [0, 0]  # unwarmed: the system prompt wins
    router = PrefixAffine(3)
    for replica in range(3):  # every replica served the system prompt once (the warm-up)
        router.warmed(replica, [SYSTEM, {"role": "user", "content": "warm-up"}])
    first = [router.pick(session(n, 1)) for n in range(3)]  # in flight together: one per replica
    assert sorted(first) == [0, 1, 2]
    for n, replica in enumerate(first):
        router.done(replica)
        for steps in range(2, 6):
            chosen = router.pick(session(n, steps))
            router.done(chosen)
            assert chosen == replica, (n, steps)


def test_routing_section_reports_both_policies_and_the_ratio(tmp_path: Path) -> None:
    run: dict[str, Any] = {
        "name": "engine_bench agent",
        "workload": {"replicas": 3, "sessions": 8, "steps": 6, "system_prompt_tokens": 1500, "reply_tokens": 14,
                     "output_tokens": 16},
        "policies": {
            "round-robin": {
                "ttft_p50_s_per_step": [1.0, 2.0],
                "ttft_p50_s_step3_on": 2.0,
                "output_tokens_per_s": 10.0,
                "requests_per_replica": [16, 16, 16],
                "prefix_hit_ratio_per_replica": [0.5, 0.5, 0.5],
                "errors": 0,
            },
            "prefix-affine": {"error": "RuntimeError: boom"},
        },
        "ratios": {"ttft p50 from step 3, round-robin / prefix-affine": 3.5},
    }  # fmt: skip
    result = {"what": "a simulation of the policy, not the picker", "model": "random GLM", "runs": [run],
              "targets": [{"name": "routing", "status": "PASS"}]}  # fmt: skip
    text = routing_section(result)
    assert "not the picker" in text
    assert "### engine_bench agent" in text
    assert "a 14-token assistant reply" in text
    assert "16 / 16 / 16" in text
    assert "could not run: RuntimeError: boom" in text
    assert "round-robin / prefix-affine: **3.5x**" in text
    (tmp_path / "routing.json").write_text(json.dumps(result))
    assert load(tmp_path)["targets"] == [{"name": "routing", "status": "PASS"}]
