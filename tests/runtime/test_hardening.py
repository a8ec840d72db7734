"""Runtime under fire, end to end over the tiny model: keys, HTTPS/mTLS, overload, model failures,
the circuit breaker, and graceful shutdown of the real ``autoglm-runtime serve`` process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autoglm_runtime.app import create_app
from autoglm_runtime.engine import Engine, EngineConfig, ModelRunner
from autoglm_runtime.settings import RuntimeSettings
from autoglm_runtime.tls import ReloadingTLS

from .certs import TestCA

pytestmark = pytest.mark.slow

CANARY = "sk-CANARY-0a1b2c3d4e5f"


# --- helpers ------------------------------------------------------------------------------------
def make_app(model_dir: Path, runner: ModelRunner, **overrides: Any) -> tuple[Any, Engine]:
    settings = RuntimeSettings(model=str(model_dir), served_model_name="tiny", **overrides)
    engine = Engine(EngineConfig.from_settings(settings))
    engine.start(runner, "tiny")
    return create_app(settings, engine), engine


@contextlib.contextmanager
def served(app: Any, tls: ReloadingTLS | None = None) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a loopback port in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    extra: dict[str, Any] = {"ssl_context_factory": tls.uvicorn_factory()} if tls else {}
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off", **extra))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(400):
        if server.started:
            break
        time.sleep(0.025)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def chat(content: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **extra}


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


class FlakyRunner(ModelRunner):
    """Failure injection: raises torch's CUDA OOM (a CPU build has the class) when ``should_fail`` says so."""

    def __init__(self, loaded: Any) -> None:
        super().__init__(loaded.model, loaded.tokenizer)
        self.failing = False
        self.max_rows: int | None = None  # fail any step with more rows than this
        self.poison: list[int] | None = None  # fail any prefill holding a prompt that starts so
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def _check(self, rows: int, prompts: list[list[int]] | None = None) -> None:
        import torch

        self.calls += 1
        self.batch_sizes.append(rows)
        self.gate.wait()
        poisoned = self.poison is not None and any(
            p[: len(self.poison)] == self.poison for p in prompts or []
        )
        if self.failing or (self.max_rows is not None and rows > self.max_rows) or poisoned:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    def step(self, chunks: Any) -> Any:
        prefills = [c.request.prompt_ids for c in chunks if c.start < len(c.request.prompt_ids)]
        self._check(len(chunks), prefills)
        return super().step(chunks)


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    started: list[Engine] = []
    yield started
    for engine in started:
        engine.stop()


# --- API keys through the official client ------------------------------------------------------
def test_openai_client_with_keys_and_rotation(
    tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path, engines: list, caplog: pytest.LogCaptureFixture
) -> None:
    import openai

    keys = tmp_path / "api-keys"
    keys.write_text(f"# rotated monthly\n{CANARY}\n")
    app, engine = make_app(
        tiny_model_dir,
        ModelRunner(tiny_loaded.model, tiny_loaded.tokenizer),
        api_keys_file=keys,
        log_level="DEBUG",
    )
    engines.append(engine)
    caplog.set_level(logging.DEBUG)
    with served(app) as base:
        # No key at all.
        r = httpx.post(f"{base}/v1/chat/completions", json=chat())
        assert error_of(r, 401)["code"] == "invalid_api_key"
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 200
        assert httpx.get(f"{base}/metrics").status_code == 200

        wrong = openai.OpenAI(base_url=f"{base}/v1", api_key=CANARY + "-not", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            wrong.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}])
        assert err.value.code == "invalid_api_key"
        assert "CANARY" not in str(err.value)

        good = openai.OpenAI(base_url=f"{base}/v1", api_key=CANARY, max_retries=0)
        reply = good.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            extra_body={"min_tokens": 4},
        )
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 4

        # Rotation: a new key replaces the old one in the mounted file; no restart.
        new_key = "sk-rotated-9f8e7d6c"
        tmp = keys.with_suffix(".new")
        tmp.write_text(new_key + "\n")
        os.replace(tmp, keys)
        rotated = openai.OpenAI(base_url=f"{base}/v1", api_key=new_key, max_retries=0)
        for _ in range(200):  # the file is re-checked at most once a second
            try:
                rotated.models.list()
                break
            except openai.AuthenticationError:
                time.sleep(0.05)
        assert [m.id for m in rotated.models.list()] == ["tiny"]
        with pytest.raises(openai.AuthenticationError):
            good.models.list()
    assert "Reloaded API keys" in caplog.text
    assert "CANARY" not in caplog.text  # the key never reaches a log line (uvicorn's access log included)


# --- HTTPS and mTLS through the official client -------------------------------------------------
def test_https_and_mtls_with_the_openai_client(
    tiny_model_dir: Path, tiny_loaded: Any, tmp_path: Path, engines: list
) -> None:
    import openai

    ca = TestCA(tmp_path / "pki")
    server, client = ca.issue("server", server=True), ca.issue("client", server=False)
    app, engine = make_app(tiny_model_dir, ModelRunner(tiny_loaded.model, tiny_loaded.tokenizer))
    engines.append(engine)

    trust = ssl.create_default_context(cafile=str(ca.cert_file))
    with served(app, ReloadingTLS(server.cert, server.key)) as base:
        assert base.startswith("https://")
        api = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", http_client=httpx.Client(verify=trust))
        assert [m.id for m in api.models.list()] == ["tiny"]
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/healthz")  # the system trust store does not know our CA
        with pytest.raises(httpx.HTTPError):
            httpx.get(base.replace("https://", "http://") + "/healthz")  # plain HTTP is not served

    with served(app, ReloadingTLS(server.cert, server.key, ca.cert_file)) as base:
        no_cert = openai.OpenAI(
            base_url=f"{base}/v1", api_key="unused", max_retries=0, http_client=httpx.Client(verify=trust)
        )
        with pytest.raises(openai.APIConnectionError):
            no_cert.models.list()
        mutual = ssl.create_default_context(cafile=str(ca.cert_file))
        mutual.load_cert_chain(client.cert, client.key)
        api = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", http_client=httpx.Client(verify=mutual))
        reply = api.completions.create(
            model="tiny", prompt="Hello", max_tokens=3, extra_body={"min_tokens": 3}
        )
        assert reply.usage is not None
        assert reply.usage.completion_tokens == 3


# --- overload on loopback -----------------------------------------------------------------------
def test_overload_sheds_with_429_and_every_admitted_request_completes(
    tiny_model_dir: Path, tiny_loaded: Any, engines: list
) -> None:
    runner = FlakyRunner(tiny_loaded)
    limit = 4
    app, engine = make_app(
        tiny_model_dir,
        runner,
        max_concurrent_requests=limit,
        max_queue=2,
        max_batch_size=2,
        batch_window_ms=0,
    )
    engines.append(engine)
    sent = 10 * limit

    async def scenario(base: str) -> None:
        async with httpx.AsyncClient(
            base_url=base, timeout=120, limits=httpx.Limits(max_connections=200)
        ) as c:
            runner.gate.clear()  # the model "hangs": admitted requests stay in flight
            body = chat(max_tokens=16, min_tokens=16)
            tasks = [asyncio.create_task(c.post("/v1/chat/completions", json=body)) for _ in range(sent)]
            for _ in range(2400):
                if sum(t.done() for t in tasks) >= sent - limit:
                    break
                await asyncio.sleep(0.025)
            shed = [t.result() for t in tasks if t.done()]
            assert len(shed) == sent - limit
            for r in shed:
                assert error_of(r, 429)["code"] == "queue_full"
                assert int(r.headers["retry-after"]) >= 1
            # Saturated, the pod still answers its probes and metrics.
            assert (await c.get("/healthz")).status_code == 200
            assert metric((await c.get("/metrics")).text, "autoglm_inflight_requests") == limit
            runner.gate.set()
            admitted = await asyncio.gather(*[t for t in tasks if not t.done()])
            assert len(admitted) == limit
            for r in admitted:
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["completion_tokens"] == 16

            # Now an unscripted burst of 10x the limit: only 200 and 429, and no request lost.
            started = time.perf_counter()

            async def timed() -> tuple[int, float]:
                t0 = time.perf_counter()
                r = await c.post("/v1/chat/completions", json=body)
                if r.status_code == 200:
                    assert r.json()["usage"]["completion_tokens"] == 16
                return r.status_code, time.perf_counter() - t0

            results = await asyncio.gather(*[timed() for _ in range(sent)])
            codes = [code for code, _ in results]
            assert set(codes) <= {200, 429}
            assert 200 in codes
            ok = sorted(t for code, t in results if code == 200)
            print(
                f"\noverload burst: sent={sent} admitted={codes.count(200)} shed={codes.count(429)} "
                f"p50(admitted)={statistics.median(ok) * 1000:.0f}ms wall={time.perf_counter() - started:.2f}s"
            )
            text = (await c.get("/metrics")).text
            assert metric(text, "autoglm_inflight_requests") == 0
            assert metric(text, "autoglm_queue_depth") == 0

    with served(app) as base:
        asyncio.run(scenario(base))


# --- model failures: smaller batches, then the breaker ------------------------------------------
async def test_oversized_batch_is_retried_in_halves(
    tiny_model_dir: Path, tiny_loaded: Any, engines: list
) -> None:
    runner = FlakyRunner(tiny_loaded)
    runner.max_rows = 2  # "CUDA OOM" for any step with more than 2 rows
    app, engine = make_app(tiny_model_dir, runner, max_batch_size=4, batch_window_ms=300)
    engines.append(engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        replies = await asyncio.gather(
            *[
                c.post("/v1/chat/completions", json=chat(f"Hi {i}", max_tokens=8, min_tokens=8))
                for i in range(4)
            ]
        )
        assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
        assert all(r.json()["usage"]["completion_tokens"] == 8 for r in replies)
        assert 4 in runner.batch_sizes  # the batch of four was tried ...
        assert engine.retried_rows >= 4  # ... failed, and its rows were re-run in halves
        assert max(runner.batch_sizes[runner.batch_sizes.index(4) + 1 :]) <= 2
        assert (await c.get("/readyz")).status_code == 200
        text = (await c.get("/metrics")).text
        assert metric(text, 'autoglm_generation_failures_total{kind="oom"}') >= 1
        assert metric(text, "autoglm_circuit_breaker_open") == 0


async def test_only_the_failing_request_gets_503(
    tiny_model_dir: Path, tiny_loaded: Any, engines: list
) -> None:
    runner = FlakyRunner(tiny_loaded)
    runner.poison = [7, 7, 7, 7]
    app, engine = make_app(
        tiny_model_dir, runner, max_batch_size=4, batch_window_ms=300, breaker_failure_threshold=3
    )
    engines.append(engine)
    body = {"model": "tiny", "max_tokens": 5, "min_tokens": 5}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        replies = await asyncio.gather(
            c.post("/v1/completions", json={**body, "prompt": "Hello there"}),
            c.post("/v1/completions", json={**body, "prompt": [7, 7, 7, 7, 9]}),
            c.post("/v1/completions", json={**body, "prompt": "Kubernetes"}),
            c.post("/v1/completions", json={**body, "prompt": "Paris"}),
        )
        codes = [r.status_code for r in replies]
        assert codes == [200, 503, 200, 200], [r.text for r in replies]
        error = error_of(replies[1], 503)
        assert error["code"] == "generation_failed"
        assert replies[1].headers["retry-after"] == "1"
        assert not engine.breaker.is_open  # one bad request does not take the pod out of rotation
        assert (await c.post("/v1/completions", json={**body, "prompt": "Again"})).status_code == 200


async def test_breaker_opens_sheds_fast_then_probes_and_closes(
    tiny_model_dir: Path, tiny_loaded: Any, engines: list
) -> None:
    runner = FlakyRunner(tiny_loaded)
    app, engine = make_app(
        tiny_model_dir, runner, breaker_failure_threshold=2, breaker_cooldown_s=0.5, batch_window_ms=0
    )
    engines.append(engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        runner.failing = True
        for _ in range(2):  # two failures in a row ...
            r = await c.post("/v1/chat/completions", json=chat(max_tokens=4))
            assert error_of(r, 503)["code"] == "generation_failed"
        # ... open the breaker: fast 503 without touching the model, and the pod leaves the Service.
        calls = runner.calls
        r = await c.post("/v1/chat/completions", json=chat(max_tokens=4))
        assert error_of(r, 503)["code"] == "model_unavailable"
        assert int(r.headers["retry-after"]) >= 1
        assert runner.calls == calls
        ready = await c.get("/readyz")
        assert error_of(ready, 503)["code"] == "model_unavailable"
        assert "OutOfMemoryError" in ready.json()["error"]["message"]
        text = (await c.get("/metrics")).text
        assert metric(text, "autoglm_circuit_breaker_open") == 1
        assert metric(text, 'autoglm_generation_failures_total{kind="oom"}') == 2
        assert (await c.get("/healthz")).status_code == 200  # alive: no restart for a sick model

        async def until_ready() -> None:
            for _ in range(400):
                if (await c.get("/readyz")).status_code == 200:
                    return
                await asyncio.sleep(0.025)
            raise AssertionError("breaker never half-opened")

        # Half-open: ready again, one probe goes through; it fails → open again.
        await until_ready()
        r = await c.post("/v1/chat/completions", json=chat(max_tokens=4))
        assert error_of(r, 503)["code"] == "generation_failed"
        assert (await c.get("/readyz")).status_code == 503
        assert engine.breaker.opened_total == 2

        # Recovered model: the next probe succeeds and the breaker closes.
        runner.failing = False
        await until_ready()
        r = await c.post("/v1/chat/completions", json=chat(max_tokens=4, min_tokens=4))
        assert r.status_code == 200, r.text
        assert engine.breaker.state == "closed"
        assert metric((await c.get("/metrics")).text, "autoglm_circuit_breaker_open") == 0
        replies = await asyncio.gather(
            *[c.post("/v1/chat/completions", json=chat(max_tokens=2)) for _ in range(3)]
        )
        assert [r.status_code for r in replies] == [200] * 3


# --- graceful shutdown of the real process ------------------------------------------------------
def test_sigterm_drains_streams_refuses_new_requests_and_exits_zero(tiny_model_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoglm_runtime.cli", "serve", "--model", str(tiny_model_dir), "--served-model-name", "tiny",
         "--host", "127.0.0.1", "--port", str(port), "--torch-threads", "1", "--log-format", "text",
         "--max-new-tokens", "3000", "--shutdown-grace-s", "120"],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        for _ in range(1200):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            time.sleep(0.1)
        body = {"model": "tiny", "prompt": "Hi", "max_tokens": 3000, "min_tokens": 3000, "stream": True}
        events: list[str] = []
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=300) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            events.append(next(line for line in lines if line))
            proc.send_signal(signal.SIGTERM)
            for _ in range(400):
                ready = httpx.get(f"{base}/readyz")
                if ready.status_code == 503:
                    break
                time.sleep(0.025)
            assert error_of(ready, 503)["code"] == "server_shutting_down"
            refused = httpx.post(
                f"{base}/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2}
            )
            assert error_of(refused, 503)["code"] == "server_shutting_down"
            assert refused.headers["retry-after"] == "1"
            assert httpx.get(f"{base}/healthz").status_code == 200
            events.extend(line for line in lines if line)
        assert events[-1] == "data: [DONE]"
        assert len(events) > 100  # the whole stream, not a cut-off one
        assert '"finish_reason":"length"' in events[-2].replace(" ", "")
        assert proc.wait(timeout=120) == 0
        log_text = proc.stderr.read() if proc.stderr else ""
        assert "Received SIGTERM: draining 1 in-flight request(s)" in log_text
        assert "Drained in" in log_text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None and not proc.stderr.closed:
            print(proc.stderr.read()[-3000:])
