"""The API's door (guard middleware) over a stub app: 401/429/503 in the OpenAI shape, open probes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from autoglm_runtime.admission import RateLimiter
from autoglm_runtime.auth import ApiKeys, key_id
from autoglm_runtime.guard import Guard, GuardState

CANARY = "sk-CANARY-5b2c7d"


class FakeClock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def stub_app(release: asyncio.Event | None = None) -> Starlette:
    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"key_id": request.scope.get("state", {}).get("api_key_id")})

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            if release is not None:
                await release.wait()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def probe(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/v1/models", ok),
            Route("/v1/stream", stream, methods=["POST"]),
            Route("/healthz", probe),
            Route("/readyz", probe),
            Route("/metrics", probe),
        ]
    )


def client(state: GuardState, app: Starlette | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=Guard(app or stub_app(), state)), base_url="http://t"
    )


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    p = tmp_path / "api-keys"
    p.write_text(f"{CANARY}\nsk-second\n")
    return p


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


async def test_no_keys_configured_means_open(keys_file: Path) -> None:
    async with client(GuardState()) as c:
        r = await c.get("/v1/models")
    assert r.status_code == 200
    assert r.json() == {"key_id": None}


async def test_api_needs_a_valid_key_probes_do_not(keys_file: Path) -> None:
    async with client(GuardState(keys=ApiKeys(keys_file))) as c:
        missing = assert_error(await c.get("/v1/models"), 401, "invalid_api_key")
        assert "Authorization: Bearer" in missing["message"]
        wrong = await c.get("/v1/models", headers={"Authorization": "Bearer sk-CANARY-5b2c7"})
        assert_error(wrong, 401, "invalid_api_key")
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert "CANARY" not in wrong.text  # the presented key is never echoed
        good = await c.get("/v1/models", headers={"Authorization": f"Bearer {CANARY}"})
        assert good.status_code == 200
        assert good.json() == {"key_id": key_id(CANARY)}
        assert (await c.get("/v1/models", headers={"X-API-Key": "sk-second"})).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await c.get(path)).status_code == 200, path


async def test_metrics_can_require_a_key(keys_file: Path) -> None:
    async with client(GuardState(keys=ApiKeys(keys_file), protect_metrics=True)) as c:
        assert_error(await c.get("/metrics"), 401, "invalid_api_key")
        assert (await c.get("/metrics", headers={"Authorization": "Bearer sk-second"})).status_code == 200
        assert (await c.get("/healthz")).status_code == 200


async def test_auth_is_checked_before_the_body_is_read(keys_file: Path) -> None:
    async with client(GuardState(keys=ApiKeys(keys_file))) as c:
        r = await c.post("/v1/stream", content=b"{not json" * 1000)
    assert_error(r, 401, "invalid_api_key")


async def test_global_rate_limit_is_429_with_retry_after() -> None:
    clock = FakeClock()
    state = GuardState(limiter=RateLimiter(rate_rps=0.5, burst=2, clock=clock))
    async with client(state) as c:
        codes = [(await c.get("/v1/models")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = await c.get("/v1/models")
        error = assert_error(r, 429, "rate_limit_exceeded")
        assert error["type"] == "rate_limit_error"
        assert r.headers["retry-after"] == "2"
        assert (await c.get("/healthz")).status_code == 200  # probes are never rate limited
        clock.now += 2
        assert (await c.get("/v1/models")).status_code == 200


async def test_per_key_rate_limit(keys_file: Path) -> None:
    clock = FakeClock()
    state = GuardState(
        keys=ApiKeys(keys_file), limiter=RateLimiter(per_key_rps=1, per_key_burst=1, clock=clock)
    )
    a, b = {"Authorization": f"Bearer {CANARY}"}, {"Authorization": "Bearer sk-second"}
    async with client(state) as c:
        assert (await c.get("/v1/models", headers=a)).status_code == 200
        assert_error(await c.get("/v1/models", headers=a), 429, "rate_limit_exceeded")
        assert (await c.get("/v1/models", headers=b)).status_code == 200  # the other key is unaffected
        # A bad key never reaches (or drains) the rate limiter: it is refused first.
        assert_error(await c.get("/v1/models", headers={"Authorization": "Bearer x"}), 401, "invalid_api_key")


@pytest.mark.timeout(30)
async def test_draining_refuses_new_and_lets_streams_finish() -> None:
    release = asyncio.Event()
    state = GuardState()
    guard = Guard(stub_app(release), state)
    sent: list[dict] = []
    first_chunk = asyncio.Event()

    requests = [{"type": "http.request", "body": b"", "more_body": False}]
    disconnected = asyncio.Event()

    async def receive() -> dict:
        if requests:
            return requests.pop()
        await disconnected.wait()  # like a server: nothing more until the client goes away
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_chunk.set()

    # httpx's ASGI transport buffers whole responses, so the stream is driven by hand.
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/stream",
        "headers": [],
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("t", 80),
        "client": ("c", 1),
        "root_path": "",
    }
    streaming = asyncio.create_task(guard(scope, receive, send))
    await first_chunk.wait()
    assert state.in_flight.count == 1
    state.start_draining()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as c:
        r = await c.get("/v1/models")
        assert_error(r, 503, "server_shutting_down")
        assert r.headers["retry-after"] == "1"
        assert r.headers["connection"] == "close"
        assert (await c.get("/healthz")).status_code == 200
    assert not await state.in_flight.wait_idle(0.01)
    release.set()
    await streaming
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert body.endswith(b"data: [DONE]\n\n")
    assert state.in_flight.count == 0
    assert await state.in_flight.wait_idle(1)


async def test_keys_never_logged(keys_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        async with client(GuardState(keys=ApiKeys(keys_file))) as c:
            await c.get("/v1/models", headers={"Authorization": f"Bearer {CANARY}"})
            await c.get("/v1/models", headers={"Authorization": f"Bearer {CANARY}-wrong"})
            await c.get("/v1/models", headers={"X-API-Key": CANARY + "x"})
    assert caplog.records
    assert "CANARY" not in caplog.text


def test_state_from_settings(keys_file: Path) -> None:
    from autoglm_runtime.settings import RuntimeSettings

    settings = RuntimeSettings(
        model="m",
        api_keys_file=keys_file,
        rate_limit_rps=3,
        rate_limit_per_key_rps=1,
        metrics_require_auth=True,
    )
    state = GuardState.from_settings(settings)
    assert state.keys is not None
    assert state.keys.count == 2
    assert state.limiter.enabled
    assert state.protect_metrics
    assert not GuardState.from_settings(RuntimeSettings(model="m")).limiter.enabled
