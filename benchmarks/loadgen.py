"""Workload generator for OpenAI-compatible servers, in the style of vLLM's ``benchmark_serving``.

Fixed prompt and output lengths, a bounded number of requests kept ``concurrency`` in flight,
streaming so that time to first token (TTFT) and inter-token latency (ITL) can be seen.
Reports request throughput, output tokens/s, TTFT, TPOT, ITL and end-to-end latency (mean, p50,
p99) and the error count.

Definitions (the same as vLLM's):

- TTFT: request sent → first chunk that carries text.
- ITL: gaps between consecutive text chunks of one request (all requests pooled).
- TPOT: per request, (end-to-end − TTFT) / (output tokens − 1); requests of one token are left out.
- output tokens: the server's ``usage.completion_tokens`` when it reports it, else the number of
  text chunks (one token per chunk on the servers measured here).

Servers differ in how a client forces the output length (a random or small model may stop early
at EOS, which would make throughput numbers incomparable); :class:`Backend` holds each server's
way. Streams may end without ``data: [DONE]`` (``transformers serve`` does): the end of the HTTP
body ends the request too.

CLI: ``python -m benchmarks.loadgen --base-url http://127.0.0.1:8000 --concurrency 1 4 16``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx

Endpoint = Literal["completions", "chat"]


@dataclass(frozen=True)
class Backend:
    """How one kind of server is asked for exactly ``n`` output tokens."""

    name: str
    force_length: Callable[[int], dict[str, Any]]
    stream_usage: bool = True  # send stream_options.include_usage (servers that reject it: False)


def _autoglm_force(n: int) -> dict[str, Any]:
    # vLLM's extension names; the AutoGLM runtime accepts the same ones.
    return {"min_tokens": n, "ignore_eos": True}


def _hf_serve_force(n: int) -> dict[str, Any]:
    # transformers serve rejects unknown fields (422) but takes a GenerationConfig as JSON text.
    return {"generation_config": json.dumps({"max_new_tokens": n, "min_new_tokens": n, "do_sample": False})}


BACKENDS: dict[str, Backend] = {
    "autoglm": Backend("autoglm", _autoglm_force),
    "hf-serve": Backend("hf-serve", _hf_serve_force, stream_usage=False),
    "openai": Backend("openai", lambda n: {}),  # plain OpenAI: max_tokens only, EOS may cut it short
}


@dataclass
class Workload:
    prompt: str
    output_tokens: int = 32
    num_requests: int = 32
    concurrency: int = 4
    endpoint: Endpoint = "completions"
    model: str | None = None
    backend: str = "autoglm"
    stream: bool = True  # False: one JSON body (TTFT unknown; e2e and usage only)
    warmup_requests: int = 1
    timeout_s: float = 600.0
    # Requests not started by then are skipped (not errors): bounds a slow server's run time.
    max_duration_s: float | None = None

    def body(self) -> dict[str, Any]:
        backend = BACKENDS[self.backend]
        body: dict[str, Any] = {"max_tokens": self.output_tokens, "temperature": 0.0, "stream": self.stream}
        if self.model is not None:
            body["model"] = self.model
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": self.prompt}]
        else:
            body["prompt"] = self.prompt
        if backend.stream_usage and self.stream:
            body["stream_options"] = {"include_usage": True}
        body.update(backend.force_length(self.output_tokens))
        return body

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.endpoint == "chat" else "/v1/completions"


@dataclass
class RequestResult:
    ok: bool
    e2e_s: float
    ttft_s: float | None = None
    output_tokens: int = 0
    itl_s: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if not self.ok or self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation (numpy's default); NaN when empty."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _dist(values: Sequence[float]) -> dict[str, float]:
    """mean/p50/p99 in milliseconds."""
    if not values:
        return {"mean_ms": math.nan, "p50_ms": math.nan, "p99_ms": math.nan}
    return {
        "mean_ms": 1000 * sum(values) / len(values),
        "p50_ms": 1000 * percentile(values, 50),
        "p99_ms": 1000 * percentile(values, 99),
    }


def summarize(results: Sequence[RequestResult], duration_s: float) -> dict[str, Any]:
    """Aggregate one run (``duration_s``: wall time from first request sent to last one done)."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    ok = [r for r in results if r.ok]
    errors = [r for r in results if not r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    tpots = [t for r in ok if (t := r.tpot_s) is not None]
    first_errors = sorted({e.error or "?" for e in errors})[:3]
    return {
        "completed": len(ok),
        "errors": len(errors),
        "error_examples": first_errors,
        "duration_s": duration_s,
        "request_throughput": len(ok) / duration_s,
        "output_throughput": out_tokens / duration_s,
        "total_output_tokens": out_tokens,
        "mean_output_tokens": out_tokens / len(ok) if ok else 0.0,
        "ttft": _dist([r.ttft_s for r in ok if r.ttft_s is not None]),
        "tpot": _dist(tpots),
        "itl": _dist([gap for r in ok for gap in r.itl_s]),
        "e2e": _dist([r.e2e_s for r in ok]),
    }


def _chunk_text(event: dict[str, Any]) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "text" in choice:
        return choice.get("text") or ""
    return (choice.get("delta") or {}).get("content") or ""


def parse_sse_line(line: str) -> dict[str, Any] | None | Literal["done"]:
    """One SSE line → its JSON event, ``"done"`` for ``[DONE]``, None for blanks/comments/other fields."""
    line = line.strip()
    if not line.startswith("data:"):
        return None
    payload = line[len("data:") :].strip()
    if payload == "[DONE]":
        return "done"
    event = json.loads(payload)
    if not isinstance(event, dict):
        raise ValueError(f"SSE data is not a JSON object: {payload[:80]}")
    return event


async def send_request(client: httpx.AsyncClient, workload: Workload, body: dict[str, Any]) -> RequestResult:
    """Send one streaming request and time its chunks."""
    start = time.perf_counter()
    ttft: float | None = None
    last: float | None = None
    itl: list[float] = []
    chunks = 0
    usage_tokens: int | None = None
    try:
        async with client.stream("POST", workload.path, json=body, timeout=workload.timeout_s) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread())[:200].decode(errors="replace")
                return RequestResult(
                    False, time.perf_counter() - start, error=f"HTTP {resp.status_code}: {detail}"
                )
            if not body.get("stream"):
                data = json.loads(await resp.aread())
                e2e = time.perf_counter() - start
                tokens = int(((data.get("usage") or {}).get("completion_tokens")) or 0)
                if tokens == 0:
                    return RequestResult(False, e2e, error="empty completion")
                return RequestResult(True, e2e, output_tokens=tokens)
            async for line in resp.aiter_lines():
                event = parse_sse_line(line)
                if event == "done":
                    break
                if event is None:
                    continue
                if "error" in event:
                    return RequestResult(
                        False, time.perf_counter() - start, error=f"stream error: {event['error']}"
                    )
                usage = event.get("usage")
                if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
                if _chunk_text(event):
                    now = time.perf_counter()
                    if ttft is None:
                        ttft = now - start
                    elif last is not None:
                        itl.append(now - last)
                    last = now
                    chunks += 1
    except (httpx.HTTPError, ValueError) as exc:
        return RequestResult(False, time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")
    e2e = time.perf_counter() - start
    tokens = usage_tokens if usage_tokens is not None else chunks
    if tokens == 0:
        return RequestResult(False, e2e, error="empty completion")
    return RequestResult(True, e2e, ttft_s=ttft, output_tokens=tokens, itl_s=itl)


async def run_workload(
    base_url: str,
    workload: Workload,
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> dict[str, Any]:
    """Warm up, then send ``num_requests`` requests keeping ``concurrency`` in flight; summary dict.

    ``transport`` replaces the network (tests pass an ``httpx.MockTransport``).
    """
    if workload.concurrency < 1 or workload.num_requests < 1:
        raise ValueError("concurrency and num_requests must be >= 1")
    body = workload.body()
    limits = httpx.Limits(
        max_connections=workload.concurrency + 2, max_keepalive_connections=workload.concurrency
    )
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, headers=headers, transport=transport
    ) as client:
        for _ in range(workload.warmup_requests):
            await send_request(client, workload, body)
        sem = asyncio.Semaphore(workload.concurrency)

        start = time.perf_counter()
        deadline = math.inf if workload.max_duration_s is None else start + workload.max_duration_s

        async def one() -> RequestResult | None:
            async with sem:
                if time.perf_counter() > deadline:
                    return None
                return await send_request(client, workload, body)

        gathered = await asyncio.gather(*(one() for _ in range(workload.num_requests)))
        duration = time.perf_counter() - start
    results = [r for r in gathered if r is not None]
    summary = summarize(results, duration)
    summary["skipped"] = len(gathered) - len(results)
    summary["workload"] = {k: v for k, v in asdict(workload).items() if k != "prompt"}
    summary["workload"]["prompt_chars"] = len(workload.prompt)
    return summary


def make_prompt(n_tokens: int, tokenizer: Any | None = None) -> str:
    """A prompt of exactly ``n_tokens`` tokens under ``tokenizer`` (about that many words without one)."""
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "while",
        "models",
        "batch",
    ]
    text = " ".join(words[i % len(words)] for i in range(n_tokens))
    if tokenizer is None:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    while len(ids) < n_tokens:
        text = text + " " + text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return str(tokenizer.decode(ids[:n_tokens]))


def sweep(base_url: str, prompt: str, concurrencies: Sequence[int], **kw: Any) -> list[dict[str, Any]]:
    """One :func:`run_workload` per concurrency, with ``num_requests = max(min_requests, 2 x concurrency)``."""
    per_conc = kw.pop("requests_per_concurrency", 2)
    min_requests = kw.pop("min_requests", 8)
    out = []
    for c in concurrencies:
        wl = Workload(prompt=prompt, concurrency=c, num_requests=max(min_requests, per_conc * c), **kw)
        out.append(asyncio.run(run_workload(base_url, wl)))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--backend", choices=sorted(BACKENDS), default="autoglm")
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--model", default=None)
    p.add_argument("--input-words", type=int, default=64, help="prompt length in words (~tokens)")
    p.add_argument("--output-tokens", type=int, default=32)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests-per-concurrency", type=int, default=2)
    p.add_argument("--min-requests", type=int, default=8)
    args = p.parse_args(argv)
    results = sweep(
        args.base_url,
        make_prompt(args.input_words),
        args.concurrency,
        output_tokens=args.output_tokens,
        endpoint=args.endpoint,
        model=args.model,
        backend=args.backend,
        requests_per_concurrency=args.requests_per_concurrency,
        min_requests=args.min_requests,
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
