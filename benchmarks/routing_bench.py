"""What routing by prefix is worth: 3 runtime replicas, round-robin vs the picker's scoring, in one run.

A **simulation of the policy, not the picker**: llm-d's endpoint picker is a Go program that cannot
be built here, so the load generator routes each request itself, the way each policy would:

a. round-robin — what a ClusterIP Service does (it spreads requests without reading them);
b. picker — the scoring of llm-d-router v0.10.0 with the EndpointPickerConfig the operator renders
   (:func:`autoglm_operator.routing.picker_config`), reproduced from its code (:class:`Picker`):
   queue scorer (weight 2, waiting requests min-max normalised), KV-cache-utilization scorer
   (weight 2, 1 - usage) and prefix-cache scorer (weight 3, the share of the request's blocks its
   index holds for the pod); the max score wins, ties at random. The prefix blocks are the
   ``estimate`` backend's: each message's role and text as bytes, 4 bytes a pseudo-token, blocks of
   64 pseudo-tokens (our block size of 16, raised to the picker's floor), the last block partial,
   hashes chained from the model name; the index records where the picker sent each request (an LRU
   per pod as large as the pod's block count). The signals come from each replica's ``/metrics``
   (``autoglm_queue_depth``, ``autoglm_kv_cache_usage_ratio``, ``autoglm_kv_cache_config_info``),
   scraped every 50 ms as the picker does, under both policies;
c. longest-match (``--policies``) — the bench's earlier policy, for comparison: the longest run of
   full blocks wins, ties to the replica with fewer requests in flight.

Workload: the text agent of ``engine_bench`` (``--sessions`` concurrent sessions, a shared
~1,500-token system prompt, ``--steps`` steps whose history grows, ``--output-tokens`` forced), on
the same random ~30 M-parameter GLM, fp32, 1 torch thread per replica; then the same with
agent-sized replies and with pauses between steps. Each policy gets 3 fresh replicas (no cache
carried over), each warmed with one request of the system prompt (recorded in the picker's index,
as if it had routed it); the policies run one after the other, ``--rounds`` times in alternating
order. Reported per policy: TTFT p50 from step 3 on, output tokens/s, where the sessions' first
steps went, requests and prefix-cache hit ratio per replica (from each replica's ``/metrics``; the
warm-up is included), and the prompt tokens each request had to prefill from step 3 on (the engine's
cache rules replayed on the placements; the replay's hit ratio equals the replicas' counters). The
target is the median over rounds of each round's round-robin / picker TTFT ratio.

**Ceiling**: one replica, the system prompt cached, one request at a time with 16..512 new tokens:
TTFT = a + b x uncached tokens, fitted; applied to each placement's uncached tokens per request
(and to perfect affinity, every step's previous prompt cached): what routing can change in TTFT
when nothing else shares the step or the CPU.

``python -m benchmarks.routing_bench --out bench-results/routing.json``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import statistics
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.engine_bench import FIXED_ANSWER, SERVED, _text_of_tokens, _threads, agent_run
from benchmarks.servers import autoglm_spec, launched
from benchmarks.targets import target

REPO = Path(__file__).resolve().parent.parent

# --- what llm-d's endpoint picker does (llm-d-router v0.10.0), reproduced ---------------------------
# Read from its code: tokenizer/estimate.go (bytes), prefixhash/hashing.go (blocks and their hashes),
# approximateprefix/{plugin,indexer}.go (the index, its block size and capacity), scorer/prefix,
# scorer/queuedepth, scorer/kvcacheutilization, picker/maxscore, scheduling/scheduler_profile.go.
BYTES_PER_TOKEN = 4  # the estimate backend packs 4 bytes of the messages into one pseudo-token
MIN_BLOCK_TOKENS = 64  # the producer raises a smaller block size (the pod's, from its metrics) to 64
DEFAULT_BLOCK_TOKENS = 16  # its blockSizeTokens when no pod reports one
MAX_PREFIX_TOKENS = 131_072  # maxPrefixTokensToMatch: blocks beyond it are not hashed
DEFAULT_LRU_CAPACITY = 31_250  # lruCapacityPerServer when a pod reports no block count
METRICS_INTERVAL_S = 0.05  # --refresh-metrics-interval: every pod's /metrics, every 50 ms
SCORERS = ("queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer")
# The engine's own prefix cache (autoglm_runtime.engine.blocks), for the uncached-token count.
ENGINE_BLOCK_TOKENS = 16


def picker_weights() -> dict[str, float]:
    """The scorer weights of the EndpointPickerConfig the operator renders (llm-d's defaults)."""
    from autoglm_operator.routing import picker_config

    profile = picker_config(tls=False)["schedulingProfiles"][0]
    return {p["pluginRef"]: float(p.get("weight", 1)) for p in profile["plugins"]}


def estimate_bytes(messages: list[dict[str, str]]) -> bytes:
    """What the estimate backend makes of a chat request: each message's role then its text, zero
    padded to whole pseudo-tokens (``chatCompletionsBytes`` + ``packBytes``; no tools here)."""
    raw = b"".join(m["role"].encode() + str(m["content"]).encode() for m in messages)
    return raw + b"\0" * (-len(raw) % BYTES_PER_TOKEN)


def _h(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()  # the picker uses xxhash64: any 64-bit hash


def block_hashes(
    messages: list[dict[str, str]], block_tokens: int = MIN_BLOCK_TOKENS, model: str = "bench"
) -> list[bytes]:
    """The request's chained block hashes as ``prefixhash.GetBlockHashes`` forms them: blocks of
    ``block_tokens`` pseudo-tokens, the last one partial, each hash over (block, previous hash), the
    chain seeded with the model name; at most ``MAX_PREFIX_TOKENS // block_tokens`` blocks."""
    raw = estimate_bytes(messages)
    size = block_tokens * BYTES_PER_TOKEN
    previous = _h(model.encode())
    out = []
    for start in range(0, len(raw), size)[: MAX_PREFIX_TOKENS // block_tokens]:
        previous = _h(_h(raw[start : start + size]) + previous)
        out.append(previous)
    return out


@dataclass
class Signals:
    """One pod as the picker's core-metrics-extractor sees it (our engineConfigs entry's names)."""

    waiting: int = 0  # autoglm_queue_depth
    running: int = 0  # autoglm_running_requests (no default scorer reads it)
    kv_usage: float = 0.0  # autoglm_kv_cache_usage_ratio
    block_size: int = 0  # autoglm_kv_cache_config_info{block_size}
    num_blocks: int = 0  # autoglm_kv_cache_config_info{num_blocks}


def parse_signals(text: str) -> Signals:
    from autoglm_runtime import metrics as m

    s = Signals()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == m.QUEUE_DEPTH:
                s.waiting = int(sample.value)
            elif sample.name == m.RUNNING_REQUESTS:
                s.running = int(sample.value)
            elif sample.name == m.KV_CACHE_USAGE:
                s.kv_usage = float(sample.value)
            elif sample.name == m.KV_CACHE_CONFIG_INFO:
                s.block_size = int(sample.labels[m.KV_CACHE_BLOCK_SIZE_LABEL])
                s.num_blocks = int(sample.labels[m.KV_CACHE_NUM_BLOCKS_LABEL])
    return s


class PrefixIndex:
    """The approximate prefix producer's indexer: per pod an LRU of the block hashes the picker sent
    there (sized by the pod's block count), and a greedy match over the request's chain."""

    def __init__(self, replicas: int) -> None:
        self.lru: list[OrderedDict[bytes, None]] = [OrderedDict() for _ in range(replicas)]

    def add(self, hashes: list[bytes], replica: int, capacity: int) -> None:
        lru = self.lru[replica]
        for h in hashes:
            lru[h] = None
            lru.move_to_end(h)
            if len(lru) > capacity:
                lru.popitem(last=False)

    def match(self, hashes: list[bytes]) -> list[int]:
        """``matchLongestPrefix``: walk the chain until no pod holds a block; each pod counts the
        blocks of that walk it holds."""
        counts = [0] * len(self.lru)
        for h in hashes:
            holders = [r for r, lru in enumerate(self.lru) if h in lru]
            if not holders:
                break
            for r in holders:
                counts[r] += 1
        return counts


class Picker:
    """(b): the picker's default scheduling profile, as the operator configures it. Every pod gets
    weight x score summed over the queue scorer (waiting requests, min-max normalised: 1 for the
    shortest queue, 0 for the longest, 1 for all when equal), the KV-cache utilization scorer
    (1 - usage) and the prefix-cache scorer (blocks of this request the index holds for the pod /
    the request's blocks); the max-score picker shuffles the pods, then takes the highest score
    (ties go to a random one). The signals are what the last scrape of each pod's ``/metrics`` said
    (:class:`Scraper`, every 50 ms as the picker's data layer). The chosen pod's index records every
    block of the request (``PreRequest``): where it was sent, not what the pod really cached."""

    def __init__(self, replicas: int, signals: list[Signals], seed: int = 0) -> None:
        self.signals = signals
        self.weights = picker_weights()
        self.index = PrefixIndex(replicas)
        self.rng = random.Random(seed)
        self.last_scores: list[float] = []

    def block_tokens(self) -> int:
        reported = self.signals[0].block_size if self.signals else 0  # autoTune: the first endpoint's
        return max(MIN_BLOCK_TOKENS, reported or DEFAULT_BLOCK_TOKENS)

    def scores(self, hashes: list[bytes]) -> list[float]:
        waiting = [s.waiting for s in self.signals]
        low, high = min(waiting), max(waiting)
        queue = [1.0 if high == low else (high - w) / (high - low) for w in waiting]
        kv = [1.0 - s.kv_usage for s in self.signals]
        matched = self.index.match(hashes)
        prefix = [m / len(hashes) if hashes else 0.0 for m in matched]
        clamp = lambda x: min(1.0, max(0.0, x))  # noqa: E731 - enforceScoreRange
        w = self.weights
        return [
            clamp(q) * w["queue-scorer"]
            + clamp(k) * w["kv-cache-utilization-scorer"]
            + clamp(p) * w["prefix-cache-scorer"]
            for q, k, p in zip(queue, kv, prefix, strict=True)
        ]

    def record(self, replica: int, hashes: list[bytes]) -> None:
        capacity = self.signals[replica].num_blocks or DEFAULT_LRU_CAPACITY
        self.index.add(hashes, replica, capacity)

    def pick(self, messages: list[dict[str, str]]) -> int:
        hashes = block_hashes(messages, self.block_tokens())
        self.last_scores = self.scores(hashes)
        order = list(range(len(self.signals)))
        self.rng.shuffle(order)
        chosen = max(order, key=lambda r: self.last_scores[r])  # the first of the highest (stable sort)
        self.record(chosen, hashes)
        return chosen

    def done(self, replica: int) -> None:
        return None

    def warmed(self, replica: int, messages: list[dict[str, str]]) -> None:
        """A request sent to ``replica`` outside the router (the warm-up): as if the picker had sent it."""
        self.record(replica, block_hashes(messages, self.block_tokens()))


class RoundRobin:
    """(a): what a Service does: every replica in turn, whatever the request holds."""

    def __init__(self, replicas: int, signals: list[Signals] | None = None, seed: int = 0) -> None:
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


class LongestMatch:
    """The earlier simulation, kept for comparison (``--policies``): the longest run of the request's
    blocks wins, ties to the replica with fewer requests in flight. Not what the picker does: it has
    no in-flight signal in its default profile, scores a fraction beside queue and KV usage, and
    breaks ties at random."""

    def __init__(self, replicas: int, signals: list[Signals] | None = None, seed: int = 0) -> None:
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
        self.index[replica].update(block_hashes(messages))


POLICIES: dict[str, Any] = {"round-robin": RoundRobin, "picker": Picker, "longest-match": LongestMatch}
BASELINE = "round-robin"


class Recording:
    """Wraps a policy and keeps every placement (the warm-ups too), in the order they were made."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.placements: list[tuple[list[dict[str, str]], int]] = []

    def pick(self, messages: list[dict[str, str]]) -> int:
        chosen = int(self.policy.pick(messages))
        self.placements.append((messages, chosen))
        return chosen

    def done(self, replica: int) -> None:
        self.policy.done(replica)

    def warmed(self, replica: int, messages: list[dict[str, str]]) -> None:
        self.placements.append((messages, replica))
        self.policy.warmed(replica, messages)


class Scraper:
    """Every pod's ``/metrics`` every ``interval`` s into ``signals`` (for every policy, so the
    replicas serve the same scrapes whichever policy routes)."""

    def __init__(self, bases: list[str], interval: float = METRICS_INTERVAL_S) -> None:
        self.bases = bases
        self.interval = interval
        self.signals = [Signals() for _ in bases]
        self.scrapes = 0
        self._stop = asyncio.Event()

    def scrape_once(self) -> None:
        for i, base in enumerate(self.bases):
            self.signals[i] = parse_signals(httpx.get(f"{base}/metrics", timeout=10).text)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:

            async def one(i: int, base: str) -> None:
                with contextlib.suppress(httpx.HTTPError):
                    self.signals[i] = parse_signals((await client.get(f"{base}/metrics")).text)

            while not self._stop.is_set():
                await asyncio.gather(*(one(i, b) for i, b in enumerate(self.bases)))
                self.scrapes += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)

    def stop(self) -> None:
        self._stop.set()


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


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt's token ids as the runtime forms them (``Engine.chat_prompt``)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def step_of(messages: list[dict[str, str]]) -> int:
    """A request's step (0-based): the assistant turns in its history."""
    return sum(m["role"] == "assistant" for m in messages)


def replay_engine_cache(
    ids: list[list[int]], replicas: list[int], block: int = ENGINE_BLOCK_TOKENS
) -> list[int]:
    """The prompt tokens each request prefills (its uncached tokens) on the replica it went to, by the
    engine's rules (:mod:`autoglm_runtime.engine.blocks`, an unbounded pool): full blocks of ``block``
    tokens, hashes chained, a hit is the leading run of cached blocks short of the last token, every
    full prompt block is cached once computed. In placement order."""
    cached: list[set[bytes]] = [set() for _ in range(max(replicas, default=0) + 1)]
    out = []
    for tokens, r in zip(ids, replicas, strict=True):
        chain, previous = [], b""
        for start in range(0, len(tokens) - block + 1, block):
            previous = hashlib.blake2b(
                previous + repr(tokens[start : start + block]).encode(), digest_size=16
            ).digest()
            chain.append(previous)
        hit = 0
        for h in chain[: (len(tokens) - 1) // block]:
            if h not in cached[r]:
                break
            hit += 1
        out.append(len(tokens) - hit * block)
        cached[r].update(chain)
    return out


def uncached_summary(tokenizer: Any, placements: list[tuple[list[dict[str, str]], int]]) -> dict[str, Any]:
    """Uncached prompt tokens per request from step 3 on (the engine's rules replayed on the
    placements), and over the whole run (to check against the replicas' own counters)."""
    ids = [prompt_ids(tokenizer, m) for m, _ in placements]
    uncached = replay_engine_cache(ids, [r for _, r in placements])
    late = [u for (m, _), u in zip(placements, uncached, strict=True) if step_of(m) >= 2]
    return {
        "uncached_tokens_p50_step3_on": statistics.median(late) if late else None,
        "uncached_tokens_mean_step3_on": round(statistics.fmean(late), 1) if late else None,
        "replayed_hit_ratio": round(1 - sum(uncached) / sum(len(i) for i in ids), 3) if ids else None,
        "_late_uncached": late,
    }


def run_policy(
    policy: str,
    args: argparse.Namespace,
    model: Path,
    tokenizer: Any,
    system: str,
    answer: str,
    steps: int,
    think_s: float,
    log_dir: Path,
    seed: int,
) -> dict[str, Any]:
    common = [*SERVED, "--max-input-tokens", "8192", "--max-new-tokens", "64"]
    specs = [
        _threads(autoglm_spec(f"{policy}-{i}", model, max_batch_size=args.sessions, extra=common))
        for i in range(args.replicas)
    ]
    with launched(specs, log_dir) as servers:
        bases = [s.spec.base_url for s in servers]
        before = [prefix_counters(b) for b in bases]
        scraper = Scraper(bases, args.metrics_interval_s)
        scraper.scrape_once()  # the picker knows its pods (block size, pool) before the first request
        router = Recording(POLICIES[policy](args.replicas, scraper.signals, seed))

        async def scraped() -> dict[str, Any]:
            task = asyncio.create_task(scraper.run())
            try:
                return await agent_run(
                    bases,
                    "autoglm",
                    system,
                    args.sessions,
                    steps,
                    args.output_tokens,
                    router=router,
                    answer=answer,
                    think_s=think_s,
                    # the last warm-up must not look busy in the picker's first scrape of the run
                    settle_s=4 * args.metrics_interval_s,
                )
            finally:
                scraper.stop()
                await task

        result = asyncio.run(scraped())
        after = [prefix_counters(b) for b in bases]
    result["metrics_scrapes"] = scraper.scrapes
    result["prefix_hit_ratio_per_replica"] = [
        round((a[1] - b[1]) / (a[0] - b[0]), 3) if a[0] > b[0] else None
        for a, b in zip(after, before, strict=True)
    ]
    queried = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    hit = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    result["prefix_hit_ratio"] = round(hit / queried, 3) if queried else None
    first = [r for m, r in router.placements[args.replicas :] if step_of(m) == 0]  # after the warm-ups
    result["sessions_per_replica"] = [first.count(i) for i in range(args.replicas)]
    summary = uncached_summary(tokenizer, router.placements)
    result["_late_uncached"] = summary.pop("_late_uncached")
    result.update(summary)
    return result


# --- the ceiling: what routing could save at best, from the engine's own prefill timings -------------
async def _ttft_probe(
    base: str, system: str, sizes: list[int], reps: int, tokenizer: Any
) -> list[dict[str, Any]]:
    from benchmarks.loadgen import BACKENDS, Workload, send_request

    workload = Workload(prompt="", endpoint="chat", backend="autoglm", timeout_s=300)

    def body(user: str) -> dict[str, Any]:
        return {
            "model": "bench",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": 2,
            "temperature": 0.0,
            "stream": True,
            **BACKENDS["autoglm"].force_length(2),
        }

    out = []
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        warm = await send_request(client, workload, body("warm-up"))
        if not warm.ok:
            raise RuntimeError(warm.error)
        cached = prompt_ids(
            tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": "warm-up"}]
        )
        for rep in range(reps):
            for size in sizes:
                user = _text_of_tokens(tokenizer, size).replace("Rule", f"Note{rep}-{size}")
                ids = prompt_ids(
                    tokenizer, [{"role": "system", "content": system}, {"role": "user", "content": user}]
                )
                # uncached: everything after the blocks it shares with the warm-up (and nothing else)
                uncached = replay_engine_cache([cached, ids], [0, 0])[1]
                result = await send_request(client, workload, body(user))
                if result.ok and result.ttft_s is not None:
                    out.append({"uncached_tokens": uncached, "ttft_s": result.ttft_s})
    return out


def ceiling(
    args: argparse.Namespace,
    model: Path,
    tokenizer: Any,
    system: str,
    runs: dict[str, list[int]],
    log_dir: Path,
) -> dict[str, Any]:
    """TTFT of one request alone on a warm replica (system prompt cached) as a function of its
    uncached tokens, fitted a + b x tokens; applied to each policy's uncached tokens per request from
    step 3 on (replayed from its placements) and to perfect affinity (each session's previous prompt
    always cached where it goes). Alone means no other session's prefill or decode shares the step
    or the CPU: an upper bound on what routing can change in TTFT here."""
    common = [*SERVED, "--max-input-tokens", "8192", "--max-new-tokens", "64"]
    spec = _threads(autoglm_spec("ceiling", model, max_batch_size=args.sessions, extra=common))
    sizes = [16, 32, 64, 128, 256, 512]
    with launched([spec], log_dir) as (server,):
        points = asyncio.run(_ttft_probe(server.spec.base_url, system, sizes, args.probe_reps, tokenizer))
    xs = [p["uncached_tokens"] for p in points]
    ys = [p["ttft_s"] for p in points]
    slope, intercept = statistics.linear_regression(xs, ys)
    predict = lambda u: intercept + slope * u  # noqa: E731
    out: dict[str, Any] = {
        "probe": {
            "points": [{k: round(v, 4) for k, v in p.items()} for p in points],
            "fit": {"intercept_s": round(intercept, 4), "s_per_uncached_token": round(slope, 6)},
        },
        "policies": {},
    }
    for name, late in runs.items():
        out["policies"][name] = {
            "uncached_tokens_p50_step3_on": statistics.median(late),
            "predicted_ttft_p50_s_step3_on": round(statistics.median(predict(u) for u in late), 4),
        }
    baseline = out["policies"].get(BASELINE)
    if baseline:
        for name, p in out["policies"].items():
            if name == BASELINE:
                continue
            p["ttft_ceiling_vs_round_robin"] = round(
                baseline["predicted_ttft_p50_s_step3_on"] / p["predicted_ttft_p50_s_step3_on"], 2
            )
            p["uncached_tokens_ratio_vs_round_robin"] = round(
                baseline["uncached_tokens_p50_step3_on"] / max(1, p["uncached_tokens_p50_step3_on"]), 2
            )
    return out


def perfect_affinity(tokenizer: Any, system: str, answer: str, sessions: int, steps: int) -> list[int]:
    """Uncached tokens per request from step 3 on when every step finds its session's previous
    prompt cached (each session on its own replica, warmed like the bench's)."""
    placements: list[tuple[list[dict[str, str]], int]] = []
    for n in range(sessions):
        history: list[dict[str, str]] = []
        placements.append(
            (
                [
                    {"role": "system", "content": system},
                    {"role": "user", "content": "Session 99, step 0: the screen shows a list."},
                ],
                n,
            )
        )
        for s in range(steps):
            user = {"role": "user", "content": f"Session {n}, step {s}: the screen shows a list."}
            placements.append(([{"role": "system", "content": system}, *history, user], n))
            history += [user, {"role": "assistant", "content": answer}]
    return uncached_summary(tokenizer, placements)["_late_uncached"]


def compare(policies: dict[str, dict[str, Any]]) -> dict[str, float]:
    rr = policies.get(BASELINE, {})
    ratios: dict[str, float] = {}
    for name, other in policies.items():
        if name == BASELINE:
            continue
        if rr.get("ttft_p50_s_step3_on") and other.get("ttft_p50_s_step3_on"):
            ratios[f"ttft p50 from step 3, round-robin / {name}"] = round(
                rr["ttft_p50_s_step3_on"] / other["ttft_p50_s_step3_on"], 2
            )
        if rr.get("step_p50_s_step3_on") and other.get("step_p50_s_step3_on"):
            ratios[f"step latency p50 from step 3, round-robin / {name}"] = round(
                rr["step_p50_s_step3_on"] / other["step_p50_s_step3_on"], 2
            )
        if rr.get("output_tokens_per_s") and other.get("output_tokens_per_s"):
            ratios[f"throughput, {name} / round-robin"] = round(
                other["output_tokens_per_s"] / rr["output_tokens_per_s"], 2
            )
    return ratios


def _info(t: dict[str, Any]) -> dict[str, Any]:
    return {**t, "status": "INFO", "line": t["line"].replace("[PASS]", "[INFO]").replace("[MISS]", "[INFO]")}


def routing_targets(runs: list[dict[str, Any]], replicas: int) -> list[dict[str, Any]]:
    """The issue's target on engine_bench's workload and the simulated picker: the
    median over rounds of each round's round-robin / picker TTFT ratio; the rest are reported (INFO)."""
    out = []
    for run in runs:
        for name in run["policies"]:
            if name == BASELINE:
                continue
            per_round = [x for x in run.get("ttft_ratio_per_round", {}).get(name, []) if x is not None]
            gain = round(statistics.median(per_round), 2) if per_round else None
            rr, other = run["policies"][BASELINE], run["policies"][name]
            ttft = target(
                f"routing ({run['name']}): TTFT p50 from step 3 on, round-robin / {name} "
                f"({replicas} replicas, simulated policy; median of {len(per_round)} rounds)",
                ">= 3x",
                gain,
                None if gain is None else gain >= 3,
                unit="x",
                note="per round " + " / ".join(str(x) for x in per_round)
                + "".join(
                    f"; ceiling {c[p]['ttft_ceiling_vs_round_robin']}x ({p})"
                    for c in [run.get("ceiling", {}).get("policies", {})]
                    for p in (name, "perfect affinity")
                    if "ttft_ceiling_vs_round_robin" in c.get(p, {})
                ),
            )  # fmt: skip
            out.append(ttft if run["name"] == "engine_bench agent" and name == "picker" else _info(ttft))
            speed = run["ratios"].get(f"throughput, {name} / round-robin")
            out.append(
                _info(
                    target(
                        f"routing ({run['name']}): output tok/s, {name} / round-robin",
                        "reported",
                        speed,
                        None if speed is None else speed >= 1,
                        unit="x",
                        note=f"{other.get('output_tokens_per_s')} vs {rr.get('output_tokens_per_s')} tok/s",
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
    p.add_argument("--policies", nargs="+", default=["round-robin", "picker"], choices=list(POLICIES))
    p.add_argument("--rounds", type=int, default=3, help="runs per policy, alternating order")
    p.add_argument("--seed", type=int, default=0, help="the picker's tie-break seed (round r uses seed + r)")
    p.add_argument("--metrics-interval-s", type=float, default=METRICS_INTERVAL_S)
    p.add_argument("--probe-reps", type=int, default=3, help="ceiling probe: requests per size (0: no probe)")
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
    p.add_argument(
        "--workloads",
        nargs="+",
        default=["agent", "replies", "pauses"],
        choices=["agent", "replies", "pauses"],
        help="engine_bench's agent; with --reply-tokens replies; with those and --think-s pauses",
    )
    args = p.parse_args(argv)
    if BASELINE not in args.policies:
        args.policies.insert(0, BASELINE)

    from transformers import AutoTokenizer

    from autoglm_runtime.devmodels import build_random_glm

    model = build_random_glm(Path(tempfile.mkdtemp(prefix="routing-bench-glm-")), target_params=30_000_000)
    tokenizer = AutoTokenizer.from_pretrained(model)
    system = _text_of_tokens(tokenizer, args.system_tokens)
    workloads: dict[str, tuple[str, int, float]] = {}
    if "agent" in args.workloads:
        workloads["engine_bench agent"] = (FIXED_ANSWER, args.steps, 0.0)
    # What the phone agent's history really holds per step: the model's <think> reasoning and its
    # action (a few hundred tokens), not engine_bench's one-line answer.
    thinking = _text_of_tokens(tokenizer, args.reply_tokens).replace("Rule", "Observation")
    reply = f"<think>{thinking}</think><answer>{FIXED_ANSWER}</answer>"
    if args.reply_tokens and "replies" in args.workloads:
        workloads[f"agent, {args.reply_tokens}-token replies"] = (reply, args.reply_steps, 0.0)
    if args.reply_tokens and args.think_s and "pauses" in args.workloads:
        name = f"agent, {args.reply_tokens}-token replies, {args.think_s:g} s between steps"
        workloads[name] = (reply, args.reply_steps, args.think_s)
    log_dir = args.out.parent / "logs-routing"
    results: dict[str, Any] = {
        "what": "a simulation of the endpoint picker's scoring (llm-d-router v0.10.0, the operator's config) "
        "in the load generator, not the picker",
        "model": "random GLM, ~30 M parameters, fp32 on the CPU, 1 torch thread per replica",
        "command": "python -m benchmarks.routing_bench "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "picker_weights": picker_weights(),
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
        # each round. Per round the ratio of the two; per policy the round with the lowest TTFT p50
        # is the one in the table (noise only slows down).
        rounds: dict[str, list[float | None]] = {p: [] for p in args.policies}
        late: dict[str, list[int]] = {p: [] for p in args.policies}
        for r in range(args.rounds):
            this: dict[str, dict[str, Any]] = {}
            for policy in args.policies[:: 1 if r % 2 == 0 else -1]:
                result = run_policy(
                    policy, args, model, tokenizer, system, answer, steps, think_s, log_dir, args.seed + r
                )
                late[policy] += result.pop("_late_uncached")
                this[policy] = result
                print(name, f"round {r}", policy, json.dumps(result), flush=True)
                rounds[policy].append(result.get("ttft_p50_s_step3_on"))
                kept = run["policies"].get(policy)
                if kept is None or (result.get("ttft_p50_s_step3_on") or 1e9) < (
                    kept.get("ttft_p50_s_step3_on") or 1e9
                ):
                    run["policies"][policy] = result
            for policy, ratio in compare(this).items():
                if policy.startswith("ttft p50"):
                    run.setdefault("ttft_ratio_per_round", {}).setdefault(
                        policy.rsplit(" / ", 1)[1], []
                    ).append(ratio)
        run["policies"] = {p: run["policies"][p] for p in args.policies}
        run["ttft_p50_s_step3_on_per_round"] = rounds
        run["ratios"] = compare(run["policies"])
        if args.probe_reps:
            late["perfect affinity"] = perfect_affinity(tokenizer, system, answer, args.sessions, steps)
            run["ceiling"] = ceiling(args, model, tokenizer, system, late, log_dir)
            print(name, "ceiling", json.dumps(run["ceiling"]["policies"]), flush=True)
        results["runs"].append(run)
    results["targets"] = routing_targets(results["runs"], args.replicas)
    for t in results["targets"]:
        print(t["line"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        json.dumps([{**r["ratios"], **r.get("ttft_ratio_per_round", {})} for r in results["runs"]], indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
