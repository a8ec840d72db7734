"""What routing by prefix is worth: 3 runtime replicas, round-robin vs prefix-affine, in one run.

A **simulation of the policy, not the picker**: llm-d's endpoint picker is a Go program that cannot
be built here, so the load generator routes each request itself, the way each policy would:

a. round-robin — what a ClusterIP Service does (it spreads requests without reading them);
b. prefix-affine — what the picker's approximate prefix scorer does: the request's messages as
   bytes (role + text of each, as its ``estimate`` backend flattens them), cut into blocks of 256
   bytes (64 pseudo-tokens of 4 bytes, the picker's smallest block), each block's hash chained to
   the previous one's; the replica whose index holds the longest run of the request's blocks gets
   it, ties go to the replica with fewer requests in flight; the chosen replica's index then
   records every block of the request (the picker records where it sent a request, not what the
   pod really cached).

Workload: the text agent of ``engine_bench`` (``--sessions`` concurrent sessions, a shared
~1,500-token system prompt, ``--steps`` steps whose history grows, ``--output-tokens`` forced), on
the same random ~30 M-parameter GLM, fp32, 1 torch thread per replica. Each policy gets 3 fresh
replicas (no cache carried over), each warmed with one request of the system prompt; the policies
run one after the other, ``--rounds`` times in alternating order, and per policy the round with
the lowest TTFT p50 is kept (the others are listed). Reported per policy: TTFT p50 from step 3 on, output tokens/s, requests and prefix-cache hit ratio per replica
(from each replica's ``/metrics``; the warm-up request is included).

``python -m benchmarks.routing_bench --out bench-results/routing.json``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.engine_bench import FIXED_ANSWER, SERVED, _text_of_tokens, _threads, agent_run
from benchmarks.servers import autoglm_spec, launched
from benchmarks.targets import target

REPO = Path(__file__).resolve().parent.parent
BYTES_PER_TOKEN = 4  # the picker's estimate backend packs 4 bytes into one pseudo-token
BLOCK_TOKENS = 64  # its smallest prefix block (a pod's smaller block size is raised to this)
BLOCK_BYTES = BYTES_PER_TOKEN * BLOCK_TOKENS


def block_hashes(messages: list[dict[str, str]], model: str = "bench") -> list[bytes]:
    """The request's chained block hashes, as the picker forms them (full blocks only)."""
    raw = b"".join(m["role"].encode() + str(m["content"]).encode() for m in messages)
    previous = hashlib.blake2b(model.encode(), digest_size=8).digest()
    out = []
    for start in range(0, len(raw) - BLOCK_BYTES + 1, BLOCK_BYTES):
        previous = hashlib.blake2b(raw[start : start + BLOCK_BYTES] + previous, digest_size=8).digest()
        out.append(previous)
    return out


class RoundRobin:
    """What a Service does: every replica in turn, whatever the request holds."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self._next = 0

    def pick(self, messages: list[dict[str, str]]) -> int:
        chosen = self._next
        self._next = (self._next + 1) % self.replicas
        return chosen

    def done(self, replica: int) -> None:
        return None

    def warmed(self, replica: int, messages: list[dict[str, str]]) -> None:
        return None


class PrefixAffine:
    """The picker's policy, simplified: longest block match wins, ties by requests in flight."""

    def __init__(self, replicas: int) -> None:
        self.index: list[set[bytes]] = [set() for _ in range(replicas)]
        self.inflight = [0] * replicas

    def match(self, replica: int, hashes: list[bytes]) -> int:
        n = 0
        for h in hashes:
            if h not in self.index[replica]:
                break
            n += 1
        return n

    def pick(self, messages: list[dict[str, str]]) -> int:
        hashes = block_hashes(messages)
        chosen = max(range(len(self.index)), key=lambda r: (self.match(r, hashes), -self.inflight[r], -r))
        self.index[chosen].update(hashes)
        self.inflight[chosen] += 1
        return chosen

    def done(self, replica: int) -> None:
        self.inflight[replica] -= 1

    def warmed(self, replica: int, messages: list[dict[str, str]]) -> None:
        """A request sent to ``replica`` outside the router (the warm-up): the picker would have seen it."""
        self.index[replica].update(block_hashes(messages))


POLICIES = {"round-robin": RoundRobin, "prefix-affine": PrefixAffine}


def prefix_counters(base: str) -> tuple[float, float]:
    """(queried, hit) prompt tokens of one replica's prefix cache, from its /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = sample.value
    return (
        values.get("autoglm_prefix_cache_queried_tokens_total", 0.0),
        values.get("autoglm_prefix_cache_hit_tokens_total", 0.0),
    )


def run_policy(
    policy: str,
    args: argparse.Namespace,
    model: Path,
    system: str,
    answer: str,
    steps: int,
    think_s: float,
    log_dir: Path,
) -> dict[str, Any]:
    common = [*SERVED, "--max-input-tokens", "8192", "--max-new-tokens", "64"]
    specs = [
        _threads(autoglm_spec(f"{policy}-{i}", model, max_batch_size=args.sessions, extra=common))
        for i in range(args.replicas)
    ]
    with launched(specs, log_dir) as servers:
        bases = [s.spec.base_url for s in servers]
        before = [prefix_counters(b) for b in bases]
        result = asyncio.run(
            agent_run(
                bases,
                "autoglm",
                system,
                args.sessions,
                steps,
                args.output_tokens,
                router=POLICIES[policy](args.replicas),
                answer=answer,
                think_s=think_s,
            )
        )
        after = [prefix_counters(b) for b in bases]
    result["prefix_hit_ratio_per_replica"] = [
        round((a[1] - b[1]) / (a[0] - b[0]), 3) if a[0] > b[0] else None
        for a, b in zip(after, before, strict=True)
    ]
    return result


def compare(policies: dict[str, dict[str, Any]]) -> dict[str, float]:
    rr, affine = policies.get("round-robin", {}), policies.get("prefix-affine", {})
    ratios: dict[str, float] = {}
    if rr.get("ttft_p50_s_step3_on") and affine.get("ttft_p50_s_step3_on"):
        ratios["ttft p50 from step 3, round-robin / prefix-affine"] = round(
            rr["ttft_p50_s_step3_on"] / affine["ttft_p50_s_step3_on"], 2
        )
    if rr.get("step_p50_s_step3_on") and affine.get("step_p50_s_step3_on"):
        ratios["step latency p50 from step 3, round-robin / prefix-affine"] = round(
            rr["step_p50_s_step3_on"] / affine["step_p50_s_step3_on"], 2
        )
    if rr.get("output_tokens_per_s") and affine.get("output_tokens_per_s"):
        ratios["throughput, prefix-affine / round-robin"] = round(
            affine["output_tokens_per_s"] / rr["output_tokens_per_s"], 2
        )
    return ratios


def _info(t: dict[str, Any]) -> dict[str, Any]:
    return {**t, "status": "INFO", "line": t["line"].replace("[PASS]", "[INFO]").replace("[MISS]", "[INFO]")}


def routing_targets(runs: list[dict[str, Any]], replicas: int) -> list[dict[str, Any]]:
    """The issue's target on the first run (engine_bench's workload); the rest are reported (INFO)."""
    out = []
    for i, run in enumerate(runs):
        ratios = run["ratios"]
        rr, affine = run["policies"]["round-robin"], run["policies"]["prefix-affine"]
        gain = ratios.get("ttft p50 from step 3, round-robin / prefix-affine")
        ttft = target(
            f"routing ({run['name']}): TTFT p50 from step 3 on, round-robin / prefix-affine "
            f"({replicas} replicas, simulated policy)",
            ">= 3x",
            gain,
            None if gain is None else gain >= 3,
            unit="x",
            note=f"{affine.get('ttft_p50_s_step3_on')} s vs {rr.get('ttft_p50_s_step3_on')} s",
        )
        out.append(ttft if i == 0 else _info(ttft))
        speed = ratios.get("throughput, prefix-affine / round-robin")
        out.append(
            _info(
                target(
                    f"routing ({run['name']}): output tok/s, prefix-affine / round-robin",
                    "reported",
                    speed,
                    None if speed is None else speed >= 1,
                    unit="x",
                    note=f"{affine.get('output_tokens_per_s')} vs {rr.get('output_tokens_per_s')} tok/s",
                )
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "routing.json")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--sessions", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--system-tokens", type=int, default=1500)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="runs per policy, alternating; the fastest is kept")
    p.add_argument("--reply-steps", type=int, default=10, help="steps of the second and third runs")
    p.add_argument(
        "--think-s",
        type=float,
        default=2.0,
        help="third run: mean pause between a reply and the next step (0: no third run)",
    )
    p.add_argument(
        "--reply-tokens",
        type=int,
        default=300,
        help="second run: each step's assistant turn in the history is this long (0: no second run)",
    )
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    from autoglm_runtime.devmodels import build_random_glm

    model = build_random_glm(Path(tempfile.mkdtemp(prefix="routing-bench-glm-")), target_params=30_000_000)
    tokenizer = AutoTokenizer.from_pretrained(model)
    system = _text_of_tokens(tokenizer, args.system_tokens)
    workloads: dict[str, tuple[str, int, float]] = {"engine_bench agent": (FIXED_ANSWER, args.steps, 0.0)}
    if args.reply_tokens:
        # What the phone agent's history really holds per step: the model's <think> reasoning and its
        # action (a few hundred tokens), not engine_bench's one-line answer.
        thinking = _text_of_tokens(tokenizer, args.reply_tokens).replace("Rule", "Observation")
        reply = f"<think>{thinking}</think><answer>{FIXED_ANSWER}</answer>"
        workloads[f"agent, {args.reply_tokens}-token replies"] = (reply, args.reply_steps, 0.0)
        if args.think_s:
            workloads[f"agent, {args.reply_tokens}-token replies, {args.think_s:g} s between steps"] = (
                reply,
                args.reply_steps,
                args.think_s,
            )
    log_dir = args.out.parent / "logs-routing"
    results: dict[str, Any] = {
        "what": "a simulation of the endpoint picker's prefix policy in the load generator, not the picker",
        "model": "random GLM, ~30 M parameters, fp32 on the CPU, 1 torch thread per replica",
        "command": "python -m benchmarks.routing_bench",
        "runs": [],
    }
    for name, (answer, steps, think_s) in workloads.items():
        run: dict[str, Any] = {
            "name": name,
            "workload": {
                "replicas": args.replicas,
                "sessions": args.sessions,
                "steps": steps,
                "system_prompt_tokens": len(tokenizer(system)["input_ids"]),
                "reply_tokens": len(tokenizer(answer)["input_ids"]),
                "output_tokens": args.output_tokens,
                "think_s": think_s,
            },
            "policies": {},
        }
        # One policy after the other (side by side they would share the CPU), in alternating order
        # each round; per policy the round with the lowest TTFT p50 is kept (noise only slows down).
        rounds: dict[str, list[float | None]] = {p: [] for p in POLICIES}
        for r in range(args.rounds):
            for policy in list(POLICIES)[:: 1 if r % 2 == 0 else -1]:
                result = run_policy(policy, args, model, system, answer, steps, think_s, log_dir)
                print(name, f"round {r}", policy, json.dumps(result), flush=True)
                rounds[policy].append(result.get("ttft_p50_s_step3_on"))
                kept = run["policies"].get(policy)
                if kept is None or (result.get("ttft_p50_s_step3_on") or 1e9) < (
                    kept.get("ttft_p50_s_step3_on") or 1e9
                ):
                    run["policies"][policy] = result
        run["policies"] = {p: run["policies"][p] for p in POLICIES}
        run["ttft_p50_s_step3_on_per_round"] = rounds
        run["ratios"] = compare(run["policies"])
        results["runs"].append(run)
    results["targets"] = routing_targets(results["runs"], args.replicas)
    for t in results["targets"]:
        print(t["line"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps([r["ratios"] for r in results["runs"]], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
