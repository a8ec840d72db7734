"""The routing benchmark: the picker's scoring as the bench reproduces it (llm-d-router v0.10.0,
the operator's EndpointPickerConfig), round-robin, the engine-cache replay and the report section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autoglm_runtime import metrics as runtime_metrics
from benchmarks.report import load, routing_section
from benchmarks.routing_bench import (
    BYTES_PER_TOKEN,
    MIN_BLOCK_TOKENS,
    LongestMatch,
    Picker,
    PrefixIndex,
    Recording,
    RoundRobin,
    Signals,
    block_hashes,
    estimate_bytes,
    parse_signals,
    picker_weights,
    replay_engine_cache,
    step_of,
)

SYSTEM = {"role": "system", "content": "Rule: tap what the task needs. " * 40}  # 1,240 bytes
BLOCK_BYTES = MIN_BLOCK_TOKENS * BYTES_PER_TOKEN


def session(
    n: int,
    steps: int,
    reply: str = 'do(action="Tap", element=[500,800])' + " thinking" * 30,
    system: dict[str, str] = SYSTEM,
) -> list[dict[str, str]]:
    """Step ``steps`` of session ``n``: the system prompt, the earlier steps' turns, the new user turn."""
    messages = [system]
    for s in range(steps + 1):
        messages.append({"role": "user", "content": f"Session {n}, step {s}: the screen shows a list."})
        if s < steps:
            messages.append({"role": "assistant", "content": reply})
    return messages


def pod(block_size: int = 16, num_blocks: int = 33024, waiting: int = 0, kv_usage: float = 0.0) -> Signals:
    return Signals(waiting=waiting, kv_usage=kv_usage, block_size=block_size, num_blocks=num_blocks)


def test_the_weights_are_the_operators_config() -> None:
    assert picker_weights() == {
        "queue-scorer": 2.0,
        "kv-cache-utilization-scorer": 2.0,
        "prefix-cache-scorer": 3.0,
    }


def test_the_estimate_bytes_are_role_then_text_padded_to_whole_pseudo_tokens() -> None:
    raw = estimate_bytes([{"role": "system", "content": "abc"}, {"role": "user", "content": "de"}])
    assert raw == b"systemabcuserde" + b"\0"
    assert len(raw) % BYTES_PER_TOKEN == 0


def test_blocks_are_chained_and_the_last_one_is_partial() -> None:
    a = block_hashes(session(0, 2))
    raw = len(estimate_bytes(session(0, 2)))
    assert len(a) == -(-raw // BLOCK_BYTES)  # the partial tail is a block of its own
    b = block_hashes(session(0, 3))
    full = raw // BLOCK_BYTES
    assert b[:full] == a[:full]  # the next step extends the chain of the previous one's full blocks
    assert b[full] != a[full]  # ... but not its partial last block, which has grown
    other = block_hashes(session(1, 2))
    first_diff = next(i for i, (x, y) in enumerate(zip(a, other, strict=False)) if x != y)
    assert (
        first_diff == len(SYSTEM["role"] + SYSTEM["content"]) // BLOCK_BYTES
    )  # the system prompt's full blocks
    assert all(
        x != y for x, y in zip(a[first_diff:], other[first_diff:], strict=False)
    )  # chained: never re-merge
    assert block_hashes(session(0, 2), model="other")[0] != a[0]  # the model name seeds the chain
    assert len(block_hashes(session(0, 2), block_tokens=128)) == -(-raw // (2 * BLOCK_BYTES))


def test_parse_signals_reads_our_engine_configs_names() -> None:
    text = (
        f"# TYPE {runtime_metrics.QUEUE_DEPTH} gauge\n{runtime_metrics.QUEUE_DEPTH} 3.0\n"
        f"# TYPE {runtime_metrics.RUNNING_REQUESTS} gauge\n{runtime_metrics.RUNNING_REQUESTS} 8.0\n"
        f"# TYPE {runtime_metrics.KV_CACHE_USAGE} gauge\n{runtime_metrics.KV_CACHE_USAGE} 0.25\n"
        f"# TYPE {runtime_metrics.KV_CACHE_CONFIG_INFO} gauge\n"
        f'{runtime_metrics.KV_CACHE_CONFIG_INFO}{{block_size="16",num_blocks="33024"}} 1.0\n'
    )
    assert parse_signals(text) == Signals(
        waiting=3, running=8, kv_usage=0.25, block_size=16, num_blocks=33024
    )


def test_the_index_matches_greedily_and_forgets_least_recently_used() -> None:
    index = PrefixIndex(2)
    index.add([b"a", b"b", b"c"], 0, capacity=10)
    index.add([b"a", b"x"], 1, capacity=10)
    assert index.match([b"a", b"b", b"c", b"d"]) == [3, 1]
    assert index.match([b"z", b"a"]) == [0, 0]  # the walk stops at the first block no pod holds
    index.add([b"d", b"e"], 0, capacity=3)  # over capacity: a and b go
    assert index.match([b"a", b"b"]) == [0, 1]


def test_scores_are_the_weighted_sum_of_queue_kv_and_prefix_fraction() -> None:
    signals = [pod(waiting=0, kv_usage=0.5), pod(waiting=4, kv_usage=0.0), pod(waiting=2, kv_usage=1.0)]
    picker = Picker(3, signals)
    hashes = block_hashes(session(0, 2), picker.block_tokens())
    picker.record(0, hashes[:2])  # pod 0 holds 2 of the request's blocks
    scores = picker.scores(hashes)
    n = len(hashes)
    assert scores == pytest.approx(
        [2 * 1.0 + 2 * 0.5 + 3 * 2 / n, 2 * 0.0 + 2 * 1.0 + 0, 2 * 0.5 + 2 * 0.0 + 0]
    )
    equal = Picker(3, [pod(waiting=5), pod(waiting=5), pod(waiting=5)])
    assert equal.scores(hashes) == [2.0 + 2.0, 2.0 + 2.0, 2.0 + 2.0]  # equal queues: 1 for every pod


def test_the_block_size_is_the_pods_raised_to_64() -> None:
    assert Picker(3, [pod(block_size=16)] * 3).block_tokens() == 64
    assert Picker(3, [pod(block_size=128)] * 3).block_tokens() == 128
    assert Picker(3, [pod(block_size=0)] * 3).block_tokens() == 64  # none reported: 16, raised


def test_ties_go_to_a_random_pod() -> None:
    picker = Picker(3, [pod(), pod(), pod()], seed=1)
    for replica in range(3):  # every pod served the system prompt once
        picker.warmed(replica, [SYSTEM, {"role": "user", "content": "warm-up"}])
    chosen = [picker.pick(session(n, 0)) for n in range(30)]  # new sessions: equal scores everywhere
    assert set(chosen) == {0, 1, 2}
    assert chosen != sorted(chosen)


def test_a_session_stays_where_its_history_is_once_a_step_adds_a_block() -> None:
    picker = Picker(3, [pod(), pod(), pod()], seed=2)
    for replica in range(3):
        picker.warmed(replica, [SYSTEM, {"role": "user", "content": "warm-up"}])
    first = picker.pick(session(0, 1))
    for steps in range(2, 8):  # each step adds ~400 bytes: more than one 256-byte block
        assert picker.pick(session(0, steps)) == first, steps


def test_a_longer_queue_outweighs_a_small_prefix_edge() -> None:
    signals = [pod(), pod(), pod()]
    picker = Picker(3, signals, seed=0)
    for replica in range(3):
        picker.warmed(replica, [SYSTEM, {"role": "user", "content": "warm-up"}])
    home = picker.pick(session(0, 1))
    signals[home] = pod(waiting=6)  # its pod now has the longest queue (scored 0, the others 1)
    assert picker.pick(session(0, 2)) != home


def test_history_growing_less_than_a_block_per_step_ties_with_the_system_prompt() -> None:
    """engine_bench's agent: ~92 bytes per step; the picker's 256-byte blocks rarely see it."""
    system = {"role": "system", "content": "x" * (4 * BLOCK_BYTES + 4)}  # 4 full blocks and a bit
    short = 'do(action="Tap", element=[500,800])'
    picker = Picker(3, [pod(), pod(), pod()], seed=3)
    for replica in range(3):
        picker.warmed(replica, [system, {"role": "user", "content": "warm-up"}])
    home = picker.pick(session(0, 0, short, system))
    step1 = block_hashes(session(0, 1, short, system), picker.block_tokens())
    assert len(step1) == 5  # still 4 full blocks (the system prompt's) and a partial one
    scores = picker.scores(step1)
    assert scores[home] == scores[(home + 1) % 3] == scores[(home + 2) % 3]  # a tie: a random pod gets step 1
    chosen = {Picker(3, [pod(), pod(), pod()], seed=s).pick(session(0, 1, short, system)) for s in range(20)}
    assert chosen == {0, 1, 2}


def test_round_robin_ignores_the_request() -> None:
    rr = RoundRobin(3)
    assert [rr.pick(session(0, s)) for s in range(6)] == [0, 1, 2, 0, 1, 2]


def test_the_earlier_longest_match_breaks_ties_by_requests_in_flight() -> None:
    router = LongestMatch(3)
    for replica in range(3):
        router.warmed(replica, [SYSTEM, {"role": "user", "content": "warm-up"}])
    assert sorted(router.pick(session(n, 0)) for n in range(3)) == [0, 1, 2]


def test_recording_keeps_every_placement_and_the_step() -> None:
    rec = Recording(RoundRobin(2))
    rec.warmed(1, session(9, 0))
    assert [rec.pick(session(0, s)) for s in range(3)] == [0, 1, 0]
    assert [r for _, r in rec.placements] == [1, 0, 1, 0]
    assert [step_of(m) for m, _ in rec.placements] == [0, 0, 1, 2]


def test_the_engine_cache_replay_counts_what_each_replica_must_prefill() -> None:
    system = list(range(100))  # 6 full blocks of 16 and 4 tokens
    step0 = [*system, 1000, 1001]
    step1 = [*step0, *range(2000, 2040)]
    assert replay_engine_cache([step0, step1], [0, 0]) == [
        102,
        142 - 96,
    ]  # same replica: from the last full block
    assert replay_engine_cache([step0, step1], [0, 1]) == [102, 142]  # elsewhere: everything
    assert replay_engine_cache([system, system], [0, 0]) == [100, 100 - 96]
    assert replay_engine_cache([system[:32], system[:32]], [0, 0]) == [
        32,
        16,
    ]  # the last token is always computed


def test_routing_section_reports_the_policies_the_rounds_and_the_ceiling(tmp_path: Path) -> None:
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
                "sessions_per_replica": [3, 3, 2],
                "prefix_hit_ratio_per_replica": [0.5, 0.5, 0.5],
                "uncached_tokens_p50_step3_on": 150,
                "errors": 0,
            },
            "picker": {"error": "RuntimeError: boom"},
        },
        "ratios": {"ttft p50 from step 3, round-robin / picker": 3.5},
        "ttft_ratio_per_round": {"picker": [3.5, 2.5]},
        "ceiling": {
            "probe": {"fit": {"intercept_s": 0.1, "s_per_uncached_token": 0.002}},
            "policies": {
                "round-robin": {"uncached_tokens_p50_step3_on": 150, "predicted_ttft_p50_s_step3_on": 0.4},
                "perfect affinity": {"uncached_tokens_p50_step3_on": 70, "predicted_ttft_p50_s_step3_on": 0.24,
                                     "ttft_ceiling_vs_round_robin": 1.67, "uncached_tokens_ratio_vs_round_robin": 2.14},
            },
        },
    }  # fmt: skip
    result = {"what": "a simulation of the policy, not the picker", "model": "random GLM", "runs": [run],
              "targets": [{"name": "routing", "status": "PASS"}]}  # fmt: skip
    text = routing_section(result)
    assert "not the picker" in text
    assert "### engine_bench agent" in text
    assert "a 14-token assistant reply" in text
    assert "16 / 16 / 16" in text
    assert "3 / 3 / 2" in text
    assert "could not run: RuntimeError: boom" in text
    assert "round-robin / picker: **3.5x**" in text
    assert "picker 3.50 / 2.50 (median 3.00)" in text
    assert "| perfect affinity | 70 | 0.24 | 1.67x |" in text
    (tmp_path / "routing.json").write_text(json.dumps(result))
    assert load(tmp_path)["targets"] == [{"name": "routing", "status": "PASS"}]
