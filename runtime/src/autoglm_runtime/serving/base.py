"""What chat and completions share: sampling parameters from a request, submitting to the engine,
waiting for the whole text (watching for the client to leave), and the server-sent-event stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from autoglm_runtime.engine import Engine, EngineError, RequestHandle, SamplingParams
from autoglm_runtime.errors import OpenAIError
from autoglm_runtime.metrics import RuntimeMetrics
from autoglm_runtime.schemas import ChatCompletionRequest, CompletionRequest, Usage
from autoglm_runtime.serving.errors import engine_error
from autoglm_runtime.serving.models import ModelServing
from autoglm_runtime.settings import RuntimeSettings

# Is the client still there? (``Request.is_disconnected`` in the app; a stub in tests.)
Disconnected = Callable[[], Awaitable[bool]]
# One event of a stream: (new text or None, finish reason or None) → the chunk's JSON.
ChunkFactory = Callable[[str | None, str | None], dict[str, Any]]

DISCONNECT_POLL_S = 0.5


async def never_disconnected() -> bool:
    return False


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


class Serving:
    """One API over the engine; subclasses build its request and response shapes."""

    def __init__(
        self, engine: Engine, settings: RuntimeSettings, metrics: RuntimeMetrics, models: ModelServing
    ) -> None:
        self.engine, self.settings, self.metrics, self.models = engine, settings, metrics, models

    def sampling(self, body: CompletionRequest | ChatCompletionRequest, limit: int | None) -> SamplingParams:
        return SamplingParams(
            max_tokens=limit or self.settings.max_new_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            stop=tuple(body.stop_list),
            seed=body.seed,
            min_tokens=body.min_tokens,
            frequency_penalty=body.frequency_penalty,
            presence_penalty=body.presence_penalty,
        )

    async def submit(
        self, prompt: str | list[int], params: SamplingParams, param: str, images: Any = None
    ) -> RequestHandle:
        try:
            return await self.engine.submit(prompt, params, images)
        except EngineError as exc:
            raise engine_error(exc, param) from exc

    def record(self, handle: RequestHandle) -> None:
        metrics = self.metrics
        metrics.prompt_tokens.inc(handle.prompt_tokens)
        metrics.generated_tokens.inc(handle.completion_tokens)
        if handle.time_to_first_token is not None:
            metrics.time_to_first_token.observe(handle.time_to_first_token)

    async def collect(self, handle: RequestHandle, disconnected: Disconnected) -> str:
        """The full text; cancels generation if the client goes away first (499)."""
        task = asyncio.ensure_future(handle.collect())
        try:
            while True:
                # Asked before each wait: a client already gone never waits for a whole generation
                # (and a test of it does not race a fast model).
                if await disconnected():
                    handle.cancel()
                    task.cancel()
                    raise OpenAIError("client disconnected", status=499, code="client_closed")
                done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if done:
                    return task.result()
        except EngineError as exc:
            raise engine_error(exc) from exc
        finally:
            if not task.done():
                task.cancel()
            self.record(handle)

    async def stream(
        self,
        handle: RequestHandle,
        chunk: ChunkFactory,
        usage_chunk: bool,
        final: Callable[[Usage], dict[str, Any]],
    ) -> AsyncIterator[str]:
        """Server-sent events: a chunk per delta, one with the finish reason, the usage if asked,
        ``[DONE]``; an engine error mid-stream becomes an error event."""
        try:
            async for text in handle:
                yield sse(chunk(text, None))
            yield sse(chunk(None, handle.finish_reason))
            if usage_chunk:
                yield sse(final(Usage.of(handle.prompt_tokens, handle.completion_tokens)))
        except EngineError as exc:
            yield sse(engine_error(exc).body())
        finally:
            handle.cancel()  # a no-op when finished; frees the batch slot when the client left
            self.record(handle)
        yield sse("[DONE]")
