"""The HTTP API over the tiny model (in-process ASGI): OpenAI shapes, errors, readiness, metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from autoglm_runtime.app import create_app
from autoglm_runtime.engine import Engine, EngineConfig, ModelRunner, SamplingParams
from autoglm_runtime.metrics import METRIC_NAMES
from autoglm_runtime.settings import RuntimeSettings

pytestmark = pytest.mark.slow

ClientFactory = Callable[..., Any]


@pytest.fixture
async def api(tiny_loaded: Any, tiny_model_dir: Any) -> AsyncIterator[ClientFactory]:
    """Factory: ``await api(**settings)`` → (client, engine); the engine is started (model loaded)."""
    opened: list[tuple[httpx.AsyncClient, Engine]] = []

    async def make(start: bool = True, **overrides: Any) -> tuple[httpx.AsyncClient, Engine]:
        settings = RuntimeSettings(model=str(tiny_model_dir), served_model_name="tiny", **overrides)
        engine = Engine(EngineConfig.from_settings(settings))
        app = create_app(settings, engine)
        if start:
            engine.start(ModelRunner(tiny_loaded.model, tiny_loaded.tokenizer), "tiny")
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        opened.append((client, engine))
        return client, engine

    yield make
    for client, engine in opened:
        await client.aclose()
        engine.stop()


def chat(content: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **extra}


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


async def test_readiness_flips_when_the_model_is_ready(api: ClientFactory, tiny_loaded: Any) -> None:
    client, engine = await api(start=False)
    assert (await client.get("/healthz")).status_code == 200
    assert_openai_error(await client.get("/readyz"), 503)
    assert_openai_error(await client.post("/v1/chat/completions", json=chat()), 503)
    engine.start(ModelRunner(tiny_loaded.model, tiny_loaded.tokenizer), "tiny")
    assert (await client.get("/readyz")).status_code == 200


async def test_models_lists_the_served_name(api: ClientFactory) -> None:
    client, _ = await api()
    body = (await client.get("/v1/models")).json()
    assert [m["id"] for m in body["data"]] == ["tiny"]


async def test_chat_completion_with_usage(api: ClientFactory) -> None:
    client, _ = await api()
    r = await client.post("/v1/chat/completions", json=chat(max_tokens=7, min_tokens=7, temperature=0))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7


async def test_streamed_completion_ends_with_done(api: ClientFactory) -> None:
    client, _ = await api()
    payload = {"model": "tiny", "prompt": "Hello", "max_tokens": 12, "min_tokens": 12, "temperature": 0}
    whole = (await client.post("/v1/completions", json=payload)).json()["choices"][0]["text"]
    payload |= {"stream": True, "stream_options": {"include_usage": True}}
    r = await client.post("/v1/completions", json=payload)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == whole
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"


async def test_streamed_chat_chunks(api: ClientFactory) -> None:
    client, _ = await api()
    r = await client.post("/v1/chat/completions", json=chat(max_tokens=5, min_tokens=5, stream=True))
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    first = json.loads(events[0])
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"]["role"] == "assistant"


async def test_unknown_model_is_404(api: ClientFactory) -> None:
    client, _ = await api()
    error = assert_openai_error(
        await client.post("/v1/chat/completions", json={**chat(), "model": "gpt-9"}), 404
    )
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "tiny", "messages": []}, 422, "messages"),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 422, "messages.0.role"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 9},
            422,
            "temperature",
        ),
        ({"messages": [{"role": "user", "content": "x"}]}, 422, "model"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 3}, 422, "n"),
    ],
)
async def test_invalid_fields_get_the_openai_error_shape(
    api: ClientFactory, body: dict[str, Any], status: int, param: str
) -> None:
    client, _ = await api()
    error = assert_openai_error(await client.post("/v1/chat/completions", json=body), status)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


async def test_malformed_json_is_400(api: ClientFactory) -> None:
    client, _ = await api()
    r = await client.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert assert_openai_error(r, 400)["code"] == "invalid_json"


async def test_unknown_route_and_oversize_body(api: ClientFactory) -> None:
    client, _ = await api(max_body_bytes=2048)
    assert_openai_error(await client.get("/v1/nothing"), 404)
    huge = chat("word " * 2000)
    assert (
        assert_openai_error(await client.post("/v1/chat/completions", json=huge), 413)["code"]
        == "body_too_large"
    )


async def test_oversize_prompt_is_400(api: ClientFactory) -> None:
    client, _ = await api(max_input_tokens=16)
    r = await client.post(
        "/v1/chat/completions", json=chat("The quick brown fox jumps over the lazy dog. " * 4)
    )
    error = assert_openai_error(r, 400)
    assert error["code"] == "context_length_exceeded"
    assert "at most 16" in error["message"]


async def test_full_queue_is_429_with_retry_after(api: ClientFactory) -> None:
    client, engine = await api(max_batch_size=1, max_queue=0, max_new_tokens=3000, batch_window_ms=0)
    busy = await engine.submit("Hi", SamplingParams(max_tokens=3000, min_tokens=3000, temperature=0))
    try:
        r = await client.post("/v1/chat/completions", json=chat(max_tokens=2))
        error = assert_openai_error(r, 429)
        assert int(r.headers["retry-after"]) >= 1
        assert error["code"] == "queue_full"
    finally:
        busy.cancel()


async def test_metrics_after_concurrent_requests(api: ClientFactory) -> None:
    client, _ = await api(max_batch_size=8, batch_window_ms=300)
    requests = [
        client.post("/v1/chat/completions", json=chat(f"Hi {i}", max_tokens=6, min_tokens=6))
        for i in range(4)
    ]
    assert all(r.status_code == 200 for r in await asyncio.gather(*requests))
    text = (await client.get("/metrics")).text
    for name in METRIC_NAMES:
        if name != "autoglm_gpu_memory_allocated_bytes":  # no samples without CUDA, only the HELP line
            assert f"\n{name}" in text, name
    assert "# HELP autoglm_gpu_memory_allocated_bytes" in text
    assert 'autoglm_requests_total{route="/v1/chat/completions",status="200"} 4.0' in text
    assert "autoglm_generated_tokens_total 24.0" in text
    assert "autoglm_inflight_requests 0.0" in text
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("autoglm_batch_size_")
    )
    assert float(samples['autoglm_batch_size_bucket{le="1.0"}']) < float(
        samples["autoglm_batch_size_count"]
    ), "no decode step ran more than one request"


async def test_token_id_prompts(api: ClientFactory) -> None:
    client, _ = await api()
    ok = await client.post("/v1/completions", json={"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 2})
    assert ok.status_code == 200
    assert ok.json()["usage"]["prompt_tokens"] == 3
    bad = await client.post("/v1/completions", json={"model": "tiny", "prompt": [10**9], "max_tokens": 2})
    assert assert_openai_error(bad, 400)["param"] == "prompt"


async def test_an_image_to_a_text_only_model_names_the_part(api: ClientFactory) -> None:
    from tests.runtime.conftest import png_data_url

    client, _ = await api()
    parts = [
        {"type": "text", "text": "What is on the screen?"},
        {"type": "image_url", "image_url": {"url": png_data_url(64, 64)}},
    ]
    response = await client.post("/v1/chat/completions", json=chat(parts))  # type: ignore[arg-type]
    error = assert_openai_error(response, 400)
    assert error["message"] == "model 'tiny' has no vision input; send text only"
    assert error["param"] == "messages[0].content[1]"
    # Text parts alone still work for a text-only model.
    response = await client.post("/v1/chat/completions", json=chat([parts[0]], max_tokens=2))  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
