"""The benchmark workload generator's statistics and stream handling (fast: no model, no server)."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from benchmarks.loadgen import (
    RequestResult,
    Workload,
    parse_sse_line,
    percentile,
    run_workload,
    summarize,
)


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_percentile_rejects_out_of_range_q() -> None:
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def test_summarize_throughput_and_latency_in_ms() -> None:
    results = [
        RequestResult(True, e2e_s=1.0, ttft_s=0.1, output_tokens=10, itl_s=[0.1] * 9),
        RequestResult(True, e2e_s=2.0, ttft_s=0.2, output_tokens=10, itl_s=[0.2] * 9),
        RequestResult(False, e2e_s=0.01, error="HTTP 429: busy"),
    ]
    s = summarize(results, duration_s=2.0)
    assert s["completed"] == 2
    assert s["errors"] == 1
    assert s["error_examples"] == ["HTTP 429: busy"]
    assert s["request_throughput"] == pytest.approx(1.0)
    assert s["output_throughput"] == pytest.approx(10.0)
    assert s["ttft"]["p50_ms"] == pytest.approx(150.0)
    assert s["e2e"]["mean_ms"] == pytest.approx(1500.0)
    # TPOT = (e2e - ttft) / (tokens - 1): 0.1 s and 0.2 s.
    assert s["tpot"]["p50_ms"] == pytest.approx(150.0)
    assert s["itl"]["p99_ms"] == pytest.approx(200.0)


def test_tpot_undefined_for_single_token_or_failed_requests() -> None:
    assert RequestResult(True, e2e_s=1.0, ttft_s=0.5, output_tokens=1).tpot_s is None
    assert RequestResult(False, e2e_s=1.0).tpot_s is None


def test_summarize_rejects_zero_duration() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        summarize([], 0.0)


def test_parse_sse_line() -> None:
    assert parse_sse_line("data: [DONE]") == "done"
    assert parse_sse_line("") is None
    assert parse_sse_line(": keep-alive") is None
    assert parse_sse_line('data: {"choices": []}') == {"choices": []}
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_sse_line("data: [1, 2]")


def test_workload_forces_output_length_per_backend() -> None:
    ours = Workload(prompt="hi", output_tokens=7, backend="autoglm").body()
    assert ours["min_tokens"] == 7
    assert ours["ignore_eos"] is True
    assert ours["max_tokens"] == 7
    hf = Workload(prompt="hi", output_tokens=7, backend="hf-serve", endpoint="chat").body()
    assert json.loads(hf["generation_config"])["min_new_tokens"] == 7
    assert "ignore_eos" not in hf
    assert "stream_options" not in hf  # transformers serve only warns, but keep bodies minimal
    assert hf["messages"] == [{"role": "user", "content": "hi"}]


def _sse(*events: object, done: bool) -> bytes:
    lines = [f"data: {json.dumps(e)}\n\n" for e in events]
    if done:
        lines.append("data: [DONE]\n\n")
    return "".join(lines).encode()


def _completion_chunks(n: int, usage: int | None) -> list[dict]:
    chunks: list[dict] = [{"choices": [{"index": 0, "text": f"t{i}"}]} for i in range(n)]
    final: dict = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
    if usage is not None:
        final["usage"] = {"completion_tokens": usage, "prompt_tokens": 3}
    chunks.append(final)
    return chunks


@pytest.mark.parametrize("done", [True, False], ids=["with-DONE", "without-DONE"])
async def test_run_workload_counts_streamed_tokens(done: bool) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        return httpx.Response(200, content=_sse(*_completion_chunks(5, usage=None), done=done))

    wl = Workload(prompt="hello", output_tokens=5, num_requests=6, concurrency=3, warmup_requests=1)
    s = await run_workload("http://test", wl, transport=httpx.MockTransport(handler))
    assert len(calls) == 7  # one warm-up + six measured
    assert s["completed"] == 6
    assert s["errors"] == 0
    assert s["total_output_tokens"] == 30  # one token per text chunk when no usage is reported
    assert s["ttft"]["p50_ms"] >= 0
    assert s["workload"]["concurrency"] == 3


async def test_run_workload_prefers_reported_usage_and_chat_deltas() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        events = [{"choices": [{"delta": {"content": "ab"}}]}, {"choices": [{"delta": {"content": "cd"}}]}]
        events.append({"choices": [], "usage": {"completion_tokens": 4}})
        return httpx.Response(200, content=_sse(*events, done=True))

    wl = Workload(prompt="hello", endpoint="chat", num_requests=2, concurrency=2, warmup_requests=0)
    s = await run_workload("http://test", wl, transport=httpx.MockTransport(handler))
    assert s["total_output_tokens"] == 8
    assert s["itl"]["mean_ms"] >= 0


async def test_run_workload_counts_http_and_stream_errors() -> None:
    n = {"i": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        n["i"] += 1
        if n["i"] % 3 == 0:
            return httpx.Response(429, json={"error": {"message": "queue full"}})
        if n["i"] % 3 == 1:
            return httpx.Response(200, content=_sse({"error": "CUDA OOM"}, done=False))
        return httpx.Response(200, content=_sse(*_completion_chunks(2, usage=2), done=True))

    wl = Workload(prompt="x", num_requests=6, concurrency=1, warmup_requests=0)
    s = await run_workload("http://test", wl, transport=httpx.MockTransport(handler))
    assert s["completed"] == 2
    assert s["errors"] == 4
    assert any("HTTP 429" in e for e in s["error_examples"])
    assert any("CUDA OOM" in e for e in s["error_examples"])


async def test_empty_completion_is_an_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_sse(done=True))

    wl = Workload(prompt="x", num_requests=1, concurrency=1, warmup_requests=0)
    s = await run_workload("http://test", wl, transport=httpx.MockTransport(handler))
    assert s["errors"] == 1
    assert s["error_examples"] == ["empty completion"]


async def test_max_duration_skips_requests_not_yet_started() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=_sse(*_completion_chunks(2, usage=None), done=True))

    wl = Workload(prompt="x", num_requests=5, concurrency=1, warmup_requests=0, max_duration_s=0.0)
    s = await run_workload("http://test", wl, transport=httpx.MockTransport(handler))
    assert s["skipped"] == 5
    assert s["completed"] == 0
    assert s["errors"] == 0


async def test_non_streaming_requests_use_reported_usage() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is False
        return httpx.Response(200, json={"choices": [{"text": "abc"}], "usage": {"completion_tokens": 3}})

    wl = Workload(prompt="x", num_requests=3, concurrency=1, warmup_requests=0, stream=False)
    s = await run_workload("http://test", wl, transport=httpx.MockTransport(handler))
    assert s["completed"] == 3
    assert s["total_output_tokens"] == 9
    assert math.isnan(s["ttft"]["p50_ms"])  # unknown without a stream
    assert s["e2e"]["p50_ms"] > 0
