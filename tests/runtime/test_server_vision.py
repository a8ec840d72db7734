"""End to end, as the Open-AutoGLM phone agent talks to the model: the real CLI serves a tiny
GLM-4V under the name `autoglm-phone-9b`; the official `openai` client sends the startup "Hi"
check and streamed steps with a 1080x2400 PNG screenshot, a growing image-stripped history, the
client's sampling parameters; hostile images get a 4xx in OpenAI's shape and the server goes on."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.runtime.conftest import png_data_url
from tests.runtime.test_server import start, wait_ready
from tests.runtime.test_vision import bomb_png

pytestmark = pytest.mark.slow

MODEL = "autoglm-phone-9b"
SYSTEM = (
    'You are a phone agent. Actions: do(action="Tap", element=[x,y]), finish(message="..."). '
    "Answer as <think>...</think><answer>...</answer>; coordinates on a 0-999 grid. " * 20
)
CLIENT_PARAMS: dict[str, Any] = {
    "temperature": 0.0,
    "top_p": 0.85,
    "frequency_penalty": 0.2,
    "max_tokens": 3000,
}


@pytest.fixture(scope="module")
def vlm_server(tiny_vlm_dir: Path) -> Iterator[str]:
    proc, base = start(
        tiny_vlm_dir,
        "--served-model-name",
        MODEL,
        "--max-new-tokens",
        "16",
        "--max-input-tokens",
        "25480",
        "--max-batch-size",
        "8",
        "--log-format",
        "text",
    )
    try:
        wait_ready(proc, base)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=120, max_retries=0)


def step(
    screen: str, history: list[dict[str, Any]] | None = None, text: str = "** Screen Info **"
) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": SYSTEM},
        *(history or []),
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": screen}}, {"type": "text", "text": text}],
        },
    ]


def streamed(base: str, messages: list[dict[str, Any]]) -> tuple[str, Any]:
    stream = client(base).chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}, **CLIENT_PARAMS
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        usage = chunk.usage or usage
    return text, usage


def test_startup_check_and_two_steps(vlm_server: str) -> None:
    hi = client(vlm_server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, timeout=30
    )
    assert hi.choices[0].finish_reason in ("stop", "length")
    screen = png_data_url(1080, 2400)
    assert len(screen) > 10_000
    first, usage = streamed(vlm_server, step(screen))
    assert usage.prompt_tokens > 3354  # the screenshot's image tokens count in the prompt
    assert usage.completion_tokens <= 16  # max_tokens 3000 is clamped to the server's limit
    # Step two: the earlier user message without its image, the answer as a string, a new screen.
    history = [
        {"role": "user", "content": [{"type": "text", "text": "** Screen Info **"}]},
        {"role": "assistant", "content": first or 'do(action="Tap", element=[500,500])'},
    ]
    _, usage2 = streamed(vlm_server, step(png_data_url(1179, 2556, (200, 40, 40)), history))
    assert usage2.prompt_tokens > usage.prompt_tokens


def concurrently(
    base: str, calls: list[Callable[[], Any]], health_checks: int
) -> tuple[list[Any], list[int]]:
    """Run ``calls`` in parallel threads and poll /healthz meanwhile; (their results, the health codes).
    A call that raised re-raises here."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        health = [httpx.get(f"{base}/healthz", timeout=10).status_code for _ in range(health_checks)]
        return [f.result(timeout=600) for f in futures], health


def test_four_concurrent_steps_and_health_while_decoding(vlm_server: str) -> None:
    calls = [
        functools.partial(streamed, vlm_server, step(png_data_url(1080, 2400, (i * 50, 90, 90))))
        for i in range(4)
    ]
    results, health = concurrently(vlm_server, calls, 5)
    assert len(results) == 4
    assert all(u.prompt_tokens > 3354 for _, u in results)
    assert set(health) == {200}


def test_hang_up_mid_stream_then_serve_on(vlm_server: str) -> None:
    body = {"model": MODEL, "messages": step(png_data_url(1080, 2400)), "stream": True, **CLIENT_PARAMS}
    with httpx.stream("POST", f"{vlm_server}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                break  # hang up after the first event
    text, usage = streamed(vlm_server, step(png_data_url(720, 1600)))
    assert usage.completion_tokens >= 1


def _post(base: str, messages: Any, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/chat/completions", json={"model": MODEL, "messages": messages, **extra}, timeout=120
    )


def _data(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    ("url", "status", "text"),
    [
        ("data:image/png;base64,%%%", 400, "invalid base64"),
        (_data(b"not an image at all"), 400, "not a PNG, JPEG or WebP"),
        (_data(base64.b64decode(png_data_url(300, 300).split(",")[1])[:200]), 400, "truncated or corrupt"),
        (_data(b"<svg/>", "image/svg+xml"), 400, "unsupported image type"),
        ("https://example.com/a.png", 400, "remote image URLs"),
        ("file:///etc/passwd", 400, "unsupported image URL scheme"),
        (_data(bomb_png()), 400, "more pixels"),
    ],
)
def test_hostile_images_get_a_4xx_naming_the_part(vlm_server: str, url: str, status: int, text: str) -> None:
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}]
    response = _post(vlm_server, step(url, history))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert text in error["message"]
    assert error["param"] == "messages[3].content[0].image_url"
    assert httpx.get(f"{vlm_server}/readyz").status_code == 200


def test_other_refusals(vlm_server: str) -> None:
    screen = png_data_url(64, 64)
    many = [{"type": "image_url", "image_url": {"url": screen}} for _ in range(11)]
    response = _post(vlm_server, [{"role": "user", "content": many}])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_images"
    audio = [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]
    response = _post(vlm_server, [{"role": "user", "content": audio}])
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[0]"
    big = "data:image/png;base64," + "A" * (30 * 1024 * 1024)
    response = _post(
        vlm_server, [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": big}}]}]
    )
    assert response.status_code == 413
    assert json.loads(response.text)["error"]["code"] == "body_too_large"
    response = _post(vlm_server, [{"role": "user", "content": "Hi"}], frequency_penalty=3)
    assert response.status_code == 422
    ok = _post(vlm_server, step(screen), max_tokens=2)
    assert ok.status_code == 200


def test_health_answers_while_16_screenshots_are_decoded(vlm_server: str) -> None:
    """Decoding and preprocessing run off the event loop, a few at a time."""
    screens = [png_data_url(1080, 2400, (i * 15, 80, 160)) for i in range(16)]
    calls = [functools.partial(_post, vlm_server, step(screen), max_tokens=1) for screen in screens]
    responses, health = concurrently(vlm_server, calls, 10)
    assert [r.status_code for r in responses] == [200] * 16
    assert set(health) == {200}


@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_the_client_works_against_a_quantized_server(tiny_vlm_dir: Path, quantization: str) -> None:
    proc, base = start(
        tiny_vlm_dir,
        "--served-model-name",
        MODEL,
        "--quantization",
        quantization,
        "--compute-dtype",
        "fp32",
        "--max-new-tokens",
        "8",
        "--max-input-tokens",
        "25480",
        "--log-format",
        "text",
    )
    try:
        wait_ready(proc, base)
        hi = client(base).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, timeout=30
        )
        assert hi.choices[0].finish_reason in ("stop", "length")
        _, usage = streamed(base, step(png_data_url(1080, 2400)))
        assert usage.prompt_tokens > 3354
        assert usage.completion_tokens >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=60)
